//! `chainboot init` and `chainboot doctor` on real networks: a server namespace and a client
//! namespace joined by a veth pair (198.18.<n>.0/24), with and without dnsmasq answering DHCP
//! on the client side, with IPv6 disabled, with a port taken, behind an nftables drop policy.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test
mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use chainboot_testnet::Proc;
use common::{chainboot_bin, require_root_and, sh, udhcpc_lease, NetPair, Server};

/// `chainboot ARGS` inside `ns` (no terminal: never interactive).
fn chainboot_in(ns: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(chainboot_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run chainboot")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// dnsmasq as the segment's ordinary DHCP server, on the client side of `net`.
fn dnsmasq(net: &NetPair, n: u8, dir: &Path) -> Proc {
    let conf = dir.join("dnsmasq.conf");
    std::fs::write(
        &conf,
        format!(
            "port=0\ninterface=cli0\nbind-interfaces\nuser=root\npid-file=\nlog-dhcp\n\
             dhcp-leasefile={}\ndhcp-range=198.18.{n}.100,198.18.{n}.150,255.255.255.0,1h\n",
            dir.join("leases").display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("dnsmasq.log")).unwrap();
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.client,
            "dnsmasq",
            "--keep-in-foreground",
        ])
        .arg("--log-facility=-")
        .arg(format!("--conf-file={}", conf.display()))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("dnsmasq");
    let p = Proc(child);
    wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(dir.join("dnsmasq.log")).is_ok_and(|l| l.contains("DHCP, IP range"))
    });
    p
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("condition not met within {timeout:?}");
}

fn discovers_heard(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("dnsmasq.log"))
        .unwrap_or_default()
        .matches("DHCPDISCOVER(cli0)")
        .count()
}

