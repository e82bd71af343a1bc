//! HTTPS through the binary: lab mode end to end (CA made and served, the CLI verifying the
//! API), certificate files refused by `check` and `serve` with the reason, SIGHUP reloads,
//! client certificates for the API. Loopback only.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{chainboot, loopback_config, Server};
use sha2::{Digest, Sha256};

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The loopback config with `http_tls` added to `[http]` and `extra` appended.
fn config(dir: &Path, http_tls: &str, extra: &str) -> std::path::PathBuf {
    let (path, _) = loopback_config(dir, extra);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replacen("[http]\n", &format!("[http]\n{http_tls}"), 1),
    )
    .unwrap();
    path
}

/// A value logged as `key=value` after `after`.
fn logged(log: &str, after: &str, key: &str) -> String {
    let at = log
        .find(after)
        .unwrap_or_else(|| panic!("`{after}` not logged:\n{log}"));
    let rest = &log[at..];
    let k = format!("{key}=");
    let v = &rest[rest
        .find(&k)
        .unwrap_or_else(|| panic!("no {key} in {rest}"))
        + k.len()..];
    v.split(|c: char| c.is_whitespace())
        .next()
        .unwrap_or_default()
        .trim_matches('"')
        .to_string()
}

fn curl(args: &[&str]) -> (bool, Vec<u8>, String) {
    let out = Command::new("curl")
        .args(["-sS", "--noproxy", "*", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl");
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct Pair {
    ca_pem: String,
    cert: String,
    key: String,
    sha256: String,
}

fn make_ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, name.to_string());
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    (p.self_signed(&key).unwrap(), key)
}

fn pair(ca: &(rcgen::Certificate, rcgen::KeyPair), from_days: i64, to_days: i64) -> Pair {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now + time::Duration::days(from_days);
    p.not_after = now + time::Duration::days(to_days);
    let cert = p.signed_by(&key, &ca.0, &ca.1).unwrap();
    Pair {
        ca_pem: ca.0.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
        sha256: sha(cert.der()),
    }
}

fn write_pair(dir: &Path, name: &str, p: &Pair, key_mode: u32) -> (String, String) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, &p.key).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(key_mode)).unwrap();
    std::fs::rename(&tmp, &key).unwrap();
    std::fs::write(&tmp, &p.cert).unwrap();
    std::fs::rename(&tmp, &cert).unwrap();
    (cert.display().to_string(), key.display().to_string())
}

