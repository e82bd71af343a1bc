//! A boot storm against a forger in the same /24, on real UDP sockets: the forger's requests
//! (addresses nobody leased, never acknowledging) fill `max_per_prefix` and the rest of them are
//! refused, while machines whose addresses the server's [`Vouch`] knows (in the binary: a bound
//! lease of chainboot's DHCP, not contradicted by the neighbour table) are all admitted over the
//! cap, one transfer per address, and get their files, tftp-hpa's client among them.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

mod common;

use std::collections::HashSet;
use std::net::{IpAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chainboot_tftp::proto::{self, Packet};
use chainboot_tftp::{TftpConfig, Vouch};
use common::*;

/// The addresses "leased" in this test: tftp-hpa's (127.0.0.1) and the raw machines'.
struct Leases(HashSet<IpAddr>);

impl Vouch for Leases {
    fn vouches_for(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip)
    }
}

const MACHINES: u8 = 40;
const CAP: usize = 4;

fn machine_ip(i: u8) -> String {
    format!("127.0.0.{}", 100 + i)
}

fn storm_config() -> TftpConfig {
    TftpConfig {
        max_transfers: 200,
        max_per_client: 4,
        max_per_prefix: CAP,
        unproven_percent: 50,
        unproven_retries: 2,
        // The forger's transfers hold the prefix for 3 x 3 s: long enough for the whole storm.
        timeout: Duration::from_secs(3),
        ..config()
    }
}

/// The first answer to a request a socket already sent.
fn first_answer(s: &UdpSocket) -> String {
    recv(s).map_or_else(|| "nothing".into(), |(p, _)| describe(&p))
}

/// Completes a lock-step fetch (no options) whose RRQ `s` already sent; repeated blocks (the
/// server resends while the client is slow to answer) are acknowledged again and skipped.
fn finish_get(s: &UdpSocket) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut expect: u16 = 1;
    for _ in 0..100_000 {
        let (p, from) = recv(s).ok_or("timeout")?;
        match proto::parse(&p) {
            Ok(Packet::Data { block, data }) if block == expect => {
                out.extend_from_slice(data);
                s.send_to(&ack(block), from).unwrap();
                if data.len() < 512 {
                    return Ok(out);
                }
                expect = expect.wrapping_add(1);
            }
            Ok(Packet::Data { block, .. }) if block == expect.wrapping_sub(1) => {
                s.send_to(&ack(block), from).unwrap();
            }
            _ => return Err(describe(&p)),
        }
    }
    Err("too many blocks".into())
}

#[test]
fn a_storm_of_leased_machines_passes_the_prefix_cap_that_still_holds_a_forger() {
    require("tftp");
    let mut leased: HashSet<IpAddr> = (0..MACHINES)
        .map(|i| machine_ip(i).parse().unwrap())
        .collect();
    leased.insert("127.0.0.1".parse().unwrap());
    let srv = TestServer::start_vouched(storm_config(), Arc::new(Leases(leased)));
    let image = srv.file("ipxe.efi", 30 * 512 + 123);
    let stats = srv.stats.clone();
    let request = rrq("ipxe.efi", &[]);

    // The forger: twenty addresses of the same /24 that nobody leased, never answering.
    let forger: Vec<UdpSocket> = (2..22)
        .map(|a| {
            let s = raw_client(&format!("127.0.0.{a}"));
            s.send_to(&request, srv.addr).unwrap();
            s
        })
        .collect();
    assert!(eventually(|| stats.snapshot().busy_prefix == 16));
    let answers: Vec<String> = forger.iter().map(first_answer).collect();
    let admitted = answers.iter().filter(|a| a.starts_with("DATA 1")).count();
    assert_eq!(admitted, CAP, "{answers:?}");
    assert_eq!(
        answers
            .iter()
            .filter(|a| *a == "ERROR 0 too many transfers from this network")
            .count(),
        20 - CAP,
        "{answers:?}"
    );

    // The storm: every machine asks while the prefix is full, and none has answered yet.
    let machines: Vec<UdpSocket> = (0..MACHINES)
        .map(|i| {
            let s = raw_client(&machine_ip(i));
            s.send_to(&request, srv.addr).unwrap();
            s
        })
        .collect();
    assert!(
        eventually(|| stats.snapshot().unproven == CAP as u64 + u64::from(MACHINES)),
        "{:?}",
        stats.snapshot()
    );
    assert_eq!(stats.snapshot().leased_over_prefix, u64::from(MACHINES));

    // Still capped: the forger from a fresh address of its own, and a second transfer from a
    // machine's address (another port) while its first one is unproven.
    let again = raw_client("127.0.0.30");
    again.send_to(&request, srv.addr).unwrap();
    assert_eq!(
        first_answer(&again),
        "ERROR 0 too many transfers from this network"
    );
    let second = raw_client(&machine_ip(0));
    second.send_to(&request, srv.addr).unwrap();
    assert_eq!(
        first_answer(&second),
        "ERROR 0 too many transfers from this network"
    );

    // Every machine gets the file, in parallel, through the forger's hold on the prefix.
    let expected = std::fs::read(&image).unwrap();
    let fetched: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = machines
            .iter()
            .map(|s| scope.spawn(move || finish_get(s)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, got) in fetched.iter().enumerate() {
        assert!(
            got.as_ref().is_ok_and(|b| *b == expected),
            "machine {i}: {:?}",
            got.as_ref().map(Vec::len)
        );
    }
    // The forger still holds its four places (its transfers lapse 9 s after their requests).
    assert_eq!(
        stats.snapshot().unproven,
        CAP as u64,
        "{:?}",
        stats.snapshot()
    );

    // tftp-hpa from 127.0.0.1, a leased address of the full prefix, gets its file too.
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("ipxe.efi");
    let mut child = Command::new("tftp")
        .args([
            "-m",
            "octet",
            "127.0.0.1",
            &srv.port().to_string(),
            "-c",
            "get",
            "ipxe.efi",
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
    assert_eq!(sha256(&local), sha256(&image));
    assert!(eventually(
        || stats.snapshot().finished == u64::from(MACHINES) + 1
    ));
    let s = stats.snapshot();
    // tftp-hpa too was admitted over the forger's full prefix.
    assert_eq!(s.leased_over_prefix, u64::from(MACHINES) + 1, "{s:?}");
    assert_eq!(s.busy_prefix, 16 + 2, "{s:?}");
}
