//! The server seen through hand-made datagrams on real UDP sockets: the cases real clients
//! cannot produce on purpose (hostile paths, strangers on a transfer's port, floods of
//! requests, silence, shutdown mid-transfer).
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chainboot_tftp::proto::{self, Packet};
use chainboot_tftp::{TftpConfig, TransferObserver, TransferStart, TransferSummary};
use common::*;

/// Sends a raw request and returns the first answer, described.
fn ask(server: SocketAddr, datagram: &[u8]) -> String {
    let s = raw_client("127.0.0.1");
    s.send_to(datagram, server).unwrap();
    match recv(&s) {
        Some((p, _)) => describe(&p),
        None => "no answer".into(),
    }
}

#[test]
fn traversal_corpus_is_refused_over_raw_packets() {
    let srv = TestServer::start();
    srv.file("ok", 10);
    let long_ok_syntax = "a/".repeat(600) + "b";
    let long_name = "x".repeat(1500);
    let mut corpus: Vec<Vec<u8>> = [
        "../secret",
        "../../../../../../etc/passwd",
        "..\\..\\..\\etc\\passwd",
        "a/../../secret",
        "/etc/passwd",
        "\\\\server\\share\\x",
        "C:\\windows\\system.ini",
        "escape",
        "escdir/secret",
        "EscDir/Secret",
        "ok/../../secret",
        "./../secret",
        "\u{1b}[2Jok",
        long_ok_syntax.as_str(),
        long_name.as_str(),
    ]
    .iter()
    .map(|p| rrq(p, &[]))
    .collect();
    // A NUL inside the name ends the name early on the wire: "ok\0../secret" is the name "ok"
    // with mode "../secret", an unknown mode.
    corpus.push(b"\x00\x01ok\x00../secret\x00octet\x00".to_vec());
    // Longer than any request buffer: refused as too long, not truncated and served.
    corpus.push(rrq(&"y".repeat(5000), &[]));
    for datagram in &corpus {
        let answer = ask(srv.addr, datagram);
        assert!(
            answer.starts_with("ERROR 1 ")
                || answer.starts_with("ERROR 2 ")
                || answer.starts_with("ERROR 4 "),
            "{:?} -> {answer}",
            String::from_utf8_lossy(&datagram[..datagram.len().min(60)])
        );
    }
    let s = srv.stats.snapshot();
    assert_eq!(s.started, 0, "{s:?}");
    assert!(s.refused >= 10, "{s:?}");
    // And the legitimate file next to them is still served.
    assert_eq!(raw_get(srv.addr, "ok").unwrap(), pattern(10, 2));
}

#[test]
fn write_requests_get_an_access_violation() {
    let srv = TestServer::start();
    let wrq = proto::encode_request(proto::OP_WRQ, "new", "octet", &[]);
    assert_eq!(
        ask(srv.addr, &wrq),
        "ERROR 2 write requests are not accepted"
    );
    assert!(!srv.root.path().join("new").exists());
    assert_eq!(srv.stats.snapshot().writes_refused, 1);
}

#[test]
fn garbage_to_the_request_port_is_counted_and_unanswered_but_bad_requests_get_error_4() {
    let srv = TestServer::start();
    for junk in [
        &b"\x00"[..],
        b"\x00\x04\x00\x01",
        b"\x00\x03\x00\x01data",
        b"\xff\xff",
    ] {
        assert_eq!(ask(srv.addr, junk), "no answer", "{junk:?}");
    }
    assert_eq!(
        ask(srv.addr, b"\x00\x01f\x00binary\x00"),
        "ERROR 4 unknown transfer mode \"binary\""
    );
    assert_eq!(
        ask(srv.addr, b"\x00\x01f\x00octet"),
        "ERROR 4 string field not terminated by NUL"
    );
    assert_eq!(srv.stats.snapshot().malformed, 6);
}

