//! Floods against the real binary on loopback, as a stranger on the boot network would send
//! them: large event bodies with a live-stream reader that never reads, more event streams
//! than one address may hold, and thousands of requests for long missing paths over HTTP and
//! TFTP. Through each, the server's memory (VmRSS from /proc/PID/status) stays under
//! 150 MiB, the store (database and WAL file sizes) under its configured budget, and other
//! machines' history untouched. Lists that floods make long come in pages, which the CLI
//! follows.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::*;

const RSS_LIMIT_KIB: u64 = 150 * 1024;

struct Running {
    dir: tempfile::TempDir,
    cfg: std::path::PathBuf,
    /// The boot listener and the management listener (API, metrics, event stream).
    http: String,
    api: String,
    tftp: String,
    token: String,
    server: Server,
}

fn start(extra: &str) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = loopback_config(dir.path(), extra);
    let mut server = Server::start_in(None, &cfg, dir.path().join("log"));
    let http = server.listening("HTTP");
    let api = server.listening("API");
    let tftp = server.listening("TFTP");
    let token = std::fs::read_to_string(dir.path().join("state/api.token"))
        .unwrap()
        .trim()
        .to_string();
    Running {
        dir,
        cfg,
        http,
        api,
        tftp,
        token,
        server,
    }
}

impl Running {
    fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.server.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// The database file and its write-ahead log, in bytes.
    fn store_files(&self) -> (u64, u64) {
        let size = |name: &str| {
            std::fs::metadata(self.dir.path().join("state").join(name))
                .map(|m| m.len())
                .unwrap_or(0)
        };
        (size("chainboot.sqlite3"), size("chainboot.sqlite3-wal"))
    }

    fn store_bytes(&self) -> u64 {
        let (db, wal) = self.store_files();
        db + wal
    }

    /// One request on its own connection to the management listener: (status, body).
    fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        self.request_to(&self.api, method, path, body)
    }

    /// One request on its own connection to the boot listener, as machines send them.
    fn boot_request(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        self.request_to(&self.http, method, path, body)
    }

    fn request_to(&self, to: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let mut s = TcpStream::connect(to).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {to}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.token,
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        // The server may answer (413) before taking the whole body, and close.
        let _ = s.write_all(body);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    fn get_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.request("GET", path, b"");
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&dechunk(&body)).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }

    fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.request("GET", "/metrics", b"");
        dechunk(&body)
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics"))
    }

    /// Opens a live event stream and reads its response head; the socket is returned unread
    /// past that. `rcvbuf`: a small receive buffer makes a reader that never reads fill up fast.
    fn open_stream(&self, rcvbuf: Option<usize>) -> (u16, TcpStream) {
        let addr: SocketAddr = self.api.parse().unwrap();
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if let Some(n) = rcvbuf {
            sock.set_recv_buffer_size(n).unwrap();
        }
        sock.connect(&addr.into()).unwrap();
        let mut s: TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(
            s,
            "GET /api/v1/events/stream HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
            self.api, self.token
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, s)
    }
}

/// A chunked body's payload (good enough for JSON and text bodies).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, tail)) = rest.split_once("\r\n") else {
            return body.to_string();
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_string();
        };
        if n == 0 || tail.len() < n {
            return out;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
}

/// The largest body the events route accepts: an event, a 2000-byte message and a detail.
fn max_size_event(i: usize) -> Vec<u8> {
    let body = serde_json::json!({
        "event": format!("progress-{i}"),
        "message": "m".repeat(2000),
        "detail": { "pad": "d".repeat(1900) },
    })
    .to_string();
    assert!(body.len() <= 4096, "{}", body.len());
    body.into_bytes()
}

