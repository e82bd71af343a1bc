//! Integration tests in network namespaces: a server namespace running the real server
//! process (`chainboot-dhcp-testd`) and a client namespace joined by a veth pair, addresses
//! from 198.18.0.0/15 only. Real clients (busybox udhcpc, perfdhcp, dnsmasq as a peer) and
//! the firmware-like test client from `chainboot_dhcp::client`.
//!
//! Needs root (network namespaces) and the Debian packages from .ci/install-deps; a missing
//! tool fails the test with its name instead of skipping.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chainboot_dhcp::client::{ClientKind, ClientMessage};
use chainboot_dhcp::wire::MessageType;
use chainboot_store::leases::{load_all, LeaseState};

mod common;
use common::*;

fn server_config(mode: &str) -> String {
    format!(
        r#"
[dhcp]
mode = "{mode}"
limits = {{ per_mac_rate = 1000.0, per_mac_burst = 1000.0 }}
[[dhcp.subnet]]
cidr = "198.18.0.0/20"
pools = [["198.18.1.1", "198.18.8.254"]]
router = "198.18.0.1"
dns = ["198.18.0.1"]
lease_time = "1h"
"#
    )
}

fn expected_file(kind: &ClientKind) -> &'static str {
    match kind {
        ClientKind::Firmware { arch: 0 } | ClientKind::IntelNoUuid => "undionly.kpxe",
        ClientKind::Firmware { arch: 6 } => "ipxe-i386.efi",
        ClientKind::Firmware { arch: 7 | 9 } => "snponly.efi",
        ClientKind::Firmware { arch: 11 } => "ipxe-arm64.efi",
        ClientKind::HttpBoot { .. } => "http://198.18.0.1/ipxe-bin/snponly.efi",
        ClientKind::Ipxe { http: true, .. } => "http://198.18.0.1/boot.ipxe",
        ClientKind::Ipxe { http: false, .. } => "boot.ipxe",
        other => panic!("no expectation for {other:?}"),
    }
}

#[test]
fn pxe_client_in_proxy_mode_gets_boot_info_on_67_and_4011() {
    require(&["ip"]);
    let topo = Topology::new("cbdhcp", Some("198.18.0.77/20"));
    let dir = tempfile::tempdir().unwrap();
    let _srv = start_server(&topo.srv, &server_config("proxy"), dir.path());
    in_netns(&topo.cli, || {
        let s = client_socket();
        for (i, (name, kind)) in ClientKind::matrix().into_iter().enumerate() {
            let m = ClientMessage::new(kind.clone(), MessageType::Discover, mac(i as u32));
            let r = exchange(&s, &m, BCAST, Duration::from_secs(2))
                .unwrap_or_else(|| panic!("{name}: no proxy offer"));
            assert_eq!(r.msg_type, Some(MessageType::Offer), "{name}");
            assert_eq!(
                r.yiaddr,
                Ipv4Addr::UNSPECIFIED,
                "{name}: proxy never hands out an address"
            );
            assert_eq!(
                (r.siaddr, r.file.as_str()),
                (SERVER_IP, expected_file(&kind)),
                "{name}"
            );
            assert!(r.len >= 300, "{name}: padded");
            // The same client asks the boot server port, as UEFI firmware does.
            let mut q = ClientMessage::new(kind.clone(), MessageType::Request, mac(i as u32));
            q.ciaddr = Ipv4Addr::new(198, 18, 0, 77);
            q.broadcast = false;
            let r = exchange(
                &s,
                &q,
                SocketAddrV4::new(SERVER_IP, 4011),
                Duration::from_secs(2),
            )
            .unwrap_or_else(|| panic!("{name}: no answer on 4011"));
            assert_eq!(
                (r.msg_type, r.file.as_str()),
                (Some(MessageType::Ack), expected_file(&kind)),
                "{name}"
            );
        }
        // An ordinary client gets nothing from a proxy.
        let m = ClientMessage::new(ClientKind::Plain, MessageType::Discover, mac(999));
        assert!(exchange(&s, &m, BCAST, Duration::from_millis(700)).is_none());
    });
}

