//! An attacker on the boot network, against the binary: a server namespace with a bridge, a
//! victim and an attacker namespace on it (198.18.31.0/24, each with its own MAC). The config
//! has an install profile with a per-machine preseed (the machine's secret in it) for a
//! boot-once rack, and a "wipe" profile for machines whose hostname matches `scrap-*`.
//!
//! The attacker names the victim's MAC in every way a URL allows and is refused each time with
//! a reason; the victim's record, boot-once state and decision stay as they were, and the
//! victim still boots what it should. The operator's API is not on the boot listener at all.
//!
//! The attacker also names the victim in DHCP (its MAC in chaddr, from its own interface),
//! fetches the unsigned first stage from the address it was given and goes silent, the shape
//! of a Secure Boot refusal: recorded as unproven, the victim's loader unchanged; the victim's
//! own refusal switches it.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chainboot_dhcp::client::{ClientKind, ClientMessage, ReplyView};
use chainboot_dhcp::wire::MessageType;
use common::*;

const VICTIM: &str = "52:54:00:00:77:01";
const ATTACKER: &str = "52:54:00:00:77:66";

/// A bridge in the server namespace with the victim's and the attacker's namespaces on it.
struct Segment {
    server: String,
    victim: String,
    attacker: String,
}

impl Segment {
    /// `tag` keeps the namespaces of this file's tests apart (they run at once, in one process).
    fn new(tag: &str) -> Segment {
        let id = std::process::id();
        let seg = Segment {
            server: format!("cb-{tag}-s-{id}"),
            victim: format!("cb-{tag}-v-{id}"),
            attacker: format!("cb-{tag}-a-{id}"),
        };
        let s = &seg.server;
        sh(&format!(
            "ip netns add {s} && ip -n {s} link set lo up && \
             ip -n {s} link add br0 type bridge && ip -n {s} addr add 198.18.31.1/24 dev br0 && \
             ip -n {s} link set br0 up"
        ));
        for (ns, mac, ip, port) in [
            (&seg.victim, VICTIM, "198.18.31.10", "pv"),
            (&seg.attacker, ATTACKER, "198.18.31.66", "pa"),
        ] {
            sh(&format!(
                "ip netns add {ns} && ip -n {ns} link set lo up && \
                 ip link add {port} netns {s} type veth peer name eth0 netns {ns} && \
                 ip -n {ns} link set eth0 address {mac} && \
                 ip -n {ns} addr add {ip}/24 dev eth0 && ip -n {ns} link set eth0 up && \
                 ip -n {s} link set {port} master br0 && ip -n {s} link set {port} up"
            ));
        }
        seg
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        for ns in [&self.server, &self.victim, &self.attacker] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn config(dir: &Path) -> std::path::PathBuf {
    let www = dir.join("www");
    let tpl = dir.join("templates");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::create_dir_all(tpl.join("wipe")).unwrap();
    std::fs::write(www.join("vmlinuz"), b"kernel").unwrap();
    std::fs::write(www.join("wipe-vmlinuz"), b"wipe kernel").unwrap();
    std::fs::write(
        tpl.join("preseed.cfg"),
        "d-i passwd/root-password password {{ machine.secret }}\n",
    )
    .unwrap();
    std::fs::write(tpl.join("wipe/preseed.cfg"), "wipe everything\n").unwrap();
    let path = dir.join("chainboot.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nstate_dir = \"{state}\"\ninterfaces = [\"br0\"]\n\
             [dhcp]\nmode = \"off\"\n[ipv6]\nrouter_advertisements = \"off\"\n\
             [tftp]\nlisten = \"198.18.31.1:0\"\n\
             [http]\nlisten = \"198.18.31.1:80\"\nroot = \"{www}\"\n\
             [[profile]]\nname = \"debian-install\"\nkernel = \"vmlinuz\"\n\
             cmdline = \"url={{{{ http }}}}/config/{{{{ machine.mac }}}}/preseed.cfg\"\n\
             [[profile]]\nname = \"wipe\"\nkernel = \"wipe-vmlinuz\"\n\
             [[group]]\nname = \"rack1\"\nprofile = \"debian-install\"\nonce = true\n\
             match = {{ mac = [\"52:54:00:00:77:*\"] }}\n\
             [[group]]\nname = \"scrap\"\nprofile = \"wipe\"\n\
             match = {{ mac = [\"52:54:00:*\"], hostname = [\"scrap-*\"] }}\n\
             [boot]\ndefault = \"local-disk\"\ntemplates = \"{tpl}\"\n",
            state = dir.join("state").display(),
            www = www.display(),
            tpl = tpl.display(),
        ),
    )
    .unwrap();
    path
}

/// curl from inside `ns`: (status, body).
fn curl_in(ns: &str, args: &[&str]) -> (String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-s", "--max-time", "5"])
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_string(), body.to_string())
}

