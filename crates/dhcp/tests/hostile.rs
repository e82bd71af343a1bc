//! Hostile DHCP traffic against the real server process in network namespaces (198.18.0.0/15
//! only, namespaces named with the PID and deleted on every exit path): a starvation flood of
//! 1000 made-up MACs (the PXE test client, one DORA each through a relay address, as dhcpstarv
//! does), then perfdhcp's random MACs, never hold more than `limits.new_client_share` of the
//! pool; a real client (busybox udhcpc) that came back is served all along, and a brand-new one
//! gets the address its return freed.
//!
//! Needs root and the packages from .ci/install-deps; a missing tool fails the test.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chainboot_dhcp::client::{ClientKind, ClientMessage, ReplyView};
use chainboot_dhcp::wire::MessageType;
use chainboot_store::leases::{load_all, LeaseState};

mod common;
use common::*;

const POOL: usize = 200;
/// ceil(0.5 x 200): what unproven clients may hold (the default share).
const CAP: usize = 100;
/// The client namespace's address: the made-up clients' "relay" (giaddr), like perfdhcp's.
const RELAY_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

fn config() -> String {
    // Default limits (share 0.5 of the pool, per-MAC and per-relay rates).
    r#"
[dhcp]
mode = "server"
lease_time = "1h"
[[dhcp.subnet]]
cidr = "198.18.0.0/20"
pools = [["198.18.1.1", "198.18.1.200"]]
router = "198.18.0.1"
"#
    .to_string()
}

fn fake_mac(i: u32) -> [u8; 6] {
    let b = i.to_be_bytes();
    [0x02, 0xfa, b[0], b[1], b[2], b[3]]
}

/// Collects replies on `s` for `wait`, by xid.
fn collect(s: &UdpSocket, wait: Duration, into: &mut HashMap<u32, ReplyView>) {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            if let Some(r) = ReplyView::parse(&buf[..n]) {
                into.insert(r.xid, r);
            }
        }
    }
}

/// A starvation flood from the PXE test client: `k` made-up MACs (firmware PXE DISCOVERs),
/// relayed through RELAY_IP like a relay agent would, in batches of 100; every offer is
/// REQUESTed once, as a starvation tool does, and nothing ever comes back. The ACKed MACs.
fn pxe_flood(ns: &str, k: u32) -> Vec<([u8; 6], Ipv4Addr)> {
    in_netns(ns, move || {
        let s = UdpSocket::bind(SocketAddrV4::new(RELAY_IP, 67)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let to = SocketAddrV4::new(SERVER_IP, 67);
        let msg = |t: MessageType, i: u32| {
            let mut m = ClientMessage::new(ClientKind::Firmware { arch: 7 }, t, fake_mac(i));
            m.xid = i;
            m.giaddr = RELAY_IP;
            m
        };
        let mut acked = Vec::new();
        for batch in 0..k.div_ceil(100) {
            let ids = batch * 100..((batch + 1) * 100).min(k);
            let mut offers = HashMap::new();
            for i in ids.clone() {
                s.send_to(&msg(MessageType::Discover, i).encode(), to)
                    .unwrap();
            }
            collect(&s, Duration::from_millis(300), &mut offers);
            let mut acks = HashMap::new();
            for i in ids {
                if let Some(o) = offers.get(&i) {
                    let mut q = msg(MessageType::Request, i);
                    q.requested_ip = Some(o.yiaddr);
                    q.server_id = Some(SERVER_IP);
                    s.send_to(&q.encode(), to).unwrap();
                }
            }
            collect(&s, Duration::from_millis(300), &mut acks);
            for (i, a) in acks {
                if a.msg_type == Some(MessageType::Ack) {
                    acked.push((fake_mac(i), a.yiaddr));
                }
            }
        }
        acked
    })
}

/// Bound leases in the state_dir whose MAC is not one of `real` (the fake clients' leases).
fn fake_leases(state: &Path, real: &[&str]) -> usize {
    let store = chainboot_store::Store::open(state).unwrap();
    load_all(&store)
        .unwrap()
        .into_iter()
        .filter(|l| l.state == LeaseState::Bound && !real.contains(&l.mac.as_str()))
        .count()
}
/// Runs busybox udhcpc once in the client namespace (`-q`: quit once bound); the bound address.
fn udhcpc(ns: &str, dir: &Path, tries: u32) -> Option<String> {
    let log = dir.join("udhcpc.log");
    let _ = std::fs::remove_file(&log);
    let script = dir.join("udhcpc.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$1\" in bound) echo \"$ip\" >> {};; esac\n",
            log.display()
        ),
    )
    .unwrap();
    run(&["chmod", "+x", script.to_str().unwrap()]);
    let tries = tries.to_string();
    let status = Command::new("timeout")
        .args([
            "60", "ip", "netns", "exec", ns, "busybox", "udhcpc", "-f", "-q", "-n", "-i", "vc",
            "-t", &tries, "-T", "1", "-A", "1", "-s",
        ])
        .arg(&script)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let ip = std::fs::read_to_string(&log).ok()?.trim().to_string();
    (status.success() && !ip.is_empty()).then_some(ip)
}

