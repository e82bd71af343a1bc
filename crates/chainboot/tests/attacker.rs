//! An attacker on the boot network, against the binary: a server namespace with a bridge, a
//! victim and an attacker namespace on it (198.18.31.0/24, each with its own MAC). The config
//! has an install profile with a per-machine preseed (the machine's secret in it) for a
//! boot-once rack, and a "wipe" profile for machines whose hostname matches `scrap-*`.
//!
//! The attacker names the victim's MAC in every way a URL allows and is refused each time with
//! a reason; the victim's record, boot-once state and decision stay as they were, and the
//! victim still boots what it should. The operator's API is not on the boot listener at all.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

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
    fn new() -> Segment {
        let id = std::process::id();
        let seg = Segment {
            server: format!("cb-atk-s-{id}"),
            victim: format!("cb-atk-v-{id}"),
            attacker: format!("cb-atk-a-{id}"),
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
    let seg = Segment::new();
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