fn hyphen(mac: &str) -> String {
    mac.replace(':', "-")
}

#[test]
fn an_attacker_on_the_segment_cannot_steer_read_or_cancel_another_machine() {
    require_root_and(&["ip", "curl"]);
    let seg = Segment::new("atk");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut server = Server::start_in(Some(&seg.server), &cfg, dir.path().join("log"));
    server.wait_for_log("HTTP listening", Duration::from_secs(20));
    let api = server.listening("API");
    let token = std::fs::read_to_string(dir.path().join("state/api.token")).unwrap();
    let auth = format!("Authorization: Bearer {}", token.trim());
    let boot = "http://198.18.31.1";
    let v = hyphen(VICTIM);

    // The victim boots: its script is the install, with a capability in its asset URLs.
    let (code, script) = curl_in(
        &seg.victim,
        &[&format!(
            "{boot}/ipxe?mac={v}&platform=pcbios&buildarch=i386"
        )],
    );
    assert_eq!(code, "200");
    assert!(script.contains("boots profile debian-install"), "{script}");
    assert!(script.contains("/kernel?cap="), "{script}");

    // 1. Steering: facts, menu choices and another machine's config are refused, with the
    // reason on the console.
    for q in [
        "hostname=scrap-1",
        "profile=wipe",
        "hostname=scrap-1&profile=wipe",
    ] {
        let (code, s) = curl_in(&seg.attacker, &[&format!("{boot}/ipxe?mac={v}&{q}")]);
        assert_eq!(code, "200", "iPXE always gets a script");
        assert!(
            s.contains("cannot boot") && s.contains(ATTACKER),
            "{q}: {s}"
        );
        assert!(!s.contains("wipe-vmlinuz"), "{q}: {s}");
    }
    let (code, body) = curl_in(&seg.attacker, &[&format!("{boot}/config/{v}/preseed.cfg")]);
    assert_eq!(code, "403", "{body}");
    assert!(!body.contains("root-password"), "{body}");
    // A capability is bound to its MAC: the attacker's own does not open the victim's files.
    let (_, own) = curl_in(
        &seg.attacker,
        &[&format!(
            "{boot}/ipxe?mac={}&platform=pcbios",
            hyphen(ATTACKER)
        )],
    );
    let cap = own
        .split("?cap=")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .unwrap_or_else(|| panic!("no capability in the attacker's own script: {own}"));
    for path in ["config/{v}/preseed.cfg", "boot/{v}/kernel"] {
        let url = format!("{boot}/{}?cap={cap}", path.replace("{v}", &v));
        assert_eq!(curl_in(&seg.attacker, &[&url]).0, "403", "{url}");
    }

    // 2. Cancelling the install: the kernel fetch that flips boot-once is refused.
    let (code, _) = curl_in(&seg.attacker, &[&format!("{boot}/boot/{v}/kernel")]);
    assert_eq!(code, "403");

    // 3. The operator's API is not on the boot listener; its own listener is loopback only.
    let (code, _) = curl_in(&seg.attacker, &[&format!("{boot}/api/v1/machines")]);
    assert_eq!(code, "404");
    let port = api.rsplit(':').next().unwrap();
    let (code, _) = curl_in(
        &seg.attacker,
        &[&format!("http://198.18.31.1:{port}/api/v1/machines")],
    );
    assert_eq!(
        code, "000",
        "the management listener answered the boot network"
    );

    // 4. Random MACs from the attacker create no machine records.
    for i in 0..50 {
        curl_in(
            &seg.attacker,
            &[&format!(
                "{boot}/ipxe?mac=02-00-00-00-{:02x}-{:02x}",
                i / 256,
                i % 256
            )],
        );
    }

    // The victim's record is untouched and it still boots the install.
    let out = Command::new("ip")
        .args(["netns", "exec", &seg.server, "curl", "-s", "-H", &auth])
        .arg(format!("http://{api}/api/v1/machines"))
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let macs: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["mac"].as_str())
        .collect();
    assert_eq!(
        macs.len(),
        2,
        "only the victim and the attacker itself: {list}"
    );
    let victim = list
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mac"] == VICTIM)
        .unwrap();
    assert_eq!(
        victim["facts"]["hostname"],
        serde_json::Value::Null,
        "{victim}"
    );
    assert_eq!(victim["installed_ms"], serde_json::Value::Null, "{victim}");
    let (_, again) = curl_in(&seg.victim, &[&format!("{boot}/ipxe?mac={v}")]);
    assert!(again.contains("boots profile debian-install"), "{again}");

    // The victim's own installer reads its preseed (with its secret), and its kernel fetch,
    // with the capability from its script, is what flips boot-once.
    let (code, preseed) = curl_in(&seg.victim, &[&format!("{boot}/config/{v}/preseed.cfg")]);
    assert_eq!(code, "200");
    assert!(
        preseed.starts_with("d-i passwd/root-password password "),
        "{preseed}"
    );
    let kernel_url = again
        .split_whitespace()
        .find(|w| w.contains("/kernel?cap="))
        .unwrap()
        .to_string();
    let (code, _) = curl_in(&seg.victim, &["-L", &kernel_url]);
    assert_eq!(code, "200");
    let (_, after) = curl_in(&seg.victim, &[&format!("{boot}/ipxe?mac={v}")]);
    assert!(after.contains("local-disk"), "{after}");

    // Every refusal was counted.
    let out = Command::new("ip")
        .args(["netns", "exec", &seg.server, "curl", "-s", "-H", &auth])
        .arg(format!("http://{api}/metrics"))
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&out.stdout);
    let refused: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("chainboot_refused_identity_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(refused >= 57.0, "refusals counted: {refused}\n{metrics}");
}

