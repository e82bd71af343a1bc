//! Helpers for the binary's integration tests: network namespaces created by the test itself
//! (addresses from 198.18.0.0/15 only) and a `chainboot serve` child process inside one.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn sh(cmd: &str) -> Output {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Root and every tool, or the test fails (CI runs as root with every tool installed; a
/// missing one is a failure, not a skip).
pub fn require_root_and(tools: &[&str]) {
    chainboot_testnet::require(tools);
}

/// Two namespaces joined by a veth pair: `server` (198.18.<net>.1/24 on `srv0`) and `client`
/// (198.18.<net>.2/24 on `cli0`). Deleted on drop.
pub struct NetPair {
    pub server: String,
    pub client: String,
    pub server_ip: String,
    pub client_ip: String,
}

impl NetPair {
    pub fn new(tag: &str, net: u8) -> NetPair {
        let id = std::process::id();
        let server = format!("cb-{tag}-s-{id}");
        let client = format!("cb-{tag}-c-{id}");
        let server_ip = format!("198.18.{net}.1");
        let client_ip = format!("198.18.{net}.2");
        let pair = NetPair {
            server,
            client,
            server_ip,
            client_ip,
        };
        let (s, c) = (&pair.server, &pair.client);
        sh(&format!("ip netns add {s} && ip netns add {c}"));
        for ns in [s, c] {
            // No duplicate address detection: link-local addresses are usable at once.
            sh(&format!(
                "ip netns exec {ns} sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 && ip -n {ns} link set lo up"
            ));
        }
        sh(&format!(
            "ip link add srv0 netns {s} type veth peer name cli0 netns {c} && \
             ip -n {s} addr add {}/24 dev srv0 && ip -n {c} addr add {}/24 dev cli0 && \
             ip -n {s} link set srv0 up && ip -n {c} link set cli0 up",
            pair.server_ip, pair.client_ip
        ));
        pair.wait_link_local(s, "srv0");
        pair.wait_link_local(c, "cli0");
        pair
    }

    /// IPv6 link-local addresses appear shortly after the link has carrier.
    fn wait_link_local(&self, ns: &str, dev: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let out = Command::new("ip")
                .args(["-n", ns, "-6", "addr", "show", "dev", dev, "scope", "link"])
                .output()
                .expect("ip");
            let text = String::from_utf8_lossy(&out.stdout);
            if text.contains("fe80") && !text.contains("tentative") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{dev} in {ns} got no IPv6 link-local address");
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.server])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.client])
            .status();
    }
}

pub fn chainboot_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_chainboot"))
}

/// A `chainboot serve` child, killed (by PID) on drop; its stderr goes to a log file.
pub struct Server {
    child: Child,
    pub log: PathBuf,
}