#[test]
fn a_small_window_transfer_keeps_moving_while_the_runtime_is_busy() {
    // UEFI PXE asks for windowsize 4; in a boot storm every runtime worker may be streaming
    // HTTP bodies. A small window's transfer runs on a thread of its own, as a lock-step one
    // does, so its blocks do not wait for a worker.
    let srv = TestServer::start();
    let len = 200 * 1024 + 7;
    srv.file("snponly.efi", len);
    let s = raw_client("127.0.0.1");
    s.send_to(
        &rrq("snponly.efi", &[("blksize", "1024"), ("windowsize", "4")]),
        srv.addr,
    )
    .unwrap();
    let (oack, tid) = recv(&s).unwrap();
    assert_eq!(describe(&oack), "OACK blksize=1024 windowsize=4");
    s.send_to(&ack(0), tid).unwrap();
    let busy = srv.occupy_workers(Duration::from_secs(4));
    let mut got = Vec::new();
    let mut expect: u16 = 1;
    loop {
        let (p, from) = recv(&s).expect("the transfer stalled");
        assert_eq!(from, tid);
        let Ok(Packet::Data { block, data }) = proto::parse(&p) else {
            panic!("{}", describe(&p));
        };
        if block != expect {
            continue;
        }
        got.extend_from_slice(data);
        expect = expect.wrapping_add(1);
        let last = data.len() < 1024;
        if last || block % 4 == 0 {
            s.send_to(&ack(block), tid).unwrap();
        }
        if last {
            break;
        }
    }
    assert!(
        busy.load(Ordering::SeqCst),
        "the last block came only after the runtime's workers were free"
    );
    assert_eq!(got, pattern(len, "snponly.efi".len() as u64));
}

#[test]
fn unknown_tid_gets_error_5_once_and_the_transfer_goes_on() {
    // Both drivers: a thread of its own (the default for a lone lock-step transfer) and a task.
    for lockstep_threads in [None, Some(0)] {
        unknown_tid(lockstep_threads);
    }
}

fn unknown_tid(lockstep_threads: Option<usize>) {
    let srv = TestServer::start_with(
        TftpConfig {
            lockstep_threads,
            ..config()
        },
        None,
    );
    let data = pattern(2000, 1);
    std::fs::write(srv.root.path().join("f"), &data).unwrap();
    let client = raw_client("127.0.0.1");
    let stranger = raw_client("127.0.0.1");
    stranger
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    client.send_to(&rrq("f", &[]), srv.addr).unwrap();
    let (p, tid) = recv(&client).unwrap();
    assert_eq!(describe(&p), "DATA 1 (512)");
    assert_ne!(
        tid.port(),
        srv.port(),
        "data comes from the transfer's own port"
    );

    stranger.send_to(&ack(1), tid).unwrap();
    let (p, _) = recv(&stranger).unwrap();
    assert_eq!(describe(&p), "ERROR 5 unknown transfer ID");
    stranger.send_to(&ack(1), tid).unwrap();
    assert!(recv(&stranger).is_none(), "error 5 at most once per TID");

    let mut got = p_data(&p_recv_all(&client, tid, 1));
    got.splice(0..0, data[..512].iter().copied());
    assert_eq!(got, data);
    eventually(|| srv.stats.snapshot().finished == 1);
    let s = srv.stats.snapshot();
    assert_eq!((s.unknown_tid, s.finished), (2, 1), "{s:?}");
}

/// Acks block `first_ack` and keeps fetching lock-step until the short block; returns the
/// datagrams.
fn p_recv_all(s: &std::net::UdpSocket, tid: SocketAddr, first_ack: u16) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    s.send_to(&ack(first_ack), tid).unwrap();
    for _ in 0..10_000 {
        let (p, from) = recv(s).expect("server went silent");
        assert_eq!(from, tid);
        let Ok(Packet::Data { block, data }) = proto::parse(&p) else {
            panic!("{}", describe(&p))
        };
        let last = data.len() < 512;
        s.send_to(&ack(block), tid).unwrap();
        out.push(p);
        if last {
            return out;
        }
    }
    panic!("too many blocks");
}

fn p_data(datagrams: &[Vec<u8>]) -> Vec<u8> {
    datagrams.iter().flat_map(|p| p[4..].to_vec()).collect()
}

