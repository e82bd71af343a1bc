//! Storage faults under the real server process: its state_dir is a small tmpfs mounted in a
//! private mount namespace of its own (gone with the process, so unmounted on every exit path),
//! inside a network namespace pair (198.18.0.0/15, names with the PID, deleted on drop). With
//! the disk full no ACK goes out for a lease that could not be stored, the log says why, and
//! service resumes when space returns; a read-only state_dir stops the server at start with
//! the cause (a mounted filesystem with open files cannot be remounted read-only under it);
//! kill -9 at random moments under perfdhcp load loses no ACKed lease and doubles none.
//!
//! Needs root and the packages from .ci/install-deps (iproute2, util-linux); a missing tool
//! fails the test.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use chainboot_dhcp::client::{ClientKind, ClientMessage};
use chainboot_dhcp::wire::MessageType;
use chainboot_store::leases::{load_all, LeaseState};

mod common;
use common::*;

/// DISCOVER then REQUEST; the offered address and whether the REQUEST was ACKed.
fn dora(s: &UdpSocket, m: [u8; 6]) -> (Ipv4Addr, bool) {
    let d = ClientMessage::new(ClientKind::Plain, MessageType::Discover, m);
    let offer =
        exchange(s, &d, BCAST, Duration::from_secs(2)).expect("offer (offers need no storage)");
    (
        offer.yiaddr,
        request(s, m, offer.yiaddr, Duration::from_millis(700)),
    )
}

fn request(s: &UdpSocket, m: [u8; 6], ip: Ipv4Addr, wait: Duration) -> bool {
    let mut q = ClientMessage::new(ClientKind::Plain, MessageType::Request, m);
    q.requested_ip = Some(ip);
    q.server_id = Some(SERVER_IP);
    exchange(s, &q, BCAST, wait)
        .is_some_and(|r| r.msg_type == Some(MessageType::Ack) && r.yiaddr == ip)
}

/// Fills the filesystem holding `dir` until ENOSPC.
fn fill(dir: &Path) -> u64 {
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0xa5u8; 4096];
    let mut n = 0;
    for _ in 0..100_000 {
        match f.write_all(&chunk).and_then(|_| f.sync_all()) {
            Ok(()) => n += 4096,
            Err(_) => break,
        }
    }
    // Small remainders too.
    for _ in 0..4096 {
        if f.write_all(&[0]).and_then(|_| f.sync_all()).is_err() {
            break;
        }
        n += 1;
    }
    n
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

