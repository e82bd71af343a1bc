//! chainboot's TFTP server against the real clients of the field: tftp-hpa's `tftp`, `atftp`
//! and `curl`, on 127.0.0.1. Every received file is compared by sha256 with its source.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Runs a client with a deadline, killing it (by its own handle) if it overruns.
fn run(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_bounded(child, limit)
}

fn wait_bounded(mut child: Child, limit: Duration) -> Output {
    let end = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > end {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "client did not finish within {limit:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn tftp_hpa(port: u16, mode: &str, remote: &str, local: &Path) -> Command {
    require("tftp");
    let mut c = Command::new("tftp");
    c.args([
        "-m",
        mode,
        "127.0.0.1",
        &port.to_string(),
        "-c",
        "get",
        remote,
    ])
    .arg(local);
    c
}

fn atftp(port: u16, remote: &str, local: &Path, options: &[String]) -> Command {
    require("atftp");
    let mut c = Command::new("atftp");
    c.args(["-g", "-r", remote, "-l"]).arg(local);
    for o in options {
        c.args(["--option", o]);
    }
    c.args(["127.0.0.1", &port.to_string()]);
    c
}

fn curl(port: u16, remote: &str, local: &Path, blksize: Option<u32>) -> Command {
    require("curl");
    let mut c = Command::new("curl");
    c.args(["-sS", "--path-as-is", "--max-time", "60", "-o"])
        .arg(local);
    if let Some(b) = blksize {
        c.args(["--tftp-blksize", &b.to_string()]);
    }
    c.arg(format!("tftp://127.0.0.1:{port}/{remote}"));
    c
}

/// Sizes around the block boundaries that break naive servers, plus a ~1 MB file.
const SIZES: &[usize] = &[
    0,
    1,
    511,
    512,
    513,
    1024,
    1468 * 3,
    8192 * 2,
    70_123,
    1_000_003,
];

fn files(srv: &TestServer) -> Vec<(String, PathBuf)> {
    SIZES
        .iter()
        .map(|&n| {
            let name = format!("f{n}.bin");
            (name.clone(), srv.file(&name, n))
        })
        .collect()
}

#[test]
fn tftp_hpa_fetches_every_size_intact() {
    let srv = TestServer::start();
    let out = tempfile::tempdir().unwrap();
    for (name, src) in files(&srv) {
        let dst = out.path().join(&name);
        let o = run(
            &mut tftp_hpa(srv.port(), "binary", &name, &dst),
            Duration::from_secs(60),
        );
        assert!(o.status.success(), "{name}: {}", text(&o));
        assert_eq!(sha256(&dst), sha256(&src), "{name}");
    }
    eventually(|| srv.stats.snapshot().finished == SIZES.len() as u64);
    let s = srv.stats.snapshot();
    assert_eq!(s.finished, SIZES.len() as u64);
    assert_eq!(s.failed, 0);
    assert_eq!(s.bytes, SIZES.iter().sum::<usize>() as u64);
}

#[test]
fn tftp_hpa_netascii_gets_the_text_back() {
    let srv = TestServer::start();
    let text_file = "line one\nline two\r\nbare\rcr\n".repeat(500);
    std::fs::write(srv.root.path().join("default"), &text_file).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dst = out.path().join("default");
    let o = run(
        &mut tftp_hpa(srv.port(), "ascii", "default", &dst),
        Duration::from_secs(30),
    );
    assert!(o.status.success(), "{}", text(&o));
    // tftp-hpa converts netascii back to the local convention: exactly the source.
    assert_eq!(std::fs::read(&dst).unwrap(), text_file.as_bytes());
}

#[test]
fn atftp_with_blksize_and_windowsize_fetches_every_size_intact() {
    let srv = TestServer::start();
    let out = tempfile::tempdir().unwrap();
    let option_sets: &[&[&str]] = &[
        &[],
        &["blksize 1468"],
        &["blksize 8192", "tsize 0"],
        &["blksize 1468", "windowsize 16"],
        &["blksize 512", "windowsize 4", "tsize 0"],
        &["blksize 65464", "windowsize 8"],
    ];
    for opts in option_sets {
        let opts: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
        for (name, src) in files(&srv) {
            let dst = out.path().join(&name);
            let _ = std::fs::remove_file(&dst);
            let o = run(
                &mut atftp(srv.port(), &name, &dst, &opts),
                Duration::from_secs(60),
            );
            assert!(o.status.success(), "{name} {opts:?}: {}", text(&o));
            assert_eq!(sha256(&dst), sha256(&src), "{name} {opts:?}");
        }
    }
    assert_eq!(srv.stats.snapshot().failed, 0);
}

#[test]
fn curl_with_tftp_blksize_fetches_every_size_intact() {
    let srv = TestServer::start();
    let out = tempfile::tempdir().unwrap();
    for blksize in [
        None,
        Some(8),
        Some(1024),
        Some(1468),
        Some(8192),
        Some(65464),
    ] {
        // Not the empty file: curl 7.88 treats "tsize 0" in an OACK as an illegal operation
        // (lib/tftp.c, "invalid tsize value in OACK packet") and tftpd-hpa answers the same.
        for (name, src) in files(&srv).into_iter().skip(1) {
            let dst = out.path().join(&name);
            let _ = std::fs::remove_file(&dst);
            let o = run(
                &mut curl(srv.port(), &name, &dst, blksize),
                Duration::from_secs(90),
            );
            assert!(
                o.status.success(),
                "{name} blksize {blksize:?}: {}",
                text(&o)
            );
            assert_eq!(sha256(&dst), sha256(&src), "{name} blksize {blksize:?}");
        }
    }
}

#[test]
fn a_file_over_32_mib_wraps_block_numbers_with_tftp_hpa_and_atftp() {
    let srv = TestServer::start();
    // 65536 blocks of 512 bytes are 32 MiB: past it the block number wraps to 0.
    let src = srv.file("big.img", 33 * 1024 * 1024 + 77);
    let out = tempfile::tempdir().unwrap();
    let dst = out.path().join("hpa");
    let o = run(
        &mut tftp_hpa(srv.port(), "binary", "big.img", &dst),
        Duration::from_secs(180),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(sha256(&dst), sha256(&src));
    let dst = out.path().join("atftp");
    let opts = vec!["blksize 512".to_string(), "windowsize 16".to_string()];
    let o = run(
        &mut atftp(srv.port(), "big.img", &dst, &opts),
        Duration::from_secs(180),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(sha256(&dst), sha256(&src));
}

/// Paths that must never yield a byte from outside the root.
const TRAVERSAL: &[&str] = &[
    "../secret",
    "../../../../etc/passwd",
    "..\\..\\etc\\passwd",
    "sub/../../secret",
    "/etc/passwd",
    "//etc/passwd",
    "\\etc\\passwd",
    "C:\\boot.ini",
    "escape",
    "escdir/secret",
    "ESCAPE",
];

#[test]
fn traversal_corpus_is_refused_to_real_clients() {
    let srv = TestServer::start();
    srv.file("sub/inside", 10);
    let out = tempfile::tempdir().unwrap();
    let dst = out.path().join("x");
    for path in TRAVERSAL {
        let _ = std::fs::remove_file(&dst);
        let o = run(
            &mut tftp_hpa(srv.port(), "binary", path, &dst),
            Duration::from_secs(30),
        );
        let all = text(&o);
        assert!(
            all.contains("Error code 2") || all.contains("Error code 1"),
            "tftp-hpa {path}: {all}"
        );
        assert!(!all.contains("SECRET") && !all.contains("root:"));
        let got = std::fs::read(&dst).unwrap_or_default();
        assert!(got.is_empty(), "tftp-hpa {path}: got {} bytes", got.len());

        let _ = std::fs::remove_file(&dst);
        let o = run(
            &mut curl(srv.port(), path, &dst, None),
            Duration::from_secs(30),
        );
        assert!(!o.status.success(), "curl {path}: {}", text(&o));
        let got = std::fs::read(&dst).unwrap_or_default();
        assert!(got.is_empty(), "curl {path}: got {} bytes", got.len());

        let _ = std::fs::remove_file(&dst);
        let o = run(
            &mut atftp(srv.port(), path, &dst, &[]),
            Duration::from_secs(30),
        );
        assert!(!o.status.success(), "atftp {path}: {}", text(&o));
        let got = std::fs::read(&dst).unwrap_or_default();
        assert!(got.is_empty(), "atftp {path}: got {} bytes", got.len());
    }
    let s = srv.stats.snapshot();
    assert_eq!(s.started, 0, "no traversal path may start a transfer");
    // Every request is accounted for: refused (traversal, escape, drive letter) or, for
    // absolute paths that fold to a name under the root, not found.
    assert_eq!(s.refused + s.not_found, 3 * TRAVERSAL.len() as u64, "{s:?}");
    assert!(s.refused >= 2 * 8, "refusals are counted: {s:?}");
}

#[test]
fn tftp_hpa_put_is_refused() {
    let srv = TestServer::start();
    let out = tempfile::tempdir().unwrap();
    let local = out.path().join("upload");
    std::fs::write(&local, b"data").unwrap();
    require("tftp");
    let o = run(
        Command::new("tftp")
            .args([
                "-m",
                "binary",
                "127.0.0.1",
                &srv.port().to_string(),
                "-c",
                "put",
            ])
            .arg(&local)
            .arg("uploaded"),
        Duration::from_secs(30),
    );
    assert!(text(&o).contains("Error code 2"), "{}", text(&o));
    assert!(!srv.root.path().join("uploaded").exists());
    assert_eq!(srv.stats.snapshot().writes_refused, 1);
}

#[test]
fn two_hundred_concurrent_clients_all_succeed() {
    let srv = TestServer::start();
    let src = srv.file("undionly.kpxe", 70_000);
    let want = sha256(&src);
    let out = tempfile::tempdir().unwrap();
    let mut children = Vec::new();
    for i in 0..200 {
        let dst = out.path().join(format!("c{i}"));
        let mut cmd = match i % 3 {
            0 => tftp_hpa(srv.port(), "binary", "undionly.kpxe", &dst),
            1 => curl(srv.port(), "undionly.kpxe", &dst, Some(1468)),
            _ => atftp(srv.port(), "undionly.kpxe", &dst, &["blksize 1468".into()]),
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        children.push((dst, child));
    }
    for (dst, child) in children {
        let o = wait_bounded(child, Duration::from_secs(120));
        assert!(o.status.success(), "{}: {}", dst.display(), text(&o));
        assert_eq!(sha256(&dst), want, "{}", dst.display());
    }
    eventually(|| srv.stats.snapshot().finished == 200);
    let s = srv.stats.snapshot();
    assert_eq!((s.finished, s.failed, s.busy), (200, 0, 0), "{s:?}");
}