/// Waits for an ACK that busy-polled during a 100-block lock-step transfer from a client that
/// answers each block after `ack_delay`, with the server seeing `runnable` runnable tasks.
fn busy_polls(busy_poll: Duration, ack_delay: Duration, runnable: u32) -> u64 {
    let srv = TestServer::start_seeing(
        TftpConfig {
            busy_poll,
            ..config()
        },
        None,
        Some(runnable),
    );
    // 100 blocks: 100 waits for an ACK.
    let data = pattern(512 * 99 + 100, 3);
    std::fs::write(srv.root.path().join("f"), &data).unwrap();
    assert!(raw_get_acking_after(srv.addr, "f", ack_delay).unwrap() == data);
    assert!(eventually(|| srv.stats.snapshot().finished == 1));
    srv.stats.snapshot().busy_polls
}

/// `[tftp] busy_poll`: on a quiet machine (the polling thread and its client the only
/// runnable tasks) a lock-step thread polls for the ACK of a client that answers at once; a
/// client that answers late is polled for three times and then left alone (the backoff);
/// "0s" never polls; and a single CPU never polls.
#[test]
fn busy_polling_follows_the_client() {
    let two_cpus = std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
    let at_once = busy_polls(Duration::from_micros(50), Duration::ZERO, 2);
    let late = busy_polls(Duration::from_micros(50), Duration::from_millis(2), 2);
    let never = busy_polls(Duration::ZERO, Duration::ZERO, 2);
    if two_cpus {
        // At once: polling goes on unless the ACKs keep missing it or polling turns out no
        // faster than sleeping (this machine may be loaded); at least the first three waits
        // poll.
        assert!(at_once >= 3, "{at_once}");
        // Late: three misses, then 64 waits without polling, then three more misses at most
        // (more only if this machine stalled the server past an ACK's 2 ms).
        assert!((3..=10).contains(&late), "{late}");
    } else {
        assert_eq!((at_once, late), (0, 0));
    }
    assert_eq!(never, 0);
}

/// More runnable tasks than CPUs (a CPU hog besides the polling thread and its client): a
/// thread that polled would take the CPU someone waits for, so no wait polls, however fast
/// the client answers.
#[test]
fn busy_polling_stops_while_more_tasks_are_runnable_than_cpus() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    assert_eq!(
        busy_polls(Duration::from_micros(50), Duration::ZERO, cpus + 1),
        0
    );
    // The same client and a machine with a CPU to spare: it polls (the control).
    if cpus > 1 {
        assert!(busy_polls(Duration::from_micros(50), Duration::ZERO, cpus) >= 3);
    }
}

#[test]
fn duplicate_acks_do_not_double_the_data() {
    for lockstep_threads in [None, Some(0)] {
        duplicate_acks(lockstep_threads);
    }
}

fn duplicate_acks(lockstep_threads: Option<usize>) {
    let srv = TestServer::start_with(
        TftpConfig {
            lockstep_threads,
            ..config()
        },
        None,
    );
    srv.file("f", 5000);
    let c = raw_client("127.0.0.1");
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    c.send_to(&rrq("f", &[]), srv.addr).unwrap();
    let (p, tid) = recv(&c).unwrap();
    assert_eq!(describe(&p), "DATA 1 (512)");
    c.send_to(&ack(1), tid).unwrap();
    assert_eq!(describe(&recv(&c).unwrap().0), "DATA 2 (512)");
    for _ in 0..5 {
        c.send_to(&ack(1), tid).unwrap();
    }
    // Nothing but the timer's resend of DATA 2 (timeout 500 ms) may follow.
    assert!(recv(&c).is_none(), "a duplicate ACK triggered a send");
}

#[test]
fn a_retransmitted_rrq_does_not_start_a_second_transfer() {
    let srv = TestServer::start();
    srv.file("f", 100);
    let c = raw_client("127.0.0.1");
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    c.send_to(&rrq("f", &[("blksize", "1024")]), srv.addr)
        .unwrap();
    c.send_to(&rrq("f", &[("blksize", "1024")]), srv.addr)
        .unwrap();
    let (p, tid) = recv(&c).unwrap();
    assert_eq!(describe(&p), "OACK blksize=1024");
    c.send_to(&ack(0), tid).unwrap();
    let (p, from) = recv(&c).unwrap();
    assert_eq!((describe(&p), from), ("DATA 1 (100)".to_string(), tid));
    c.send_to(&ack(1), tid).unwrap();
    assert!(recv(&c).is_none(), "a second transfer is talking to us");
    let s = srv.stats.snapshot();
    assert_eq!((s.started, s.duplicate_requests), (1, 1), "{s:?}");
}