#[test]
fn a_full_disk_withholds_acks_says_why_and_service_resumes_when_space_returns() {
    require(&["ip", "unshare", "mount"]);
    let topo = Topology::new("cbdhcp", Some("198.18.0.2/20"));
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let cfg = dir.path().join("dhcp.toml");
    std::fs::write(
        &cfg,
        "[dhcp]\nmode = \"server\"\nlease_time = \"1h\"\n\
         limits = { per_mac_rate = 1000.0, per_mac_burst = 1000.0 }\n\
         [[dhcp.subnet]]\ncidr = \"198.18.0.0/20\"\npools = [[\"198.18.1.1\", \"198.18.8.254\"]]\n",
    )
    .unwrap();
    let errlog = dir.path().join("server.err");
    let script = format!(
        "mount -t tmpfs -o size=1m cbfault '{m}' && exec '{TESTD}' '{c}' '{m}/state'",
        m = mnt.display(),
        c = cfg.display()
    );
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &topo.srv,
            "unshare",
            "-m",
            "--propagation",
            "private",
        ])
        .args(["sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&errlog).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let srv = Proc(child);
    let mut line = String::new();
    let _ = BufReader::new(stdout).read_line(&mut line);
    assert_eq!(
        line.trim(),
        "ready",
        "server did not start: {}",
        std::fs::read_to_string(&errlog).unwrap_or_default()
    );
    // The server's view of its state_dir (its own mount namespace).
    let pid = srv.0.id().to_string();
    let state_fs = PathBuf::from(format!("/proc/{pid}/root")).join(mnt.strip_prefix("/").unwrap());
    let log = || std::fs::read_to_string(&errlog).unwrap_or_default();
    const WITHHELD: &str = "could not store";

    let cli = topo.cli.clone();
    let (fs1, fs2) = (state_fs.clone(), state_fs.clone());
    let (acked, withheld_ip, filled) = in_netns(&cli, move || {
        let s = client_socket();
        let mut acked = Vec::new();
        let (ip, ok) = dora(&s, mac(1));
        assert!(ok, "no ACK with an empty disk");
        acked.push((mac(1), ip));
        // Disk full: clients are ACKed only while SQLite still finds room in its files, and
        // the first lease that cannot be written gets no ACK.
        let filled = fill(&fs1);
        let mut withheld = None;
        for i in 2..200u32 {
            let (ip, ok) = dora(&s, mac(i));
            if ok {
                acked.push((mac(i), ip));
            } else {
                withheld = Some((mac(i), ip));
                break;
            }
        }
        let (m, ip) = withheld.expect("every ACK went out with a full disk");
        // Still full: the client's retries get nothing either.
        assert!(!request(&s, m, ip, Duration::from_millis(700)));
        // Space returns: the same client's next REQUEST is ACKed.
        std::fs::remove_file(fs1.join("filler")).unwrap();
        let mut ok = false;
        for _ in 0..10 {
            if request(&s, m, ip, Duration::from_millis(500)) {
                ok = true;
                break;
            }
        }
        assert!(ok, "no ACK after space returned");
        acked.push((m, ip));
        (acked, ip, filled)
    });
    let full_log = log();
    assert!(
        count(&full_log, WITHHELD) >= 1,
        "the log does not say why ACKs stopped:\n{full_log}"
    );
    assert!(
        full_log.contains("replies withheld"),
        "the log does not say that ACKs were withheld:\n{full_log}"
    );

    // Every ACKed lease is in the store, bound to its client.
    // (A copy: SQLite resolves /proc/PID/root and would look in our own mount namespace.)
    let copy = dir.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(fs2.join("state")).unwrap() {
        let e = e.unwrap();
        if e.file_name()
            .to_string_lossy()
            .starts_with("chainboot.sqlite3")
        {
            std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
        }
    }
    let store = chainboot_store::Store::open(&copy).unwrap();
    let stored = load_all(&store).unwrap();
    drop(store);
    for (m, ip) in &acked {
        let mac = chainboot_machine::Mac(*m).to_string();
        assert!(
            stored
                .iter()
                .any(|l| l.ip == *ip && l.mac == mac && l.state == LeaseState::Bound),
            "ACKed lease {mac} -> {ip} is not stored"
        );
    }
    eprintln!(
        "disk full after {filled} filler bytes: {} ACKs, withheld {withheld_ip} until space returned; {} 'could not store' log lines",
        acked.len(),
        count(&full_log, WITHHELD)
    );
    drop(fs2);
}

#[test]
fn a_read_only_state_dir_stops_the_server_with_a_clear_message_and_it_starts_once_writable() {
    require(&["ip", "unshare", "mount"]);
    let topo = Topology::new("cbdhcp", Some("198.18.0.2/20"));
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let cfg = dir.path().join("dhcp.toml");
    std::fs::write(
        &cfg,
        "[dhcp]\nmode = \"server\"\n[[dhcp.subnet]]\ncidr = \"198.18.0.0/20\"\n\
         pools = [[\"198.18.1.1\", \"198.18.1.254\"]]\n",
    )
    .unwrap();
    // A tmpfs that already holds a store, remounted read-only before the server starts; then
    // the same made writable again. Both in one private mount namespace per run.
    let run_server = |ro: bool| {
        let remount = if ro {
            format!("mount -o remount,ro '{}' && ", mnt.display())
        } else {
            String::new()
        };
        let script = format!(
            "mount -t tmpfs -o size=4m cbfault '{m}' && mkdir '{m}/state' && {remount}\
             exec timeout 3 '{TESTD}' '{c}' '{m}/state'",
            m = mnt.display(),
            c = cfg.display()
        );
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &topo.srv,
                "unshare",
                "-m",
                "--propagation",
                "private",
            ])
            .args(["sh", "-c", &script])
            .output()
            .unwrap()
    };
    let out = run_server(true);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "started on a read-only state_dir: {err}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("ready"),
        "said ready on a read-only state_dir"
    );
    assert!(
        err.contains("mnt/state") && err.to_lowercase().contains("read-only"),
        "the error does not name the state_dir and the cause: {err}"
    );
    eprintln!("read-only state_dir: {}", err.trim());
    // Writable: it starts (and is stopped by `timeout` after 3 s).
    let out = run_server(false);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ready"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the server on `state`, waits for "ready".
fn start_plain(ns: &str, cfg: &Path, state: &Path) -> Proc {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, TESTD])
        .arg(cfg)
        .arg(state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let p = Proc(child);
    let mut line = String::new();
    let _ = BufReader::new(stdout).read_line(&mut line);
    assert_eq!(line.trim(), "ready", "server did not start");
    p
}