#[test]
fn pxe_client_in_server_mode_gets_address_and_file() {
    require(&["ip"]);
    let topo = Topology::new("cbdhcp", None);
    let dir = tempfile::tempdir().unwrap();
    let _srv = start_server(&topo.srv, &server_config("server"), dir.path());
    in_netns(&topo.cli, || {
        let s = client_socket();
        for (i, (name, kind)) in ClientKind::matrix().into_iter().enumerate() {
            let m = ClientMessage::new(kind.clone(), MessageType::Discover, mac(100 + i as u32));
            let offer = exchange(&s, &m, BCAST, Duration::from_secs(2))
                .unwrap_or_else(|| panic!("{name}: no offer"));
            assert_eq!(offer.file, expected_file(&kind), "{name}");
            let mut q = ClientMessage::new(kind.clone(), MessageType::Request, m.mac);
            q.requested_ip = Some(offer.yiaddr);
            q.server_id = Some(SERVER_IP);
            let ack = exchange(&s, &q, BCAST, Duration::from_secs(2))
                .unwrap_or_else(|| panic!("{name}: no ack"));
            assert_eq!(
                (ack.msg_type, ack.yiaddr),
                (Some(MessageType::Ack), offer.yiaddr),
                "{name}"
            );
            assert_eq!(ack.file, expected_file(&kind), "{name}");
        }
    });
}

