//! The systemd readiness protocol (Type=notify), spoken to a datagram socket of the test's own
//! as systemd's would be: READY=1 once every listener is bound, STOPPING=1 on SIGTERM.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test
mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{chainboot_bin, loopback_config, Server};

#[test]
fn serve_tells_the_service_manager_when_it_is_ready_and_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let (conf, _) = loopback_config(dir.path(), "");
    let log = dir.path().join("serve.log");
    let child = Command::new(chainboot_bin())
        .args(["serve", "--config"])
        .arg(&conf)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut server = Server::adopt(child, log);
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("a notification within 60 s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    // Ready means listening: the log says so for both listeners already.
    let log = server.log_text();
    assert!(log.contains("TFTP listening"), "{log}");
    assert!(log.contains("HTTP listening"), "{log}");
    server.signal("TERM");
    let n = sock.recv(&mut buf).expect("STOPPING within 60 s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "STOPPING=1"), "{msg}");
    assert!(server.wait_exit(Duration::from_secs(30)).is_some());
}
