//! The dashboard in a real browser: headless Chromium driven by Playwright
//! (tests/browser/dashboard.mjs). After a simulated boot the page must show the machine and its
//! timeline, and a profile change made through the page must reach the API. The screenshot is
//! kept in the CI artifacts folder (target/ci-artifacts/dashboard.png).
//!
//! A fleet (tests/browser/fleet.mjs): two servers on one throw-away PostgreSQL; the dashboard
//! of the one that did nothing shows both servers live and that the other answered the
//! machine (target/ci-artifacts/dashboard-fleet.png); its `explain` names the server that
//! answers the machine's DHCP.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// tests/browser, with Playwright and Chromium there (a failure names what is missing).
fn browser_dir() -> PathBuf {
    let browser_dir = repo().join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed in tests/browser (bash .ci/install-deps does it)"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is not installed (bash .ci/install-deps does it)"
    );
    browser_dir
}

/// Where a test's screenshot goes: the CI artifacts folder.
fn screenshot(name: &str) -> PathBuf {
    let artifacts = std::env::var("CI_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("target/ci-artifacts"));
    std::fs::create_dir_all(&artifacts).unwrap();
    artifacts.join(name)
}

/// Runs a script of tests/browser with `args`; its stdout and stderr, and whether it passed.
fn run_browser(script: &str, args: &[&str], shot: &std::path::Path) -> (bool, String) {
    let out = Command::new("node")
        .current_dir(browser_dir())
        .arg(script)
        .args(args)
        .arg(shot)
        .stdin(Stdio::null())
        .output()
        .expect("node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn curl_ok(url: &str) {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "10", url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{url}");
}

fn get_json(url: &str) -> serde_json::Value {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", url])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{url}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn the_dashboard_shows_a_boot_and_changes_a_profile() {
    browser_dir();
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = loopback_config(dir.path(), "");
    let mut server = Server::start_in(None, &cfg, dir.path().join("log"));
    let http = server.listening("HTTP");
    let api = server.listening("API");
    let tftp = server.listening("TFTP");
    let mac = "52:54:00:00:20:01";
    // A boot: iPXE's script, the first stage over TFTP, the kernel over HTTP.
    let curl = curl_ok;
    tftp_fetch(&tftp, "undionly.kpxe");
    curl(&format!(
        "http://{http}/ipxe?mac=52-54-00-00-20-01&platform=pcbios&buildarch=i386"
    ));
    tftp_fetch(&tftp, "undionly.kpxe");
    curl(&format!(
        "http://{http}/ipxe?mac=52-54-00-00-20-01&platform=pcbios&buildarch=i386"
    ));
    curl(&format!("http://{http}/files/vmlinuz"));
    let token = std::fs::read_to_string(dir.path().join("state/api.token")).unwrap();
    let shot = screenshot("dashboard.png");
    let base = format!("http://{api}");
    let (ok, text) = run_browser(
        "dashboard.mjs",
        &[&base, token.trim(), mac, "rescue"],
        &shot,
    );
    assert!(
        ok,
        "browser test failed:\n{text}\nserver log:\n{}",
        server.log_text()
    );
    assert!(shot.is_file(), "no screenshot at {}", shot.display());
    println!("dashboard screenshot: {}", shot.display());
    let machine = Command::new("curl")
        .args(["-s", &format!("http://{api}/api/v1/machines/{mac}")])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&machine.stdout).unwrap();
    assert_eq!(v["pinned_profile"], "rescue", "{v}");
}

#[test]
fn the_dashboard_and_explain_of_any_fleet_server_show_the_live_servers_and_who_answers() {
    browser_dir();
    let mut fleet = FleetOfTwo::start();
    let (a, b, dir_b) = (&mut fleet.a, &mut fleet.b, &fleet.dir_b);
    let http_a = a.listening("HTTP");
    let api_b = b.listening("API");
    // A answers the machine's script request; B does nothing for it.
    let mac = "52:54:00:00:20:02";
    curl_ok(&format!(
        "http://{http_a}/ipxe?mac=52-54-00-00-20-02&platform=pcbios&buildarch=i386"
    ));
    // B's API: both servers live, this one B; the machine last answered by A.
    let servers = get_json(&format!("http://{api_b}/api/v1/servers"));
    assert_eq!(servers["this"], "pxe-b", "{servers}");
    let live: Vec<(&str, bool)> = servers["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["live"].as_bool().unwrap()))
        .collect();
    assert_eq!(live, [("pxe-a", true), ("pxe-b", true)], "{servers}");
    let machine = get_json(&format!("http://{api_b}/api/v1/machines/{mac}"));
    assert_eq!(machine["last_server"], "pxe-a", "{machine}");
    // `explain` on B's config names the server that answers the MAC's DHCP, as the engine's
    // own hash of the live servers does.
    use chainboot_dhcp::engine::fleet::{bucket, Fleet};
    let owner = Fleet::new("pxe-b", ["pxe-a".to_string()])
        .owner(bucket(&[0x52, 0x54, 0, 0, 0x20, 2]))
        .to_string();
    let (code, text) = chainboot(&[
        "explain",
        "--config",
        dir_b.path().join("chainboot.toml").to_str().unwrap(),
        "--mac",
        mac,
        "--arch",
        "bios",
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!(
            "fleet: this is pxe-b; live servers pxe-a, pxe-b; the client's hash bucket {} is answered by {owner}",
            bucket(&[0x52, 0x54, 0, 0, 0x20, 2])
        )),
        "{text}"
    );

    let shot = screenshot("dashboard-fleet.png");
    let base = format!("http://{api_b}");
    let (ok, text) = run_browser("fleet.mjs", &[&base, "pxe-b", "pxe-a", mac], &shot);
    assert!(
        ok,
        "browser test failed:\n{text}\nserver A's log:\n{}\nserver B's log:\n{}",
        a.log_text(),
        b.log_text()
    );

    // A dies (kill -9: no goodbye): B lists it as not live once its database sessions are
    // gone (at B's next heartbeat), or at the latest once its heartbeat is older than
    // peer_timeout.
    a.signal("KILL");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let servers = get_json(&format!("http://{api_b}/api/v1/servers"));
        let a_live = servers["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "pxe-a")
            .map(|s| s["live"].clone());
        if a_live == Some(serde_json::Value::Bool(false)) {
            break;
        }
        assert!(Instant::now() < deadline, "pxe-a still live: {servers}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn tftp_fetch(addr: &str, file: &str) {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let st = Command::new("tftp")
        .args([host, port, "-m", "binary", "-c", "get", file, "/dev/null"])
        .status()
        .unwrap();
    assert!(st.success());
}