#[test]
fn udhcpc_gets_a_lease_renews_and_releases() {
    require(&["ip", "busybox"]);
    let topo = Topology::new("cbdhcp", None);
    let dir = tempfile::tempdir().unwrap();
    let _srv = start_server(&topo.srv, &server_config("server"), dir.path());
    let log = dir.path().join("udhcpc.log");
    let script = dir.path().join("udhcpc.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$1\" in bound|renew) ip addr replace \"$ip/20\" dev \"$interface\";; deconfig) ip addr flush dev \"$interface\";; esac\necho \"$1 $ip\" >> {}\n",
            log.display()
        ),
    )
    .unwrap();
    run(&["chmod", "+x", script.to_str().unwrap()]);
    let child = Command::new("ip")
        .args([
            "netns", "exec", &topo.cli, "busybox", "udhcpc", "-f", "-i", "vc", "-t", "5", "-T",
            "1", "-s",
        ])
        .arg(&script)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let udhcpc = Proc(child);
    let pid = nix::unistd::Pid::from_raw(udhcpc.0.id() as i32);
    let wait_log = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.starts_with(needle)) {
                return line.split_whitespace().nth(1).unwrap_or("").to_string();
            }
            assert!(
                Instant::now() < deadline,
                "udhcpc never logged `{needle}`:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let ip = wait_log("bound");
    assert!(ip.starts_with("198.18."), "{ip}");
    // udhcpc sets no broadcast flag, so the server unicast the OFFER/ACK to the new address
    // after inserting an ARP entry for it (SIOCSARP): the entry is there although the client
    // never sent an ARP packet from that address.
    let link = Command::new("ip")
        .args(["-n", &topo.cli, "link", "show", "vc"])
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout).to_string();
    let client_mac = link
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let neigh = Command::new("ip")
        .args(["-n", &topo.srv, "neigh", "show", &ip])
        .output()
        .unwrap();
    let neigh = String::from_utf8_lossy(&neigh.stdout).to_string();
    assert!(
        !client_mac.is_empty() && neigh.contains(&client_mac),
        "no ARP entry {ip} -> {client_mac}: {neigh}"
    );
    let store = chainboot_store::Store::open(&dir.path().join("state")).unwrap();
    let lease_of = |ip: &str| {
        load_all(&store)
            .unwrap()
            .into_iter()
            .find(|l| l.ip.to_string() == ip)
    };
    let first = lease_of(&ip).expect("ACKed lease is stored");
    assert_eq!(first.state, LeaseState::Bound);
    // The ip-netns-exec wrapper execs busybox, so the PID is udhcpc's own.
    std::thread::sleep(Duration::from_millis(1100));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1).unwrap();
    assert_eq!(wait_log("renew"), ip, "renewed the same address");
    let deadline = Instant::now() + Duration::from_secs(5);
    while lease_of(&ip).unwrap().updated == first.updated {
        assert!(Instant::now() < deadline, "renewal was not stored");
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while lease_of(&ip).unwrap().state != LeaseState::Released {
        assert!(Instant::now() < deadline, "release was not stored");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn perfdhcp_1000_clients_get_1000_leases() {
    require(&["ip", "perfdhcp"]);
    let topo = Topology::new("cbdhcp", Some("198.18.0.2/20"));
    let dir = tempfile::tempdir().unwrap();
    let mut srv = start_server(&topo.srv, &server_config("server"), dir.path());
    // perfdhcp acts as a relay (giaddr = 198.18.0.2): replies come back to it on port 67.
    let out = perfdhcp(
        &topo.cli,
        60,
        &["-r", "100", "-R", "1000", "-n", "1000", "-W", "3000000"],
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("REQUEST-ACK"),
        "perfdhcp failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(srv.0.kill());
    srv.kill9();
    let store = chainboot_store::Store::open(&dir.path().join("state")).unwrap();
    let leases = load_all(&store).unwrap();
    let macs: std::collections::HashSet<_> = leases.iter().map(|l| l.mac.clone()).collect();
    assert_eq!(leases.len(), 1000, "{text}");
    assert_eq!(macs.len(), 1000);
    assert!(leases.iter().all(|l| l.state == LeaseState::Bound));
}

#[test]
fn kill_9_and_restart_keeps_every_acked_lease() {
    require(&["ip"]);
    let topo = Topology::new("cbdhcp", None);
    let dir = tempfile::tempdir().unwrap();
    let cfg = server_config("server");
    let srv = start_server(&topo.srv, &cfg, dir.path());
    let srv = std::sync::Arc::new(std::sync::Mutex::new(srv));
    let killer = {
        let srv = srv.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(800));
            srv.lock().unwrap().kill9();
        })
    };
    // DORA as fast as the server answers until it dies under us.
    let acked = in_netns(&topo.cli, || {
        let s = client_socket();
        let mut acked = Vec::new();
        let mut misses = 0;
        for i in 0..3000u32 {
            let d = ClientMessage::new(ClientKind::Plain, MessageType::Discover, mac(i));
            let Some(offer) = exchange(&s, &d, BCAST, Duration::from_millis(300)) else {
                misses += 1;
                if misses > 3 {
                    break;
                }
                continue;
            };
            let mut q = ClientMessage::new(ClientKind::Plain, MessageType::Request, d.mac);
            q.requested_ip = Some(offer.yiaddr);
            q.server_id = Some(SERVER_IP);
            if let Some(ack) = exchange(&s, &q, BCAST, Duration::from_millis(300)) {
                if ack.msg_type == Some(MessageType::Ack) {
                    acked.push((d.mac, ack.yiaddr));
                }
            }
        }
        acked
    });
    killer.join().unwrap();
    assert!(
        acked.len() > 10,
        "only {} ACKs before the kill",
        acked.len()
    );
    let store = chainboot_store::Store::open(&dir.path().join("state")).unwrap();
    let stored = load_all(&store).unwrap();
    drop(store);
    for (m, ip) in &acked {
        let mac = chainboot_machine::Mac(*m).to_string();
        assert!(
            stored
                .iter()
                .any(|l| l.ip == *ip && l.mac == mac && l.state == LeaseState::Bound),
            "ACKed lease {mac} -> {ip} lost by kill -9"
        );
    }
    // After a restart, the clients get their addresses back (INIT-REBOOT), and a new client
    // gets none of them.
    let _srv = start_server(&topo.srv, &cfg, dir.path());
    let sample: Vec<_> = acked
        .iter()
        .step_by((acked.len() / 10).max(1))
        .copied()
        .collect();
    let all: Vec<Ipv4Addr> = acked.iter().map(|a| a.1).collect();
    in_netns(&topo.cli, move || {
        let s = client_socket();
        for (m, ip) in sample {
            let mut q = ClientMessage::new(ClientKind::Plain, MessageType::Request, m);
            q.requested_ip = Some(ip);
            let r = exchange(&s, &q, BCAST, Duration::from_secs(2)).expect("answer after restart");
            assert_eq!((r.msg_type, r.yiaddr), (Some(MessageType::Ack), ip));
        }
        let d = ClientMessage::new(ClientKind::Plain, MessageType::Discover, mac(900_000));
        let offer = exchange(&s, &d, BCAST, Duration::from_secs(2)).expect("offer after restart");
        assert!(
            !all.contains(&offer.yiaddr),
            "{} was already leased",
            offer.yiaddr
        );
    });
}