#[test]
fn silent_client_is_dropped_after_bounded_retransmits() {
    for lockstep_threads in [None, Some(0)] {
        silent_client_dropped(lockstep_threads);
    }
}

fn silent_client_dropped(lockstep_threads: Option<usize>) {
    let config = TftpConfig {
        timeout: Duration::from_millis(100),
        retries: 2,
        lockstep_threads,
        ..config()
    };
    let srv = TestServer::start_with(config, None);
    srv.file("f", 5000);
    let c = raw_client("127.0.0.1");
    c.set_read_timeout(Some(Duration::from_millis(600)))
        .unwrap();
    c.send_to(&rrq("f", &[]), srv.addr).unwrap();
    let mut copies = 0;
    while let Some((p, _)) = recv(&c) {
        assert_eq!(describe(&p), "DATA 1 (512)");
        copies += 1;
        assert!(copies <= 3, "more than 1 + retries sends");
    }
    assert_eq!(copies, 3);
    eventually(|| srv.stats.snapshot().failed == 1);
    let s = srv.stats.snapshot();
    assert_eq!((s.failed, s.active), (1, 0), "{s:?}");
}

/// The driver arms its retransmission timer lazily (it only moves it earlier, and re-arms it
/// when it fires at a deadline that has moved on). A client that ACKs steadily for several
/// timeout periods must never see a resend; when it then stops, the unacknowledged block comes
/// again one timeout later.
#[test]
fn a_steady_client_sees_no_resend_and_a_stalled_one_gets_the_last_block_again() {
    // Both drivers: a thread of its own (the default for a lone lock-step transfer) and a task.
    for lockstep_threads in [None, Some(0)] {
        steady_then_stalled(lockstep_threads);
    }
}

fn steady_then_stalled(lockstep_threads: Option<usize>) {
    let config = TftpConfig {
        timeout: Duration::from_millis(100),
        retries: 5,
        lockstep_threads,
        ..config()
    };
    let srv = TestServer::start_with(config, None);
    srv.file("f", 512 * 100);
    let c = raw_client("127.0.0.1");
    c.set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    c.send_to(&rrq("f", &[]), srv.addr).unwrap();
    let (p, tid) = recv(&c).unwrap();
    assert_eq!(describe(&p), "DATA 1 (512)");
    // 40 blocks at one every 15 ms: 600 ms, six timeout periods, every ACK well in time.
    for block in 1..=40u16 {
        std::thread::sleep(Duration::from_millis(15));
        c.send_to(&ack(block), tid).unwrap();
        let (p, from) = recv(&c).expect("server went silent");
        assert_eq!(from, tid);
        assert_eq!(
            describe(&p),
            format!("DATA {} (512)", block + 1),
            "a resend or a gap"
        );
    }
    // Silence: block 41 comes again after about one timeout.
    let stalled = std::time::Instant::now();
    let (p, _) = recv(&c).expect("no resend after the client stalled");
    assert_eq!(describe(&p), "DATA 41 (512)");
    let waited = stalled.elapsed();
    assert!(
        waited >= Duration::from_millis(60),
        "resent after {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(900),
        "resent after {waited:?}"
    );
}

