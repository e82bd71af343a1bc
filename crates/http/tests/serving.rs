//! The HTTP server on loopback, talked to by real clients: curl (the Debian package) and
//! reqwest. Traffic only to 127.0.0.1.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chainboot_content::{CleanPath, Root, Served, What};
use chainboot_http::{
    static_routes, AccessRecord, HttpConfig, HttpObserver, HttpServer, HttpStats, Listen,
    StaticContent, StaticFile,
};
use chainboot_iso::{IsoConfig, IsoLibrary};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[derive(Default)]
struct Recorder(Mutex<Vec<AccessRecord>>);
impl HttpObserver for Recorder {
    fn on_response(&self, r: &mut AccessRecord) {
        self.0.lock().unwrap().push(r.clone());
    }
}

struct Server {
    base: String,
    addr: SocketAddr,
    stop: CancellationToken,
    stats: Arc<HttpStats>,
    recorder: Arc<Recorder>,
    files: BTreeMap<String, Vec<u8>>,
    iso_files: BTreeMap<String, Vec<u8>>,
    root: PathBuf,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Server {
    async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), t)
                .await
                .expect("server stops after shutdown")
                .unwrap()
                .unwrap();
        }
    }
}

fn xorriso(args: &[&str]) {
    let out = std::process::Command::new("xorriso")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("xorriso is needed (apt-get install xorriso): {e}"));
    assert!(
        out.status.success(),
        "xorriso failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn start(tweak: impl FnOnce(&mut HttpConfig)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.txt"), b"TOPSECRET").unwrap();
    let root = dir.path().join("root");
    let mut files = BTreeMap::new();
    for (name, data) in [
        ("small.txt", bytes(1024, 1)),
        ("big.bin", bytes(8 << 20, 2)),
        ("empty", Vec::new()),
        ("boot.ipxe", b"#!ipxe\nchain /ipxe\n".to_vec()),
        ("sub/dir/file name.cfg", b"DEFAULT linux\n".to_vec()),
    ] {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, &data).unwrap();
        files.insert(name.to_string(), data);
    }
    symlink(dir.path().join("secret.txt"), root.join("escape")).unwrap();
    symlink(dir.path(), root.join("escdir")).unwrap();

    let ipxe = dir.path().join("ipxe");
    std::fs::create_dir(&ipxe).unwrap();
    std::fs::write(ipxe.join("ipxe.efi"), bytes(100_000, 3)).unwrap();
    files.insert("ipxe-bin/ipxe.efi".into(), bytes(100_000, 3));

    let iso_src = dir.path().join("iso-src");
    let mut iso_files = BTreeMap::new();
    for (name, data) in [
        ("install.amd/vmlinuz", bytes(3 << 20, 4)),
        ("install.amd/initrd.gz", bytes(1_234_567, 5)),
        ("README.txt", b"readme\n".to_vec()),
        ("odd name (1).cfg", b"odd\n".to_vec()),
        ("a/b/c/d/e/deep", b"deep\n".to_vec()),
    ] {
        let p = iso_src.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, &data).unwrap();
        iso_files.insert(name.to_string(), data);
    }
    symlink("install.amd/vmlinuz", iso_src.join("linux")).unwrap();
    let iso = dir.path().join("debian.iso");
    xorriso(&[
        "-as",
        "mkisofs",
        "-R",
        "-J",
        "-o",
        iso.to_str().unwrap(),
        iso_src.to_str().unwrap(),
    ]);
    let isos = IsoLibrary::new(&[IsoConfig {
        name: "debian".into(),
        path: iso,
        required: true,
    }]);

    let mut config = HttpConfig {
        listen: Listen::One("127.0.0.1:0".into()),
        root: Some(root.clone()),
        ..HttpConfig::default()
    };
    tweak(&mut config);
    let recorder = Arc::new(Recorder::default());
    let server = HttpServer::bind(&config)
        .unwrap()
        .with_observer(recorder.clone());
    let addr = server.local_addrs()[0];
    let stats = server.stats();
    let router = static_routes(StaticContent {
        files: config
            .root
            .as_ref()
            .map(|r| Arc::new(Root::new(r).unwrap())),
        ipxe_bin: Arc::new(Root::new(&ipxe).unwrap()),
        isos: Arc::new(isos),
        listing: config.listing,
    });
    let stop = CancellationToken::new();
    let task = tokio::spawn(server.run(router, stop.clone()));
    Server {
        base: format!("http://{addr}"),
        addr,
        stop,
        stats,
        recorder,
        files,
        iso_files,
        root,
        task: Some(task),
        _dir: dir,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

struct CurlOut {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

/// Runs curl and returns status, response headers and body.
async fn curl(args: &[&str]) -> CurlOut {
    let dir = tempfile::tempdir().unwrap();
    let hdr = dir.path().join("h");
    let body = dir.path().join("b");
    let out = tokio::process::Command::new("curl")
        .args(["-s", "--noproxy", "*", "--max-time", "30", "-D"])
        .arg(&hdr)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code}"])
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("curl is needed (apt-get install curl): {e}"));
    CurlOut {
        status: String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0),
        headers: std::fs::read_to_string(&hdr)
            .unwrap_or_default()
            .to_ascii_lowercase(),
        body: std::fs::read(&body).unwrap_or_default(),
    }
}

fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")).map(|v| v.trim()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_fetches_whole_files_ranges_and_heads() {
    let s = start(|_| {}).await;
    let big = &s.files["big.bin"];
    let url = format!("{}/files/big.bin", s.base);

    let r = curl(&[&url]).await;
    assert_eq!(r.status, 200);
    assert_eq!(sha(&r.body), sha(big));
    assert_eq!(header(&r.headers, "content-length"), Some("8388608"));
    assert_eq!(header(&r.headers, "accept-ranges"), Some("bytes"));
    assert!(header(&r.headers, "etag").is_some());
    assert!(header(&r.headers, "last-modified").is_some());

    for (range, start, end) in [
        ("0-99", 0usize, 100usize),
        ("4000000-4999999", 4_000_000, 5_000_000),
        ("-1000", big.len() - 1000, big.len()),
        ("8388000-", 8_388_000, big.len()),
        ("8388000-99999999", 8_388_000, big.len()),
    ] {
        let r = curl(&["-r", range, &url]).await;
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(r.body, &big[start..end], "{range}");
        assert_eq!(
            header(&r.headers, "content-range"),
            Some(format!("bytes {}-{}/{}", start, end - 1, big.len()).as_str()),
            "{range}"
        );
    }
    let r = curl(&["-r", "8388608-", &url]).await;
    assert_eq!(r.status, 416);
    assert_eq!(header(&r.headers, "content-range"), Some("bytes */8388608"));

    let r = curl(&["-I", &url]).await;
    assert_eq!(r.status, 200);
    assert_eq!(header(&r.headers, "content-length"), Some("8388608"));
    // With -I curl writes the head to -o as well; no body bytes follow it.
    assert!(r.body.len() < 1024, "HEAD sent a body");

    // Empty files still carry Content-Length (iPXE needs it, pixiecore#10).
    let r = curl(&[&format!("{}/files/empty", s.base)]).await;
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(header(&r.headers, "content-length"), Some("0"));

    let r = curl(&[&format!("{}/files/boot.ipxe", s.base)]).await;
    assert_eq!(
        header(&r.headers, "content-type"),
        Some("text/plain; charset=utf-8")
    );
    let r = curl(&[&format!("{}/files/sub/dir/file%20name.cfg", s.base)]).await;
    assert_eq!(r.body, s.files["sub/dir/file name.cfg"]);
    let r = curl(&[&format!("{}/ipxe-bin/ipxe.efi", s.base)]).await;
    assert_eq!(sha(&r.body), sha(&s.files["ipxe-bin/ipxe.efi"]));
    let r = curl(&["-X", "POST", &url]).await;
    assert_eq!(r.status, 405);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_conditional_requests() {
    let s = start(|_| {}).await;
    let c = client();
    let url = format!("{}/files/small.txt", s.base);
    let first = c.get(&url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let etag = first.headers()["etag"].to_str().unwrap().to_string();
    let lm = first.headers()["last-modified"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(first.bytes().await.unwrap(), s.files["small.txt"]);

    let r = c
        .get(&url)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    assert!(r.bytes().await.unwrap().is_empty());
    let r = c
        .get(&url)
        .header("If-None-Match", "\"nope\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(&url)
        .header("If-Modified-Since", &lm)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let r = c
        .get(&url)
        .header("If-Modified-Since", "Thu, 01 Jan 1998 00:00:00 GMT")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2).
    let r = c
        .get(&url)
        .header("If-None-Match", "\"nope\"")
        .header("If-Modified-Since", &lm)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(&url)
        .header("If-Match", "\"nope\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);

    let r = c
        .get(&url)
        .header("Range", "bytes=10-19")
        .header("If-Range", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), s.files["small.txt"][10..20]);
    let r = c
        .get(&url)
        .header("Range", "bytes=10-19")
        .header("If-Range", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 1024);

    // A changed file gets a new validator.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(s.root.join("small.txt"), b"changed").unwrap();
    let r = c
        .get(&url)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), &b"changed"[..]);
    s.shutdown().await;
}