#[test]
fn dnsmasq_with_our_snippet_answers_like_chainboot() {
    require(&["ip", "dnsmasq"]);
    let settings = chainboot_dhcp::BootSettings::default();
    let snippet =
        chainboot_dhcp::snippet(chainboot_dhcp::SnippetKind::Dnsmasq, &settings, SERVER_IP);
    let ours = {
        let topo = Topology::new("cbdhcp", None);
        let dir = tempfile::tempdir().unwrap();
        let _srv = start_server(&topo.srv, &server_config("server"), dir.path());
        in_netns(&topo.cli, offers_for_matrix)
    };
    let theirs = {
        let topo = Topology::new("cbdhcp", None);
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("chainboot.conf");
        std::fs::write(&conf, &snippet).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &topo.srv,
                "dnsmasq",
                "--no-daemon",
                "--port=0",
                "--user=root",
                "--bind-interfaces",
                "--interface=vs",
                "--no-ping",
                "--dhcp-range=198.18.1.1,198.18.8.254,255.255.240.0,1h",
            ])
            .arg(format!("--conf-file={}", conf.display()))
            .arg(format!(
                "--dhcp-leasefile={}",
                dir.path().join("leases").display()
            ))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let _dnsmasq = Proc(child);
        std::thread::sleep(Duration::from_millis(500));
        in_netns(&topo.cli, offers_for_matrix)
    };
    for ((name, a), (_, b)) in ours.iter().zip(&theirs) {
        assert_eq!(
            a, b,
            "{name}: chainboot vs dnsmasq with the snippet:\n{snippet}"
        );
    }
}

/// (kind, (file, siaddr, vendor class)) of the OFFER each matrix client gets.
#[allow(clippy::type_complexity)]
fn offers_for_matrix() -> Vec<(&'static str, Option<(String, Ipv4Addr, Option<String>)>)> {
    let s = client_socket();
    ClientKind::matrix()
        .into_iter()
        .enumerate()
        .map(|(i, (name, kind))| {
            let m = ClientMessage::new(kind, MessageType::Discover, mac(500 + i as u32));
            let r = exchange(&s, &m, BCAST, Duration::from_secs(2));
            // The boot file may travel in the BOOTP field or in option 67 (dnsmasq uses 67
            // when the client asked for it).
            (
                name,
                r.map(|r| {
                    let file = if r.file.is_empty() {
                        r.opt_str(67).unwrap_or_default()
                    } else {
                        r.file.clone()
                    };
                    (
                        file.trim_end_matches('\0').to_string(),
                        r.siaddr,
                        r.opt_str(60).filter(|v| v == "HTTPClient"),
                    )
                }),
            )
        })
        .collect()
}

#[test]
fn multi_homed_server_answers_each_link_with_its_own_address() {
    require(&["ip"]);
    // One more link on the same server namespace: vs2 198.19.2.1/24 <-> a second client
    // namespace whose interface is also called vc.
    let topo = Topology::new("cbdhcp", None);
    let cli2 = Netns(format!("{}2", topo.cli));
    run(&["ip", "netns", "add", &cli2.0]);
    run(&[
        "ip", "-n", &topo.srv, "link", "add", "vs2", "type", "veth", "peer", "name", "vc", "netns",
        &cli2.0,
    ]);
    run(&[
        "ip",
        "-n",
        &topo.srv,
        "addr",
        "add",
        "198.19.2.1/24",
        "dev",
        "vs2",
    ]);
    run(&["ip", "-n", &topo.srv, "link", "set", "vs2", "up"]);
    run(&["ip", "-n", &cli2.0, "link", "set", "vc", "up"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = r#"
[dhcp]
mode = "server"
[[dhcp.subnet]]
cidr = "198.18.0.0/20"
pools = [["198.18.1.1", "198.18.1.254"]]
[[dhcp.subnet]]
cidr = "198.19.2.0/24"
pools = [["198.19.2.100", "198.19.2.200"]]
"#;
    let _srv = start_server(&topo.srv, cfg, dir.path());
    let ask = |ns: &str, server: Ipv4Addr| {
        in_netns(ns, move || {
            let s = client_socket();
            let kind = ClientKind::Ipxe {
                arch: 7,
                http: true,
                user_class: true,
            };
            let m = ClientMessage::new(kind, MessageType::Discover, mac(77));
            let r = exchange(&s, &m, BCAST, Duration::from_secs(2)).expect("offer");
            assert_eq!(
                r.opt_ip(54),
                Some(server),
                "server id of the ingress interface"
            );
            assert_eq!(r.siaddr, server);
            assert_eq!(
                r.file,
                format!("http://{server}/boot.ipxe"),
                "advertised address = ingress address"
            );
            r.yiaddr
        })
    };
    let a = ask(&topo.cli, SERVER_IP);
    let b = ask(&cli2.0, Ipv4Addr::new(198, 19, 2, 1));
    assert!(
        a.octets()[2] == 1 && b.octets()[2] == 2,
        "each link gets its own subnet: {a} {b}"
    );
}