fn init_in(net: &NetPair, dir: &Path, extra: &[&str]) -> (Output, String) {
    let conf = dir.join("chainboot.toml");
    let state = dir.join("state");
    let mut args = vec![
        "init",
        "--config",
        conf.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = chainboot_in(&net.server, &args);
    let written = std::fs::read_to_string(&conf).unwrap_or_default();
    (out, written)
}

fn check_passes(net: &NetPair, conf: &Path) {
    let out = chainboot_in(&net.server, &["check", "--config", conf.to_str().unwrap()]);
    assert!(out.status.success(), "check failed:\n{}", text(&out));
}

#[test]
fn init_suggests_proxy_mode_when_a_dhcp_server_answers() {
    require_root_and(&["ip", "dnsmasq"]);
    let dir = tempfile::tempdir().unwrap();
    let net = NetPair::new("initpx", 31);
    let _dnsmasq = dnsmasq(&net, 31, dir.path());
    let (out, conf) = init_in(&net, dir.path(), &["--interface", "srv0"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(conf.contains("mode = \"proxy\""), "{conf}");
    assert!(conf.contains("interfaces = [\"srv0\"]"), "{conf}");
    assert!(
        conf.contains("heard on srv0: DHCP server 198.18.31.2 offered 198.18.31.1"),
        "{conf}"
    );
    assert!(!conf.contains("[[dhcp.subnet]]"), "{conf}");
    assert_eq!(discovers_heard(dir.path()), 1, "exactly one probe");
    check_passes(&net, &dir.path().join("chainboot.toml"));
}

#[test]
fn init_suggests_server_mode_with_a_pool_that_serves_when_nothing_answers() {
    require_root_and(&["ip", "busybox"]);
    let dir = tempfile::tempdir().unwrap();
    let net = NetPair::new("initsv", 32);
    let (out, conf) = init_in(
        &net,
        dir.path(),
        &["--interface", "srv0", "--probe-wait", "1s"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(conf.contains("mode = \"server\""), "{conf}");
    assert!(conf.contains("cidr = \"198.18.32.0/24\""), "{conf}");
    assert!(
        conf.contains("pools = [[\"198.18.32.128\", \"198.18.32.254\"]]"),
        "{conf}"
    );
    let path = dir.path().join("chainboot.toml");
    check_passes(&net, &path);
    // The suggestion really serves: an ordinary client gets an address from the pool.
    let mut cfg = conf.clone();
    cfg.push_str(
        "\n[api]\nlisten = []\n[http]\nlisten = \"198.18.32.1:80\"\n[tftp]\nlisten = \"198.18.32.1:69\"\n",
    );
    std::fs::write(&path, cfg).unwrap();
    let mut server = Server::start_in(Some(&net.server), &path, dir.path().join("serve.log"));
    server.wait_for_log("DHCP ready", Duration::from_secs(30));
    let ip = udhcpc_lease(&net.client, dir.path(), "");
    let last: u8 = ip
        .strip_prefix("198.18.32.")
        .and_then(|o| o.parse().ok())
        .unwrap_or_else(|| panic!("{ip} is not in 198.18.32.0/24"));
    assert!(
        (128..=254).contains(&last),
        "{ip} is outside the suggested pool"
    );
}

#[test]
fn init_sends_no_probe_on_an_interface_nobody_named() {
    require_root_and(&["ip", "dnsmasq"]);
    let dir = tempfile::tempdir().unwrap();
    let net = NetPair::new("initnp", 33);
    let _dnsmasq = dnsmasq(&net, 33, dir.path());
    let (out, conf) = init_in(&net, dir.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(conf.contains("mode = \"proxy\""), "{conf}");
    assert!(conf.contains("no probe was sent"), "{conf}");
    assert!(conf.contains("# interfaces = "), "{conf}");
    // --no-probe with a named interface sends nothing either.
    std::fs::remove_file(dir.path().join("chainboot.toml")).unwrap();
    let (out, _) = init_in(&net, dir.path(), &["--interface", "srv0", "--no-probe"]);
    assert!(out.status.success(), "{}", text(&out));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(discovers_heard(dir.path()), 0);
}

#[test]
fn init_never_replaces_an_existing_config_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("chainboot.toml");
    std::fs::write(&conf, "# mine\n").unwrap();
    let run = |force: bool| {
        let mut c = Command::new(chainboot_bin());
        c.args(["init", "--no-probe", "--config"]).arg(&conf);
        if force {
            c.arg("--force");
        }
        c.stdin(Stdio::null()).output().unwrap()
    };
    let out = run(false);
    assert!(!out.status.success());
    assert!(text(&out).contains("--force"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "# mine\n");
    let out = run(true);
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::read_to_string(&conf).unwrap().contains("[dhcp]"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("chainboot.toml.bak")).unwrap(),
        "# mine\n"
    );
}

/// A config serving `srv0` in `mode`, its files under `dir`.
fn doctor_config(dir: &Path, mode: &str, n: u8) -> std::path::PathBuf {
    let path = dir.join("doctor.toml");
    let mut s = format!(
        "[server]\ninterfaces = [\"srv0\"]\nstate_dir = \"{}\"\n[dhcp]\nmode = \"{mode}\"\n",
        dir.join("state").display()
    );
    if mode == "server" {
        s.push_str(&format!(
            "[[dhcp.subnet]]\ncidr = \"198.18.{n}.0/24\"\npools = [[\"198.18.{n}.200\", \"198.18.{n}.210\"]]\n"
        ));
    }
    std::fs::write(&path, s).unwrap();
    path
}

fn doctor(net: &NetPair, conf: &Path, extra: &[&str]) -> (Output, String) {
    let mut args = vec!["doctor", "--config", conf.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = chainboot_in(&net.server, &args);
    let t = text(&out);
    (out, t)
}

#[test]
fn doctor_reports_another_dhcp_server_against_server_mode() {
    require_root_and(&["ip", "dnsmasq"]);
    let dir = tempfile::tempdir().unwrap();
    let net = NetPair::new("docdh", 34);
    let _dnsmasq = dnsmasq(&net, 34, dir.path());
    let conf = doctor_config(dir.path(), "server", 34);
    let (out, said) = doctor(&net, &conf, &["--probe", "srv0"]);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("error    on srv0: DHCP server 198.18.34.2 offered 198.18.34.1"),
        "{said}"
    );
    assert!(said.contains("set [dhcp] mode = \"proxy\""), "{said}");
    // Without --probe nothing is sent.
    let before = discovers_heard(dir.path());
    let (_, said) = doctor(&net, &conf, &[]);
    assert!(said.contains("not probed"), "{said}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(discovers_heard(dir.path()), before);
}

#[test]
fn doctor_reports_proxy_mode_with_no_dhcp_server_on_the_segment() {
    require_root_and(&["ip"]);
    let dir = tempfile::tempdir().unwrap();
    let net = NetPair::new("docnd", 35);
    let conf = doctor_config(dir.path(), "proxy", 35);
    let (out, said) = doctor(&net, &conf, &["--probe", "srv0", "--probe-wait", "1s"]);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("error    no DHCP server answered on srv0"),
        "{said}"
    );
    assert!(
        said.contains("fix: nothing gives the machines an address"),
        "{said}"
    );
}

#[test]
fn doctor_and_check_report_ipv6_disabled_on_a_boot_interface_with_the_fix() {
    require_root_and(&["ip"]);
    let dir = tempfile::tempdir().unwrap();
    let net = NetPair::new("docv6", 36);
    sh(&format!(
        "ip netns exec {} sysctl -qw net.ipv6.conf.srv0.disable_ipv6=1",
        net.server
    ));
    let conf = doctor_config(dir.path(), "proxy", 36);
    let (_, said) = doctor(&net, &conf, &[]);
    assert!(said.contains("warning  IPv6 is off on srv0"), "{said}");
    assert!(
        said.contains("sysctl -w net.ipv6.conf.srv0.disable_ipv6=0"),
        "{said}"
    );
    let out = chainboot_in(&net.server, &["check", "--config", conf.to_str().unwrap()]);
    assert!(
        text(&out).contains("warning: IPv6 is off on srv0"),
        "{}",
        text(&out)
    );
}

#[test]
fn doctor_and_check_name_the_program_holding_a_port() {
    require_root_and(&["ip", "python3"]);
    let dir = tempfile::tempdir().unwrap();
    let net = NetPair::new("docpt", 37);
    let holder = Command::new("ip")
        .args(["netns", "exec", &net.server, "python3", "-c"])
        .arg(
            "import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.bind(('0.0.0.0', 69))\ntime.sleep(120)\n",
        )
        .spawn()
        .expect("python3");
    let holder = Proc(holder);
    let conf = doctor_config(dir.path(), "proxy", 37);
    let want = format!(
        "error    UDP 0.0.0.0:69 (TFTP) is taken by python3 (pid {})",
        holder.0.id()
    );
    let mut said = String::new();
    let mut failed = false;
    wait_until(Duration::from_secs(10), || {
        let (out, s) = doctor(&net, &conf, &[]);
        said = s;
        failed = !out.status.success();
        said.contains(&want)
    });
    assert!(failed, "{said}");
    assert!(said.contains("fix: stop that service"), "{said}");
    let out = chainboot_in(&net.server, &["check", "--config", conf.to_str().unwrap()]);
    assert!(
        text(&out).contains("warning: UDP 0.0.0.0:69 (TFTP) is taken by python3"),
        "{}",
        text(&out)
    );
}

#[test]
fn doctor_reports_a_firewall_that_drops_a_boot_port() {
    require_root_and(&["ip", "nft"]);
    let dir = tempfile::tempdir().unwrap();
    let net = NetPair::new("docfw", 38);
    let rules = dir.path().join("rules.nft");
    std::fs::write(
        &rules,
        "table inet filter {\n chain input {\n  type filter hook input priority 0; policy drop;\n  \
         ct state established,related accept\n  udp dport { 67, 4011 } accept\n  \
         tcp dport 80 accept\n }\n}\n",
    )
    .unwrap();
    sh(&format!(
        "ip netns exec {} nft -f {}",
        net.server,
        rules.display()
    ));
    let conf = doctor_config(dir.path(), "proxy", 38);
    let (out, said) = doctor(&net, &conf, &[]);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("error    the firewall drops UDP 69 (TFTP) on srv0: the drop policy of chain inet filter input"),
        "{said}"
    );
    assert!(
        said.contains("fix: nft insert rule inet filter input udp dport 69 accept"),
        "{said}"
    );
    assert!(!said.contains("drops UDP 67"), "{said}");
    assert!(!said.contains("drops TCP 80"), "{said}");
}

/// `chainboot init` at a terminal (util-linux `script` gives it one) with `answers` typed in.
fn init_at_a_terminal(net: &NetPair, dir: &Path, answers: &str) -> String {
    let conf = dir.join("chainboot.toml");
    let _ = std::fs::remove_file(&conf);
    let cmd = format!(
        "ip netns exec {} {} init --config {} --state-dir {}",
        net.server,
        chainboot_bin().display(),
        conf.display(),
        dir.join("state").display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (util-linux)");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), answers.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    std::fs::read_to_string(&conf).unwrap_or_default()
}

#[test]
fn init_at_a_terminal_probes_only_the_interfaces_named_and_confirmed() {
    require_root_and(&["ip", "dnsmasq", "script"]);
    let dir = tempfile::tempdir().unwrap();
    let net = NetPair::new("inittt", 39);
    let _dnsmasq = dnsmasq(&net, 39, dir.path());
    // Named but not confirmed: no probe.
    let conf = init_at_a_terminal(&net, dir.path(), "srv0\nn\n");
    assert!(conf.contains("interfaces = [\"srv0\"]"), "{conf}");
    assert!(conf.contains("no probe was sent"), "{conf}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(discovers_heard(dir.path()), 0);
    // Named and confirmed: one probe, and dnsmasq's answer decides.
    let conf = init_at_a_terminal(&net, dir.path(), "srv0\n\n");
    assert!(conf.contains("mode = \"proxy\""), "{conf}");
    assert!(
        conf.contains("heard on srv0: DHCP server 198.18.39.2"),
        "{conf}"
    );
    assert_eq!(discovers_heard(dir.path()), 1);
}

#[test]
fn a_firewall_dropping_dhcp_replies_stops_init_and_doctor_from_trusting_silence() {
    require_root_and(&["ip", "nft", "dnsmasq"]);
    let dir = tempfile::tempdir().unwrap();
    let net = NetPair::new("initfw", 40);
    let _dnsmasq = dnsmasq(&net, 40, dir.path());
    let rules = dir.path().join("rules.nft");
    std::fs::write(
        &rules,
        "table inet filter {\n chain input {\n  type filter hook input priority 0; policy drop;\n  \
         udp dport { 67, 69, 4011 } accept\n }\n}\n",
    )
    .unwrap();
    sh(&format!(
        "ip netns exec {} nft -f {}",
        net.server,
        rules.display()
    ));
    let (out, conf) = init_in(&net, dir.path(), &["--interface", "srv0"]);
    assert!(!out.status.success(), "{conf}");
    assert!(
        text(&out).contains("the firewall drops UDP 68 on srv0"),
        "{}",
        text(&out)
    );
    assert!(conf.is_empty(), "nothing written: {conf}");
    let conf = doctor_config(dir.path(), "proxy", 40);
    let (out, said) = doctor(&net, &conf, &["--probe", "srv0"]);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("not probed on srv0: the firewall drops UDP 68"),
        "{said}"
    );
    assert!(
        said.contains("fix: nft insert rule inet filter input udp dport 68 accept"),
        "{said}"
    );
    assert_eq!(
        discovers_heard(dir.path()),
        0,
        "no probe sent into the void"
    );
}