/// DHCP server mode on the segment, every UEFI machine on iPXE, and machines whose firmware is
/// seen refusing the unsigned first stage switched to shim -> GRUB.
fn secure_boot_config(dir: &Path) -> std::path::PathBuf {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("vmlinuz"), b"kernel").unwrap();
    let path = dir.join("chainboot.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nstate_dir = \"{state}\"\ninterfaces = [\"br0\"]\n\
             [dhcp]\nmode = \"server\"\n\
             [[dhcp.subnet]]\ncidr = \"198.18.31.0/24\"\npools = [[\"198.18.31.100\", \"198.18.31.150\"]]\n\
             [ipv6]\nrouter_advertisements = \"off\"\n\
             [tftp]\nlisten = \"198.18.31.1:0\"\n\
             [http]\nlisten = \"198.18.31.1:0\"\nroot = \"{www}\"\n\
             [api]\nlisten = \"127.0.0.1:0\"\nread_requires_token = false\n\
             [[profile]]\nname = \"linux\"\nkernel = \"vmlinuz\"\n\
             [boot]\ndefault = \"linux\"\nsecure_boot_fallback = \"grub\"\n",
            state = dir.join("state").display(),
            www = www.display(),
        ),
    )
    .unwrap();
    path
}

/// A DORA from inside `ns` with `mac` in chaddr (whatever the interface's own address), as
/// UEFI x64 PXE firmware asking for broadcast replies: the address it was given and the boot
/// file it was told.
fn dora_as(ns: &str, mac: &str) -> (String, String) {
    let mac: chainboot_machine::Mac = mac.parse().unwrap();
    chainboot_testnet::in_netns(ns, move || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        s.set_broadcast(true).unwrap();
        s.bind_device(Some(b"eth0")).unwrap();
        s.bind(&std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 68).into())
            .unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let s: std::net::UdpSocket = s.into();
        let to = std::net::SocketAddrV4::new(std::net::Ipv4Addr::BROADCAST, 67);
        let exchange = |m: &ClientMessage| -> ReplyView {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let mut buf = [0u8; 1500];
            loop {
                s.send_to(&m.encode(), to).unwrap();
                let wait = std::time::Instant::now() + Duration::from_secs(1);
                while std::time::Instant::now() < wait {
                    if let Ok((n, _)) = s.recv_from(&mut buf) {
                        if let Some(r) = ReplyView::parse(&buf[..n]) {
                            if r.xid == m.xid {
                                return r;
                            }
                        }
                    }
                }
                assert!(std::time::Instant::now() < deadline, "no DHCP answer");
            }
        };
        let kind = ClientKind::Firmware { arch: 7 };
        let offer = exchange(&ClientMessage::new(
            kind.clone(),
            MessageType::Discover,
            mac.0,
        ));
        let mut request = ClientMessage::new(kind, MessageType::Request, mac.0);
        request.requested_ip = Some(offer.yiaddr);
        request.server_id = Some("198.18.31.1".parse().unwrap());
        let ack = exchange(&request);
        assert_eq!(ack.msg_type, Some(MessageType::Ack), "{ack:?}");
        (ack.yiaddr.to_string(), ack.file)
    })
}

