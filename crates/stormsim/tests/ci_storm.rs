//! A CI-sized boot storm: 40 simulated machines, all powered on within 2 s, each doing firmware
//! DHCP -> TFTP first stage -> iPXE DHCP -> /boot.ipxe -> /ipxe?mac= -> kernel -> initrd
//! against the real `chainboot serve` (DHCP server mode) in a private namespace pair
//! (198.18.0.0/20). Asserts every machine finished, every byte count matched, and that the
//! server leased one distinct address per machine and saw each machine's script request. No
//! timing assertions.
//!
//! Needs root and `ip`; the chainboot binary is the workspace's `target/<profile>/chainboot`
//! (built by `cargo test --workspace`, or `cargo build -p chainboot`) or `$CHAINBOOT`. A missing
//! piece fails the test with what is missing.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chainboot_testnet::{run, Proc, Topology};

const SIM: &str = env!("CARGO_BIN_EXE_chainboot-stormsim");

fn chainboot_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CHAINBOOT") {
        return PathBuf::from(p);
    }
    // The simulator binary sits in target/<profile>/; chainboot's binary is its sibling.
    let p = Path::new(SIM).with_file_name("chainboot");
    assert!(
        p.is_file(),
        "chainboot binary not found at {} (cargo build -p chainboot, or set CHAINBOOT)",
        p.display()
    );
    p
}

#[test]
fn forty_machines_boot_with_zero_failures() {
    chainboot_testnet::require(&["ip"]);
    let ipxe = Path::new("/usr/lib/ipxe/undionly.kpxe");
    assert!(ipxe.is_file(), "missing {} (package ipxe)", ipxe.display());
    let cb = chainboot_bin();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("http")).unwrap();
    std::fs::create_dir_all(d.join("tftp")).unwrap();
    std::fs::create_dir_all(d.join("state")).unwrap();
    // Distinct, non-trivial contents (lengths not multiples of the TFTP or HTTP chunk sizes).
    let kernel: Vec<u8> = (0..1_048_583u32).map(|i| (i * 31 % 251) as u8).collect();
    let initrd: Vec<u8> = (0..2_097_169u32).map(|i| (i * 17 % 241) as u8).collect();
    std::fs::write(d.join("http/vmlinuz"), &kernel).unwrap();
    std::fs::write(d.join("http/initrd.img"), &initrd).unwrap();
    let conf = format!(
        r#"[server]
interfaces = ["vs"]
advertise = "198.18.0.1"
state_dir = "{dir}/state"
[dhcp]
mode = "server"
[[dhcp.subnet]]
cidr = "198.18.0.0/20"
pools = [["198.18.8.1", "198.18.15.254"]]
router = "198.18.0.1"
lease_time = "1h"
[tftp]
listen = "198.18.0.1:69"
root = "{dir}/tftp"
[http]
listen = "198.18.0.1:80"
root = "{dir}/http"
[ipxe]
dir = "/usr/lib/ipxe"
[ipv6]
router_advertisements = "off"
[[profile]]
name = "storm"
kernel = "vmlinuz"
initrd = ["initrd.img"]
cmdline = "console=ttyS0"
[boot]
default = "storm"
[api]
token_file = "{dir}/state/api.token"
"#,
        dir = d.display()
    );
    std::fs::write(d.join("chainboot.toml"), conf).unwrap();

    // Server 198.18.0.1/20, client 198.18.0.2/20, and the pool 198.18.8.0/21 routed as local
    // on the client side so that each machine binds its leased address.
    let topo = Topology::new("cbstorm", Some("198.18.0.2/20"));
    run(&[
        "ip",
        "-n",
        &topo.cli,
        "route",
        "add",
        "local",
        "198.18.8.0/21",
        "dev",
        "lo",
    ]);
    let log = std::fs::File::create(d.join("chainboot.log")).unwrap();
    let mut server = Proc(
        Command::new("ip")
            .args(["netns", "exec", &topo.srv])
            .arg(&cb)
            .arg("serve")
            .arg("--config")
            .arg(d.join("chainboot.toml"))
            .args(["--log-level", "info"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    // Bounded wait for the HTTP listener (the last one to come up is not guaranteed, so wait
    // for all three sockets).
    let t0 = Instant::now();
    loop {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &topo.srv,
                "ss",
                "-Hlun",
                "sport = :67 or sport = :69",
            ])
            .output()
            .unwrap();
        let udp = String::from_utf8_lossy(&out.stdout).lines().count();
        let out = Command::new("ip")
            .args(["netns", "exec", &topo.srv, "ss", "-Hltn", "sport = :80"])
            .output()
            .unwrap();
        if udp >= 2 && !out.stdout.is_empty() {
            break;
        }
        if let Ok(Some(st)) = server.0.try_wait() {
            panic!(
                "chainboot exited ({st}) before listening:\n{}",
                std::fs::read_to_string(d.join("chainboot.log")).unwrap_or_default()
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "chainboot not listening on 67/69/80 after 20 s:\n{}",
            std::fs::read_to_string(d.join("chainboot.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let per = d.join("per-machine.jsonl");
    let out = Command::new("ip")
        .args(["netns", "exec", &topo.cli])
        .arg(SIM)
        .args([
            "--machines",
            "40",
            "--spread",
            "2",
            "--deadline",
            "240",
            "--iface",
            "vc",
        ])
        .arg("--per-machine")
        .arg(&per)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let log = std::fs::read_to_string(d.join("chainboot.log")).unwrap_or_default();
    assert!(out.status.success(), "simulator failed; server log:\n{log}");
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("storm report: {rep}");
    assert_eq!(rep["machines"], 40, "{rep}");
    assert_eq!(rep["failures"], 0, "{rep}\nserver log:\n{log}");
    assert_eq!(rep["ok"], 40, "{rep}");

    let lines = std::fs::read_to_string(&per).unwrap();
    let mut macs = HashSet::new();
    let mut addrs = HashSet::new();
    let mut kernels = 0;
    for l in lines.lines() {
        let m: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(m["ok"], true, "{m}");
        // Exactly the kernel and the initrd over HTTP (scripts are not counted), and the whole
        // first stage over TFTP (tsize checked by the simulator).
        assert_eq!(
            m["http_bytes"].as_u64(),
            Some((kernel.len() + initrd.len()) as u64),
            "{m}"
        );
        let first = if m["arch"] == 0 {
            std::fs::metadata(ipxe).unwrap().len()
        } else {
            std::fs::metadata("/usr/lib/ipxe/snponly.efi")
                .unwrap()
                .len()
        };
        assert_eq!(m["tftp_bytes"].as_u64(), Some(first), "{m}");
        let stages: Vec<&str> = m["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s[0].as_str().unwrap())
            .collect();
        assert_eq!(
            stages,
            [
                "firmware-dhcp",
                "first-stage",
                "ipxe-dhcp",
                "script0",
                "script1",
                "kernel",
                "initrd"
            ],
            "{m}"
        );
        if m["time_to_kernel"].is_number() {
            kernels += 1;
        }
        macs.insert(m["mac"].as_str().unwrap().to_string());
        assert_eq!(m["firmware_address"], m["address"], "{m}");
        addrs.insert(m["address"].as_str().unwrap().to_string());
    }
    assert_eq!(macs.len(), 40);
    assert_eq!(kernels, 40);

    // Each machine kept one address from firmware to iPXE (same chaddr), all distinct.
    assert_eq!(addrs.len(), 40, "{addrs:?}");
    drop(server);
}
