//! Hostile HTTP clients against the real binary on loopback: the API refuses oversized and
//! malformed JSON with a status and a message and changes nothing; slowloris connections that
//! keep trickling bytes are cut off and never block other clients.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

struct Running {
    dir: tempfile::TempDir,
    http: String,
    api: String,
    _server: Server,
}

/// The loopback config with `http_keys` added to its `[http]` section.
fn start(http_keys: &str) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = loopback_config(dir.path(), "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("[http]\n"));
    std::fs::write(
        &cfg,
        text.replace("[http]\n", &format!("[http]\n{http_keys}")),
    )
    .unwrap();
    let mut server = Server::start_in(None, &cfg, dir.path().join("log"));
    let http = server.listening("HTTP");
    let api = server.listening("API");
    Running {
        dir,
        http,
        api,
        _server: server,
    }
}

/// Loopback only: no root needed, but a missing tool is a failure, not a skip.
fn require_tools(tools: &[&str]) {
    for t in tools {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t} >/dev/null"))
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "this test needs `{t}` (bash .ci/install-deps installs it)"
        );
    }
}

/// curl: (status, body).
fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl (run .ci/install-deps)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_string(), body.to_string())
}

/// curl that must complete the exchange: a reset or a cut connection fails the test with
/// curl's own message instead of passing on a half-read answer.
fn curl_whole(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl (run .ci/install-deps)");
    assert!(
        out.status.success(),
        "curl {args:?}: {} ({})",
        String::from_utf8_lossy(&out.stderr).trim(),
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_string(), body.to_string())
}