#[test]
fn per_client_and_global_caps_answer_with_an_error() {
    let config = TftpConfig {
        max_transfers: 3,
        max_per_client: 2,
        // These clients never ACK; the unproven share has its own test (lockout.rs).
        unproven_percent: 100,
        ..config()
    };
    let srv = TestServer::start_with(config, None);
    srv.file("f", 100);
    // Each client asks and then waits without acking: its transfer stays active.
    let open = |ip: &str| {
        let c = raw_client(ip);
        c.send_to(&rrq("f", &[]), srv.addr).unwrap();
        let (p, from) = recv(&c).unwrap();
        (c, describe(&p), from)
    };
    let (_a1, d, _) = open("127.0.0.1");
    assert_eq!(d, "DATA 1 (100)");
    let (a2, d, a2_tid) = open("127.0.0.1");
    assert_eq!(d, "DATA 1 (100)");
    let (_a3, d, _) = open("127.0.0.1");
    assert_eq!(d, "ERROR 0 too many transfers from this client");
    let (_b1, d, _) = open("127.0.0.2");
    assert_eq!(d, "DATA 1 (100)");
    let (_c1, d, _) = open("127.0.0.3");
    assert_eq!(d, "ERROR 0 server busy, try again");
    // One transfer ends: its slot is free again.
    a2.send_to(&ack(1), a2_tid).unwrap();
    let mut admitted = false;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(20));
        let (_c, d, _) = open("127.0.0.3");
        if d == "DATA 1 (100)" {
            admitted = true;
            break;
        }
    }
    assert!(admitted, "a finished transfer did not free its slot");
    assert!(srv.stats.snapshot().busy >= 2);
}

#[test]
fn wildcard_listener_answers_from_the_address_the_request_was_sent_to() {
    let config = TftpConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        ..config()
    };
    let srv = TestServer::start_with(config, None);
    srv.file("f", 10);
    let c = raw_client("127.0.0.1");
    let target: SocketAddr = format!("127.0.0.5:{}", srv.port()).parse().unwrap();
    c.send_to(&rrq("f", &[]), target).unwrap();
    let (p, from) = recv(&c).unwrap();
    assert_eq!(describe(&p), "DATA 1 (10)");
    assert_eq!(from.ip().to_string(), "127.0.0.5");
    c.send_to(&ack(1), from).unwrap();
}

#[test]
fn shutdown_ends_running_transfers_with_an_error_after_the_grace_period() {
    for lockstep_threads in [None, Some(0)] {
        shutdown_ends_transfers(lockstep_threads);
    }
}

fn shutdown_ends_transfers(lockstep_threads: Option<usize>) {
    let config = TftpConfig {
        shutdown_grace: Duration::from_millis(300),
        timeout: Duration::from_secs(5),
        lockstep_threads,
        ..config()
    };
    let mut srv = TestServer::start_with(config, None);
    srv.file("f", 5000);
    let c = raw_client("127.0.0.1");
    c.send_to(&rrq("f", &[]), srv.addr).unwrap();
    let (p, _) = recv(&c).unwrap();
    assert_eq!(describe(&p), "DATA 1 (512)");
    srv.stop().unwrap();
    let (p, _) = recv(&c).expect("no error at shutdown");
    assert_eq!(describe(&p), "ERROR 0 server shutting down");
    // The request socket is closed: new requests get nothing.
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    c.send_to(&rrq("f", &[]), srv.addr).unwrap();
    assert!(recv(&c).is_none());
}

#[derive(Default)]
struct Counting {
    starts: AtomicUsize,
    finishes: AtomicUsize,
    bytes: AtomicUsize,
}

