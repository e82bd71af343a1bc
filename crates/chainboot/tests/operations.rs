//! Operating a running server: events and timelines from real traffic, chainload-loop
//! detection, the live event stream, Prometheus metrics (parsed by the reference Python
//! parser), read-token protection, and SIGHUP reloads (a broken config keeps the old one).
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

struct Running {
    _dir: tempfile::TempDir,
    cfg: std::path::PathBuf,
    http: String,
    api: String,
    tftp: String,
    server: Server,
}

fn start(extra: &str) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = loopback_config(dir.path(), extra);
    let mut server = Server::start_in(None, &cfg, dir.path().join("log"));
    let http = server.listening("HTTP");
    let api = server.listening("API");
    let tftp = server.listening("TFTP");
    Running {
        _dir: dir,
        cfg,
        http,
        api,
        tftp,
        server,
    }
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tftp_get(addr: &str, file: &str) {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let st = Command::new("tftp")
        .args([host, port, "-m", "binary", "-c", "get", file, "/dev/null"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
}

fn events(r: &Running, query: &str) -> serde_json::Value {
    // The event log writes in batches of at most 20 ms.
    std::thread::sleep(Duration::from_millis(150));
    serde_json::from_str(&curl(&[&format!("http://{}/api/v1/events?{query}", r.api)])).unwrap()
}

#[test]
fn a_boot_becomes_a_timeline_and_a_loop_is_detected_but_normal_boots_are_not() {
    let r = start("");
    let mac = "52:54:00:00:10:01";
    let script = format!(
        "http://{}/ipxe?mac={}&platform=pcbios&buildarch=i386",
        r.http,
        mac.replace(':', "-")
    );
    // Normal boots: first stage, then the script, three times over.
    assert!(curl(&[&script]).contains("#!ipxe"));
    for _ in 0..3 {
        tftp_get(&r.tftp, "undionly.kpxe");
        assert!(curl(&[&script]).contains("#!ipxe"));
    }
    curl(&[&format!("http://{}/files/vmlinuz", r.http)]);
    let loops = events(&r, "kind=chainload-loop");
    assert_eq!(
        loops.as_array().unwrap().len(),
        0,
        "normal boots are not loops: {loops}"
    );
    let timeline: serde_json::Value = serde_json::from_str(&curl(&[&format!(
        "http://{}/api/v1/machines/{mac}/timeline",
        r.api
    )]))
    .unwrap();
    let boots = timeline["boots"].as_array().unwrap();
    let last = boots.last().unwrap();
    assert_eq!(last["reached"], "kernel", "{timeline}");
    let stages: Vec<&str> = last["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert!(
        stages.contains(&"first-stage") && stages.contains(&"script"),
        "{stages:?}"
    );

    // A loop: the first stage again and again, never the script.
    for _ in 0..3 {
        tftp_get(&r.tftp, "undionly.kpxe");
    }
    let loops = events(&r, "kind=chainload-loop");
    let loops = loops.as_array().unwrap();
    assert_eq!(loops.len(), 1, "{loops:?}");
    assert_eq!(loops[0]["mac"], mac);
    assert!(loops[0]["detail"]["probable_cause"]
        .as_str()
        .unwrap()
        .contains("DHCP"));
    let metrics = curl(&[&format!("http://{}/metrics", r.api)]);
    assert!(
        metrics.contains("chainboot_chainload_loops_total 1"),
        "{metrics}"
    );
    assert!(r.server.log_text().contains("chainload loop detected"));
}

#[test]
fn metrics_parse_as_prometheus_text_and_move_with_traffic() {
    let r = start("");
    let parse = |text: &str| -> std::collections::HashMap<String, f64> {
        let mut child = Command::new("python3")
            .args([
                "-c",
                "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\n\
                 for f in p(sys.stdin.read()):\n  for s in f.samples:\n    print(s.name + repr(sorted(s.labels.items())), s.value)\n",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 with prometheus_client (bash .ci/install-deps installs it)");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "not valid Prometheus text: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                l.rsplit_once(' ')
                    .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(f64::NAN)))
            })
            .collect()
    };
    let before = parse(&curl(&[&format!("http://{}/metrics", r.api)]));
    tftp_get(&r.tftp, "undionly.kpxe");
    curl(&[&format!("http://{}/files/vmlinuz", r.http)]);
    let after = parse(&curl(&[&format!("http://{}/metrics", r.api)]));
    let get = |m: &std::collections::HashMap<String, f64>, k: &str| {
        *m.get(k).unwrap_or_else(|| panic!("{k} missing: {m:?}"))
    };
    let finished = "chainboot_tftp_transfers_finished_total[]";
    assert_eq!(get(&after, finished) - get(&before, finished), 1.0);
    let bytes = "chainboot_tftp_bytes_total[]";
    assert!(get(&after, bytes) - get(&before, bytes) >= 70_000.0);
    let http2xx = "chainboot_http_responses_by_class_total[('code', '2xx')]";
    assert!(get(&after, http2xx) > get(&before, http2xx));
    assert!(after
        .keys()
        .any(|k| k.starts_with("chainboot_http_request_seconds_bucket")));
    for outcome in ["answered", "slept"] {
        let k = format!("chainboot_tftp_busy_polls_total[('outcome', '{outcome}')]");
        assert!(after.contains_key(&k), "{k} missing");
    }
    for quiet in [
        "chainboot_http_request_timeouts_total[]",
        "chainboot_http_send_timeouts_total[]",
    ] {
        assert_eq!(get(&after, quiet), 0.0, "{quiet}");
    }
}

