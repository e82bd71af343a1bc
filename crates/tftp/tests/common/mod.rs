//! A chainboot TFTP server running in-process on 127.0.0.1, serving a temp dir, plus helpers
//! to talk to it with raw packets and to check files.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chainboot_content::Root;
use chainboot_tftp::proto::{self, Packet};
use chainboot_tftp::{TftpConfig, TftpServer, TftpStats, TransferObserver, Vouch};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

pub struct TestServer {
    pub addr: SocketAddr,
    pub stats: Arc<TftpStats>,
    pub root: tempfile::TempDir,
    /// A directory outside the root, target of escaping symlinks.
    pub outside: tempfile::TempDir,
    shutdown: CancellationToken,
    done: Option<std::sync::mpsc::Receiver<std::io::Result<()>>>,
    rt: Option<tokio::runtime::Runtime>,
}

pub fn config() -> TftpConfig {
    TftpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        // Tests run many clients from 127.0.0.1.
        max_per_client: 1000,
        timeout: Duration::from_millis(500),
        ..TftpConfig::default()
    }
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::start_with(config(), None)
    }

    pub fn start_with(
        config: TftpConfig,
        observer: Option<Arc<dyn TransferObserver>>,
    ) -> TestServer {
        TestServer::start_seeing(config, observer, None)
    }

    /// As `start_with`, and with busy-polling threads seeing `runnable` runnable tasks instead
    /// of this machine's (`None`: this machine's).
    pub fn start_seeing(
        config: TftpConfig,
        observer: Option<Arc<dyn TransferObserver>>,
        runnable: Option<u32>,
    ) -> TestServer {
        TestServer::start_full(config, observer, runnable, None)
    }

    /// As `start_with`, and with `vouch` telling booting machines' addresses.
    pub fn start_vouched(config: TftpConfig, vouch: Arc<dyn Vouch>) -> TestServer {
        TestServer::start_full(config, None, None, Some(vouch))
    }

    fn start_full(
        config: TftpConfig,
        observer: Option<Arc<dyn TransferObserver>>,
        runnable: Option<u32>,
        vouch: Option<Arc<dyn Vouch>>,
    ) -> TestServer {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"SECRET-OUTSIDE-THE-ROOT").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("escape"))
            .unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("escdir")).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let resolver = Arc::new(Root::new(root.path()).unwrap());
        let server = rt
            .block_on(async { TftpServer::bind(&config, resolver) })
            .unwrap();
        let server = match observer {
            Some(o) => server.with_observer(o),
            None => server,
        };
        let server = match runnable {
            Some(n) => server.with_runnable_count(n),
            None => server,
        };
        let server = match vouch {
            Some(v) => server.with_vouch(v),
            None => server,
        };
        let addr = server.local_addr();
        let stats = server.stats();
        let shutdown = CancellationToken::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let token = shutdown.clone();
        rt.spawn(async move {
            let r = server.run(token).await;
            let _ = tx.send(r);
        });
        TestServer {
            addr,
            stats,
            root,
            outside,
            shutdown,
            done: Some(rx),
            rt: Some(rt),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Blocks every worker of the server's runtime (2) for `how_long`, as a storm's HTTP
    /// bodies can keep them all busy; the flag is true until they are free again.
    pub fn occupy_workers(&self, how_long: Duration) -> Arc<std::sync::atomic::AtomicBool> {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let busy = Arc::new(AtomicBool::new(true));
        let rt = self.rt.as_ref().expect("running");
        let started = Arc::new(std::sync::Barrier::new(3));
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..2 {
            let (busy, started, done) = (busy.clone(), started.clone(), done.clone());
            rt.spawn(async move {
                started.wait();
                std::thread::sleep(how_long);
                if done.fetch_add(1, Ordering::SeqCst) == 1 {
                    busy.store(false, Ordering::SeqCst);
                }
            });
        }
        started.wait();
        busy
    }

    /// Writes a file of `len` deterministic pseudo-random bytes under the root.
    pub fn file(&self, name: &str, len: usize) -> PathBuf {
        let p = self.root.path().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, pattern(len, name.len() as u64)).unwrap();
        p
    }

    /// Cancels the server and waits (bounded) for `run` to return.
    pub fn stop(&mut self) -> std::io::Result<()> {
        self.shutdown.cancel();
        self.done
            .take()
            .expect("stopped twice")
            .recv_timeout(Duration::from_secs(20))
            .expect("server did not stop within 20 s")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

pub fn sha256(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// Fails with a clear message when an external client is missing (CI installs them all).
pub fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed; run `bash .ci/install-deps` (Debian packages tftp-hpa, atftp, curl)"
    );
}

/// A raw UDP client socket on 127.0.0.1 (or another loopback address).
pub fn raw_client(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

/// Receives one datagram, or `None` after the socket's read timeout.
pub fn recv(s: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 70_000];
    match s.recv_from(&mut buf) {
        Ok((n, from)) => Some((buf[..n].to_vec(), from)),
        Err(_) => None,
    }
}

/// Describes a datagram the way the unit tests do: "DATA 1 (512)", "ERROR 2 ...".
pub fn describe(p: &[u8]) -> String {
    match proto::parse(p) {
        Ok(Packet::Data { block, data }) => format!("DATA {block} ({})", data.len()),
        Ok(Packet::Oack { options }) => {
            let o: Vec<String> = options.iter().map(|(n, v)| format!("{n}={v}")).collect();
            format!("OACK {}", o.join(" "))
        }
        Ok(Packet::Error { code, message }) => format!("ERROR {} {message}", code.as_u16()),
        Ok(p) => format!("{p:?}"),
        Err(e) => format!("garbage: {e}"),
    }
}

pub fn ack(block: u16) -> [u8; 4] {
    let mut b = [0u8; 4];
    proto::put_ack(&mut b, block);
    b
}

pub fn rrq(name: &str, options: &[(&str, &str)]) -> Vec<u8> {
    proto::encode_request(proto::OP_RRQ, name, "octet", options)
}

/// Fetches a whole file with raw packets (lock-step, no options); returns the bytes.
pub fn raw_get(server: SocketAddr, name: &str) -> Result<Vec<u8>, String> {
    raw_get_acking_after(server, name, Duration::ZERO)
}

/// [`raw_get`] by a client that holds each ACK for `delay` (a far client).
pub fn raw_get_acking_after(
    server: SocketAddr,
    name: &str,
    delay: Duration,
) -> Result<Vec<u8>, String> {
    let s = raw_client("127.0.0.1");
    s.send_to(&rrq(name, &[]), server).unwrap();
    let mut out = Vec::new();
    let mut expect: u16 = 1;
    for _ in 0..1_000_000 {
        let Some((p, from)) = recv(&s) else {
            return Err("timeout".into());
        };
        match proto::parse(&p) {
            Ok(Packet::Data { block, data }) if block == expect => {
                out.extend_from_slice(data);
                if !delay.is_zero() {
                    std::thread::sleep(delay);
                }
                s.send_to(&ack(block), from).unwrap();
                if data.len() < 512 {
                    return Ok(out);
                }
                expect = expect.wrapping_add(1);
            }
            _ => return Err(describe(&p)),
        }
    }
    Err("too many blocks".into())
}

/// Polls `cond` for up to 5 s: the server counts a transfer as finished when it processes the
/// client's last ACK, which is after the client already has every byte.
pub fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}