impl TransferObserver for Counting {
    fn on_start(&self, s: &TransferStart<'_>) {
        assert!(s.path.eq_ignore_ascii_case("dir/f"), "{}", s.path);
        self.starts.fetch_add(1, Ordering::SeqCst);
    }
    fn on_finish(&self, s: &TransferSummary<'_>) {
        assert!(s.outcome.is_success());
        self.bytes.fetch_add(s.bytes as usize, Ordering::SeqCst);
        self.finishes.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn observer_sees_start_and_finish_of_each_transfer() {
    let obs = Arc::new(Counting::default());
    let srv = TestServer::start_with(config(), Some(obs.clone()));
    srv.file("dir/f", 1234);
    // Backslashes and case fold like dnsmasq does.
    assert_eq!(raw_get(srv.addr, "\\DIR\\F").unwrap().len(), 1234);
    assert_eq!(raw_get(srv.addr, "dir/f").unwrap().len(), 1234);
    for _ in 0..100 {
        if obs.finishes.load(Ordering::SeqCst) == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(obs.starts.load(Ordering::SeqCst), 2);
    assert_eq!(obs.finishes.load(Ordering::SeqCst), 2);
    assert_eq!(obs.bytes.load(Ordering::SeqCst), 2468);
}

#[test]
fn ipv6_and_dual_stack_listeners_serve_both_families() {
    for (listen, client_ip, target_ip) in [
        ("[::1]:0", "::1", "::1"),
        ("[::]:0", "::1", "::1"),
        ("[::]:0", "127.0.0.1", "127.0.0.7"),
    ] {
        let config = TftpConfig {
            listen: listen.parse().unwrap(),
            ..config()
        };
        let srv = TestServer::start_with(config, None);
        srv.file("f", 600);
        let c = raw_client(client_ip);
        let target = SocketAddr::new(target_ip.parse().unwrap(), srv.port());
        c.send_to(&rrq("f", &[]), target).unwrap();
        let (p, from) = recv(&c).unwrap_or_else(|| panic!("{listen} {target}: no answer"));
        assert_eq!(describe(&p), "DATA 1 (512)", "{listen} {target}");
        assert_eq!(
            from.ip(),
            target.ip(),
            "{listen}: answered from another address"
        );
        c.send_to(&ack(1), from).unwrap();
        let (p, _) = recv(&c).unwrap();
        assert_eq!(describe(&p), "DATA 2 (88)");
        c.send_to(&ack(2), from).unwrap();
        assert!(
            eventually(|| srv.stats.snapshot().finished == 1),
            "{listen}"
        );
    }
}

#[test]
fn a_large_file_rewritten_mid_transfer_ends_it_with_an_error_not_mixed_bytes() {
    let srv = TestServer::start();
    // Larger than the file cache keeps (3 MiB): read from the file as it is sent.
    let path = srv.file("f", (3 << 20) + 1);
    let original = std::fs::read(&path).unwrap();
    let c = raw_client("127.0.0.1");
    c.send_to(&rrq("f", &[]), srv.addr).unwrap();
    let (p, tid) = recv(&c).unwrap();
    assert_eq!(describe(&p), "DATA 1 (512)");
    let mut got = p[4..].to_vec();
    // Replaced in place (same inode, new length and mtime), as a careless `cp` would.
    std::fs::write(&path, vec![0xAAu8; 150_000]).unwrap();
    let mut block = 1u16;
    let error = loop {
        c.send_to(&ack(block), tid).unwrap();
        let (p, _) = recv(&c).expect("server went silent");
        match proto::parse(&p).unwrap() {
            Packet::Data { block: b, data } => {
                assert_eq!(b, block + 1);
                got.extend_from_slice(data);
                block = b;
            }
            Packet::Error { .. } => break describe(&p),
            other => panic!("{other:?}"),
        }
    };
    assert!(error.starts_with("ERROR 0 read error"), "{error}");
    assert_eq!(
        got,
        original[..got.len()],
        "only bytes of the original were sent"
    );
    eventually(|| srv.stats.snapshot().failed == 1);
    assert_eq!(srv.stats.snapshot().failed, 1);
}

#[test]
fn a_small_file_rewritten_mid_transfer_is_sent_whole_as_it_was_and_then_as_it_is() {
    let srv = TestServer::start();
    let path = srv.file("ipxe.efi", 200_000);
    let original = std::fs::read(&path).unwrap();
    let c = raw_client("127.0.0.1");
    c.send_to(&rrq("ipxe.efi", &[]), srv.addr).unwrap();
    let (p, tid) = recv(&c).unwrap();
    assert_eq!(describe(&p), "DATA 1 (512)");
    let mut got = p[4..].to_vec();
    // Replaced in place (same inode, new length and mtime), as a careless `cp` would.
    let new = vec![0xAAu8; 150_000];
    std::fs::write(&path, &new).unwrap();
    let mut block = 1u16;
    loop {
        c.send_to(&ack(block), tid).unwrap();
        if got.len() == original.len() {
            break;
        }
        let (p, _) = recv(&c).expect("server went silent");
        match proto::parse(&p).unwrap() {
            Packet::Data { block: b, data } => {
                assert_eq!(b, block.wrapping_add(1));
                got.extend_from_slice(data);
                block = b;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(
        got == original,
        "the transfer did not send the original whole"
    );
    assert!(eventually(|| srv.stats.snapshot().finished == 1));
    // The next transfer sends the file as it is now.
    assert_eq!(raw_get(srv.addr, "ipxe.efi").as_deref(), Ok(&new[..]));
}