#[test]
fn lab_mode_serves_its_ca_and_the_cli_verifies_the_api_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "tls_listen = \"127.0.0.1:0\"\ntls = \"lab\"\n",
        "[api]\ntls = \"lab\"\n",
    );
    let mut server = Server::start_in(None, &cfg, dir.path().join("log"));
    let http = server.listening("HTTP");
    let https = server.listening("HTTPS");
    let api = server.listening("API");
    let log = server.log_text();
    let fingerprint = logged(&log, "lab TLS", "ca_sha256");
    let tls_dir = dir.path().join("state/tls");
    for key in ["ca.key", "server.key"] {
        let mode = std::fs::metadata(tls_dir.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    // The CA, on the plain boot listener, is the one whose fingerprint was printed.
    let (ok, der, err) = curl(&[&format!("http://{http}/ca.der")]);
    assert!(ok, "{err}");
    assert_eq!(sha(&der), fingerprint);
    let ca = dir.path().join("fetched-ca.crt");
    let (ok, pem, _) = curl(&["-o", ca.to_str().unwrap(), &format!("http://{http}/ca.crt")]);
    assert!(ok && pem.is_empty());
    // Boot content over HTTPS, verified with the fetched CA.
    let url = format!("https://{https}/ipxe?mac=52-54-00-00-00-01&platform=efi&buildarch=x86_64");
    let (ok, body, err) = curl(&["--cacert", ca.to_str().unwrap(), &url]);
    assert!(ok, "{err}");
    assert!(String::from_utf8_lossy(&body).starts_with("#!ipxe"));
    // A script fetched over https:// chains on over https://, one over http:// stays there.
    let (ok, stub, err) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        &format!("https://{https}/boot.ipxe"),
    ]);
    assert!(ok, "{err}");
    let stub = String::from_utf8_lossy(&stub).into_owned();
    assert!(stub.contains(&format!("https://{https}/ipxe?")), "{stub}");
    let (ok, stub, _) = curl(&[&format!("http://{http}/boot.ipxe")]);
    assert!(ok);
    let stub = String::from_utf8_lossy(&stub).into_owned();
    assert!(stub.contains(&format!("http://{http}/ipxe?")), "{stub}");
    // explain: https:// only for an iPXE that advertises HTTPS, and says why.
    // (the same config with proxyDHCP, so the engine decides; explain sends nothing)
    let proxy = dir.path().join("proxy.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&proxy, text.replace("mode = \"off\"", "mode = \"proxy\"")).unwrap();
    let explain = |extra: &[&str]| {
        let mut args = vec![
            "explain",
            "-c",
            proxy.to_str().unwrap(),
            "--mac",
            "52:54:00:00:00:09",
            "--arch",
            "efi-x64",
            "--user-class",
            "iPXE",
            "--server-ip",
            "198.18.0.1",
        ];
        args.extend_from_slice(extra);
        chainboot(&args)
    };
    let (code, out) = explain(&["--https"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("file \"https://198.18.0.1:0/boot.ipxe\""),
        "{out}"
    );
    assert!(
        out.contains("why: iPXE advertises HTTPS (option 175.20)"),
        "{out}"
    );
    let (code, out) = explain(&[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("file \"http://198.18.0.1:0/boot.ipxe\""),
        "{out}"
    );
    assert!(out.contains("without HTTPS (no 175.20)"), "{out}");
    // Counted in /metrics (over the API's own TLS).
    let (ok, metrics, err) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        &format!("https://{api}/metrics"),
    ]);
    assert!(ok, "{err}");
    let metrics = String::from_utf8_lossy(&metrics);
    let handshakes = metrics
        .lines()
        .find_map(|l| l.strip_prefix("chainboot_http_tls_handshakes_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(handshakes.is_some_and(|n| n >= 1.0), "{metrics}");
    // The API speaks only TLS; the CLI trusts the lab CA from the config.
    assert!(!curl(&[&format!("http://{api}/api/v1/machines")]).0);
    let c = cfg.to_str().unwrap();
    let base = format!("https://{api}");
    let (code, out) = chainboot(&["machines", "-c", c, "--server", &base, "list"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("52:54:00:00:00:01"), "{out}");
    // Pinning: the right fingerprint works, another one is refused with both named.
    let api_sha = logged(&log, "listener=\"api\"", "sha256");
    let (code, out) = chainboot(&[
        "machines", "-c", c, "--server", &base, "--pin", &api_sha, "list",
    ]);
    assert_eq!(code, 0, "{out}");
    let wrong = "00".repeat(32);
    let (code, out) = chainboot(&[
        "machines", "-c", c, "--server", &base, "--pin", &wrong, "list",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not the pinned"), "{out}");
    // A CA that did not sign the server is refused.
    let other = dir.path().join("other.pem");
    std::fs::write(&other, make_ca("other").0.pem()).unwrap();
    let (code, out) = chainboot(&[
        "machines",
        "-c",
        c,
        "--server",
        &base,
        "--ca",
        other.to_str().unwrap(),
        "list",
    ]);
    assert_eq!(code, 1, "{out}");
    // A restart keeps the CA operators enrolled.
    drop(server);
    let mut again = Server::start_in(None, &cfg, dir.path().join("log2"));
    again.listening("HTTPS");
    assert_eq!(
        logged(&again.log_text(), "lab TLS", "ca_sha256"),
        fingerprint
    );
}

#[test]
fn check_and_serve_refuse_bad_certificate_files_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca("site");
    let good = pair(&ca, -1, 30);
    let cases: Vec<(&str, Pair, u32, &str)> = vec![
        (
            "world-readable",
            pair(&ca, -1, 30),
            0o644,
            "group or others may read it",
        ),
        ("expired", pair(&ca, -30, -1), 0o600, "expired on"),
        ("not-yet", pair(&ca, 3, 30), 0o600, "not valid before"),
        (
            "mismatch",
            Pair {
                key: pair(&ca, -1, 30).key,
                ..pair(&ca, -1, 30)
            },
            0o600,
            "does not match the certificate",
        ),
    ];
    let _ = good;
    for (name, p, mode, reason) in cases {
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub).unwrap();
        let (cert, key) = write_pair(&sub, "server", &p, mode);
        let cfg = config(
            &sub,
            &format!(
                "tls_listen = \"127.0.0.1:0\"\ntls = {{ cert = \"{cert}\", key = \"{key}\" }}\n"
            ),
            "",
        );
        let (code, out) = chainboot(&["check", "-c", cfg.to_str().unwrap()]);
        assert_eq!(code, 1, "{name}: {out}");
        assert!(
            out.contains("http.tls") && out.contains(reason),
            "{name}: {out}"
        );
        let mut server = Server::start_in(None, &cfg, sub.join("log"));
        let status = server
            .wait_exit(Duration::from_secs(20))
            .expect("serve refuses to start");
        assert!(!status.success());
        assert!(
            server.log_text().contains(reason),
            "{name}: {}",
            server.log_text()
        );
    }
    // The API's pair is checked the same way.
    let sub = dir.path().join("api");
    std::fs::create_dir_all(&sub).unwrap();
    let (cert, key) = write_pair(&sub, "api", &pair(&ca, -30, -1), 0o600);
    let cfg = config(
        &sub,
        "",
        &format!("[api]\ntls = {{ cert = \"{cert}\", key = \"{key}\" }}\n"),
    );
    let (code, out) = chainboot(&["check", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("api.tls") && out.contains("expired on"),
        "{out}"
    );
}

#[test]
fn sighup_swaps_the_certificate_and_keeps_it_when_the_new_pair_is_bad() {
    let dir = tempfile::tempdir().unwrap();
    let site = make_ca("site");
    let first = pair(&site, -1, 30);
    let (cert, key) = write_pair(dir.path(), "server", &first, 0o600);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &first.ca_pem).unwrap();
    let cfg = config(
        dir.path(),
        &format!("tls_listen = \"127.0.0.1:0\"\ntls = {{ cert = \"{cert}\", key = \"{key}\" }}\n"),
        "",
    );
    let mut server = Server::start_in(None, &cfg, dir.path().join("log"));
    let https = server.listening("HTTPS");
    assert_eq!(
        logged(&server.log_text(), "listener=\"http\"", "sha256"),
        first.sha256
    );
    let url = format!("https://{https}/files/vmlinuz");
    let fetch = || curl(&["--cacert", ca_file.to_str().unwrap(), &url]);
    assert!(fetch().0);
    let second = pair(&site, -1, 60);
    write_pair(dir.path(), "server", &second, 0o600);
    server.signal("HUP");
    server.wait_for_log(
        &format!("sha256={}", second.sha256),
        Duration::from_secs(10),
    );
    assert!(fetch().0);
    // A key from elsewhere: refused, the second certificate stays.
    let stray = pair(&make_ca("elsewhere"), -1, 60);
    write_pair(
        dir.path(),
        "server",
        &Pair {
            key: stray.key,
            ..pair(&site, -1, 60)
        },
        0o600,
    );
    server.signal("HUP");
    server.wait_for_log("still serving the previous one", Duration::from_secs(10));
    let (ok, _, err) = fetch();
    assert!(ok, "{err}");
}

#[test]
fn an_api_client_ca_requires_a_client_certificate_and_the_token_still_counts() {
    let dir = tempfile::tempdir().unwrap();
    let site = make_ca("site");
    let server_pair = pair(&site, -1, 30);
    let (cert, key) = write_pair(dir.path(), "api", &server_pair, 0o600);
    let operators = make_ca("operators");
    let op_ca = dir.path().join("operators.pem");
    std::fs::write(&op_ca, operators.0.pem()).unwrap();
    let op = pair(&operators, -1, 30);
    let (op_cert, op_key) = write_pair(dir.path(), "operator", &op, 0o600);
    let cfg = config(
        dir.path(),
        "",
        &format!(
            "[api]\nread_requires_token = true\ntls = {{ cert = \"{cert}\", key = \"{key}\" }}\nclient_ca = \"{}\"\n",
            op_ca.display()
        ),
    );
    let mut server = Server::start_in(None, &cfg, dir.path().join("log"));
    let base = format!("https://{}", server.listening("API"));
    let c = cfg.to_str().unwrap();
    // The CLI pins the configured certificate by itself; without a client certificate the
    // handshake fails.
    let (code, out) = chainboot(&["machines", "-c", c, "--server", &base, "list"]);
    assert_eq!(code, 1, "{out}");
    let with_cert = |token: Option<&str>| {
        let mut args = vec![
            "machines",
            "-c",
            c,
            "--server",
            &base,
            "--client-cert",
            &op_cert,
            "--client-key",
            &op_key,
        ];
        if let Some(t) = token {
            args.extend(["--token", t]);
        }
        args.push("list");
        chainboot(&args)
    };
    let (code, out) = with_cert(None);
    assert_eq!(code, 0, "{out}");
    let (code, out) = with_cert(Some("wrong"));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("401"), "{out}");
}

/// testssl.sh's findings for one listener (its flat JSON), bounded in time: the checks that
/// matter for a server (protocols, cipher categories, forward secrecy, server preference,
/// certificate, headers, vulnerabilities), no DNS lookups, the lab CA added as trusted. Every
/// finding is written (OK and INFO too), so the test can see the run reached the server.
fn testssl(target: &str, ca: &Path, json: &Path) -> std::process::Child {
    Command::new("testssl")
        .args(["--quiet", "--fast", "--warnings", "off", "--nodns", "none"])
        .arg("--add-ca")
        .arg(ca)
        .arg("--jsonfile")
        .arg(json)
        .args(["-p", "-s", "-f", "-P", "-S", "-h", "-U", target])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("testssl is needed (apt-get install testssl.sh): {e}"))
}