impl Server {
    pub fn start_in(netns: Option<&str>, config: &Path, log: PathBuf) -> Server {
        let logf = std::fs::File::create(&log).expect("log file");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(chainboot_bin());
                c
            }
            None => Command::new(chainboot_bin()),
        };
        cmd.args(["--log-level", "debug", "serve", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(logf);
        let child = cmd.spawn().expect("spawn chainboot");
        Server { child, log }
    }

    /// Wraps a child started by the test itself (its stderr already going to `log`).
    pub fn adopt(child: Child, log: PathBuf) -> Server {
        Server { child, log }
    }

    /// The child's process id (for /proc/PID/status).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle` (or fails with the log).
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "chainboot exited ({status}) before `{needle}`:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "`{needle}` not logged within {timeout:?}:\n{}",
            self.log_text()
        );
    }

    /// The address a server logged for `what` ("TFTP" or "HTTP"), e.g. "127.0.0.1:40123".
    pub fn listening(&mut self, what: &str) -> String {
        let needle = format!("{what} listening listen=");
        self.wait_for_log(&needle, Duration::from_secs(20));
        let log = self.log_text();
        let at = log.find(&needle).map(|i| i + needle.len()).unwrap_or(0);
        log[at..]
            .split(|c: char| c.is_whitespace())
            .next()
            .unwrap_or_default()
            .to_string()
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status();
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary; returns its exit code and stdout+stderr.
pub fn chainboot(args: &[&str]) -> (i32, String) {
    let out = Command::new(chainboot_bin())
        .args(args)
        .output()
        .expect("run chainboot");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `extra` with an `[api]` section whose management listener is on a free loopback port
/// (logged as "API listening listen=..."), reads open unless `extra` says otherwise.
fn api_section(extra: &str) -> String {
    let listen = "listen = \"127.0.0.1:0\"\n";
    let open = if extra.contains("read_requires_token") {
        ""
    } else {
        "read_requires_token = false\n"
    };
    if extra.contains("[api]\n") {
        extra.replace("[api]\n", &format!("[api]\n{listen}{open}"))
    } else {
        format!("{extra}\n[api]\n{listen}{open}")
    }
}

/// A config serving on loopback only (DHCP and IPv6 RA off); returns its path and the HTTP address.
pub fn loopback_config(dir: &std::path::Path, extra: &str) -> (std::path::PathBuf, String) {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("vmlinuz"), b"kernel").unwrap();
    let path = dir.join("chainboot.toml");
    // Port 0: the server picks free ports and logs them (see `Server::listening`), so
    // parallel tests never race for a port.
    let http = "127.0.0.1:0".to_string();
    std::fs::write(
        &path,
        format!(
            "[server]\nstate_dir = \"{state}\"\ninterfaces = [\"lo\"]\n\
             [dhcp]\nmode = \"off\"\n[ipv6]\nrouter_advertisements = \"off\"\n\
             [tftp]\nlisten = \"127.0.0.1:0\"\n\
             [http]\nlisten = \"{http}\"\nroot = \"{www}\"\n\
             [[profile]]\nname = \"linux\"\nkernel = \"vmlinuz\"\ncmdline = \"console=ttyS0\"\n\
             [[profile]]\nname = \"rescue\"\nkernel = \"vmlinuz\"\n\
             [boot]\ndefault = \"linux\"\n{extra}",
            state = dir.join("state").display(),
            www = www.display(),
            extra = api_section(extra),
        ),
    )
    .unwrap();
    (path, http)
}

/// One DORA with busybox udhcpc on `cli0` in `ns`, with udhcpc's extra `args`; the address it
/// was given (the test fails if it gets none within udhcpc's five tries).
pub fn udhcpc_lease(ns: &str, dir: &Path, args: &str) -> String {
    udhcpc_answer(ns, dir, "cli0", args).0
}

/// One DORA with busybox udhcpc on `iface` in `ns`: the address it was given and the boot
/// file name of the answer (empty when none).
pub fn udhcpc_answer(ns: &str, dir: &Path, iface: &str, args: &str) -> (String, String) {
    let log = dir.join("udhcpc.log");
    let _ = std::fs::remove_file(&log);
    let script = dir.join("udhcpc.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$1 $ip file=$boot_file\" >> {}\n",
            log.display()
        ),
    )
    .unwrap();
    sh(&format!("chmod +x {}", script.display()));
    let out = sh(&format!(
        "timeout 30 ip netns exec {ns} busybox udhcpc -f -q -n -i {iface} -t 5 -T 1 {args} -s {}",
        script.display()
    ));
    assert!(out.status.success(), "udhcpc got no lease: {out:?}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let bound = text
        .lines()
        .find_map(|l| l.strip_prefix("bound "))
        .unwrap_or_else(|| panic!("udhcpc never bound:\n{text}"));
    let (ip, file) = bound.split_once(" file=").unwrap_or((bound, ""));
    (ip.to_string(), file.trim().to_string())
}

/// A TFTP download with tftp-hpa's client from inside `ns` (into /dev/null); whether it
/// completed.
pub fn tftp_get_in(ns: &str, server: &str, file: &str) -> bool {
    let (host, port) = server.rsplit_once(':').unwrap();
    Command::new("ip")
        .args(["netns", "exec", ns, "timeout", "30", "tftp", host, port])
        .args(["-m", "binary", "-c", "get", file, "/dev/null"])
        .status()
        .unwrap()
        .success()
}

/// Two servers of one fleet, `pxe-a` and `pxe-b`, each on loopback with its own state
/// directory (its config at `dir_*/chainboot.toml`), sharing one fresh PostgreSQL database
/// (heartbeat 1 s, peer timeout 3 s). Fields drop in order: the servers stop before their
/// database does.
pub struct FleetOfTwo {
    pub a: Server,
    pub b: Server,
    pub dir_a: tempfile::TempDir,
    pub dir_b: tempfile::TempDir,
    _pg: chainboot_testnet::postgres::PgCluster,
}

impl FleetOfTwo {
    /// Starts both and returns once each logs both live.
    pub fn start() -> FleetOfTwo {
        let pg = chainboot_testnet::postgres::PgCluster::start();
        let url = pg.fresh_database();
        let password = pg.password_file();
        let start = |name: &str, dir: &Path| {
            let store = format!(
                "[store]\nbackend = \"postgres\"\nurl = \"{url}\"\npassword_file = \"{}\"\n\
                 server_name = \"{name}\"\nheartbeat = \"1s\"\npeer_timeout = \"3s\"\n",
                password.display()
            );
            let (cfg, _) = loopback_config(dir, &store);
            Server::start_in(None, &cfg, dir.join("log"))
        };
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a = start("pxe-a", dir_a.path());
        let mut b = start("pxe-b", dir_b.path());
        for s in [&mut a, &mut b] {
            s.wait_for_log("live=[\"pxe-a\", \"pxe-b\"]", Duration::from_secs(30));
        }
        FleetOfTwo {
            a,
            b,
            dir_a,
            dir_b,
            _pg: pg,
        }
    }
}
