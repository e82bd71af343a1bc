//! HTTPS on loopback, talked to by real clients (curl, reqwest, a rustls client that reads the
//! certificate it was given). Certificates are made by rcgen in each test. Traffic only to
//! 127.0.0.1.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chainboot_content::Root;
use chainboot_http::tls::{load_pair, TlsFiles, TlsServer, TlsSource};
use chainboot_http::{
    lab, static_routes, HttpConfig, HttpServer, HttpStats, Listen, StaticContent,
};
use chainboot_iso::IsoLibrary;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn make_ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, name.to_string());
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    Ca {
        cert: p.self_signed(&key).unwrap(),
        key,
    }
}

/// A certificate for 127.0.0.1 signed by `ca`, valid from `from` to `to` days from now; the
/// PEM chain (leaf, CA), the key PEM and the leaf's SHA-256.
fn issue(ca: &Ca, from: i64, to: i64) -> (String, String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now + time::Duration::days(from);
    p.not_after = now + time::Duration::days(to);
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&rand::random::<[u8; 8]>()));
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (
        format!("{}{}", cert.pem(), ca.cert.pem()),
        key.serialize_pem(),
        sha(cert.der()),
    )
}

/// Writes a pair through temporary files and renames (how certbot and friends replace them),
/// key 0600.
fn write_pair(files: &TlsFiles, cert: &str, key: &str) {
    let tmp = files.key.with_extension("new");
    std::fs::write(&tmp, key).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, &files.key).unwrap();
    let tmp = files.cert.with_extension("new");
    std::fs::write(&tmp, cert).unwrap();
    std::fs::rename(&tmp, &files.cert).unwrap();
}

struct Site {
    dir: tempfile::TempDir,
    files: TlsFiles,
    ca: Ca,
    ca_file: PathBuf,
    leaf_sha: String,
}

fn site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca("test CA");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert.pem()).unwrap();
    let files = TlsFiles {
        cert: dir.path().join("server.crt"),
        key: dir.path().join("server.key"),
    };
    let (cert, key, leaf_sha) = issue(&ca, -1, 30);
    write_pair(&files, &cert, &key);
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("small.txt"), b"hello over tls\n").unwrap();
    let big: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
    std::fs::write(root.join("big.bin"), &big).unwrap();
    std::fs::create_dir_all(dir.path().join("ipxe")).unwrap();
    Site {
        dir,
        files,
        ca,
        ca_file,
        leaf_sha,
    }
}

struct Running {
    plain: SocketAddr,
    tls: SocketAddr,
    stats: Arc<HttpStats>,
    stop: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(
    site: &Site,
    tls: Option<Arc<TlsServer>>,
    tweak: impl FnOnce(&mut HttpConfig),
) -> Running {
    let mut config = HttpConfig {
        listen: Listen::One("127.0.0.1:0".into()),
        tls_listen: Listen::One("127.0.0.1:0".into()),
        tls: Some(TlsSource::Files(site.files.clone())),
        root: Some(site.dir.path().join("root")),
        ..HttpConfig::default()
    };
    tweak(&mut config);
    let mut server = HttpServer::bind(&config).unwrap();
    if let Some(tls) = tls {
        server = server.with_tls(tls);
    }
    let plain = server.local_addrs()[0];
    let tls = server.tls_local_addrs()[0];
    let stats = server.stats();
    let router = static_routes(StaticContent {
        files: Some(Arc::new(Root::new(config.root.as_ref().unwrap()).unwrap())),
        ipxe_bin: Arc::new(Root::new(site.dir.path().join("ipxe")).unwrap()),
        isos: Arc::new(IsoLibrary::new(&[])),
        listing: false,
    });
    let stop = CancellationToken::new();
    tokio::spawn(server.run(router, stop.clone()));
    Running {
        plain,
        tls,
        stats,
        stop,
    }
}

async fn curl(args: &[&str]) -> (bool, String, Vec<u8>) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--noproxy", "*", "--max-time", "20"])
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("curl is needed (apt-get install curl): {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.stdout,
    )
}