#[test]
fn the_api_refuses_oversized_and_malformed_json_with_a_message_and_changes_nothing() {
    require_tools(&["curl"]);
    let r = start("");
    let token = std::fs::read_to_string(r.dir.path().join("state/api.token")).unwrap();
    let auth = format!("Authorization: Bearer {}", token.trim());
    let mac = "52:54:00:00:20:01";
    let base = format!("http://{}/api/v1/machines/{mac}", r.api);
    // A machine's own reports go to the boot listener; the operator's API is on its own.
    let events_url = format!("http://{}/api/v1/machines/{mac}/events", r.http);
    // The machine exists once iPXE asked for its script; give it a label and a profile.
    let (code, _) = curl(&[&format!("http://{}/ipxe?mac={mac}&platform=pcbios", r.http)]);
    assert_eq!(code, "200");
    let json = ["-H", "Content-Type: application/json"];
    let put = |what: &str, body_file: &std::path::Path| {
        let data = format!("@{}", body_file.display());
        curl(
            &[
                &["-X", "PUT", "-H", &auth][..],
                &json,
                &["--data-binary", &data, &format!("{base}/{what}")],
            ]
            .concat(),
        )
    };
    let post_event = |body_file: &std::path::Path| {
        let data = format!("@{}", body_file.display());
        curl(
            &[
                &["-X", "POST", "-H", &auth][..],
                &json,
                &["--data-binary", &data, &events_url],
            ]
            .concat(),
        )
    };
    let file = |name: &str, bytes: Vec<u8>| {
        let p = r.dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let good_labels = file("labels.json", br#"{"rack": "r1"}"#.to_vec());
    let good_profile = file("profile.json", br#"{"profile": "rescue"}"#.to_vec());
    assert_eq!(put("labels", &good_labels).0, "200");
    assert_eq!(put("profile", &good_profile).0, "200");

    let two_mib = 2 << 20;
    let mut big_json = br#"{"rack": ""#.to_vec();
    big_json.extend(std::iter::repeat_n(b'x', two_mib));
    big_json.extend(br#""}"#);
    let oversized = [
        file("big.bin", vec![b'a'; two_mib]),
        file("big.json", big_json),
    ];
    let mut nested = vec![b'['; 400_000];
    nested.extend(vec![b']'; 400_000]);
    let many_labels: String = (0..50_000)
        .map(|i| format!("\"k{i}\": \"v\""))
        .collect::<Vec<_>>()
        .join(",");
    let malformed = [
        file("garbage", b"garbage{{\x00\xff".to_vec()),
        file("empty", Vec::new()),
        file("truncated", br#"{"rack": "r"#.to_vec()),
        file(
            "wrongtype",
            br#"{"rack": 5, "profile": 7, "event": 9}"#.to_vec(),
        ),
        file("array", b"[1, 2, 3]".to_vec()),
        file("nested", nested),
        file("badutf8", b"{\"rack\": \"\xff\xfe\"}".to_vec()),
        file("manylabels", format!("{{{many_labels}}}").into_bytes()),
    ];
    for f in &oversized {
        for (what, (code, body)) in [
            ("labels", put("labels", f)),
            ("profile", put("profile", f)),
            ("events", post_event(f)),
        ] {
            assert_eq!(code, "400", "{what} {f:?}: {body}");
            assert!(
                body.contains("\"error\"") && body.contains("too large"),
                "{what} {f:?}: 400 without a JSON message: {body}"
            );
        }
    }
    // The same without a Content-Length (chunked): cut off while buffering, 400 and a message,
    // and the connection closed only after curl has sent its body and read the answer.
    for what in ["labels", "profile", "events"] {
        let method = if what == "events" { "POST" } else { "PUT" };
        let data = format!("@{}", oversized[1].display());
        let (code, body) = curl_whole(&[
            "-X",
            method,
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &data,
            &if what == "events" {
                events_url.clone()
            } else {
                format!("{base}/{what}")
            },
        ]);
        assert_eq!(code, "400", "chunked {what}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            v["error"]
                .as_str()
                .unwrap_or_default()
                .contains("length limit"),
            "chunked {what}: {body}"
        );
    }
    for f in &malformed {
        // The events route takes a few KiB at most: larger is 413 before any parsing.
        let big = std::fs::metadata(f).unwrap().len() > 4096;
        for (what, (code, body)) in [
            ("labels", put("labels", f)),
            ("profile", put("profile", f)),
            ("events", post_event(f)),
        ] {
            let expected = if what == "events" && big {
                "413"
            } else {
                "400"
            };
            assert_eq!(code, expected, "{what} {f:?}: {body}");
            let v: serde_json::Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("{what} {f:?}: not JSON ({e}): {body}"));
            let msg = v["error"].as_str().unwrap_or_default();
            assert!(!msg.is_empty(), "{what} {f:?}: no message: {body}");
            assert!(
                msg.len() < 4096,
                "{what} {f:?}: a {} byte message",
                msg.len()
            );
        }
    }
    // Nothing changed, and the server still answers.
    let (code, body) = curl(&[&base]);
    assert_eq!(code, "200");
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(m["labels"], serde_json::json!({"rack": "r1"}), "{body}");
    assert_eq!(m["pinned_profile"], "rescue", "{body}");
    assert_eq!(curl(&[&format!("http://{}/healthz", r.api)]).0, "200");
}

/// A connection sending its request head one byte at a time.
struct Trickle {
    sock: TcpStream,
    sent: usize,
    closed_by_server: bool,
}

const HEAD: &[u8] = b"GET /files/vmlinuz HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

impl Trickle {
    /// One more byte; notes whether the server has closed the connection.
    fn step(&mut self) {
        if self.closed_by_server {
            return;
        }
        let mut buf = [0u8; 1024];
        match self.sock.read(&mut buf) {
            Ok(_) => self.closed_by_server = true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => self.closed_by_server = true,
        }
        if !self.closed_by_server {
            let b = HEAD[self.sent % HEAD.len()];
            if self.sock.write(&[b]).is_err() {
                self.closed_by_server = true;
            }
            self.sent += 1;
        }
    }
}

#[test]
fn slowloris_connections_are_cut_off_and_never_block_other_clients() {
    require_tools(&["curl"]);
    // Every client here is 127.0.0.1: lift the per-address cap so that the 200 tricklers all
    // hold a connection (the cap has its own test in crates/http).
    let r = start("header_read_timeout = \"1s\"\nmax_connections_per_client = 4096\n");
    let addr = r.http.clone();
    let trickler = std::thread::spawn(move || {
        let mut conns: Vec<Trickle> = (0..200)
            .map(|_| {
                let sock = TcpStream::connect(&addr).unwrap();
                sock.set_nonblocking(true).unwrap();
                Trickle {
                    sock,
                    sent: 0,
                    closed_by_server: false,
                }
            })
            .collect();
        let started = Instant::now();
        // A byte per connection every 100 ms, for at most 15 s.
        for _ in 0..150 {
            for c in &mut conns {
                c.step();
            }
            if conns.iter().all(|c| c.closed_by_server) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let open = conns.iter().filter(|c| !c.closed_by_server).count();
        let sent = conns.iter().map(|c| c.sent).max().unwrap_or(0);
        (open, sent, started.elapsed())
    });
    // Meanwhile ordinary clients are served.
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..20 {
        let (code, body) = curl(&[&format!("http://{}/files/vmlinuz", r.http)]);
        assert_eq!((code.as_str(), body.as_str()), ("200", "kernel"));
    }
    let (open, sent, took) = trickler.join().unwrap();
    eprintln!(
        "200 slowloris connections: {open} still open after {took:?}, up to {sent} bytes each"
    );
    assert_eq!(
        open, 0,
        "trickling connections survived the 1 s header timeout for 15 s"
    );
}

#[test]
fn a_request_body_trickled_byte_by_byte_gets_408_and_the_connection_is_closed() {
    let r = start("body_read_timeout = \"1s\"\n");
    let token = std::fs::read_to_string(r.dir.path().join("state/api.token")).unwrap();
    let mut sock = TcpStream::connect(&r.api).unwrap();
    let head = format!(
        "PUT /api/v1/machines/52:54:00:00:20:02/labels HTTP/1.1\r\nHost: t\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: 100000\r\n\r\n",
        token.trim()
    );
    sock.write_all(head.as_bytes()).unwrap();
    sock.set_nonblocking(true).unwrap();
    let mut answer = Vec::new();
    let started = Instant::now();
    // A byte every 50 ms for at most 15 s, until the server answers and closes.
    let mut closed = false;
    for _ in 0..300 {
        let mut buf = [0u8; 4096];
        match sock.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
        if sock.write(b" ").is_err() && !answer.is_empty() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = String::from_utf8_lossy(&answer).to_string();
    eprintln!("slow body: answered after {:?}: {text}", started.elapsed());
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_read_timeout"), "{text}");
    assert!(closed, "the connection stayed open");
}
