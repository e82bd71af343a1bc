//! What the namespace tests of this crate share: the server process and the firmware-like
//! client's socket, on top of `chainboot_testnet` (the two-namespace topology, a thread inside a
//! namespace, processes killed by PID on drop; network safety is its job).
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chainboot_dhcp::client::{ClientMessage, ReplyView};
// Each test file uses a different part of these too.
#[allow(unused_imports)]
pub use chainboot_testnet::{in_netns, require, run, Netns, Proc, Topology};

pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const BCAST: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
pub const TESTD: &str = env!("CARGO_BIN_EXE_chainboot-dhcp-testd");

/// Starts the test server in `ns` with `config` (written to `dir`, state under `dir/state`)
/// and waits for its "ready".
pub fn start_server(ns: &str, config: &str, dir: &Path) -> Proc {
    let cfg = dir.join("dhcp.toml");
    std::fs::write(&cfg, config).unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, TESTD])
        .arg(&cfg)
        .arg(dir.join("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
    assert_eq!(line.trim(), "ready", "server did not start");
    Proc(child)
}

/// The firmware-like client's socket: port 68 on `vc`, broadcast allowed.
pub fn client_socket() -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_broadcast(true).unwrap();
    s.bind_device(Some(b"vc")).unwrap();
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into())
        .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s.into()
}

/// Sends `m` to `to` and waits up to `wait` for the reply with its xid.
pub fn exchange(
    s: &UdpSocket,
    m: &ClientMessage,
    to: SocketAddrV4,
    wait: Duration,
) -> Option<ReplyView> {
    s.send_to(&m.encode(), to).unwrap();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            if let Some(r) = ReplyView::parse(&buf[..n]) {
                if r.xid == m.xid {
                    return Some(r);
                }
            }
        }
    }
    None
}

/// A locally administered-looking test MAC (QEMU's prefix) numbered `i`.
pub fn mac(i: u32) -> [u8; 6] {
    let b = i.to_be_bytes();
    [0x52, 0x54, 0x00, b[1], b[2], b[3]]
}

/// perfdhcp in the client namespace as a relay on `vc` (giaddr = vc's address), bounded by
/// `timeout` seconds, against the server at 198.18.0.1; `args` are the rate, count and wait
/// options of the test.
pub fn perfdhcp(ns: &str, timeout: u32, args: &[&str]) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.arg(timeout.to_string())
        .args(["ip", "netns", "exec", ns, "perfdhcp", "-4", "-l", "vc"])
        .args(args)
        .arg("198.18.0.1");
    cmd
}