/// `ns`'s only address becomes `ip` (firmware uses the address it was given).
fn use_address(ns: &str, ip: &str) {
    sh(&format!(
        "ip -n {ns} addr flush dev eth0 && ip -n {ns} addr add {ip}/24 dev eth0"
    ));
}

fn api_json(ns: &str, api: &str, path: &str) -> serde_json::Value {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-s", "--max-time", "10"])
        .arg(format!("http://{api}{path}"))
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// The victim's `secure-boot-refused` events, once `n` of them are written.
fn refusals(ns: &str, api: &str, n: usize) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = api_json(
            ns,
            api,
            &format!("/api/v1/events?mac={VICTIM}&kind=secure-boot-refused"),
        );
        let list = v.as_array().cloned().unwrap_or_default();
        if list.len() >= n {
            return list;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} refusals expected: {list:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_stranger_fetching_the_first_stage_in_a_victims_name_cannot_switch_its_loader() {
    require_root_and(&["ip", "curl", "busybox", "tftp"]);
    let seg = Segment::new("sbs");
    let dir = tempfile::tempdir().unwrap();
    let cfg = secure_boot_config(dir.path());
    let mut server = Server::start_in(Some(&seg.server), &cfg, dir.path().join("log"));
    let api = server.listening("API");
    let tftp = server.listening("TFTP");
    server.wait_for_log("ready: SIGHUP", Duration::from_secs(20));
    let uefi = "-V PXEClient:Arch:00007:UNDI:003016 -x 0x5d:0007";

    // The victim's firmware asks first: iPXE, like every UEFI machine here.
    let (victim_ip, file) = udhcpc_answer(&seg.victim, dir.path(), "eth0", uefi);
    assert_eq!(file, "snponly.efi");

    // The attacker: DHCP in the victim's name from its own interface, the address it is
    // given (the victim's lease), the unsigned first stage fetched twice and never run, then
    // the victim's name in DHCP again: every step of a refusal, from a stranger.
    let (ip, file) = dora_as(&seg.attacker, VICTIM);
    assert_eq!(
        (ip.as_str(), file.as_str()),
        (victim_ip.as_str(), "snponly.efi")
    );
    use_address(&seg.attacker, &ip);
    assert!(tftp_get_in(&seg.attacker, &tftp, "snponly.efi"));
    assert!(tftp_get_in(&seg.attacker, &tftp, "snponly.efi"));
    dora_as(&seg.attacker, VICTIM);
    let seen = refusals(&seg.server, &api, 1);
    assert_eq!(seen[0]["detail"]["proven"], false, "{seen:#?}");
    let unproven = server.log_text();
    assert!(
        unproven.contains("first stage possibly refused by the firmware, unproven"),
        "{unproven}"
    );
    assert!(
        !unproven.contains("first stage refused by the firmware:"),
        "{unproven}"
    );

    // The victim's next boot is as before, and its record says the refusal is unproven.
    let (_, file) = udhcpc_answer(&seg.victim, dir.path(), "eth0", uefi);
    assert_eq!(
        file, "snponly.efi",
        "a stranger switched the victim's loader"
    );
    let m = api_json(&seg.server, &api, &format!("/api/v1/machines/{VICTIM}"));
    assert_eq!(m["firmware"]["secure_boot"]["proven"], false, "{m:#}");

    // The victim itself refused: the unsigned first stage from its own address, taken again
    // by its next boot option without running it. That switches it to the signed chain.
    use_address(&seg.victim, &victim_ip);
    assert!(tftp_get_in(&seg.victim, &tftp, "snponly.efi"));
    udhcpc_answer(&seg.victim, dir.path(), "eth0", uefi);
    assert!(tftp_get_in(&seg.victim, &tftp, "snponly.efi"));
    let seen = refusals(&seg.server, &api, 2);
    assert_eq!(seen[0]["detail"]["proven"], true, "{seen:#?}");
    server.wait_for_log(
        "first stage refused by the firmware:",
        Duration::from_secs(5),
    );
    let (_, file) = udhcpc_answer(&seg.victim, dir.path(), "eth0", uefi);
    assert_eq!(file, "secureboot/shimx64.efi");
    let m = api_json(&seg.server, &api, &format!("/api/v1/machines/{VICTIM}"));
    assert_eq!(m["firmware"]["secure_boot"]["proven"], true, "{m:#}");
    // The timeline shows the refusal in the boot where it happened.
    let t = api_json(
        &seg.server,
        &api,
        &format!("/api/v1/machines/{VICTIM}/timeline"),
    );
    let text = t.to_string();
    assert!(text.contains("\"secure_boot_refused\""), "{t:#}");
}