/// Sends one raw request line and returns the status code (0 if the connection closed).
async fn raw_status(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut out))
        .await
        .expect("response in time")
        .ok();
    let status = std::str::from_utf8(&out)
        .ok()
        .and_then(|s| s.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_corpus_is_refused_over_http() {
    let s = start(|_| {}).await;
    let corpus = [
        "/files/../secret.txt",
        "/files/../../../../etc/passwd",
        "/files/%2e%2e/secret.txt",
        "/files/%2E%2E/secret.txt",
        "/files/%2e%2e%2fsecret.txt",
        "/files/%2e%2e%2Fsecret.txt",
        "/files/..%2fsecret.txt",
        "/files/sub/%2e%2e/%2e%2e/secret.txt",
        "/files/%252e%252e/secret.txt",
        "/files/%252e%252e%252fsecret.txt",
        "/files/..%5csecret.txt",
        "/files/%5c..%5c..%5csecret.txt",
        "/files/..\\secret.txt",
        "/files/sub\\..\\..\\secret.txt",
        "/files/%2e%2e%5c%2e%2e%5csecret.txt",
        "/files/%c0%ae%c0%ae/secret.txt",
        "/files/%00/secret.txt",
        "/files/small.txt%00.png",
        "/files/C:/secret.txt",
        "/files/escape",
        "/files/escdir/secret.txt",
        "/iso/debian/../../secret.txt",
        "/iso/debian/%2e%2e/%2e%2e/secret.txt",
        "/iso/%2e%2e/secret.txt",
        "/ipxe-bin/../secret.txt",
        "/ipxe-bin/%2e%2e%2fsecret.txt",
        "/ipxe-bin/..%5csecret.txt",
    ];
    for path in corpus {
        let (status, body) = raw_status(s.addr, path).await;
        assert!(matches!(status, 400 | 403 | 404), "{path}: status {status}");
        assert!(
            !String::from_utf8_lossy(&body).contains("TOPSECRET"),
            "{path} leaked the secret"
        );
        // curl, without its own path normalisation.
        let r = curl(&["--path-as-is", &format!("{}{}", s.base, path)]).await;
        assert!(
            matches!(r.status, 400 | 403 | 404),
            "curl {path}: {}",
            r.status
        );
        assert!(!String::from_utf8_lossy(&r.body).contains("TOPSECRET"));
    }
    // The refusal is specific: the same file through a legal path is served.
    let (status, _) = raw_status(s.addr, "/files/sub/../small.txt").await;
    assert_eq!(
        status, 400,
        "`..` refuses the whole path even when it stays inside"
    );
    let (status, _) = raw_status(s.addr, "/files/./sub//dir/file%20name.cfg").await;
    assert_eq!(status, 200);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iso_files_over_http_equal_their_sources() {
    let s = start(|_| {}).await;
    let c = client();
    for (name, data) in &s.iso_files {
        let url = format!("{}/iso/debian/{}", s.base, name.replace(' ', "%20"));
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{name}");
        assert_eq!(
            r.headers()["content-length"].to_str().unwrap(),
            data.len().to_string()
        );
        assert_eq!(sha(&r.bytes().await.unwrap()), sha(data), "{name}");
        let r = curl(&[&url]).await;
        assert_eq!(sha(&r.body), sha(data), "curl {name}");
    }
    // Through the symlink, with a range, case-insensitively.
    let vmlinuz = &s.iso_files["install.amd/vmlinuz"];
    let r = curl(&["-r", "-4096", &format!("{}/iso/debian/linux", s.base)]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &vmlinuz[vmlinuz.len() - 4096..]);
    let r = curl(&[&format!("{}/iso/DEBIAN/INSTALL.AMD/VMLINUZ", s.base)]).await;
    assert_eq!(sha(&r.body), sha(vmlinuz));
    let r = curl(&[&format!("{}/iso/debian/nope", s.base)]).await;
    assert_eq!(r.status, 404);
    let r = curl(&[&format!("{}/iso/other/README.txt", s.base)]).await;
    assert_eq!(r.status, 404);

    // Directory indexes: JSON by query or Accept, HTML otherwise.
    let j: serde_json::Value = c
        .get(format!("{}/iso/debian/install.amd?format=json", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(j["entries"][0]["name"], "initrd.gz");
    assert_eq!(j["entries"][0]["size"], 1_234_567);
    assert_eq!(j["entries"][1]["name"], "vmlinuz");
    let j: serde_json::Value = c
        .get(format!("{}/iso/debian/", s.base))
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = j["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "README.txt",
            "a",
            "install.amd",
            "linux",
            "odd name (1).cfg"
        ]
    );
    let html = c
        .get(format!("{}/iso/debian", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("href=\"/iso/debian/odd%20name%20(1).cfg\""),
        "{html}"
    );
    assert!(html.contains("href=\"/iso/debian/install.amd/\""), "{html}");
    let top = c
        .get(format!("{}/iso/", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(top.contains("/iso/debian/"));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_listings_only_when_enabled() {
    let s = start(|_| {}).await;
    let r = curl(&[&format!("{}/files/sub", s.base)]).await;
    assert_eq!(r.status, 404);
    let r = curl(&[&format!("{}/files/", s.base)]).await;
    assert_eq!(r.status, 404);
    s.shutdown().await;

    let s = start(|c| c.listing = true).await;
    let r = curl(&[&format!("{}/files/sub/dir", s.base)]).await;
    assert_eq!(r.status, 200);
    let html = String::from_utf8(r.body).unwrap();
    assert!(
        html.contains("href=\"/files/sub/dir/file%20name.cfg\""),
        "{html}"
    );
    let r = curl(&[
        "-H",
        "Accept: application/json",
        &format!("{}/files/", s.base),
    ])
    .await;
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let names: Vec<&str> = j["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"big.bin") && names.contains(&"sub"),
        "{names:?}"
    );
    assert!(
        !names.contains(&"escape"),
        "escaping symlinks are not listed"
    );
    s.shutdown().await;
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_clients_share_an_8mib_file_with_flat_memory() {
    // 64 machines would be 64 addresses; here they all come from 127.0.0.1, beside the
    // warm-up client's kept-alive connection.
    let s = start(|c| c.max_connections_per_client = c.max_connections).await;
    let want = sha(&s.files["big.bin"]);
    let url = format!("{}/files/big.bin", s.base);
    // Warm up allocator and page cache, then measure.
    let c = client();
    assert_eq!(
        sha(&c.get(&url).send().await.unwrap().bytes().await.unwrap()),
        want
    );
    let before = rss_kib();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(before));
    let done = CancellationToken::new();
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.is_cancelled() {
                peak.fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (c, url) = (client(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut r = c.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            // Hash as it streams: the client must not hold the file either.
            let mut h = Sha256::new();
            let mut n = 0usize;
            while let Some(chunk) = r.chunk().await.unwrap() {
                n += chunk.len();
                h.update(&chunk);
            }
            (n, hex::encode(h.finalize()))
        }));
    }
    for t in tasks {
        let (n, digest) = tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("downloads finish")
            .unwrap();
        assert_eq!(n, 8 << 20);
        assert_eq!(digest, want);
    }
    done.cancel();
    sampler.await.unwrap();
    let growth_mib = (peak.load(std::sync::atomic::Ordering::Relaxed) - before) / 1024;
    eprintln!(
        "RSS before {} MiB, growth during 64 x 8 MiB: {growth_mib} MiB",
        before / 1024
    );
    // Whole-file buffering would need 64 x 8 MiB = 512 MiB; streaming needs a chunk or two
    // per client plus socket buffers.
    assert!(growth_mib < 128, "memory grew by {growth_mib} MiB");
    assert!(
        s.stats
            .bytes_sent
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 65 * (8 << 20)
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changing_mid_transfer_aborts_the_response() {
    let s = start(|_| {}).await;
    let path = s.root.join("huge.bin");
    std::fs::write(&path, bytes(64 << 20, 8)).unwrap();
    let mut r = client()
        .get(format!("{}/files/huge.bin", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    // Rewritten in place (same inode), as a careless `cp` over a served file does.
    std::fs::write(&path, bytes(64 << 20, 9)).unwrap();
    let mut got = first.len();
    let outcome = loop {
        match r.chunk().await {
            Ok(Some(c)) => got += c.len(),
            Ok(None) => break Ok(got),
            Err(e) => break Err(e),
        }
    };
    assert!(
        outcome.is_err(),
        "the body must end in an error, got {got} bytes"
    );
    assert!(got < 64 << 20);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_idle_connections_and_huge_headers_are_cut_off() {
    let s = start(|c| {
        c.header_read_timeout = Duration::from_millis(500);
        c.idle_timeout = Duration::from_millis(500);
        c.max_header_bytes = 8192;
    })
    .await;
    // Slowloris: half a request, then nothing. The server closes the connection.
    let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    sock.write_all(b"GET /files/small.txt HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "slow client still connected after 10 s");
    eprintln!(
        "slow header connection closed after {:?}",
        started.elapsed()
    );

    // Keep-alive connection left idle after a response: closed too.
    let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    sock.write_all(b"GET /files/small.txt HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = sock.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "idle keep-alive connection still open after 10 s"
    );

    // Oversized request head.
    let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let big = format!(
        "GET /files/small.txt HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = sock.write_all(big.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "oversized head got: {text}"
    );
    assert!(!text.contains("200 OK"));
    assert!(
        s.stats
            .connections_timed_out
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_queues_clients_instead_of_refusing_them() {
    let s = start(|c| {
        c.max_connections = 2;
        c.header_read_timeout = Duration::from_millis(800);
    })
    .await;
    // Two silent clients hold both slots...
    let _a = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let _b = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        s.stats
            .active_connections
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    // ...a third waits in the backlog and is served once the header timeout frees a slot.
    let r = curl(&[&format!("{}/files/small.txt", s.base)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, s.files["small.txt"]);
    s.shutdown().await;
}

/// Connects from a given loopback address (an error when the server reset the connection
/// before the handshake was reported).
async fn connect_from(ip: &str, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    sock.connect(addr).await
}

/// A GET on an open connection: the status, or 0 when the server closed or reset it.
async fn get_on(mut sock: tokio::net::TcpStream, path: &str) -> u16 {
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    if let Err(e) = sock.write_all(req.as_bytes()).await {
        eprintln!("request not sent: {e}");
        return 0;
    }
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut out))
        .await
        .expect("an answer or a close in time");
    if let Err(e) = r {
        eprintln!("response not read: {e} (after {} bytes)", out.len());
    }
    // The status line only: the body is binary.
    let line_end = out.iter().position(|&b| b == b'\r').unwrap_or(0);
    std::str::from_utf8(&out[..line_end])
        .ok()
        .and_then(|s| s.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_cannot_hold_every_connection_slot() {
    let s = start(|c| {
        c.max_connections = 16;
        c.max_connections_per_client = 4;
        c.header_read_timeout = Duration::from_secs(30);
        c.idle_timeout = Duration::from_secs(30);
    })
    .await;
    let active = || {
        s.stats
            .active_connections
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let refused = || {
        s.stats
            .connections_refused_per_client
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    // One host opens 40 silent connections (enough to fill the server 2.5 times over).
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(connect_from("127.0.0.1", s.addr).await);
        // One at a time, so that the first four are the ones admitted.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused() < 36 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(refused(), 36, "connections beyond the per-client cap");
    assert_eq!(active(), 4, "only the per-client cap is held");
    // The refused ones were closed at once, without a response.
    let mut closed = 0;
    for sock in held.drain(4..) {
        let Ok(mut sock) = sock else {
            closed += 1;
            continue;
        };
        let mut b = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut b))
            .await
            .expect("a refused connection is closed, not left hanging");
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        closed += 1;
    }
    assert!(
        held.iter().all(|c| c.is_ok()),
        "an admitted connection failed"
    );
    assert_eq!(closed, 36);
    // Another host is served at once, the first one's four are still open...
    let other = connect_from("127.0.0.2", s.addr).await.unwrap();
    assert_eq!(get_on(other, "/files/small.txt").await, 200);
    // The other host's connection is done once the server has seen it close (it drains a
    // closed connection briefly before letting go): wait for that, boundedly.
    let deadline = Instant::now() + Duration::from_secs(5);
    while active() != 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(active(), 4);
    // ...and the capped host gets a connection again when one of its own closes.
    drop(held.pop());
    // The slot is given back when the server has finished with the closed connection.
    let mut served = false;
    for _ in 0..250 {
        if let Ok(again) = connect_from("127.0.0.1", s.addr).await {
            if get_on(again, "/files/small.txt").await == 200 {
                served = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "a slot given back was not reusable");
    drop(held);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_is_logged_counted_and_observed() {
    let s = start(|_| {}).await;
    let c = client();
    c.get(format!("{}/files/small.txt", s.base))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    c.get(format!("{}/files/nope", s.base))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    c.head(format!("{}/files/big.bin", s.base))
        .send()
        .await
        .unwrap();
    // Records are written when the body ends; give the server a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.recorder.0.lock().unwrap().len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let recs = s.recorder.0.lock().unwrap().clone();
    assert_eq!(recs.len(), 3, "{recs:?}");
    let small = recs
        .iter()
        .find(|r| r.path() == "/files/small.txt")
        .unwrap();
    assert_eq!(
        (small.status.as_u16(), small.bytes, small.complete),
        (200, 1024, true)
    );
    assert_eq!(small.client.ip(), s.addr.ip());
    let nope = recs.iter().find(|r| r.path() == "/files/nope").unwrap();
    assert_eq!(nope.status.as_u16(), 404);
    let head = recs.iter().find(|r| r.method == "HEAD").unwrap();
    assert_eq!(head.bytes, 0);
    assert_eq!(s.stats.responses(2), 2);
    assert_eq!(s.stats.responses(4), 1);
    assert_eq!(s.stats.requests(), 3);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_say_what_they_served_and_which_file() {
    let s = start(|_| {}).await;
    let c = client();
    let paths = [
        "/files/small.txt",
        "/iso/debian/install.amd/vmlinuz",
        "/ipxe-bin/ipxe.efi",
        "/files/nope",
        "/favicon.ico",
    ];
    for path in paths {
        c.get(format!("{}{path}", s.base))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.recorder.0.lock().unwrap().len() < paths.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let recs = s.recorder.0.lock().unwrap().clone();
    let find = |path: &str| recs.iter().find(|r| r.path() == path).unwrap().clone();
    let file = |iso: Option<&str>, path: &str| StaticFile {
        iso: iso.map(str::to_string),
        path: CleanPath::parse(path).unwrap(),
    };
    let small = find("/files/small.txt");
    assert_eq!(small.served, Served::new(What::File));
    assert_eq!(small.file, Some(file(None, "small.txt")));
    let kernel = find("/iso/debian/install.amd/vmlinuz");
    assert_eq!(kernel.served, Served::new(What::IsoFile));
    assert_eq!(
        kernel.file,
        Some(file(Some("debian"), "install.amd/vmlinuz"))
    );
    let first = find("/ipxe-bin/ipxe.efi");
    assert_eq!(first.served, Served::new(What::FirstStage));
    assert_eq!(first.file, None);
    let missing = find("/files/nope");
    assert_eq!(
        (missing.status.as_u16(), missing.served.what),
        (404, What::File)
    );
    // No route says anything about a path outside the namespace.
    assert_eq!(find("/favicon.ico").served.what, What::Other);
    s.shutdown().await;
}

#[test]
fn bind_reports_bad_config_and_busy_ports_with_the_address() {
    let e = HttpServer::bind(&HttpConfig {
        listen: Listen::One("nonsense".into()),
        ..HttpConfig::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("http.listen"), "{e}");
    let first = HttpServer::bind(&HttpConfig {
        listen: Listen::One("127.0.0.1:0".into()),
        ..HttpConfig::default()
    })
    .unwrap();
    let taken = first.local_addrs()[0].to_string();
    let e = HttpServer::bind(&HttpConfig {
        listen: Listen::Many(vec!["127.0.0.1:0".into(), taken.clone()]),
        ..HttpConfig::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains(&taken), "{e}");
    let _ = Path::new("/");
}

/// A server on a hand-made router (routes the static ones do not have: a body taker, a slow
/// handler), with the given limits.
async fn start_router(
    router: axum::Router,
    tweak: impl FnOnce(&mut HttpConfig),
) -> (SocketAddr, Arc<HttpStats>, CancellationToken) {
    start_router_on(router, tweak, |s| s).await
}

/// [`start_router`] with the server set up further by `setup`.
async fn start_router_on(
    router: axum::Router,
    tweak: impl FnOnce(&mut HttpConfig),
    setup: impl FnOnce(HttpServer) -> HttpServer,
) -> (SocketAddr, Arc<HttpStats>, CancellationToken) {
    let mut config = HttpConfig {
        listen: Listen::One("127.0.0.1:0".into()),
        ..HttpConfig::default()
    };
    tweak(&mut config);
    let server = setup(HttpServer::bind(&config).unwrap());
    let addr = server.local_addrs()[0];
    let stats = server.stats();
    let stop = CancellationToken::new();
    tokio::spawn(server.run(router, stop.clone()));
    (addr, stats, stop)
}

/// Reads what a nonblocking socket has, appending to `out`; true once the peer closed.
fn drain_nonblocking(sock: &mut std::net::TcpStream, out: &mut Vec<u8>) -> bool {
    use std::io::Read;
    let mut buf = [0u8; 4096];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_past_request_timeout_gets_408_and_the_connection_closes() {
    let router = axum::Router::new().route(
        "/echo",
        axum::routing::post(|body: bytes::Bytes| async move { body }),
    );
    // body_read_timeout far away: this is request_timeout's cut, which counts the head too.
    let (addr, stats, stop) = start_router(router, |c| {
        c.request_timeout = Duration::from_secs(2);
        c.body_read_timeout = Duration::from_secs(3600);
    })
    .await;
    let (answer, closed, sent) = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut sock = std::net::TcpStream::connect(addr).unwrap();
        // The head in two parts a second apart, then a body byte a second.
        sock.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_secs(1));
        sock.write_all(b"Content-Length: 100\r\n\r\n").unwrap();
        sock.set_nonblocking(true).unwrap();
        let (mut answer, mut closed, mut sent) = (Vec::new(), false, 0);
        for _ in 0..15 {
            closed = drain_nonblocking(&mut sock, &mut answer);
            if closed {
                break;
            }
            if sock.write(b"x").is_ok() {
                sent += 1;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        (answer, closed, sent)
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&answer).to_string();
    eprintln!("trickled body: {sent} bytes sent, answer: {text}");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    assert!(closed, "the connection stayed open");
    assert!(sent < 100, "the whole body went through");
    assert_eq!(
        stats
            .request_timeouts
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_slower_than_request_timeout_gets_503_and_others_are_served_meanwhile() {
    struct Cancelled(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Cancelled {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = dropped.clone();
    let router = axum::Router::new()
        .route(
            "/slow",
            axum::routing::get(move || {
                let guard = Cancelled(flag.clone());
                async move {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    drop(guard);
                    "late"
                }
            }),
        )
        .route("/fast", axum::routing::get(|| async { "fast" }));
    let (addr, stats, stop) = start_router(router, |c| {
        c.request_timeout = Duration::from_secs(2);
    })
    .await;
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    // While /slow hangs, another client is answered.
    let fast = client()
        .get(format!("http://{addr}/fast"))
        .send()
        .await
        .unwrap();
    assert_eq!(fast.status(), 200);
    assert_eq!(fast.text().await.unwrap(), "fast");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), sock.read_to_end(&mut out))
        .await
        .expect("the slow request's connection is closed")
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
    eprintln!("slow handler: {text}");
    assert!(text.starts_with("http/1.1 503"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    assert!(
        dropped.load(std::sync::atomic::Ordering::Relaxed),
        "the handler was not cancelled"
    );
    assert_eq!(
        stats
            .request_timeouts
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    stop.cancel();
}

/// On a server that allows it (the boot listener), a client may shut down its sending side
/// once its request is out (`printf 'GET ...' | nc` does; HTTP/1.1 allows it): the answer
/// still comes, even from a handler that takes its time, and then the connection ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_half_closes_after_its_request_still_gets_the_answer() {
    let router = axum::Router::new().route(
        "/later",
        axum::routing::get(|| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            "answered"
        }),
    );
    let (addr, stats, stop) = start_router_on(router, |_| {}, HttpServer::with_half_close).await;
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(b"GET /later HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    sock.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut out))
        .await
        .expect("the connection ends after the answer")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("answered"), "{text}");
    assert_eq!(stats.responses(2), 1);
    stop.cancel();
}

/// Without half-close (the operator's listener), a client that leaves in the middle of a
/// long answer that writes nothing for now (an event stream between events) is noticed at
/// once: the answer is dropped, with whatever it holds (a per-address stream slot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_from_a_quiet_long_answer_is_noticed_at_once() {
    struct Held(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Held {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    /// A first line, then nothing (never ends by itself).
    struct Quiet {
        first: bool,
        _held: Held,
    }
    impl http_body::Body for Quiet {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
            if std::mem::take(&mut self.first) {
                let line = bytes::Bytes::from_static(b"hello\n");
                return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(line))));
            }
            std::task::Poll::Pending
        }
    }
    let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = dropped.clone();
    let router = axum::Router::new().route(
        "/stream",
        axum::routing::get(move || {
            let held = Held(flag.clone());
            async move {
                axum::body::Body::new(Quiet {
                    first: true,
                    _held: held,
                })
            }
        }),
    );
    let (addr, _stats, stop) = start_router(router, |_| {}).await;
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let mut got = Vec::new();
    while !got.windows(6).any(|w| w == b"hello\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf))
            .await
            .expect("the first line comes")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    drop(sock);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !dropped.load(std::sync::atomic::Ordering::Relaxed) {
        assert!(
            std::time::Instant::now() < deadline,
            "the answer outlived its client"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
}

/// A client socket with a small receive buffer, so a server's writes block soon.
fn small_window_client(addr: SocketAddr) -> std::net::TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    s.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_after_send_timeout() {
    let s = start(|c| {
        c.send_timeout = Duration::from_secs(2);
        // Shorter than send_timeout, and still not what closes the connection: a connection
        // with a response in flight is never idle.
        c.idle_timeout = Duration::from_millis(500);
    })
    .await;
    // 64 MiB (sparse): far more than the socket buffers on both sides hold.
    let huge = std::fs::File::create(s.root.join("huge.bin")).unwrap();
    huge.set_len(64 << 20).unwrap();
    drop(huge);
    let mut stalled = small_window_client(s.addr);
    {
        use std::io::Write;
        stalled
            .write_all(b"GET /files/huge.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
    }
    let asked = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Another client is served while the stalled one holds its connection.
    let r = curl(&[&format!("{}/files/small.txt", s.base)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, s.files["small.txt"]);
    let timeouts = |st: &HttpStats| st.send_timeouts.load(std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(20);
    while timeouts(&s.stats) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = asked.elapsed();
    eprintln!("stalled reader cut off after {took:?}");
    assert_eq!(timeouts(&s.stats), 1, "the stalled reader was not cut off");
    assert!(
        took >= Duration::from_millis(1950),
        "cut off early: {took:?}"
    );
    // The connection is gone: what is left in the client's buffer, then EOF or a reset.
    let got = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        stalled
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = vec![0u8; 65536];
        let mut got = 0usize;
        loop {
            match stalled.read(&mut buf) {
                Ok(0) => return Ok(got),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Err(got),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err(got),
                Err(_) => return Ok(got),
            }
        }
    })
    .await
    .unwrap()
    .expect("the stalled connection is closed");
    assert!(got < 64 << 20, "the whole file arrived");
    let deadline = Instant::now() + Duration::from_secs(10);
    while s
        .stats
        .active_connections
        .load(std::sync::atomic::Ordering::Relaxed)
        > 0
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        s.stats
            .active_connections
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let recs = s.recorder.0.lock().unwrap().clone();
    let rec = recs.iter().find(|r| r.path() == "/files/huge.bin").unwrap();
    assert!(!rec.complete, "{rec:?}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_reader_outlasts_send_timeout() {
    let s = start(|c| c.send_timeout = Duration::from_secs(2)).await;
    let want = s.files["big.bin"].clone();
    let addr = s.addr;
    // 8 MiB (twice the largest loopback send buffer) read 1 MiB at a time with a 500 ms
    // pause between: the server's writes block again and again, each for less than
    // send_timeout, for 4 s in all. A clock that did not restart on progress would fire.
    let (body, took) = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut sock = small_window_client(addr);
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        sock.write_all(b"GET /files/big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let started = Instant::now();
        let mut all = Vec::new();
        let mut buf = vec![0u8; 65536];
        'outer: for _ in 0..20 {
            let mut this_round = 0;
            while this_round < 1 << 20 {
                match sock.read(&mut buf) {
                    Ok(0) => break 'outer,
                    Ok(n) => {
                        all.extend_from_slice(&buf[..n]);
                        this_round += n;
                    }
                    Err(e) => panic!("read failed after {} bytes: {e}", all.len()),
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        (all, started.elapsed())
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]).to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let split = body.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    eprintln!("slow reader: {} bytes in {took:?}", body.len() - split);
    assert_eq!(sha(&body[split..]), sha(&want), "incomplete or wrong body");
    assert!(
        took > Duration::from_secs(2),
        "the download was not slow: {took:?}"
    );
    assert_eq!(
        s.stats
            .send_timeouts
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    s.shutdown().await;
}

/// A chunked body over `request_body_limit`, sent by a client whose small send buffer makes each
/// write wait for the server to read: the server answers with its error, keeps reading (and
/// discarding) what the client still sends for a bounded time, and only then closes. Every
/// write of the client succeeds and it reads the status and the message, instead of a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_limit_chunked_body_gets_its_error_and_a_clean_close() {
    let router = axum::Router::new().route(
        "/echo",
        axum::routing::post(|body: bytes::Bytes| async move { body }),
    );
    let (addr, _stats, stop) = start_router(router, |c| {
        c.request_body_limit = 64 * 1024;
    })
    .await;
    let (sent, result) = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_send_buffer_size(4096).unwrap();
        s.connect(&addr.into()).unwrap();
        let mut sock: std::net::TcpStream = s.into();
        sock.set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        sock.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        let chunk = [b'x'; 4096];
        let mut sent = 0usize;
        // 1 MiB: sixteen times the limit.
        for _ in 0..256 {
            let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
            if let Err(e) = sock.write_all(&framed) {
                return (sent, Err(format!("write after {sent} bytes: {e}")));
            }
            sent += chunk.len();
        }
        if let Err(e) = sock.write_all(b"0\r\n\r\n") {
            return (sent, Err(format!("last chunk: {e}")));
        }
        let mut answer = Vec::new();
        match sock.read_to_end(&mut answer) {
            Ok(_) => (sent, Ok(String::from_utf8_lossy(&answer).to_string())),
            Err(e) => (
                sent,
                Err(format!(
                    "read: {e} after {:?}",
                    String::from_utf8_lossy(&answer)
                )),
            ),
        }
    })
    .await
    .unwrap();
    let text = result.unwrap_or_else(|e| panic!("the client saw no clean answer: {e}"));
    eprintln!("{sent} body bytes sent, answer: {text}");
    assert!(
        text.starts_with("HTTP/1.1 400") || text.starts_with("HTTP/1.1 413"),
        "{text}"
    );
    assert!(text.contains("length limit"), "{text}");
    stop.cancel();
}

#[tokio::test]
async fn every_response_says_nosniff_with_or_without_a_body_and_when_no_route_matches() {
    let router = axum::Router::new()
        .route("/x", axum::routing::get(|| async { "<html>" }))
        .route(
            "/echo",
            axum::routing::post(|body: bytes::Bytes| async move { body }),
        );
    let (addr, _stats, stop) = start_router(router, |_| {}).await;
    let c = client();
    let get = c.get(format!("http://{addr}/x")).send().await.unwrap();
    let post = c
        .post(format!("http://{addr}/echo"))
        .body("<script>")
        .send()
        .await
        .unwrap();
    let missing = c
        .get(format!("http://{addr}/nothing"))
        .send()
        .await
        .unwrap();
    let api = c
        .get(format!("http://{addr}/api/nothing"))
        .send()
        .await
        .unwrap();
    for (what, r) in [("get", get), ("post", post), ("404", missing), ("api", api)] {
        assert_eq!(
            r.headers()
                .get("x-content-type-options")
                .map(|v| v.as_bytes()),
            Some(&b"nosniff"[..]),
            "{what}: {:?}",
            r.headers()
        );
    }
    stop.cancel();
}

#[tokio::test]
async fn a_thread_stuck_in_a_handler_leaves_new_connections_to_the_other_threads() {
    let router = axum::Router::new()
        .route(
            "/stuck",
            axum::routing::get(|| async {
                // Blocks its thread, as a slow open on a network file system would.
                std::thread::sleep(Duration::from_secs(4));
                "done"
            }),
        )
        .route(
            "/thread",
            axum::routing::get(|| async {
                std::thread::current().name().unwrap_or("").to_string()
            }),
        );
    let config = HttpConfig {
        listen: Listen::One("127.0.0.1:0".into()),
        ..HttpConfig::default()
    };
    let server = HttpServer::bind(&config).unwrap().with_threads(2);
    let addr = server.local_addrs()[0];
    let stop = CancellationToken::new();
    let task = tokio::spawn(server.run(router, stop.clone()));
    let stuck = tokio::spawn(async move {
        client()
            .get(format!("http://{addr}/stuck"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A new connection per request (no idle connections kept): each is accepted afresh.
    let fresh = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut threads = Vec::new();
    for _ in 0..10 {
        let r = fresh
            .get(format!("http://{addr}/thread"))
            .send()
            .await
            .unwrap();
        threads.push(r.text().await.unwrap());
    }
    assert!(
        !stuck.is_finished(),
        "the stuck request ended before the others were served"
    );
    assert!(
        threads
            .iter()
            .all(|t| t.starts_with("http-") && *t == threads[0]),
        "served by the server's own threads, all by the one not stuck: {threads:?}"
    );
    assert_eq!(stuck.await.unwrap(), "done");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
}

fn sendfile_bytes(s: &Server) -> u64 {
    s.stats
        .sendfile_bytes
        .load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_files_go_out_with_sendfile_byte_exact_whole_and_in_ranges() {
    let s = start(|_| {}).await;
    let big = &s.files["big.bin"];
    let url = format!("{}/files/big.bin", s.base);
    // Not in the page cache: the chunks are read (blocking pool), and still arrive exact.
    let f = std::fs::File::open(s.root.join("big.bin")).unwrap();
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
    let r = curl(&[&url]).await;
    assert_eq!((r.status, sha(&r.body)), (200, sha(big)));
    // Now cached (just read): sent from the page cache without a copy.
    let before = sendfile_bytes(&s);
    let r = curl(&[&url]).await;
    assert_eq!((r.status, sha(&r.body)), (200, sha(big)));
    let by_sendfile = sendfile_bytes(&s) - before;
    assert!(
        by_sendfile >= big.len() as u64 - (1 << 20),
        "only {by_sendfile} of {} bytes by sendfile",
        big.len()
    );
    // Ranges, across the chunk boundary and the file's end.
    let chunk = chainboot_http::CHUNK;
    for (range, from, to) in [
        (format!("{}-{}", chunk - 1, chunk), chunk - 1, chunk + 1),
        ("100-300000".to_string(), 100, 300_001),
        ("0-0".to_string(), 0, 1),
        ("-1000".to_string(), big.len() - 1000, big.len()),
        (format!("{}-", 3 * chunk + 7), 3 * chunk + 7, big.len()),
    ] {
        let r = curl(&["-r", &range, &url]).await;
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(sha(&r.body), sha(&big[from..to]), "{range}");
    }
    // What the access log and the observer saw: every byte, complete.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let recs = s.recorder.0.lock().unwrap().clone();
    let whole: Vec<_> = recs.iter().filter(|r| r.status == 200).collect();
    assert_eq!(whole.len(), 2);
    for r in whole {
        assert_eq!((r.bytes, r.complete), (big.len() as u64, true));
    }
    s.shutdown().await;
}

/// Reads one response (head and Content-Length body) from `sock`, with `buf` holding what was
/// read past the previous one.
fn read_response(
    sock: &mut std::net::TcpStream,
    buf: &mut Vec<u8>,
    head_only: bool,
) -> (u16, Vec<u8>) {
    use std::io::Read;
    let mut tmp = vec![0u8; 64 * 1024];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = sock.read(&mut tmp).unwrap();
        assert!(n > 0, "connection closed before a response head");
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let len: usize = header(&head, "content-length").map_or(0, |v| v.parse().unwrap());
    let len = if head_only { 0 } else { len };
    buf.drain(..end);
    while buf.len() < len {
        let n = sock.read(&mut tmp).unwrap();
        assert!(n > 0, "connection closed mid-body");
        buf.extend_from_slice(&tmp[..n]);
    }
    (status, buf.drain(..len).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_keep_alive_connection_mixes_sendfile_bodies_and_other_responses_in_order() {
    let s = start(|_| {}).await;
    let (addr, files) = (s.addr, s.files.clone());
    // Cache the files first, so the big ones go by sendfile.
    for name in ["big.bin", "ipxe-bin/ipxe.efi"] {
        let path = if name.starts_with("ipxe-bin") {
            name.to_string()
        } else {
            format!("files/{name}")
        };
        assert_eq!(curl(&[&format!("{}/{path}", s.base)]).await.status, 200);
    }
    let before = sendfile_bytes(&s);
    let big = files["big.bin"].clone();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut sock = std::net::TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let chunk = chainboot_http::CHUNK;
        // Method, path, Range, status, body.
        type Req<'a> = (&'a str, &'a str, Option<String>, u16, Option<Vec<u8>>);
        let reqs: Vec<Req> = vec![
            (
                "GET",
                "/files/big.bin",
                Some(format!("bytes=10-{}", 2 * chunk + 10)),
                206,
                Some(big[10..2 * chunk + 11].to_vec()),
            ),
            (
                "GET",
                "/files/small.txt",
                None,
                200,
                Some(files["small.txt"].clone()),
            ),
            ("GET", "/files/missing", None, 404, None),
            ("HEAD", "/files/big.bin", None, 200, Some(Vec::new())),
            (
                "GET",
                "/ipxe-bin/ipxe.efi",
                None,
                200,
                Some(files["ipxe-bin/ipxe.efi"].clone()),
            ),
            (
                "GET",
                "/files/boot.ipxe",
                None,
                200,
                Some(files["boot.ipxe"].clone()),
            ),
            ("GET", "/files/big.bin", None, 200, Some(big.clone())),
            ("GET", "/files/empty", None, 200, Some(Vec::new())),
        ];
        // Pipelined: all requests at once, answers read in order.
        let mut out = Vec::new();
        for (method, path, range, _, _) in &reqs {
            write!(out, "{method} {path} HTTP/1.1\r\nHost: t\r\n").unwrap();
            if let Some(r) = range {
                write!(out, "Range: {r}\r\n").unwrap();
            }
            out.extend_from_slice(b"\r\n");
        }
        sock.write_all(&out).unwrap();
        let mut buf = Vec::new();
        for (method, path, _, status, body) in &reqs {
            let (got, bytes) = read_response(&mut sock, &mut buf, *method == "HEAD");
            assert_eq!(got, *status, "{method} {path}");
            if let Some(b) = body {
                assert_eq!(sha(&bytes), sha(b), "{method} {path}");
            }
        }
        assert!(buf.is_empty(), "nothing after the last response");
    })
    .await
    .unwrap();
    assert!(sendfile_bytes(&s) - before >= (8 << 20) as u64);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_every_byte_sent_by_sendfile() {
    let s = start(|_| {}).await;
    let url = format!("{}/files/big.bin", s.base);
    assert_eq!(curl(&[&url]).await.status, 200);
    let before = sendfile_bytes(&s);
    let (addr, big) = (s.addr, s.files["big.bin"].clone());
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        // A 4 KiB receive window read in small bites: the server's socket fills again and
        // again, and every sendfile resumes where the last one stopped.
        let mut sock = small_window_client(addr);
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        sock.write_all(b"GET /files/big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let started = Instant::now();
        let mut buf = Vec::new();
        let mut bites = 0;
        let (status, body) = {
            use std::io::Read;
            // Slow for the first 2 MiB, then full speed (a bounded test time).
            let mut tmp = vec![0u8; 16 * 1024];
            while buf.len() < 2 << 20 {
                let n = sock.read(&mut tmp).unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&tmp[..n]);
                bites += 1;
                if bites % 8 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            read_response(&mut sock, &mut buf, false)
        };
        assert_eq!(status, 200);
        assert_eq!(sha(&body), sha(&big));
        assert!(started.elapsed() < Duration::from_secs(60));
    })
    .await
    .unwrap();
    assert!(sendfile_bytes(&s) - before >= (7 << 20) as u64);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_sendfile_body_frees_its_connection_and_is_logged_short() {
    let s = start(|_| {}).await;
    let url = format!("{}/files/big.bin", s.base);
    assert_eq!(curl(&[&url]).await.status, 200);
    let before = sendfile_bytes(&s);
    let addr = s.addr;
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut sock = small_window_client(addr);
        sock.write_all(b"GET /files/big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut tmp = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < 300_000 {
            got += sock.read(&mut tmp).unwrap();
        }
        // Gone with a reset, mid-body.
        socket2::SockRef::from(&sock)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while s
        .stats
        .active_connections
        .load(std::sync::atomic::Ordering::Relaxed)
        > 0
    {
        assert!(Instant::now() < deadline, "the connection is still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sendfile_bytes(&s) > before);
    let recs = s.recorder.0.lock().unwrap().clone();
    let last = recs.last().unwrap();
    assert!(
        !last.complete && last.bytes < 8 << 20,
        "{:?}",
        (last.complete, last.bytes)
    );
    assert!(s.stats.aborted.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    // The slot is free: the next client is served.
    assert_eq!(sha(&curl(&[&url]).await.body), sha(&s.files["big.bin"]));
    s.shutdown().await;
}

/// A small file is kept in memory once it has not changed for a while (`SETTLE`): the wait
/// makes sure the requests below are answered from the kept copy, not from the file.
fn wait_until_settled() {
    std::thread::sleep(chainboot_content::SETTLE + Duration::from_millis(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_small_file_answers_until_the_file_changes_even_with_its_old_size_and_time() {
    let s = start(|_| {}).await;
    let path = s.root.join("kept.cfg");
    std::fs::write(&path, b"first version\n").unwrap();
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    wait_until_settled();
    let url = format!("{}/files/kept.cfg", s.base);
    let first = curl(&[&url]).await;
    assert_eq!(
        (first.status, &first.body[..]),
        (200, &b"first version\n"[..])
    );
    // Answered again (now from the kept copy), with the same validators and ranges.
    let again = curl(&[&url]).await;
    assert_eq!(
        (again.status, &again.body[..]),
        (200, &b"first version\n"[..])
    );
    assert_eq!(
        header(&again.headers, "etag"),
        header(&first.headers, "etag")
    );
    assert_eq!(
        header(&again.headers, "last-modified"),
        header(&first.headers, "last-modified")
    );
    let etag = header(&first.headers, "etag").unwrap().to_string();
    let not_modified = curl(&["-H", &format!("If-None-Match: {etag}"), &url]).await;
    assert_eq!(not_modified.status, 304);
    let range = curl(&["-r", "6-12", &url]).await;
    assert_eq!((range.status, &range.body[..]), (206, &b"version"[..]));
    let head = curl(&["-I", &url]).await;
    assert_eq!(
        (head.status, header(&head.headers, "content-length")),
        (200, Some("14"))
    );

    // Rewritten in place with as many bytes, its modification time put back (`cp -p`, `touch
    // -r`): inode, size and modification time are the old ones. The next request must see
    // the new bytes at once.
    std::fs::write(&path, b"second version").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let changed = curl(&[&url]).await;
    assert_eq!(
        (changed.status, &changed.body[..]),
        (200, &b"second version"[..])
    );

    // Kept again once settled; then swapped for a symlink out of the root: refused as
    // before, never answered from the copy.
    wait_until_settled();
    assert_eq!(curl(&[&url]).await.body, b"second version");
    assert_eq!(curl(&[&url]).await.body, b"second version");
    std::fs::remove_file(&path).unwrap();
    symlink(s._dir.path().join("secret.txt"), &path).unwrap();
    let swapped = curl(&[&url]).await;
    assert!(matches!(swapped.status, 403 | 404), "{}", swapped.status);
    assert!(!String::from_utf8_lossy(&swapped.body).contains("TOPSECRET"));
    assert!(!String::from_utf8_lossy(&swapped.body).contains("version"));
    std::fs::remove_file(&path).unwrap();
    assert_eq!(curl(&[&url]).await.status, 404, "removed: not found");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_file_whose_directory_is_swapped_for_a_symlink_answers_as_a_fresh_open_would() {
    let s = start(|_| {}).await;
    let dir = s.root.join("cfg");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("kept.cfg"), b"kept bytes\n").unwrap();
    wait_until_settled();
    let url = format!("{}/files/cfg/kept.cfg", s.base);
    for _ in 0..2 {
        let r = curl(&[&url]).await;
        assert_eq!((r.status, &r.body[..]), (200, &b"kept bytes\n"[..]));
    }
    // The directory moved out of the root and linked back: the same file, unchanged, but the
    // path now leaves the root, which the checked open refuses.
    let outside = s._dir.path().join("cfg");
    std::fs::rename(&dir, &outside).unwrap();
    symlink(&outside, &dir).unwrap();
    let escaped = curl(&[&url]).await;
    assert!(matches!(escaped.status, 403 | 404), "{}", escaped.status);
    assert!(!String::from_utf8_lossy(&escaped.body).contains("kept bytes"));

    // A symlink to another directory inside the root: its file, never the kept copy.
    std::fs::remove_file(&dir).unwrap();
    let other = s.root.join("cfg-new");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("kept.cfg"), b"new bytes!\n").unwrap();
    symlink("cfg-new", &dir).unwrap();
    let relinked = curl(&[&url]).await;
    assert_eq!(
        (relinked.status, &relinked.body[..]),
        (200, &b"new bytes!\n"[..])
    );
    s.shutdown().await;
}