#[test]
fn testssl_finds_nothing_above_low_on_either_listener() {
    common::require_root_and(&["testssl"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "tls_listen = \"127.0.0.1:0\"\ntls = \"lab\"\n",
        "[api]\ntls = \"lab\"\n",
    );
    let mut server = Server::start_in(None, &cfg, dir.path().join("log"));
    let targets = [server.listening("HTTPS"), server.listening("API")];
    let ca = dir.path().join("state/tls/ca.crt");
    // Both at once, each bounded: a hung run is killed (by PID) and fails the test.
    let mut runs: Vec<_> = targets
        .iter()
        .map(|t| {
            let json = dir
                .path()
                .join(format!("testssl-{}.json", t.replace(':', "_")));
            (t, testssl(t, &ca, &json), json)
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    for (target, child, json) in &mut runs {
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("testssl against {target} took over 150 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let text = std::fs::read_to_string(&*json).unwrap_or_default();
        let findings: Vec<serde_json::Value> = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("testssl JSON for {target}: {e}\n{text}"));
        let severe: Vec<String> = findings
            .iter()
            .filter(|f| matches!(f["severity"].as_str(), Some("MEDIUM" | "HIGH" | "CRITICAL")))
            .map(|f| format!("{} {}: {}", f["severity"], f["id"], f["finding"]))
            .collect();
        assert!(severe.is_empty(), "{target}: {severe:#?}");
        // The run really reached the server: TLS 1.2 and 1.3 offered, the chain trusted.
        let ok = |id: &str| {
            findings
                .iter()
                .any(|f| f["id"] == id && f["severity"] == "OK")
        };
        for id in ["TLS1_2", "TLS1_3", "cert_chain_of_trust", "cert_trust"] {
            assert!(ok(id), "{target}: no OK {id} in {findings:#?}");
        }
    }
}

#[test]
fn https_for_http_boot_starts_beside_a_plain_management_listener() {
    // The management listener takes its limits from [http]; the boot listener's choice of
    // URL scheme must not make it refuse to start without TLS of its own.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "tls_listen = \"127.0.0.1:0\"\ntls = \"lab\"\nhttps_for_http_boot = true\n",
        "",
    );
    let mut server = Server::start_in(None, &cfg, dir.path().join("log"));
    server.listening("HTTPS");
    let api = server.listening("API");
    let (ok, body, err) = curl(&[&format!("http://{api}/healthz")]);
    assert!(ok, "the plain API answers: {err}");
    assert!(!body.is_empty());
}

#[test]
fn a_group_marked_https_boot_gets_https_for_its_uefi_http_boot_machines_only() {
    // `explain` runs the DHCP engine's decision without sending anything: proxyDHCP so the
    // engine answers, a TLS boot listener, one group marked for https and nothing global.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "tls_listen = \"127.0.0.1:0\"\ntls = \"lab\"\n",
        "[[group]]\nname = \"lab-racks\"\nprofile = \"linux\"\nhttps_boot = true\n\
         match = { mac = \"52:54:00:00:0a:*\" }\n",
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("mode = \"off\"", "mode = \"proxy\"")).unwrap();
    let explain = |mac: &str| {
        chainboot(&[
            "explain",
            "-c",
            cfg.to_str().unwrap(),
            "--mac",
            mac,
            "--arch",
            "16",
            "--server-ip",
            "198.18.0.1",
        ])
    };
    let (code, out) = explain("52:54:00:00:0a:01");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("\"https://198.18.0.1:0/ipxe-bin/snponly.efi\""),
        "{out}"
    );
    assert!(
        out.contains("group lab-racks says https_boot = true"),
        "{out}"
    );
    let (code, out) = explain("52:54:00:00:0b:01");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("\"http://198.18.0.1:0/ipxe-bin/snponly.efi\""),
        "{out}"
    );
    // Marked without a TLS listener: refused by `check` with the group named.
    let plain = dir.path().join("plain.toml");
    std::fs::write(
        &plain,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("tls_listen = \"127.0.0.1:0\"\ntls = \"lab\"\n", ""),
    )
    .unwrap();
    let (code, out) = chainboot(&["check", "-c", plain.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("group lab-racks asks for https://"), "{out}");
}

#[test]
fn a_peer_naming_an_ip_address_in_sni_writes_no_log_line_per_handshake() {
    // rustls warns about every ClientHello whose SNI is an IP address (wrk and some firmware
    // send one): any host could flood the log with them, so the server keeps rustls quiet.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "tls_listen = \"127.0.0.1:0\"\ntls = \"lab\"\n",
        "",
    );
    let mut server = Server::start_in(None, &cfg, dir.path().join("log"));
    let https = server.listening("HTTPS");
    for _ in 0..3 {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &https, "-servername", "127.0.0.1"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("BEGIN CERTIFICATE"), "no handshake: {text}");
    }
    // The handshakes were served (and the log is written as they happen).
    std::thread::sleep(Duration::from_millis(200));
    let log = server.log_text();
    assert!(!log.contains("Illegal SNI"), "{log}");
    assert!(!log.contains("WARN rustls"), "{log}");
}