#[test]
fn the_event_stream_delivers_events_live() {
    let r = start("");
    let stream = Command::new("curl")
        .args([
            "-sN",
            "--max-time",
            "5",
            &format!("http://{}/api/v1/events/stream", r.api),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    curl(&[&format!(
        "http://{}/ipxe?mac=52-54-00-00-10-02&platform=efi&buildarch=x86_64",
        r.http
    )]);
    let out = stream.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("event: event") && text.contains("52:54:00:00:10:02"),
        "{text}"
    );
}

#[test]
fn reads_can_require_the_token_and_writes_always_do() {
    let r = start("[api]\nread_requires_token = true\n");
    let code = |args: &[&str]| curl(&[&["-o", "/dev/null", "-w", "%{http_code}"], args].concat());
    let events_url = format!("http://{}/api/v1/events", r.api);
    assert_eq!(code(&[&events_url]), "401");
    let token = std::fs::read_to_string(r.cfg.parent().unwrap().join("state/api.token")).unwrap();
    let auth = format!("Authorization: Bearer {}", token.trim());
    assert_eq!(code(&["-H", &auth, &events_url]), "200");
    assert_eq!(code(&[&format!("http://{}/metrics", r.api)]), "401");
    let rearm = format!("http://{}/api/v1/machines/52:54:00:00:10:03/rearm", r.api);
    assert_eq!(code(&["-X", "POST", &rearm]), "401");
}

#[test]
fn sighup_applies_a_good_config_and_keeps_the_old_one_on_a_broken_one() {
    let mut r = start("");
    let script = format!(
        "http://{}/ipxe?mac=52-54-00-00-10-04&platform=pcbios&buildarch=i386",
        r.http
    );
    assert!(curl(&[&script]).contains("console=ttyS0"));
    let good = std::fs::read_to_string(&r.cfg).unwrap();
    // Broken: a typo and a bad type. Refused; the old policy keeps serving.
    std::fs::write(
        &r.cfg,
        good.replace(
            "cmdline = \"console=ttyS0\"",
            "cmdlin = \"console=tty1\"\nname = 5",
        ),
    )
    .unwrap();
    r.server.signal("HUP");
    r.server.wait_for_log(
        "refused, still serving the previous config",
        Duration::from_secs(10),
    );
    assert!(curl(&[&script]).contains("console=ttyS0"));
    // Good: the new command line is live, and the log says what changed.
    std::fs::write(&r.cfg, good.replace("console=ttyS0", "console=ttyS1")).unwrap();
    r.server.signal("HUP");
    r.server
        .wait_for_log("config reloaded", Duration::from_secs(10));
    assert!(r.server.log_text().contains("profile"));
    assert!(curl(&[&script]).contains("console=ttyS1"));
}

#[test]
fn events_and_leases_commands_read_the_running_server() {
    let r = start("");
    let url = format!("http://{}", r.api);
    let c = r.cfg.to_str().unwrap();
    curl(&[&format!(
        "http://{}/ipxe?mac=52-54-00-00-10-05&platform=pcbios&buildarch=i386",
        r.http
    )]);
    tftp_get(&r.tftp, "undionly.kpxe");
    std::thread::sleep(Duration::from_millis(150));
    let (code, out) = chainboot(&[
        "events",
        "-c",
        c,
        "--server",
        &url,
        "list",
        "--mac",
        "52:54:00:00:10:05",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("tftp") && out.contains("undionly.kpxe") && out.contains("http"),
        "{out}"
    );
    let (code, out) = chainboot(&[
        "events",
        "-c",
        c,
        "--server",
        &url,
        "timeline",
        "52:54:00:00:10:05",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("script") && out.contains("first-stage"),
        "{out}"
    );
    let (code, out) = chainboot(&["leases", "-c", c, "--server", &url, "list"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("IP"), "{out}");
}

#[test]
fn a_machines_callback_completes_its_timeline_and_its_json_shows_the_last_boot() {
    let r = start("");
    let mac = "52:54:00:00:10:06";
    curl(&[&format!(
        "http://{}/ipxe?mac=52-54-00-00-10-06&platform=pcbios&buildarch=i386",
        r.http
    )]);
    curl(&[&format!("http://{}/files/vmlinuz", r.http)]);
    // The installer reports back with the machine's own secret (the token works too).
    let token = std::fs::read_to_string(r.cfg.parent().unwrap().join("state/api.token")).unwrap();
    let code = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        "-H",
        &format!("Authorization: Bearer {}", token.trim()),
        "-H",
        "Content-Type: application/json",
        "-d",
        "{\"event\":\"installed\"}",
        &format!("http://{}/api/v1/machines/{mac}/events", r.http),
    ]);
    assert!(code.starts_with('2'), "{code}");
    std::thread::sleep(Duration::from_millis(150));
    let v: serde_json::Value =
        serde_json::from_str(&curl(&[&format!("http://{}/api/v1/machines/{mac}", r.api)])).unwrap();
    let last = &v["last_boot"];
    assert_eq!(last["reached"], "os-callback", "{v}");
    let api = events(&r, &format!("mac={mac}&kind=api"));
    assert_eq!(api[0]["detail"]["event"], "installed", "{api}");
}

#[test]
fn new_machines_beyond_the_per_source_budget_are_told_why_and_not_recorded() {
    let r = start("[machines]\nnew_per_source_per_minute = 3\n");
    let script = |mac: &str| {
        curl(&[&format!(
            "http://{}/ipxe?mac={mac}&platform=pcbios&buildarch=i386",
            r.http
        )])
    };
    for i in 0..3 {
        let s = script(&format!("52-54-00-00-11-{i:02x}"));
        assert!(s.contains("boots profile"), "{s}");
    }
    let refused = script("52-54-00-00-11-ff");
    assert!(
        refused.contains("cannot boot") && refused.contains("new_per_source_per_minute"),
        "{refused}"
    );
    // A machine already recorded is never refused by the new-machine budget.
    let again = script("52-54-00-00-11-00");
    assert!(again.contains("boots profile"), "{again}");
    let list: serde_json::Value =
        serde_json::from_str(&curl(&[&format!("http://{}/api/v1/machines", r.api)])).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(3), "{list}");
}
