//! The dashboard in a real browser: headless Chromium driven by Playwright
//! (tests/browser/dashboard.mjs). After a simulated boot the page must show the machine and its
//! timeline, and a profile change made through the page must reach the API. The screenshot is
//! kept in the CI artifacts folder (target/ci-artifacts/dashboard.png).
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn the_dashboard_shows_a_boot_and_changes_a_profile() {
    let browser_dir = repo().join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed in tests/browser (bash .ci/install-deps does it)"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is not installed (bash .ci/install-deps does it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = loopback_config(dir.path(), "");
    let mut server = Server::start_in(None, &cfg, dir.path().join("log"));
    let http = server.listening("HTTP");
    let api = server.listening("API");
    let tftp = server.listening("TFTP");
    let mac = "52:54:00:00:20:01";
    // A boot: iPXE's script, the first stage over TFTP, the kernel over HTTP.
    let curl = |url: &str| {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "10", url])
            .output()
            .unwrap();
        assert!(out.status.success(), "{url}");
    };
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
    let artifacts = std::env::var("CI_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("target/ci-artifacts"));
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("dashboard.png");
    let out = Command::new("node")
        .current_dir(&browser_dir)
        .args([
            "dashboard.mjs",
            &format!("http://{api}"),
            token.trim(),
            mac,
            "rescue",
        ])
        .arg(&shot)
        .stdin(Stdio::null())
        .output()
        .expect("node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
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

fn tftp_fetch(addr: &str, file: &str) {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let st = Command::new("tftp")
        .args([host, port, "-m", "binary", "-c", "get", file, "/dev/null"])
        .status()
        .unwrap();
    assert!(st.success());
}