#[test]
fn event_floods_with_a_stalled_stream_reader_keep_memory_and_the_store_bounded() {
    let max_bytes: u64 = 2 * 1024 * 1024;
    let r = start(&format!("[events]\nmax_bytes = {max_bytes}\n"));
    let mac = "52:54:00:00:30:01";
    let (status, _) = r.boot_request("GET", &format!("/ipxe?mac={mac}&platform=pcbios"), b"");
    assert_eq!(status, 200);
    let events = format!("/api/v1/machines/{mac}/events");

    // A reader that never reads, then three more streams: the address holds its four, a fifth
    // is refused.
    let (status, mut stalled) = r.open_stream(Some(4096));
    assert_eq!(status, 200);
    let others: Vec<TcpStream> = (0..3)
        .map(|_| {
            let (status, s) = r.open_stream(None);
            assert_eq!(status, 200);
            s
        })
        .collect();
    assert_eq!(
        r.open_stream(None).0,
        429,
        "a fifth stream from one address"
    );

    let mut peak_rss = r.rss_kib();
    let (mut peak_db, mut peak_wal) = r.store_files();
    let mut sample = |r: &Running| {
        peak_rss = peak_rss.max(r.rss_kib());
        let (db, wal) = r.store_files();
        peak_db = peak_db.max(db);
        peak_wal = peak_wal.max(wal);
    };
    // The attack as reported: 300 posts of a 1 MB body. Refused before parsing, stored never.
    let huge = vec![b' '; 1_000_000];
    for i in 0..300 {
        let (status, body) = r.boot_request("POST", &events, &huge);
        assert_eq!(status, 413, "{body}");
        if i % 50 == 0 {
            sample(&r);
        }
    }
    // Then bodies of the largest accepted size, far more than the store's budget and the live
    // channel hold.
    let started = Instant::now();
    for i in 0..4000 {
        let (status, body) = r.boot_request("POST", &events, &max_size_event(i));
        assert_eq!(status, 202, "{body}");
        if i % 100 == 0 {
            sample(&r);
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "flood too slow"
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    sample(&r);
    eprintln!(
        "event flood: VmRSS peak {peak_rss} KiB, database peak {peak_db} bytes, WAL peak {peak_wal} bytes"
    );
    assert!(
        peak_rss < RSS_LIMIT_KIB,
        "VmRSS peaked at {peak_rss} KiB:\n{}",
        r.server.log_text()
    );
    // Unbounded, this flood alone is over 30 MB of pages. The events stay within about 1.1
    // times their budget (pruned after each sixteenth of it), beside the machine's row and the
    // schema; the write-ahead log within its 4 MiB checkpoint size plus one batch's pages.
    assert!(
        peak_db < max_bytes * 5 / 4 + 512 * 1024,
        "database peaked at {peak_db} bytes"
    );
    assert!(peak_wal < 6 * 1024 * 1024, "WAL peaked at {peak_wal} bytes");

    // Only the known fields were kept.
    let kept = r.get_json(&format!("/api/v1/events?mac={mac}&kind=api&limit=1000"));
    let kept = kept.as_array().unwrap();
    assert!(!kept.is_empty());
    for e in kept {
        let body = &e["detail"]["body"];
        assert_eq!(body["message"].as_str().map(str::len), Some(2000), "{e}");
        assert!(e.to_string().len() < 5000, "{}", e.to_string().len());
    }
    assert!(r.metric("chainboot_events_pruned_total") > 0.0);

    // The stalled reader, read at last: it fell behind, was told so, and its stream ended.
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    while !seen.windows(10).any(|w| w == b"event: end") {
        match stalled.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.contains("event: lagged"), "{} bytes", seen.len());
    assert!(seen.contains("event: end"));
    assert!(r.metric("chainboot_event_streams_closed_total{reason=\"lagged\"}") >= 1.0);
    assert!(r.metric("chainboot_event_streams_closed_total{reason=\"per_ip\"}") >= 1.0);
    drop(others);
}

#[test]
fn a_flood_of_long_missing_paths_is_bounded_and_spares_machines_history() {
    let r = start("[events]\nmax_unattributed = 100\nrefused_per_second = 10\n");
    // The victim's history: its script and kernel, from this address (which /ipxe?mac= ties
    // to its MAC).
    let victim = "52:54:00:00:30:02";
    let (status, _) = r.boot_request("GET", &format!("/ipxe?mac={victim}&platform=pcbios"), b"");
    assert_eq!(status, 200);
    let (status, _) = r.boot_request("GET", "/files/vmlinuz", b"");
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(300));
    let history = |r: &Running| r.get_json(&format!("/api/v1/events?mac={victim}&limit=1000"));
    let before = history(&r);
    assert!(before.as_array().unwrap().len() >= 2, "{before}");
    let log_before = std::fs::metadata(&r.server.log).unwrap().len();
    let store_before = r.store_bytes();

    // Just under the 16 KiB request head limit, so the request is served (a 404), not cut off.
    let long: String = "a".repeat(15_000);
    let tftp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rrq = |name: &str| {
        let mut p = vec![0, 1];
        p.extend_from_slice(name.as_bytes());
        p.extend_from_slice(b"\0octet\0");
        tftp.send_to(&p, &r.tftp).unwrap();
    };
    let mut peak_rss = r.rss_kib();
    let started = Instant::now();
    for i in 0..2000 {
        // A first-stage name that does not exist, long paths over TFTP, 16 KiB paths over HTTP.
        rrq("nope/undionly.kpxe");
        rrq(&format!("{}/{i}/undionly.kpxe", &long[..400]));
        let (status, _) = r.boot_request("GET", &format!("/files/{long}/{i}/undionly.kpxe"), b"");
        assert!((400..500).contains(&status), "{status}");
        if i % 200 == 0 {
            peak_rss = peak_rss.max(r.rss_kib());
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "flood too slow"
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    peak_rss = peak_rss.max(r.rss_kib());
    let elapsed = started.elapsed().as_secs() + 2;
    eprintln!("path flood: VmRSS peak {peak_rss} KiB in {elapsed}s");

    assert!(peak_rss < RSS_LIMIT_KIB, "VmRSS peaked at {peak_rss} KiB");
    // Nothing was filed under the victim, and no loop was made up from strangers' requests.
    assert_eq!(history(&r), before, "the victim's history changed");
    let loops = r.get_json("/api/v1/events?kind=chainload-loop");
    assert_eq!(loops, serde_json::json!([]));
    assert_eq!(r.metric("chainboot_chainload_loops_total"), 0.0);
    // Refused requests were recorded at the configured rate (a burst of ten seconds' worth),
    // the rest counted.
    let recorded = r.metric("chainboot_events_recorded_total");
    let dropped = r.metric("chainboot_events_refused_dropped_total");
    assert!(
        recorded <= 110.0 + 10.0 * elapsed as f64,
        "{recorded} recorded in {elapsed}s"
    );
    // At least the HTTP requests beyond the rate (the TFTP server itself drops some repeated
    // requests from one port before they become events).
    assert!(dropped >= 1500.0, "{dropped} dropped");
    let unattributed = r.get_json("/api/v1/events?limit=1000");
    for e in unattributed.as_array().unwrap() {
        assert!(e["mac"].is_null() || e["mac"] == victim, "{e}");
        if let Some(p) = e["detail"]["path"].as_str() {
            assert!(p.len() <= 300, "an event path of {} bytes", p.len());
        }
    }
    // Log lines and the store: a few hundred bytes per request, not the path twice.
    let log = r.server.log_text();
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 1024, "a log line of {longest} bytes");
    let log_growth = std::fs::metadata(&r.server.log).unwrap().len() - log_before;
    assert!(log_growth < 6000 * 700, "log grew {log_growth} bytes");
    // The store holds what the rate limit let through (more on a slow machine, where the flood
    // takes longer), each event a few hundred bytes, plus the write-ahead log, which grows
    // until a checkpoint truncates it to 4 MiB: bounded by that, not by the 6000 requests'
    // 90 MB of paths.
    let store_growth = r.store_bytes().saturating_sub(store_before);
    let allowed = (4 << 20) + 512 * 1024 + recorded as u64 * 3 * 1024;
    assert!(
        store_growth < allowed,
        "store grew {store_growth} bytes for {recorded} events (allowed {allowed})"
    );
}

#[test]
fn long_lists_come_in_pages_and_the_cli_follows_them() {
    let r = start("");
    // 1100 machines (an operator's labels make them, one request each) and 1100 events.
    let labels = br#"{"rack": "r1"}"#;
    let mac = |i: usize| format!("52:54:00:01:{:02x}:{:02x}", i / 256, i % 256);
    for i in 0..1100 {
        let (status, body) = r.request(
            "PUT",
            &format!("/api/v1/machines/{}/labels", mac(i)),
            labels,
        );
        assert_eq!(status, 200, "{body}");
        let (status, body) = r.boot_request(
            "POST",
            &format!("/api/v1/machines/{}/events", mac(0)),
            format!(r#"{{"event": "step-{i}"}}"#).as_bytes(),
        );
        assert_eq!(status, 202, "{body}");
    }
    std::thread::sleep(Duration::from_millis(300));

    let first = r.get_json("/api/v1/machines?limit=5000");
    let first = first.as_array().unwrap();
    assert_eq!(first.len(), 1000, "a page holds 1000 at most");
    let last = first[999]["mac"].as_str().unwrap();
    assert_eq!(last, mac(999), "MAC order");
    let rest = r.get_json(&format!("/api/v1/machines?after={last}"));
    assert_eq!(rest.as_array().unwrap().len(), 100);
    assert_eq!(rest[0]["mac"], mac(1000));

    let newest = r.get_json("/api/v1/events?kind=api&limit=5000");
    let newest = newest.as_array().unwrap();
    assert_eq!(newest.len(), 1000);
    let oldest_id = newest[999]["id"].as_i64().unwrap();
    let older = r.get_json(&format!("/api/v1/events?kind=api&before={oldest_id}"));
    assert_eq!(older.as_array().unwrap().len(), 100);
    assert_eq!(older[99]["detail"]["event"], "step-0");

    let url = format!("http://{}", r.api);
    let c = r.cfg.to_str().unwrap();
    let (code, out) = chainboot(&["machines", "-c", c, "--server", &url, "--json", "list"]);
    assert_eq!(code, 0, "{out}");
    let all: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 1100, "every page followed");
    let (code, out) = chainboot(&[
        "events", "-c", c, "--server", &url, "list", "--kind", "api", "--limit", "1050",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().count(), 1050, "{out}");
}

#[test]
fn a_host_naming_another_machines_mac_does_not_write_into_its_timeline() {
    require_root_and(&["ip", "curl", "tftp"]);
    let net = NetPair::new("fl", 24);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("chainboot.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\ninterfaces = [\"srv0\"]\nstate_dir = \"{}\"\n\
             [ipv6]\nrouter_advertisements = \"off\"\n[dhcp]\nmode = \"off\"\n\
             [tftp]\nlisten = \"{ip}:0\"\n[http]\nlisten = \"{ip}:0\"\n\
             [api]\nlisten = \"127.0.0.1:0\"\nread_requires_token = false\n",
            dir.path().join("state").display(),
            ip = net.server_ip
        ),
    )
    .unwrap();
    let mut server = Server::start_in(Some(&net.server), &cfg, dir.path().join("log"));
    let http = server.listening("HTTP");
    let api = server.listening("API");
    let tftp = server.listening("TFTP");
    let victim = "52:54:00:00:30:0a";
    let attacker = |cmd: &str| sh(&format!("ip netns exec {} {cmd}", net.client));
    // The attacker names the victim's MAC from its own address, then fetches the first stage
    // again and again: none of it may be filed under the victim, nor raise a chainload-loop
    // alert for a machine that never booted.
    attacker(&format!(
        "curl -s -o /dev/null --max-time 10 'http://{http}/ipxe?mac={victim}&platform=efi'"
    ));
    let (host, port) = tftp.rsplit_once(':').unwrap();
    for _ in 0..3 {
        attacker(&format!(
            "tftp {host} {port} -m binary -c get ipxe.efi /dev/null"
        ));
    }
    std::thread::sleep(Duration::from_millis(300));
    // The operator reads the API on the server host.
    let get = |path: &str| -> serde_json::Value {
        let out = sh(&format!(
            "ip netns exec {} curl -s --max-time 10 'http://{api}{path}'",
            net.server
        ));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let victims = get(&format!("/api/v1/events?mac={victim}&kind=tftp"));
    assert_eq!(victims, serde_json::json!([]), "filed under the victim");
    let loops = get(&format!("/api/v1/events?mac={victim}&kind=chainload-loop"));
    assert_eq!(loops, serde_json::json!([]));
    // The transfers happened, and are on record under the attacker's own MAC (the event log
    // writes in batches: wait for the third, boundedly).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut all = get("/api/v1/events?kind=tftp");
    while all.as_array().map_or(0, Vec::len) < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        all = get("/api/v1/events?kind=tftp");
    }
    assert_eq!(all.as_array().unwrap().len(), 3, "{all}");
    assert!(
        all[0]["mac"].is_string() && all[0]["mac"] != victim,
        "{all}"
    );
}