/// The SHA-256 of the certificate a fresh TLS connection is given, verified against `ca`.
async fn presented_cert(addr: SocketAddr, ca: &Path) -> Result<String, String> {
    let roots = chainboot_http::tls::load_roots(ca).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(chainboot_http::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let certs = tls
        .get_ref()
        .1
        .peer_certificates()
        .ok_or("no certificate")?;
    Ok(sha(&certs[0]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_beside_http_with_keep_alive_tls12_and_13_only_and_alpn_http11() {
    let site = site();
    let srv = serve(&site, None, |_| {}).await;
    let ca = site.ca_file.to_str().unwrap();
    let url = format!("https://127.0.0.1:{}/files/small.txt", srv.tls.port());
    // Two requests in one curl: the second reuses the TLS connection.
    let (ok, err, body) = curl(&["-v", "--cacert", ca, &url, &url]).await;
    assert!(ok, "{err}");
    assert_eq!(body, b"hello over tls\nhello over tls\n");
    assert!(err.contains("TLSv1.3"), "{err}");
    assert!(err.contains("ALPN: server accepted http/1.1"), "{err}");
    assert!(err.contains("Re-using existing connection"), "{err}");
    assert_eq!(
        srv.stats
            .tls_handshakes
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // TLS 1.2 still works; 1.1 and below are refused.
    let (ok, err, _) = curl(&["--cacert", ca, "--tlsv1.2", "--tls-max", "1.2", &url]).await;
    assert!(ok, "{err}");
    let (ok, _, _) = curl(&["--cacert", ca, "--tlsv1", "--tls-max", "1.1", &url]).await;
    assert!(!ok, "TLS 1.1 must be refused");
    // The plain listener is unchanged, and speaks no TLS.
    let plain = format!("http://127.0.0.1:{}/files/small.txt", srv.plain.port());
    let (ok, err, body) = curl(&[&plain]).await;
    assert!(ok, "{err}");
    assert_eq!(body, b"hello over tls\n");
    let wrong = format!("https://127.0.0.1:{}/files/small.txt", srv.plain.port());
    assert!(!curl(&["--cacert", ca, &wrong]).await.0);
    // A client that does not trust the CA is refused by its own verification.
    assert!(!curl(&[&url]).await.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_or_garbage_handshake_frees_its_slot_after_header_read_timeout() {
    let site = site();
    let srv = serve(&site, None, |c| {
        // One slot for everyone (a slot is taken by an accepted connection, not by a
        // listener waiting for one).
        c.max_connections = 1;
        c.header_read_timeout = Duration::from_millis(600);
    })
    .await;
    // The one slot: a client that connects and says nothing.
    let mut silent = tokio::net::TcpStream::connect(srv.tls).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let url = format!("https://127.0.0.1:{}/files/small.txt", srv.tls.port());
    let (ok, err, _) = curl(&["--cacert", site.ca_file.to_str().unwrap(), &url]).await;
    assert!(ok, "{err}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "served after {waited:?}: the silent client held the slot until its handshake timed out"
    );
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), silent.read(&mut buf))
        .await
        .expect("the silent client's connection is closed");
    assert!(matches!(n, Ok(0) | Err(_)));
    // A client trickling the start of a ClientHello is cut off the same way.
    let mut trickle = tokio::net::TcpStream::connect(srv.tls).await.unwrap();
    let t0 = Instant::now();
    let mut closed = false;
    for b in [0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01] {
        if trickle.write_all(&[b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !closed {
        let r = tokio::time::timeout(Duration::from_secs(3), trickle.read(&mut buf)).await;
        closed = matches!(r, Ok(Ok(0)) | Ok(Err(_)));
    }
    assert!(closed && t0.elapsed() < Duration::from_secs(4));
    // Garbage instead of a ClientHello fails at once.
    let mut garbage = tokio::net::TcpStream::connect(srv.tls).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let r =
        tokio::time::timeout(Duration::from_secs(2), garbage.read_to_end(&mut Vec::new())).await;
    assert!(r.is_ok(), "garbage is answered and closed, not held");
    let failures = srv
        .stats
        .tls_handshake_failures
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(failures >= 3, "{failures}");
}

#[test]
fn bad_pairs_are_refused_with_the_reason() {
    let site = site();
    let other = make_ca("other CA");
    let check = |name: &str, prepare: &dyn Fn(&TlsFiles), want: &str| {
        let files = TlsFiles {
            cert: site.dir.path().join(format!("{name}.crt")),
            key: site.dir.path().join(format!("{name}.key")),
        };
        let (cert, key, _) = issue(&site.ca, -1, 30);
        write_pair(&files, &cert, &key);
        prepare(&files);
        let e = load_pair(&files)
            .err()
            .unwrap_or_else(|| panic!("{name} accepted"));
        assert!(e.0.contains(want), "{name}: {e}");
        let config = HttpConfig {
            listen: Listen::One("127.0.0.1:0".into()),
            tls_listen: Listen::One("127.0.0.1:0".into()),
            tls: Some(TlsSource::Files(files.clone())),
            ..HttpConfig::default()
        };
        let issues = config.validate();
        assert_eq!(issues.len(), 1, "{name}: {issues:?}");
        assert_eq!(issues[0].path, ["tls"]);
        assert!(issues[0].message.contains(want), "{name}: {issues:?}");
        assert!(TlsServer::new("http", &files, None).is_err());
        assert!(HttpServer::bind(&config).is_err());
    };
    check(
        "mismatch",
        &|f| {
            let (_, key, _) = issue(&other, -1, 30);
            write_pair(f, &std::fs::read_to_string(&f.cert).unwrap(), &key);
        },
        "does not match the certificate",
    );
    check(
        "expired",
        &|f| {
            let (cert, key, _) = issue(&site.ca, -30, -1);
            write_pair(f, &cert, &key);
        },
        "expired on",
    );
    check(
        "future",
        &|f| {
            let (cert, key, _) = issue(&site.ca, 2, 30);
            write_pair(f, &cert, &key);
        },
        "not valid before",
    );
    check(
        "world-readable",
        &|f| std::fs::set_permissions(&f.key, std::fs::Permissions::from_mode(0o644)).unwrap(),
        "mode 0644: group or others may read it",
    );
    check(
        "missing-key",
        &|f| std::fs::remove_file(&f.key).unwrap(),
        "cannot read key file",
    );
    check(
        "garbage-key",
        &|f| write_pair(f, &std::fs::read_to_string(&f.cert).unwrap(), "not a key\n"),
        "no private key found",
    );
    check(
        "no-cert",
        &|f| std::fs::write(&f.cert, "nothing here\n").unwrap(),
        "no PEM CERTIFICATE block",
    );
    // Root reads every file, so "unreadable" is shown with a directory in the key's place.
    check(
        "unreadable-key",
        &|f| {
            std::fs::remove_file(&f.key).unwrap();
            std::fs::create_dir(&f.key).unwrap();
            std::fs::set_permissions(&f.key, std::fs::Permissions::from_mode(0o700)).unwrap();
        },
        "cannot read key file",
    );
    // tls_listen and tls go together.
    let lonely = HttpConfig {
        tls_listen: Listen::One("127.0.0.1:0".into()),
        ..HttpConfig::default()
    };
    assert_eq!(lonely.validate()[0].path, ["tls"]);
    let unused = HttpConfig {
        tls: Some(TlsSource::Lab),
        ..HttpConfig::default()
    };
    assert_eq!(unused.validate()[0].path, ["tls_listen"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_downloads_survive_certificate_rotation_and_new_connections_get_the_new_one() {
    let site = site();
    let tls = TlsServer::new("http", &site.files, None).unwrap();
    // Fifty machines, all on 127.0.0.1 here: the per-address cap must not stand in for them.
    let srv = serve(&site, Some(tls.clone()), |c| {
        c.max_connections_per_client = 1000
    })
    .await;
    let stop = CancellationToken::new();
    tokio::spawn(tls.clone().watch(Duration::from_millis(200), stop.clone()));
    assert_eq!(
        presented_cert(srv.tls, &site.ca_file).await.unwrap(),
        site.leaf_sha
    );

    let big = std::fs::read(site.dir.path().join("root/big.bin")).unwrap();
    let want = sha(&big);
    let ca = reqwest::Certificate::from_pem(site.ca.cert.pem().as_bytes()).unwrap();
    let url = format!("https://127.0.0.1:{}/files/big.bin", srv.tls.port());
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut clients = Vec::new();
    for _ in 0..50 {
        let (url, ca, want) = (url.clone(), ca.clone(), want.clone());
        clients.push(tokio::spawn(async move {
            let mut done = 0u32;
            // New connections throughout (no pooling), so handshakes straddle the reloads.
            while Instant::now() < deadline && done < 20 {
                let client = reqwest::Client::builder()
                    .no_proxy()
                    .tls_built_in_root_certs(false)
                    .add_root_certificate(ca.clone())
                    .pool_max_idle_per_host(0)
                    .timeout(Duration::from_secs(30))
                    .build()
                    .unwrap();
                let resp = client.get(&url).send().await.map_err(|e| e.to_string())?;
                if resp.status() != 200 {
                    return Err(format!("status {}", resp.status()));
                }
                let body = resp.bytes().await.map_err(|e| e.to_string())?;
                if sha(&body) != want {
                    return Err("body differs".into());
                }
                done += 1;
            }
            Ok::<u32, String>(done)
        }));
    }
    // Rotation 1: new files, then an explicit reload (what SIGHUP does).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (cert2, key2, sha2) = issue(&site.ca, -1, 60);
    write_pair(&site.files, &cert2, &key2);
    tls.reload().unwrap();
    assert_eq!(presented_cert(srv.tls, &site.ca_file).await.unwrap(), sha2);
    // A bad pair (a key from elsewhere) is refused; the running certificate stays.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, stray_key, _) = issue(&make_ca("x"), -1, 60);
    write_pair(&site.files, &cert2, &stray_key);
    let e = tls.reload().unwrap_err();
    assert!(e.0.contains("does not match"), "{e}");
    assert_eq!(tls.current().sha256, sha2);
    assert_eq!(presented_cert(srv.tls, &site.ca_file).await.unwrap(), sha2);
    // Rotation 2: just replace the files; the watcher notices.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (cert3, key3, sha3) = issue(&site.ca, -1, 90);
    write_pair(&site.files, &cert3, &key3);
    let seen = Instant::now();
    while tls.current().sha256 != sha3 {
        assert!(
            seen.elapsed() < Duration::from_secs(3),
            "watcher did not reload"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(presented_cert(srv.tls, &site.ca_file).await.unwrap(), sha3);
    let mut total = 0;
    for c in clients {
        total += c
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("a download failed: {e}"));
    }
    assert!(total >= 100, "only {total} downloads ran");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ca_requires_client_certificates_signed_by_it() {
    let site = site();
    let client_ca = make_ca("operators");
    let client_ca_file = site.dir.path().join("operators.pem");
    std::fs::write(&client_ca_file, client_ca.cert.pem()).unwrap();
    let tls = TlsServer::new("api", &site.files, Some(&client_ca_file)).unwrap();
    let srv = serve(&site, Some(tls), |_| {}).await;
    let url = format!("https://127.0.0.1:{}/files/small.txt", srv.tls.port());
    let ca = reqwest::Certificate::from_pem(site.ca.cert.pem().as_bytes()).unwrap();
    let get = |identity: Option<reqwest::Identity>| {
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca.clone());
        if let Some(id) = identity {
            b = b.identity(id);
        }
        let client = b.build().unwrap();
        let url = url.clone();
        async move { client.get(&url).send().await.map(|r| r.status().as_u16()) }
    };
    let identity = |ca: &Ca| {
        let (cert, key, _) = issue(ca, -1, 30);
        reqwest::Identity::from_pem(format!("{key}{cert}").as_bytes()).unwrap()
    };
    assert_eq!(get(Some(identity(&client_ca))).await.unwrap(), 200);
    assert!(get(None).await.is_err(), "no client certificate");
    assert!(
        get(Some(identity(&site.ca))).await.is_err(),
        "a certificate from another CA"
    );
}

const CRL: &str = "http://127.0.0.1:8080/ca.crl";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_mode_makes_its_ca_once_and_serves_it_for_enrolment() {
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join("tls");
    let names = vec!["127.0.0.1".to_string(), "localhost".into()];
    let lab1 = lab::ensure(&tls_dir, &names, CRL).unwrap();
    for key in ["ca.key", "server.key"] {
        let mode = std::fs::metadata(tls_dir.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    let server_sha = load_pair(&lab1.server).unwrap().1.sha256;
    // A restart reuses both.
    let lab2 = lab::ensure(&tls_dir, &names, CRL).unwrap();
    assert_eq!(lab2.ca_sha256, lab1.ca_sha256);
    assert_eq!(load_pair(&lab2.server).unwrap().1.sha256, server_sha);
    // A new address gets a new server certificate from the same CA.
    let more = vec![
        "127.0.0.1".to_string(),
        "localhost".into(),
        "198.18.0.1".into(),
    ];
    let lab3 = lab::ensure(&tls_dir, &more, CRL).unwrap();
    assert_eq!(lab3.ca_sha256, lab1.ca_sha256);
    let info = load_pair(&lab3.server).unwrap().1;
    assert_ne!(info.sha256, server_sha);
    assert!(
        info.names.contains(&"198.18.0.1".to_string()),
        "{:?}",
        info.names
    );
    // A new CRL address too; the CRL itself is the CA's.
    let lab4 = lab::ensure(&tls_dir, &more, "http://198.18.0.1/ca.crl").unwrap();
    assert_ne!(load_pair(&lab4.server).unwrap().1.sha256, info.sha256);
    let (_, crl) = x509_parser::parse_x509_crl(&lab4.crl_der).unwrap();
    let (_, ca_cert) = x509_parser::parse_x509_certificate(&lab4.ca_der).unwrap();
    assert_eq!(crl.issuer(), ca_cert.subject());
    assert!(crl.iter_revoked_certificates().next().is_none());
    let lab3 = lab4;

    // Served: TLS with the lab certificate, the CA on the plain listener.
    let config = HttpConfig {
        listen: Listen::One("127.0.0.1:0".into()),
        tls_listen: Listen::One("127.0.0.1:0".into()),
        tls: Some(TlsSource::Lab),
        ..HttpConfig::default()
    };
    let server = HttpServer::bind(&config)
        .unwrap()
        .with_tls(TlsServer::new("http", &lab3.server, None).unwrap());
    let (plain, tls) = (server.local_addrs()[0], server.tls_local_addrs()[0]);
    let stop = CancellationToken::new();
    tokio::spawn(server.run(lab::ca_routes(&lab3), stop.clone()));
    let ca_pem = dir.path().join("fetched.crt");
    let (ok, err, body) = curl(&[&format!("http://{plain}/ca.crt")]).await;
    assert!(ok, "{err}");
    std::fs::write(&ca_pem, &body).unwrap();
    assert_eq!(body, std::fs::read(&lab3.ca_file).unwrap());
    let (ok, _, der) = curl(&[&format!("http://{plain}/ca.der")]).await;
    assert!(ok);
    assert_eq!(sha(&der), lab3.ca_sha256);
    // The fetched CA verifies the server (RSA, as old iPXE builds need).
    let (ok, err, _) = curl(&[
        "-v",
        "--cacert",
        ca_pem.to_str().unwrap(),
        &format!("https://127.0.0.1:{}/ca.der", tls.port()),
    ])
    .await;
    assert!(ok, "{err}");
    for der in load_pair(&lab3.server).unwrap().0.cert {
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let alg = cert.public_key().algorithm.algorithm.to_id_string();
        assert_eq!(alg, "1.2.840.113549.1.1.1", "RSA, as old iPXE builds need");
    }
    stop.cancel();
}

/// A TLS 1.2 client that, like edk2's HTTPS Boot, can do nothing but DHE: the suite and group
/// it negotiated with the listener at `addr`, or the handshake error.
async fn dhe_only_handshake(
    addr: SocketAddr,
    ca: &Path,
) -> Result<(Option<rustls::CipherSuite>, Option<rustls::NamedGroup>), String> {
    let mut crypto = (*chainboot_http::tls::boot_provider()).clone();
    crypto.cipher_suites.retain(|s| {
        matches!(
            s.suite(),
            rustls::CipherSuite::TLS_DHE_RSA_WITH_AES_256_GCM_SHA384
                | rustls::CipherSuite::TLS_DHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    crypto
        .kx_groups
        .retain(|g| g.name() == rustls::NamedGroup::FFDHE2048);
    assert_eq!(crypto.cipher_suites.len(), 2);
    assert_eq!(crypto.kx_groups.len(), 1);
    let roots = chainboot_http::tls::load_roots(ca).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(crypto))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let conn = tls.get_ref().1;
    Ok((
        conn.negotiated_cipher_suite().map(|s| s.suite()),
        conn.negotiated_key_exchange_group().map(|g| g.name()),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_that_only_does_dhe_gets_ffdhe2048_on_the_boot_listener_only() {
    // The DHE suites are DHE_RSA: the lab certificate (RSA, what firmware is given) carries them.
    let site = site();
    let tls_dir = site.dir.path().join("lab");
    let names = vec!["127.0.0.1".to_string()];
    let lab = lab::ensure(&tls_dir, &names, CRL).unwrap();
    let ca = tls_dir.join("ca.crt");
    let boot = serve(
        &site,
        Some(TlsServer::new("http", &lab.server, None).unwrap()),
        |_| {},
    )
    .await;
    let got = dhe_only_handshake(boot.tls, &ca).await.unwrap();
    assert_eq!(
        got,
        (
            Some(rustls::CipherSuite::TLS_DHE_RSA_WITH_AES_256_GCM_SHA384),
            Some(rustls::NamedGroup::FFDHE2048)
        )
    );
    // A modern client still gets TLS 1.3 or ECDHE from the same listener.
    assert!(presented_cert(boot.tls, &ca).await.is_ok());
    let api = serve(
        &site,
        Some(TlsServer::new("api", &lab.server, None).unwrap()),
        |_| {},
    )
    .await;
    let refused = dhe_only_handshake(api.tls, &ca).await;
    assert!(
        refused.is_err(),
        "the management listener offers ECDHE only: {refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_file_bodies_are_copied_and_encrypted_while_plain_http_sends_them_with_sendfile() {
    let site = site();
    let srv = serve(&site, None, |_| {}).await;
    let ca = site.ca_file.to_str().unwrap();
    let big = std::fs::read(site.dir.path().join("root/big.bin")).unwrap();
    let sendfile = || {
        srv.stats
            .sendfile_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let tls_url = format!("https://127.0.0.1:{}/files/big.bin", srv.tls.port());
    // Twice: the second time every chunk is in the page cache.
    let (ok, err, body) = curl(&["--cacert", ca, &tls_url, &tls_url]).await;
    assert!(ok, "{err}");
    assert_eq!(sha(&body), sha(&[big.clone(), big.clone()].concat()));
    assert_eq!(sendfile(), 0, "TLS bodies never go by sendfile");
    let plain = format!("http://127.0.0.1:{}/files/big.bin", srv.plain.port());
    let (ok, err, body) = curl(&[&plain]).await;
    assert!(ok, "{err}");
    assert_eq!(sha(&body), sha(&big));
    assert_eq!(sendfile(), big.len() as u64);
}