#[test]
fn fake_mac_floods_hold_at_most_the_share_and_real_clients_are_served() {
    require(&["ip", "perfdhcp", "busybox", "timeout"]);
    let topo = Topology::new("cbdhcp", Some("198.18.0.2/20"));
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("dhcp.toml");
    std::fs::write(&cfg, config()).unwrap();
    let state = dir.path().join("state");
    let errlog = dir.path().join("server.err");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &topo.srv, TESTD])
        .arg(&cfg)
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&errlog).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let srv = Proc(child);
    let mut line = String::new();
    let _ = BufReader::new(stdout).read_line(&mut line);
    assert_eq!(line.trim(), "ready", "server did not start");
    let real_a = "02:00:5e:10:00:0a";
    let real_b = "02:00:5e:10:00:0b";
    let real_c = "02:00:5e:10:00:0c";
    let set_mac = |m: &str| run(&["ip", "-n", &topo.cli, "link", "set", "vc", "address", m]);

    // A real client gets a lease before the flood (unproven yet: it counts against the share).
    set_mac(real_a);
    let mine = udhcpc(&topo.cli, dir.path(), 5).expect("udhcpc lease before the flood");

    // 1000 made-up MACs, five times the pool: they get the share minus udhcpc's lease.
    let acked = pxe_flood(&topo.cli, 1000);
    let distinct: HashSet<_> = acked.iter().map(|(m, _)| *m).collect();
    assert_eq!(distinct.len(), acked.len());
    assert!(acked.len() < CAP, "the flood got {} ACKs", acked.len());
    assert!(
        acked.len() > CAP - 10,
        "the flood did not reach the share: {}",
        acked.len()
    );
    let after_pxe = fake_leases(&state, &[real_a]);
    assert_eq!(after_pxe, acked.len(), "stored = ACKed");

    // perfdhcp on top: 3 s of DORA from random MACs at 200/s through the same relay address.
    let flood = perfdhcp(
        &topo.cli,
        30,
        &["-r", "200", "-R", "100000", "-p", "3", "-W", "1000000"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut flood = Proc(flood);
    let deadline = Instant::now() + Duration::from_secs(40);
    while flood.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "perfdhcp did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut text = String::new();
    if let Some(mut o) = flood.0.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut o, &mut text);
    }
    let sent_discovers = text
        .lines()
        .skip_while(|l| !l.contains("DISCOVER-OFFER"))
        .find_map(|l| l.trim().strip_prefix("sent packets: "))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(0);
    assert!(
        sent_discovers > 2 * POOL,
        "the perfdhcp flood was too small to prove anything: {text}"
    );
    // The fake clients' leases never exceed the share (they only grow: leases last an hour,
    // the flooders never release, so the count now is the most they ever held).
    let fakes = fake_leases(&state, &[real_a]);
    assert!(
        fakes < CAP,
        "the floods hold {fakes} of {POOL} addresses (cap {CAP})"
    );

    // The real client comes back: served, same address, and proven from now on.
    let again = udhcpc(&topo.cli, dir.path(), 5).expect("returning udhcpc served after the flood");
    assert_eq!(again, mine, "the returning client keeps its address");

    // Its return freed its slot in the share: one brand-new real client gets it ...
    set_mac(real_b);
    let fresh = udhcpc(&topo.cli, dir.path(), 5).expect("a new client takes the freed slot");
    assert_ne!(fresh, mine);
    // ... and one more is refused: the share is full of clients that never came back (the
    // guard's cost, until the flood's leases expire).
    set_mac(real_c);
    assert_eq!(udhcpc(&topo.cli, dir.path(), 2), None, "the share is full");
    let total_unproven = fake_leases(&state, &[real_a]);
    assert_eq!(
        total_unproven, CAP,
        "fakes + the new client = the share, exactly"
    );

    // Refusals are counted by reason (the server prints its counters on SIGTERM).
    let pid = nix::unistd::Pid::from_raw(srv.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut srv = srv;
    let deadline = Instant::now() + Duration::from_secs(10);
    while srv.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let err = std::fs::read_to_string(&errlog).unwrap();
    let counter = |name: &str| {
        err.lines()
            .find_map(|l| l.strip_prefix(&format!("counter {name} ")))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no counter {name} in:\n{err}"))
    };
    let refused = counter("refused_new_client");
    assert!(
        refused as usize >= 1000 - CAP + sent_discovers / 2,
        "{refused}\n{err}"
    );
    assert!(
        err.contains("dhcp: starvation guard"),
        "the refusal is logged: {err}"
    );
    eprintln!(
        "floods: 1000 PXE-client MACs ({} ACKed) + {sent_discovers} perfdhcp DISCOVERs; \
         {fakes} of {POOL} addresses held by fakes (cap {CAP}); {refused} refused",
        acked.len()
    );
}
