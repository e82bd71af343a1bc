//! The config file and the state files as an attacker or a mistake could leave them: a FIFO,
//! a device or a directory given as the config is refused at once by `check` and by a SIGHUP
//! reload (the running config stays, and signals keep being handled); the state directory, the
//! SQLite files and the API token are private (0700 / 0600) even when an older install left
//! them readable.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Runs the binary with a deadline (a config read that blocks must fail the test, not hang
/// it); returns its exit code and output.
fn chainboot_bounded(args: &[&str], limit: Duration) -> (i32, String) {
    let mut child = Command::new(chainboot_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chainboot {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn mkfifo(path: &Path) {
    let st = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(st.success(), "mkfifo {}", path.display());
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// `/healthz` on the management (API) listener.
fn healthz(api: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", &format!("http://{api}/healthz")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn check_refuses_a_fifo_a_device_and_a_directory_as_config_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.toml");
    mkfifo(&fifo);
    let cases = [
        (fifo.to_str().unwrap(), "a FIFO"),
        ("/dev/zero", "a character device"),
        (dir.path().to_str().unwrap(), "a directory"),
    ];
    for (path, what) in cases {
        let (code, out) = chainboot_bounded(&["check", "--config", path], Duration::from_secs(20));
        assert_eq!(code, 1, "{path}: {out}");
        assert!(
            out.contains(what) && out.contains("a config must be a regular file"),
            "{path}: {out}"
        );
    }
}

#[test]
fn sighup_with_a_fifo_or_dev_zero_as_config_keeps_the_running_config() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = loopback_config(dir.path(), "");
    let good = std::fs::read_to_string(&cfg).unwrap();
    let mut server = Server::start_in(None, &cfg, dir.path().join("log"));
    let api = server.listening("API");
    assert_eq!(healthz(&api), "ok");

    // The config path becomes a FIFO nobody writes to: a blocking read would hang forever.
    std::fs::remove_file(&cfg).unwrap();
    mkfifo(&cfg);
    server.signal("HUP");
    server.wait_for_log(
        "a FIFO; a config must be a regular file",
        Duration::from_secs(10),
    );
    assert_eq!(healthz(&api), "ok");

    // A device that never ends.
    std::fs::remove_file(&cfg).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &cfg).unwrap();
    server.signal("HUP");
    server.wait_for_log(
        "a character device; a config must be a regular file",
        Duration::from_secs(10),
    );
    assert_eq!(healthz(&api), "ok");

    // The running config stayed: a real change is still a change against it, and is live.
    std::fs::remove_file(&cfg).unwrap();
    std::fs::write(&cfg, good.replace("console=ttyS0", "console=ttyS1")).unwrap();
    server.signal("HUP");
    server.wait_for_log("config reloaded", Duration::from_secs(10));
    assert!(server.log_text().contains("profile"));
    assert_eq!(
        server
            .log_text()
            .matches("still serving the previous config")
            .count(),
        2
    );

    // Signals are still handled promptly.
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(15));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

#[test]
fn state_dir_database_and_token_are_private_even_when_left_readable() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = loopback_config(dir.path(), "");
    // What an older version left: a 0755 state_dir and a 0644 token.
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let token = state.join("api.token");
    std::fs::write(&token, "0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();

    let mut server = Server::start_in(None, &cfg, dir.path().join("log"));
    let api = server.listening("API");
    assert_eq!(healthz(&api), "ok");
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&token), 0o600);
    for name in [
        "chainboot.sqlite3",
        "chainboot.sqlite3-wal",
        "chainboot.sqlite3-shm",
    ] {
        let p = state.join(name);
        assert!(p.exists(), "{name} missing");
        assert_eq!(mode(&p), 0o600, "{name}");
    }
    let log = server.log_text();
    assert!(
        log.matches("permissions tightened").count() >= 2,
        "no log line for the tightening:\n{log}"
    );

    // A fresh state_dir is created private.
    let dir2 = tempfile::tempdir().unwrap();
    let (cfg2, _) = loopback_config(dir2.path(), "");
    let mut server2 = Server::start_in(None, &cfg2, dir2.path().join("log"));
    let api2 = server2.listening("API");
    assert_eq!(healthz(&api2), "ok");
    let state2 = dir2.path().join("state");
    assert_eq!(mode(&state2), 0o700);
    assert_eq!(mode(&state2.join("api.token")), 0o600);
    assert_eq!(mode(&state2.join("chainboot.sqlite3")), 0o600);
    assert!(!server2.log_text().contains("permissions tightened"));
}
