//! What the namespace tests of this crate share: the two-namespace topology, the server
//! process, a thread inside a namespace, and the firmware-like client's socket.
//!
//! Network safety: namespaces are created here, named with the PID and a counter, use only
//! 198.18.0.0/15 and are deleted on drop (every exit path, panics included); processes are
//! killed by their PID on drop.

// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use chainboot_dhcp::client::{ClientMessage, ReplyView};

pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const BCAST: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
pub const TESTD: &str = env!("CARGO_BIN_EXE_chainboot-dhcp-testd");

/// Fails (never skips) when not root or when a tool is missing: CI installs them all.
pub fn require(tools: &[&str]) {
    assert!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "these tests create network namespaces and must run as root"
    );
    for t in tools {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "required tool `{t}` is missing: run .ci/install-deps"
        );
    }
}

/// Runs a command that must succeed; its stdout.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces joined by veth `vs` (server, 198.18.0.1/20) and `vc` (client, with
/// `client_addr` if given: 198.18.0.2/20 is perfdhcp's relay address), deleted on drop.
pub struct Topology {
    pub srv: String,
    pub cli: String,
}

impl Topology {
    pub fn new(client_addr: Option<&str>) -> Topology {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let id = format!("cbdhcp{}x{n}", std::process::id());
        let t = Topology {
            srv: format!("{id}s"),
            cli: format!("{id}c"),
        };
        run(&["ip", "netns", "add", &t.srv]);
        run(&["ip", "netns", "add", &t.cli]);
        run(&[
            "ip", "-n", &t.srv, "link", "add", "vs", "type", "veth", "peer", "name", "vc", "netns",
            &t.cli,
        ]);
        run(&[
            "ip",
            "-n",
            &t.srv,
            "addr",
            "add",
            "198.18.0.1/20",
            "dev",
            "vs",
        ]);
        if let Some(a) = client_addr {
            run(&["ip", "-n", &t.cli, "addr", "add", a, "dev", "vc"]);
        }
        for (ns, dev) in [
            (&t.srv, "vs"),
            (&t.cli, "vc"),
            (&t.srv, "lo"),
            (&t.cli, "lo"),
        ] {
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        t
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.srv, &self.cli] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A namespace deleted on drop.
pub struct Netns(pub String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A child process killed (by its PID) and reaped on drop.
pub struct Proc(pub Child);

impl Proc {
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

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

/// Runs `f` on a thread that lives in namespace `ns` (network namespaces are per thread).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = PathBuf::from("/run/netns").join(ns);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
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
