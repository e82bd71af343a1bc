//! chainboot answers IPv6 router solicitations with an empty advertisement (so that iPXE stops
//! waiting for IPv6), and in `auto` mode goes quiet on a link where a real router is heard.
//! Real peers: `rdisc6` (ndisc6) soliciting, `radvd` as the real router; inside namespaces.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn config(dir: &std::path::Path, mode: &str) -> std::path::PathBuf {
    let path = dir.join("chainboot.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\ninterfaces = [\"srv0\"]\nstate_dir = \"{}\"\n[ipv6]\nrouter_advertisements = \"{mode}\"\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    path
}

fn solicit(ns: &str) -> String {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "rdisc6", "-1", "-r", "2", "-w", "1500", "cli0",
        ])
        .output()
        .expect("rdisc6");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_solicitation_gets_an_advertisement_with_nothing_in_it() {
    require_root_and(&["ip", "rdisc6"]);
    let net = NetPair::new("ra1", 20);
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(
        Some(&net.server),
        &config(dir.path(), "auto"),
        dir.path().join("log"),
    );
    server.wait_for_log(
        "answering IPv6 router solicitations",
        Duration::from_secs(20),
    );
    let answer = solicit(&net.client);
    assert!(
        answer.contains("Router lifetime           :            0 "),
        "{answer}"
    );
    assert!(
        answer.contains("Stateful address conf.    :           No"),
        "{answer}"
    );
    assert!(
        answer.contains("Stateful other conf.      :           No"),
        "{answer}"
    );
    assert!(
        !answer.contains("Prefix"),
        "no prefix may be advertised: {answer}"
    );
}

#[test]
fn with_dhcpv6_handing_out_addresses_the_advertisement_says_m_o_and_the_prefix_on_link() {
    require_root_and(&["ip", "rdisc6"]);
    let net = NetPair::new("ra4", 25);
    sh(&format!(
        "ip -n {} addr add 2001:db8:22::1/64 dev srv0 nodad",
        net.server
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "auto");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(
        "router_lifetime = \"30m\"\n[dhcp6]\nmode = \"server\"\nports = { server = 10547, client = 10546 }\n\
         [[dhcp6.subnet]]\nprefix = \"2001:db8:22::/64\"\npools = [[\"2001:db8:22::100\", \"2001:db8:22::1ff\"]]\n",
    );
    std::fs::write(&path, text).unwrap();
    let mut server = Server::start_in(Some(&net.server), &path, dir.path().join("log"));
    server.wait_for_log("M and O set", Duration::from_secs(20));
    // rdisc6 aligns its columns: compare with single spaces.
    let answer = solicit(&net.client);
    let words = answer.split_whitespace().collect::<Vec<_>>().join(" ");
    for line in [
        "Stateful address conf. : Yes",
        "Stateful other conf. : Yes",
        "Router lifetime : 1800 ",
        "Prefix : 2001:db8:22::/64 On-link : Yes Autonomous address conf.: No",
    ] {
        assert!(words.contains(line), "{line} in: {answer}");
    }
}

#[test]
fn auto_goes_quiet_when_a_real_router_is_heard_and_off_sends_nothing() {
    require_root_and(&["ip", "rdisc6", "radvd"]);
    let net = NetPair::new("ra2", 21);
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(
        Some(&net.server),
        &config(dir.path(), "auto"),
        dir.path().join("log"),
    );
    server.wait_for_log(
        "answering IPv6 router solicitations",
        Duration::from_secs(20),
    );
    // A real router on the client side of the link: default lifetime 1800 s, no prefix.
    let radvd_conf = dir.path().join("radvd.conf");
    std::fs::write(
        &radvd_conf,
        "interface cli0 {\n AdvSendAdvert on;\n AdvDefaultLifetime 1800;\n MinRtrAdvInterval 3;\n MaxRtrAdvInterval 4;\n};\n",
    )
    .unwrap();
    sh(&format!(
        "ip netns exec {} sysctl -qw net.ipv6.conf.all.forwarding=1",
        net.client
    ));
    let mut radvd = Command::new("ip")
        .args(["netns", "exec", &net.client, "radvd", "-n", "-C"])
        .arg(&radvd_conf)
        .args([
            "-p",
            &dir.path().join("radvd.pid").to_string_lossy(),
            "-m",
            "stderr",
        ])
        .spawn()
        .expect("radvd");
    server.wait_for_log("an IPv6 router is on this link", Duration::from_secs(20));
    let _ = radvd.kill();
    let _ = radvd.wait();
    let answer = solicit(&net.client);
    assert!(
        !answer.contains("Router lifetime"),
        "auto must stay quiet: {answer}"
    );

    drop(server);
    let dir2 = tempfile::tempdir().unwrap();
    let mut off = Server::start_in(
        Some(&net.server),
        &config(dir2.path(), "off"),
        dir2.path().join("log"),
    );
    off.wait_for_log("chainboot starting", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    let answer = solicit(&net.client);
    assert!(
        !answer.contains("Router lifetime"),
        "off must send nothing: {answer}"
    );
}

#[test]
fn ipv6_disabled_on_the_boot_interface_is_said_at_start_in_check_and_in_healthz() {
    require_root_and(&["ip", "curl"]);
    let net = NetPair::new("ra3", 22);
    sh(&format!(
        "ip netns exec {} sysctl -qw net.ipv6.conf.srv0.disable_ipv6=1",
        net.server
    ));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "auto");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "{text}[http]\nlisten = \"{}:0\"\n[api]\nlisten = \"127.0.0.1:0\"\n",
            net.server_ip
        ),
    )
    .unwrap();
    let mut server = Server::start_in(Some(&net.server), &cfg, dir.path().join("log"));
    server.listening("HTTP");
    // /healthz is on the management listener (loopback inside the namespace).
    let api = server.listening("API");
    server.wait_for_log("IPv6 is off on srv0", Duration::from_secs(20));
    let log = server.log_text();
    assert!(log.contains("net.ipv6.conf.srv0.disable_ipv6 = 1"), "{log}");
    assert!(
        !log.contains("answering IPv6 router solicitations"),
        "claims to answer on an interface without IPv6:\n{log}"
    );
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.server,
            "curl",
            "-sS",
            "--max-time",
            "5",
        ])
        .arg(format!("http://{api}/healthz"))
        .output()
        .expect("curl");
    let health = String::from_utf8_lossy(&out.stdout);
    assert!(health.starts_with("ok\n"), "{health}");
    assert!(
        health.contains("warning: IPv6 is off on srv0 (net.ipv6.conf.srv0.disable_ipv6 = 1)"),
        "{health}"
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &net.server])
        .arg(chainboot_bin())
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .expect("chainboot check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("warning: IPv6 is off on srv0 (net.ipv6.conf.srv0.disable_ipv6 = 1)"),
        "{text}"
    );
    // IPv6 back on: healthz says nothing more.
    sh(&format!(
        "ip netns exec {} sysctl -qw net.ipv6.conf.srv0.disable_ipv6=0",
        net.server
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut health = String::new();
    while std::time::Instant::now() < deadline {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &net.server,
                "curl",
                "-sS",
                "--max-time",
                "5",
            ])
            .arg(format!("http://{api}/healthz"))
            .output()
            .expect("curl");
        health = String::from_utf8_lossy(&out.stdout).into_owned();
        if health == "ok\n" {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(health, "ok\n");
}
