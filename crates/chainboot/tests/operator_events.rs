//! Operator changes (pin, labels, re-arm, forget) through the real HTTP API are events of the
//! machine, written with the change: the action, old and new value, the client's address and
//! the server that took it. In a fleet, what server B's API changed is listed by server A's
//! API as B's; refused calls change nothing and write no event; a boot's timeline is
//! untouched by them.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// `curl` with the operator's token: the HTTP status and the body.
fn call(method: &str, url: &str, token: &str, body: Option<&Value>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args([
        "-s",
        "--max-time",
        "10",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ])
    .args(["-H", &format!("Authorization: Bearer {token}")]);
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "-d", &b.to_string()]);
    }
    let out = c.arg(url).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

fn get(url: &str) -> Value {
    let (code, body) = call("GET", url, "", None);
    assert_eq!(code, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"))
}

/// The machine's operator events as `api` lists them, oldest first.
fn operator_events(api: &str, mac: &str) -> Vec<Value> {
    let v = get(&format!(
        "http://{api}/api/v1/events?mac={mac}&kind=operator"
    ));
    let mut list = v.as_array().cloned().unwrap_or_default();
    list.reverse();
    list
}

fn token(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("state/api.token"))
        .unwrap()
        .trim()
        .to_string()
}

/// Refused calls through `api`: an unknown profile, a bad label, no token, re-arming or
/// forgetting an unknown machine. None changes anything.
fn refused_calls(api: &str, token: &str, mac: &str) {
    let base = format!("http://{api}/api/v1/machines");
    let cases = [
        (
            "PUT",
            format!("{base}/{mac}/profile"),
            token,
            Some(json!({"profile": "nope"})),
            400,
        ),
        (
            "PUT",
            format!("{base}/{mac}/labels"),
            token,
            Some(json!({"bad key": "x"})),
            400,
        ),
        (
            "PUT",
            format!("{base}/{mac}/profile"),
            "wrong",
            Some(json!({"profile": "rescue"})),
            401,
        ),
        ("POST", format!("{base}/{mac}/rearm"), "", None, 401),
        (
            "POST",
            format!("{base}/52:54:00:00:30:99/rearm"),
            token,
            None,
            404,
        ),
        (
            "DELETE",
            format!("{base}/52:54:00:00:30:99"),
            token,
            None,
            404,
        ),
    ];
    for (method, url, t, body, want) in cases {
        let (code, text) = call(method, &url, t, body.as_ref());
        assert_eq!(code, want, "{method} {url}: {text}");
    }
}

/// Pins, labels, re-arms through `change_api`; checks that `read_api` lists each as an
/// operator event of `server`, and the only ones of the machine.
fn pin_label_rearm(change_api: &str, read_api: &str, token: &str, mac: &str, server: &str) {
    let base = format!("http://{change_api}/api/v1/machines/{mac}");
    let (code, text) = call(
        "PUT",
        &format!("{base}/profile"),
        token,
        Some(&json!({"profile": "rescue"})),
    );
    assert_eq!(code, 200, "{text}");
    let (code, text) = call(
        "PUT",
        &format!("{base}/labels"),
        token,
        Some(&json!({"rack": "r1"})),
    );
    assert_eq!(code, 200, "{text}");
    let (code, text) = call("POST", &format!("{base}/rearm"), token, None);
    assert_eq!(code, 200, "{text}");
    let list = operator_events(read_api, mac);
    let got: Vec<(Value, Value, Value, Value, Value)> = list
        .iter()
        .map(|e| {
            (
                e["server"].clone(),
                e["detail"]["action"].clone(),
                e["detail"]["old"].clone(),
                e["detail"]["new"].clone(),
                e["detail"]["client"].clone(),
            )
        })
        .collect();
    let s = json!(server);
    let c = json!("127.0.0.1");
    assert_eq!(
        got,
        [
            (
                s.clone(),
                json!("profile"),
                Value::Null,
                json!("rescue"),
                c.clone()
            ),
            (
                s.clone(),
                json!("labels"),
                json!({}),
                json!({"rack": "r1"}),
                c.clone()
            ),
            (s, json!("rearm"), Value::Null, Value::Null, c),
        ],
        "{list:?}"
    );
    for e in &list {
        assert!(
            !e.to_string().contains(token),
            "the token is never recorded: {e}"
        );
    }
}

