//! Test support for the integration tests that need a network of their own (a dev-dependency,
//! never part of the binary): two network namespaces joined by a veth pair, a thread inside a
//! namespace, and child processes that die with the test.
//!
//! Network safety, the project's hard rule: the namespaces are created here, named with the
//! test process's PID and a counter, use only 198.18.0.0/15, and are deleted on drop (every exit
//! path, panics included); processes are killed by their PID on drop, never by name.

pub mod postgres;

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Fails (never skips) when not root or when a tool is missing: CI installs them all.
pub fn require(tools: &[&str]) {
    assert!(
        nix::unistd::geteuid().is_root(),
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
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e} (is iproute2 installed?)"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until `dev` in namespace `ns` has a link-local IPv6 address that finished duplicate
/// address detection (a DHCPv6 client or server cannot send from a tentative one); fails after
/// 10 s.
pub fn wait_link_local(ns: &str, dev: &str) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = run(&["ip", "-n", ns, "-6", "addr", "show", "dev", dev]);
        if out.contains("fe80") && !out.contains("tentative") {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "{dev} in {ns}: no usable link-local address: {out}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Two namespaces joined by veth `vs` (server side, 198.18.0.1/20) and `vc` (client side, with
/// `client_addr` if given), loopback up in both; deleted on drop.
pub struct Topology {
    pub srv: String,
    pub cli: String,
}

impl Topology {
    /// `tag` names the test suite in the namespace names (`<tag><pid>x<n>s` / `...c`).
    pub fn new(tag: &str, client_addr: Option<&str>) -> Topology {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let id = format!("{tag}{}x{n}", std::process::id());
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

/// Runs `f` on a thread that lives in namespace `ns` (network namespaces are per thread).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = PathBuf::from("/run/netns").join(ns);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("namespace file");
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("thread in the namespace")
}
