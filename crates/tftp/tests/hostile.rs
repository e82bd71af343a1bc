//! No amplification: a requester that never proves it is there (a spoofed source, or a silent
//! one) gets one datagram (the first block or the OACK) plus bounded retransmits of that same
//! datagram, never a window; a flood of such requests from many ports of one address is capped
//! per client. Bytes sent vs received are counted on real UDP sockets.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

mod common;

use std::time::Duration;

use chainboot_tftp::TftpConfig;
use common::*;

fn silent_config(max_per_client: usize) -> TftpConfig {
    TftpConfig {
        timeout: Duration::from_millis(100),
        retries: 2,
        max_per_client,
        ..config()
    }
}

/// Sends `request` and never answers; every datagram that comes back until 700 ms of silence
/// (the server gives up after 100 ms × (1 + 2 retries)).
fn listen_silently(server: std::net::SocketAddr, request: &[u8]) -> Vec<Vec<u8>> {
    let c = raw_client("127.0.0.1");
    c.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    c.send_to(request, server).unwrap();
    let mut got = Vec::new();
    while let Some((p, _)) = recv(&c) {
        got.push(p);
        assert!(got.len() <= 10, "a stream of datagrams to a silent client");
    }
    got
}

#[test]
fn a_silent_requester_gets_one_datagram_and_its_retransmits_never_a_window() {
    let srv = TestServer::start_with(silent_config(1000), None);
    srv.file("big", 4 << 20);
    let cases: [(&[(&str, &str)], &str); 5] = [
        (&[], "DATA 1 (512)"),
        (&[("windowsize", "64")], "OACK windowsize=64"),
        (
            &[("blksize", "1468"), ("windowsize", "64"), ("tsize", "0")],
            "OACK blksize=1468 windowsize=64 tsize=4194304",
        ),
        (
            &[("blksize", "65464"), ("windowsize", "64")],
            "OACK blksize=65464 windowsize=64",
        ),
        (&[("blksize", "65464")], "OACK blksize=65464"),
    ];
    let mut report = Vec::new();
    for (i, (options, first)) in cases.iter().enumerate() {
        let request = rrq("big", options);
        let got = listen_silently(srv.addr, &request);
        assert!(!got.is_empty(), "{options:?}: no answer at all");
        assert_eq!(describe(&got[0]), *first, "{options:?}");
        assert!(
            got.iter().all(|p| p == &got[0]),
            "{options:?}: more than the first datagram before any ACK: {:?}",
            got.iter().map(|p| describe(p)).collect::<Vec<_>>()
        );
        assert!(
            got.len() <= 3,
            "{options:?}: {} sends > 1 + retries",
            got.len()
        );
        let sent: usize = got.iter().map(Vec::len).sum();
        assert!(
            sent <= 3 * 516,
            "{options:?}: {sent} bytes to a silent client"
        );
        report.push(format!(
            "{options:?}: {} datagrams, {sent} bytes for a {}-byte request ({:.1}x)",
            got.len(),
            request.len(),
            sent as f64 / request.len() as f64
        ));
        assert!(
            eventually(|| srv.stats.snapshot().failed == i as u64 + 1),
            "{options:?}: silent transfer not given up"
        );
    }
    let s = srv.stats.snapshot();
    assert_eq!((s.active, s.finished), (0, 0), "{s:?}");
    eprintln!("{}", report.join("\n"));
}

#[test]
fn a_request_flood_from_one_address_is_capped_per_client_and_each_gets_one_answer() {
    let srv = TestServer::start_with(silent_config(4), None);
    srv.file("big", 1 << 20);
    // 40 requests from 40 ports of 127.0.0.1, all at once, none ever ACKing.
    let sockets: Vec<_> = (0..40)
        .map(|_| {
            let c = raw_client("127.0.0.1");
            c.send_to(&rrq("big", &[("windowsize", "64")]), srv.addr)
                .unwrap();
            c
        })
        .collect();
    // The server gives up on silent transfers after 300 ms: everything it will ever send is
    // queued in the sockets after this.
    assert!(eventually(|| {
        let s = srv.stats.snapshot();
        s.failed == 4 && s.active == 0
    }));
    std::thread::sleep(Duration::from_millis(200));
    let (mut served, mut refused, mut total_bytes) = (0, 0, 0);
    for c in &sockets {
        c.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        while let Some((p, _)) = recv(c) {
            got.push(p);
            assert!(got.len() <= 10);
        }
        assert!(!got.is_empty(), "a request got no answer at all");
        total_bytes += got.iter().map(Vec::len).sum::<usize>();
        let first = describe(&got[0]);
        if first == "ERROR 0 too many transfers from this client" {
            assert_eq!(got.len(), 1, "a refusal is sent once");
            refused += 1;
        } else {
            assert_eq!(first, "OACK windowsize=64");
            assert!(got.len() <= 3 && got.iter().all(|p| p == &got[0]));
            served += 1;
        }
    }
    assert_eq!(served, 4, "transfers for one client address");
    assert_eq!(served + refused, 40);
    // 40 small requests, at most 4 × 3 OACKs plus 36 short errors back.
    assert!(total_bytes < 40 * 60, "{total_bytes} bytes back");
    eprintln!("40 silent requests: {served} admitted, {refused} refused, {total_bytes} bytes back");
    assert!(eventually(|| srv.stats.snapshot().active == 0));
}
