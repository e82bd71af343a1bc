//! The lock-out: read requests that ask for `timeout 255` from many source addresses and never
//! acknowledge anything used to hold a transfer slot for 255 s x (1 + retries) each, so a few
//! dozen addresses filled `max_transfers` for half an hour. On real UDP sockets from many
//! loopback addresses (127.1.P.A: many /24 prefixes), this shows that such transfers hold at
//! most their share of the slots, at most `max_per_prefix` per /24, for the server's own
//! timeout x `unproven_retries` only; that a client already proven keeps its transfer through
//! the flood; and that tftp-hpa's `tftp` gets its file as soon as the flood's requests lapse.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

mod common;

use std::collections::HashMap;
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chainboot_tftp::TftpConfig;
use common::*;

const PREFIXES: u8 = 12;
const ADDRESSES_PER_PREFIX: u8 = 3;
const REQUESTS_PER_ADDRESS: usize = 4;

fn lockout_config() -> TftpConfig {
    TftpConfig {
        max_transfers: 40,
        max_per_client: 4,
        max_per_prefix: 8,
        unproven_percent: 50,
        unproven_retries: 2,
        // The server's own timeout; the flood asks for 255 s.
        timeout: Duration::from_millis(200),
        ..config()
    }
}

/// One flooding socket per request, bound to 127.1.P.A, and what it got back.
struct Flooder {
    socket: UdpSocket,
    prefix: u8,
}

fn flood(server: std::net::SocketAddr) -> Vec<Flooder> {
    let request = rrq(
        "boot.bin",
        &[("timeout", "255"), ("blksize", "1468"), ("tsize", "0")],
    );
    let mut out = Vec::new();
    // A whole prefix at a time, so that the first one meets the per-prefix cap before the
    // unproven share is full.
    for p in 1..=PREFIXES {
        for a in 1..=ADDRESSES_PER_PREFIX {
            for _ in 0..REQUESTS_PER_ADDRESS {
                let socket = raw_client(&format!("127.1.{p}.{a}"));
                socket.send_to(&request, server).unwrap();
                out.push(Flooder { socket, prefix: p });
            }
        }
    }
    out
}

#[test]
fn timeout_255_flood_from_many_addresses_holds_a_bounded_share_briefly_and_tftp_hpa_still_gets_its_file(
) {
    require("tftp");
    let srv = TestServer::start_with(lockout_config(), None);
    srv.file("boot.bin", 300_000);
    let legit = srv.file("legit.bin", 40 * 512 + 77);
    let stats = srv.stats.clone();

    // Watch the gauges all through the flood.
    let stop = Arc::new(AtomicBool::new(false));
    let (max_unproven, max_active) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let watcher = {
        let (stop, stats) = (stop.clone(), stats.clone());
        let (mu, ma) = (max_unproven.clone(), max_active.clone());
        std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                let s = stats.snapshot();
                mu.fetch_max(s.unproven, Ordering::Relaxed);
                ma.fetch_max(s.active, Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };

    // A machine already booting: it acknowledges every block (a little slowly), so it is
    // proven before the flood starts and must finish through it.
    let addr = srv.addr;
    let booting = std::thread::spawn(move || {
        raw_get_acking_after(addr, "legit.bin", Duration::from_millis(20))
    });
    assert!(eventually(
        || stats.snapshot().started == 1 && stats.snapshot().unproven == 0
    ));

    let started = Instant::now();
    let flooders = flood(srv.addr);
    let sent = flooders.len();

    // Every flood transfer is given up after the server's 200 ms x (1 + 2 retries), not
    // after 255 s: the slots are free again within a second or two.
    let lapsed = eventually(|| {
        let s = stats.snapshot();
        s.unproven == 0 && s.active == 0 && s.finished == 1
    });
    let took = started.elapsed();
    assert!(lapsed, "flood transfers still held: {:?}", stats.snapshot());
    assert!(took < Duration::from_secs(4), "slots freed after {took:?}");
    assert_eq!(
        booting.join().unwrap().as_deref().map(<[u8]>::len),
        Ok(40 * 512 + 77),
        "the proven transfer did not survive the flood"
    );

    // What each flooding socket got: its OACK (at most 1 + 2 retries, identical) or one
    // refusal, never data.
    let (mut admitted_per_prefix, mut refusals) = (HashMap::<u8, usize>::new(), HashMap::new());
    for f in &flooders {
        f.socket.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        while let Some((p, _)) = recv(&f.socket) {
            got.push(describe(&p));
            assert!(got.len() <= 5, "{got:?}");
        }
        match got.first().map(String::as_str) {
            Some("OACK timeout=255 blksize=1468 tsize=300000") => {
                assert!(
                    got.len() <= 3 && got.iter().all(|d| d == &got[0]),
                    "{got:?}"
                );
                *admitted_per_prefix.entry(f.prefix).or_default() += 1;
            }
            Some(refusal) if refusal.starts_with("ERROR 0 ") => {
                assert_eq!(got.len(), 1, "a refusal is sent once: {got:?}");
                *refusals.entry(refusal.to_string()).or_insert(0usize) += 1;
            }
            other => panic!("unexpected answer to a flood request: {other:?} ({got:?})"),
        }
    }
    let admitted: usize = admitted_per_prefix.values().sum();
    let s = stats.snapshot();
    eprintln!(
        "{sent} requests asking timeout 255 from {} addresses: {admitted} admitted \
         ({admitted_per_prefix:?} per prefix), refused {refusals:?}; slots free after {took:?}; \
         peak unproven {}, peak active {}; {s:?}",
        PREFIXES as usize * ADDRESSES_PER_PREFIX as usize,
        max_unproven.load(Ordering::Relaxed),
        max_active.load(Ordering::Relaxed),
    );
    assert!(admitted <= 20, "unproven share exceeded: {admitted}");
    assert!(admitted_per_prefix.values().all(|&n| n <= 8));
    assert_eq!(
        admitted_per_prefix.get(&1),
        Some(&8),
        "the first prefix fills its cap"
    );
    assert!(max_unproven.load(Ordering::Relaxed) <= 20);
    // The proven transfer plus the unproven share.
    assert!(max_active.load(Ordering::Relaxed) <= 21);
    assert_eq!(refusals.values().sum::<usize>() + admitted, sent);
    assert!(
        refusals.contains_key("ERROR 0 too many transfers from this network")
            && refusals.contains_key("ERROR 0 server busy, try again"),
        "{refusals:?}"
    );
    assert_eq!(
        s.busy_prefix as usize + s.busy_unproven as usize + admitted,
        sent
    );
    assert!(s.busy_prefix >= 4 && s.busy_unproven > 0, "{s:?}");
    assert_eq!(s.unproven_timeouts as usize, admitted);

    // tftp-hpa's client, right after.
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("legit.bin");
    let mut child = Command::new("tftp")
        .args([
            "-m",
            "octet",
            "127.0.0.1",
            &srv.port().to_string(),
            "-c",
            "get",
            "legit.bin",
        ])
        .arg(&local)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            panic!("tftp-hpa did not finish within 20 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(sha256(&local), sha256(&legit));
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
}