#[test]
fn an_operator_change_through_one_fleet_server_is_its_event_on_every_server() {
    let mut fleet = FleetOfTwo::start();
    let (a, b) = (&mut fleet.a, &mut fleet.b);
    let (dir_a, dir_b) = (&fleet.dir_a, &fleet.dir_b);
    let http_a = a.listening("HTTP");
    let api_a = a.listening("API");
    let api_b = b.listening("API");
    let mac = "52:54:00:00:30:01";
    let script =
        format!("http://{http_a}/ipxe?mac=52-54-00-00-30-01&platform=pcbios&buildarch=i386");
    let (code, _) = call("GET", &script, "", None);
    assert_eq!(code, 200);
    let token_b = token(dir_b.path());
    refused_calls(&api_b, &token_b, mac);
    assert!(
        operator_events(&api_a, mac).is_empty(),
        "refused calls write no event"
    );

    pin_label_rearm(&api_b, &api_a, &token_b, mac, "pxe-b");

    // A's timeline: the boot as before, B's changes apart from it; `machines show` on A too.
    let t = get(&format!("http://{api_a}/api/v1/machines/{mac}/timeline"));
    assert_eq!(t["boots"].as_array().unwrap().len(), 1, "{t}");
    let ops: Vec<&str> = t["operator"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["detail"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["profile", "labels", "rearm"], "{t}");
    let cfg_a = dir_a.path().join("chainboot.toml");
    let (code, out) = chainboot(&[
        "events",
        "-c",
        cfg_a.to_str().unwrap(),
        "--server",
        &format!("http://{api_a}"),
        "timeline",
        mac,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("by pxe-b: rearm null -> null (client 127.0.0.1)"),
        "{out}"
    );
    let m = get(&format!("http://{api_a}/api/v1/machines/{mac}"));
    assert_eq!(m["operator"].as_array().map(Vec::len), Some(3), "{m}");
    assert_eq!(m["operator"][0]["server"], "pxe-b", "{m}");

    // A forgets it: A's event, listed by B.
    let token_a = token(dir_a.path());
    let (code, text) = call(
        "DELETE",
        &format!("http://{api_a}/api/v1/machines/{mac}"),
        &token_a,
        None,
    );
    assert_eq!(code, 204, "{text}");
    let last = operator_events(&api_b, mac).pop().unwrap();
    assert_eq!(
        (last["server"].as_str(), last["detail"]["action"].as_str()),
        (Some("pxe-a"), Some("forget")),
        "{last}"
    );
}

#[test]
fn an_operator_change_on_a_single_server_is_an_event_and_no_boot() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = loopback_config(dir.path(), "[store]\nserver_name = \"pxe-solo\"\n");
    let mut s = Server::start_in(None, &cfg, dir.path().join("log"));
    let http = s.listening("HTTP");
    let api = s.listening("API");
    let mac = "52:54:00:00:30:02";
    let token = token(dir.path());
    refused_calls(&api, &token, mac);
    assert!(
        operator_events(&api, mac).is_empty(),
        "refused calls write no event"
    );
    // Pinning a machine before it ever booted records it, and the event.
    pin_label_rearm(&api, &api, &token, mac, "pxe-solo");
    let t = get(&format!("http://{api}/api/v1/machines/{mac}/timeline"));
    assert_eq!(t["boots"], json!([]), "operator changes are no boot: {t}");
    let script = format!("http://{http}/ipxe?mac=52-54-00-00-30-02&platform=pcbios&buildarch=i386");
    let (code, _) = call("GET", &script, "", None);
    assert_eq!(code, 200);
    // The script request's event is written by the event log's writer a moment later.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let t = loop {
        let t = get(&format!("http://{api}/api/v1/machines/{mac}/timeline"));
        if t["boots"].as_array().is_some_and(|b| !b.is_empty())
            || std::time::Instant::now() > deadline
        {
            break t;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(t["boots"].as_array().unwrap().len(), 1, "{t}");
    assert_eq!(t["boots"][0]["reached"], "script", "{t}");
    assert_eq!(t["operator"].as_array().unwrap().len(), 3, "{t}");
}
