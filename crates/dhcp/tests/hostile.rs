//! Hostile DHCP traffic against the real server process in network namespaces (198.18.0.0/15
//! only, namespaces named with the PID and deleted on every exit path): a starvation flood of
//! random MACs from perfdhcp must not empty the pool, and a real client (busybox udhcpc) keeps
//! getting its lease during the flood and a new one after it.
//!
//! Needs root and the packages from .ci/install-deps; a missing tool fails the test.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chainboot_store::leases::{load_all, LeaseState};

const TESTD: &str = env!("CARGO_BIN_EXE_chainboot-dhcp-testd");

fn require(tools: &[&str]) {
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
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            found,
            "required tool `{t}` is missing: run .ci/install-deps"
        );
    }
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Server namespace (veth `vs`, 198.18.0.1/20) and client namespace (veth `vc`, 198.18.0.2/20,
/// which perfdhcp uses as its relay address), deleted on drop.
struct Topology {
    srv: String,
    cli: String,
}

impl Topology {
    fn new() -> Topology {
        let id = format!("cbhost{}", std::process::id());
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
        run(&[
            "ip",
            "-n",
            &t.cli,
            "addr",
            "add",
            "198.18.0.2/20",
            "dev",
            "vc",
        ]);
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

/// A child process killed (by its PID) and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const POOL: usize = 200;

fn config() -> String {
    // Default limits except the per-MAC rate, which udhcpc's retries never reach anyway.
    r#"
[dhcp]
mode = "server"
lease_time = "1h"
[[dhcp.subnet]]
cidr = "198.18.0.0/20"
pools = [["198.18.1.1", "198.18.1.200"]]
router = "198.18.0.1"
"#
    .to_string()
}

/// Runs busybox udhcpc once in the client namespace (`-q`: quit once bound); the bound address.
fn udhcpc(ns: &str, dir: &Path, tries: u32) -> Option<String> {
    let log = dir.join("udhcpc.log");
    let _ = std::fs::remove_file(&log);
    let script = dir.join("udhcpc.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$1\" in bound) echo \"$ip\" >> {};; esac\n",
            log.display()
        ),
    )
    .unwrap();
    run(&["chmod", "+x", script.to_str().unwrap()]);
    let tries = tries.to_string();
    let status = Command::new("timeout")
        .args([
            "60", "ip", "netns", "exec", ns, "busybox", "udhcpc", "-f", "-q", "-n", "-i", "vc",
            "-t", &tries, "-T", "1", "-A", "1", "-s",
        ])
        .arg(&script)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let ip = std::fs::read_to_string(&log).ok()?.trim().to_string();
    (status.success() && !ip.is_empty()).then_some(ip)
}

#[test]
fn random_mac_flood_does_not_exhaust_the_pool_and_a_real_client_is_served() {
    require(&["ip", "perfdhcp", "busybox", "timeout"]);
    let topo = Topology::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("dhcp.toml");
    std::fs::write(&cfg, config()).unwrap();
    let errlog = dir.path().join("server.err");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &topo.srv, TESTD])
        .arg(&cfg)
        .arg(dir.path().join("state"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&errlog).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let srv = Proc(child);
    let mut line = String::new();
    let _ = BufReader::new(stdout).read_line(&mut line);
    assert_eq!(line.trim(), "ready", "server did not start");

    // The real client gets a lease before the flood.
    let mine = udhcpc(&topo.cli, dir.path(), 5).expect("udhcpc lease before the flood");

    // 6 s of DORA from up to 100 000 random MACs at 400/s through one relay (2400 attempts,
    // twelve times the pool), while udhcpc asks for its address again in the middle of it.
    let flood = Command::new("timeout")
        .args([
            "40",
            "ip",
            "netns",
            "exec",
            &topo.cli,
            "perfdhcp",
            "-4",
            "-l",
            "vc",
            "-r",
            "400",
            "-R",
            "100000",
            "-p",
            "6",
            "-W",
            "1000000",
            "198.18.0.1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut flood = Proc(flood);
    std::thread::sleep(Duration::from_secs(2));
    let again = udhcpc(&topo.cli, dir.path(), 5).expect("udhcpc served during the flood");
    assert_eq!(again, mine, "the returning client keeps its address");
    let deadline = Instant::now() + Duration::from_secs(45);
    while flood.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "perfdhcp did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut text = String::new();
    if let Some(mut o) = flood.0.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut o, &mut text);
    }
    let sent_discovers = text
        .lines()
        .skip_while(|l| !l.contains("DISCOVER-OFFER"))
        .find_map(|l| l.trim().strip_prefix("sent packets: "))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(0);
    assert!(
        sent_discovers > 4 * POOL,
        "the flood was too small to prove anything: {text}"
    );

    let store = chainboot_store::Store::open(&dir.path().join("state")).unwrap();
    let bound = load_all(&store)
        .unwrap()
        .into_iter()
        .filter(|l| l.state == LeaseState::Bound)
        .count();
    drop(store);
    // 6 s of flood fit in at most two 10 s windows: half of the free pool, then half the rest.
    assert!(
        bound < POOL * 3 / 4 + 2,
        "the flood took {bound} of {POOL} addresses"
    );
    assert!(
        bound > 10,
        "perfdhcp got no leases at all ({bound}): {text}"
    );

    // A brand-new real client after the flood (another MAC) still finds an address.
    run(&[
        "ip",
        "-n",
        &topo.cli,
        "link",
        "set",
        "vc",
        "address",
        "02:00:5e:10:00:99",
    ]);
    let fresh = udhcpc(&topo.cli, dir.path(), 15).expect("a new client is served after the flood");
    assert_ne!(fresh, mine);

    // Refusals are counted by reason (the server prints its counters on SIGTERM).
    let pid = nix::unistd::Pid::from_raw(srv.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut srv = srv;
    let deadline = Instant::now() + Duration::from_secs(10);
    while srv.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let err = std::fs::read_to_string(&errlog).unwrap();
    let counter = |name: &str| {
        err.lines()
            .find_map(|l| l.strip_prefix(&format!("counter {name} ")))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no counter {name} in:\n{err}"))
    };
    assert!(counter("refused_new_client") > 100, "{err}");
    assert!(
        err.contains("refusing new clients until the window ends"),
        "the refusal is logged: {err}"
    );
    eprintln!(
        "flood: {sent_discovers} DISCOVERs, {bound} of {POOL} addresses taken, {} refused",
        counter("refused_new_client")
    );
}