#[test]
fn kill_9_at_random_moments_under_perfdhcp_load_loses_no_acked_lease_and_never_doubles_one() {
    require(&["ip", "perfdhcp", "timeout"]);
    let topo = Topology::new("cbdhcp", Some("198.18.0.2/20"));
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let cfg = dir.path().join("dhcp.toml");
    std::fs::write(
        &cfg,
        "[dhcp]\nmode = \"server\"\nlease_time = \"1h\"\n\
         limits = { per_mac_rate = 1000.0, per_mac_burst = 1000.0, new_client_share = 1.0 }\n\
         [[dhcp.subnet]]\ncidr = \"198.18.0.0/16\"\npools = [[\"198.18.1.1\", \"198.18.200.254\"]]\n",
    )
    .unwrap();
    // Kill points: 3 rounds, each after a random 200-1500 ms (seed printed to replay).
    let mut seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
    eprintln!("kill -9 seed {seed}");
    let mut acked: Vec<([u8; 6], Ipv4Addr)> = Vec::new();
    for round in 0..3u32 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(200 + seed % 1300);
        let srv = std::sync::Arc::new(std::sync::Mutex::new(Some(start_plain(
            &topo.srv, &cfg, &state,
        ))));
        // Background load: perfdhcp (as a relay) doing DORA with random MACs.
        let load = Proc(
            perfdhcp(&topo.cli, 20, &["-r", "300", "-R", "50000", "-p", "3"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        // perfdhcp binds its sockets first.
        std::thread::sleep(Duration::from_millis(300));
        let killed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let killer = {
            let (srv, killed) = (srv.clone(), killed.clone());
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                // Dropping the Proc kills it with SIGKILL (by PID) and reaps it.
                srv.lock().unwrap().take();
                killed.store(true, std::sync::atomic::Ordering::SeqCst);
            })
        };
        let base = 10_000 * (round + 1);
        let got = in_netns(&topo.cli, move || {
            let s = client_socket();
            let mut got = Vec::new();
            let mut misses = 0;
            for i in 0..3000u32 {
                let m = mac(base + i);
                let d = ClientMessage::new(ClientKind::Plain, MessageType::Discover, m);
                let Some(offer) = exchange(&s, &d, BCAST, Duration::from_millis(300)) else {
                    if killed.load(std::sync::atomic::Ordering::SeqCst) {
                        misses += 1;
                    }
                    if misses > 2 {
                        break;
                    }
                    continue;
                };
                if request(&s, m, offer.yiaddr, Duration::from_millis(300)) {
                    got.push((m, offer.yiaddr));
                }
            }
            got
        });
        killer.join().unwrap();
        drop(load);
        eprintln!(
            "round {round}: killed after {delay:?}, {} ACKs to the tracked client",
            got.len()
        );
        acked.extend(got);
    }
    assert!(
        acked.len() > 30,
        "too few ACKs before the kills: {}",
        acked.len()
    );
    // Every ACK is stored, bound to the client it was given to, and no address is bound to
    // two clients (the tracked ones and perfdhcp's).
    let store = chainboot_store::Store::open(&state).unwrap();
    let stored = load_all(&store).unwrap();
    drop(store);
    let mut owner = std::collections::HashMap::new();
    for l in stored.iter().filter(|l| l.state == LeaseState::Bound) {
        assert!(
            owner.insert(l.ip, l.mac.clone()).is_none(),
            "{} stored twice",
            l.ip
        );
    }
    let mut seen = std::collections::HashMap::new();
    for (m, ip) in &acked {
        let mac = chainboot_machine::Mac(*m).to_string();
        assert_eq!(
            owner.get(ip),
            Some(&mac),
            "ACKed lease {mac} -> {ip} lost or given to another client by kill -9"
        );
        if let Some(prev) = seen.insert(*ip, mac.clone()) {
            panic!("{ip} was ACKed to {prev} and then to {mac}");
        }
    }
    // After a last restart, new clients get none of the leased addresses.
    let _srv = start_plain(&topo.srv, &cfg, &state);
    let leased: std::collections::HashSet<Ipv4Addr> = owner.keys().copied().collect();
    let stored_bound = leased.len();
    in_netns(&topo.cli, move || {
        let s = client_socket();
        for i in 0..20 {
            let d = ClientMessage::new(ClientKind::Plain, MessageType::Discover, mac(900_000 + i));
            let offer =
                exchange(&s, &d, BCAST, Duration::from_secs(2)).expect("offer after restart");
            assert!(
                !leased.contains(&offer.yiaddr),
                "{} was already leased",
                offer.yiaddr
            );
        }
    });
    eprintln!(
        "{} tracked ACKs, {stored_bound} stored bound leases (with perfdhcp's), all consistent",
        acked.len()
    );
}
