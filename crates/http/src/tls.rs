//! TLS for the listeners: a certificate chain and key from PEM files, checked before use
//! (readable, not readable by others, key matching the certificate, inside its validity
//! period), swapped in place when the files change or on [`TlsServer::reload`] (SIGHUP), and
//! the handshake that wraps an accepted connection.
//!
//! Protocol defaults are rustls's: TLS 1.2 and 1.3 only, its default cipher suites (AEAD with
//! forward secrecy only), ALPN `http/1.1`. A bad new pair never replaces a working one: the
//! running certificate stays and the log says why.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::{HttpConfig, HttpStats};
use std::net::SocketAddr;

/// How often [`TlsServer::watch`] looks at the files' modification times.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Where a listener's certificate comes from: `tls = "lab"` (a CA and a server certificate
/// the server makes for itself in `state_dir`) or `tls = { cert = "FILE", key = "FILE" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    Lab,
    Files(TlsFiles),
}

/// A certificate chain (PEM, the server's certificate first) and its private key (PEM:
/// PKCS#8, PKCS#1 or SEC1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Serialize for TlsSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TlsSource::Lab => s.serialize_str("lab"),
            TlsSource::Files(f) => f.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for TlsSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TlsSource, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            Files(TlsFiles),
        }
        const EXPECTED: &str = "expected \"lab\" or { cert = \"FILE\", key = \"FILE\" }";
        match Raw::deserialize(d) {
            Ok(Raw::Word(w)) if w == "lab" => Ok(TlsSource::Lab),
            Ok(Raw::Word(w)) => Err(serde::de::Error::custom(format!("{w:?}: {EXPECTED}"))),
            Ok(Raw::Files(f)) => Ok(TlsSource::Files(f)),
            Err(_) => Err(serde::de::Error::custom(EXPECTED)),
        }
    }
}

/// Why a certificate or key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

fn fail<T>(message: String) -> Result<T, TlsError> {
    Err(TlsError(message))
}

/// What the log and `check` say about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    /// Serial number, colon-separated hex.
    pub serial: String,
    /// SHA-256 of the server certificate's DER, lowercase hex (what `--pin` takes).
    pub sha256: String,
    pub not_after: String,
    /// Subject alternative names (DNS names and IP addresses).
    pub names: Vec<String>,
}

/// The crypto used everywhere: ring (the provider reqwest's rustls already uses here, so one
/// implementation is compiled in).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The label of the boot listener's TLS (`[http] tls`), the one UEFI firmware talks to.
pub const BOOT_LISTENER: &str = "http";

/// The boot listener's crypto: ring's, plus TLS 1.2 DHE suites and the ffdhe2048 group after
/// everything else, for edk2 firmware's HTTPS Boot, which offers no ECDHE (see `ffdhe`).
pub fn boot_provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.extend(crate::ffdhe::dhe_suites());
    p.kx_groups.push(&crate::ffdhe::FFDHE2048_GROUP);
    Arc::new(p)
}

/// SHA-256 of DER bytes as lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Reads and checks a pair: the key file must not be readable by group or others, both files
/// must parse, the key must match the first certificate, and every certificate of the chain
/// must be valid now.
pub fn load_pair(files: &TlsFiles) -> Result<(CertifiedKey, CertInfo), TlsError> {
    let key_pem = read_key_file(&files.key)?;
    let cert_pem = std::fs::read(&files.cert).or_else(|e| {
        fail(format!(
            "cannot read certificate file {}: {e}",
            files.cert.display()
        ))
    })?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .or_else(|e| fail(format!("certificate file {}: {e}", files.cert.display())))?;
    if chain.is_empty() {
        return fail(format!(
            "certificate file {}: no PEM CERTIFICATE block",
            files.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).or_else(|e| {
        fail(format!(
            "key file {}: no private key found ({e})",
            files.key.display()
        ))
    })?;
    let signing = provider().key_provider.load_private_key(key).or_else(|e| {
        fail(format!(
            "key file {}: unusable key: {e}",
            files.key.display()
        ))
    })?;
    let info = check_chain(&chain, &files.cert, SystemTime::now())?;
    let pair = CertifiedKey::new(chain, signing);
    match pair.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return fail(format!(
                "the key in {} does not match the certificate in {}",
                files.key.display(),
                files.cert.display()
            ))
        }
        Err(e) => {
            return fail(format!(
                "cannot compare the key in {} with the certificate in {}: {e}",
                files.key.display(),
                files.cert.display()
            ))
        }
    }
    Ok((pair, info))
}

/// A private key that others can read is as good as published: refused, not just warned
/// about.
fn read_key_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    let meta = std::fs::metadata(path)
        .or_else(|e| fail(format!("cannot read key file {}: {e}", path.display())))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return fail(format!(
            "key file {} has mode {mode:04o}: group or others may read it; chmod 600 it",
            path.display()
        ));
    }
    std::fs::read(path).or_else(|e| fail(format!("cannot read key file {}: {e}", path.display())))
}

/// Every certificate of the chain parses and is valid at `now`; the first one's facts.
fn check_chain(
    chain: &[CertificateDer<'_>],
    file: &Path,
    now: SystemTime,
) -> Result<CertInfo, TlsError> {
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut info = None;
    for (i, der) in chain.iter().enumerate() {
        let (_, cert) = x509_parser::parse_x509_certificate(der).or_else(|e| {
            fail(format!(
                "certificate file {}: certificate {} does not parse: {e}",
                file.display(),
                i + 1
            ))
        })?;
        let validity = cert.validity();
        let which = if i == 0 {
            "the certificate".to_string()
        } else {
            format!("chain certificate {} ({})", i + 1, cert.subject())
        };
        if now < validity.not_before.timestamp() {
            return fail(format!(
                "{}: {which} is not valid before {}",
                file.display(),
                show_time(&validity.not_before)
            ));
        }
        if now > validity.not_after.timestamp() {
            return fail(format!(
                "{}: {which} expired on {}",
                file.display(),
                show_time(&validity.not_after)
            ));
        }
        if i == 0 {
            info = Some(CertInfo {
                subject: cert.subject().to_string(),
                serial: cert.raw_serial_as_string(),
                sha256: fingerprint(der),
                not_after: show_time(&validity.not_after),
                names: alt_names(&cert),
            });
        }
    }
    info.ok_or_else(|| TlsError(format!("{}: no certificate", file.display())))
}

fn show_time(t: &x509_parser::time::ASN1Time) -> String {
    t.to_rfc2822().unwrap_or_else(|_| t.timestamp().to_string())
}

/// The DNS names and IP addresses a certificate is for.
pub(crate) fn alt_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                16 => <[u8; 16]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Hands every handshake the pair that is current when it starts; a reload swaps it without
/// touching connections already established.
#[derive(Debug)]
struct CurrentCert(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// What identifies the files' current content without reading it: a replace (rename over)
/// changes the inode, an in-place write the modification time or size.
type Stamp = Option<[(i64, i64, u64, u64); 2]>;

fn stamp(files: &TlsFiles) -> Stamp {
    let one = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.mtime(), m.mtime_nsec(), m.ino(), m.len()))
    };
    Some([one(&files.cert)?, one(&files.key)?])
}

/// One listener's TLS: the acceptor (protocol settings, optional client certificates) and
/// the certificate pair it presents, reloadable.
pub struct TlsServer {
    /// For log lines: which listener this is (`http`, `api`).
    label: String,
    files: TlsFiles,
    cert: Arc<CurrentCert>,
    info: ArcSwap<CertInfo>,
    seen: Seen,
    acceptor: tokio_rustls::TlsAcceptor,
}

/// The file stamp last looked at (the lock is held for a comparison only).
#[derive(Default)]
struct Seen(std::sync::Mutex<Stamp>);

impl Seen {
    /// Stores `now`; true when it differs from what was stored.
    fn update(&self, now: Stamp) -> bool {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let changed = *g != now;
        *g = now;
        changed
    }
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("label", &self.label)
            .field("files", &self.files)
            .field("cert", &self.info.load().serial)
            .finish()
    }
}

impl TlsServer {
    /// Loads and checks the pair (see [`load_pair`]) and builds the acceptor. With
    /// `client_ca`, every client must present a certificate signed by one of the CAs in that
    /// PEM file.
    pub fn new(
        label: &str,
        files: &TlsFiles,
        client_ca: Option<&Path>,
    ) -> Result<Arc<TlsServer>, TlsError> {
        let seen = Seen::default();
        seen.update(stamp(files));
        let (pair, info) = load_pair(files)?;
        let cert = Arc::new(CurrentCert(ArcSwap::from_pointee(pair)));
        let crypto = if label == BOOT_LISTENER {
            boot_provider()
        } else {
            provider()
        };
        let builder = ServerConfig::builder_with_provider(crypto)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .or_else(|e| fail(format!("TLS settings: {e}")))?;
        let builder = match client_ca {
            Some(path) => {
                let roots = load_roots(path)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .or_else(|e| fail(format!("client CA {}: {e}", path.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(cert.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // The server picks the suite, from rustls's list (strongest first), rather than
        // following a client that prefers a weaker one.
        config.ignore_client_order = true;
        // Stateless resumption: a client reconnecting (iPXE fetching kernel then initrd)
        // skips the full handshake; the ticket key rotates every few hours.
        config.ticketer = rustls::crypto::ring::Ticketer::new()
            .or_else(|e| fail(format!("TLS session tickets: {e}")))?;
        Ok(Arc::new(TlsServer {
            label: label.to_string(),
            files: files.clone(),
            cert,
            info: ArcSwap::from_pointee(info),
            seen,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        }))
    }

    /// The certificate presented now.
    pub fn current(&self) -> Arc<CertInfo> {
        self.info.load_full()
    }

    /// The files this listener's pair comes from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Reads the files again; a good pair replaces the current one for new connections
    /// (true when the certificate changed), a bad one changes nothing.
    pub fn reload(&self) -> Result<bool, TlsError> {
        self.seen.update(stamp(&self.files));
        let (pair, info) = load_pair(&self.files)?;
        if info == **self.info.load() {
            return Ok(false);
        }
        self.cert.0.store(Arc::new(pair));
        self.info.store(Arc::new(info));
        Ok(true)
    }

    /// [`reload`](Self::reload), with the outcome in the log.
    pub fn reload_logged(&self, why: &str) {
        match self.reload() {
            Ok(true) => {
                let info = self.current();
                tracing::info!(
                    target: "chainboot::http",
                    listener = %self.label,
                    serial = %info.serial,
                    sha256 = %info.sha256,
                    not_after = %info.not_after,
                    "{why}: TLS certificate reloaded"
                );
            }
            Ok(false) => tracing::debug!(
                target: "chainboot::http",
                listener = %self.label,
                "{why}: TLS certificate unchanged"
            ),
            Err(e) => tracing::error!(
                target: "chainboot::http",
                listener = %self.label,
                serial = %self.current().serial,
                "{why}: new TLS certificate refused, still serving the previous one: {e}"
            ),
        }
    }

    /// Polls the files every `every` until `shutdown`, reloading when they change. A pair
    /// replaced in two steps (certificate, then key) may be refused at the first look; the
    /// second change is seen and loaded.
    pub async fn watch(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    if self.seen.update(stamp(&self.files)) {
                        self.reload_logged("certificate files changed");
                    }
                }
            }
        }
    }

    /// The handshake on an accepted connection, bounded by `timeout` so that a slow or
    /// garbage handshake holds its connection slot no longer than a slow request head.
    pub(crate) async fn accept<IO>(
        &self,
        io: IO,
        timeout: Duration,
        stats: &HttpStats,
        peer: SocketAddr,
    ) -> Option<tokio_rustls::server::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        match tokio::time::timeout(timeout, self.acceptor.accept(io)).await {
            Ok(Ok(stream)) => {
                stats.tls_handshakes.fetch_add(1, Ordering::Relaxed);
                Some(stream)
            }
            Ok(Err(e)) => {
                stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(target: "chainboot::http", client = %peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                stats.connections_timed_out.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(target: "chainboot::http", client = %peer, "TLS handshake not done within [http] header_read_timeout");
                None
            }
        }
    }
}

/// The CA certificates in a PEM file, as trust anchors.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let pem = std::fs::read(path)
        .or_else(|e| fail(format!("cannot read CA file {}: {e}", path.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(&pem) {
        let der = der.or_else(|e| fail(format!("CA file {}: {e}", path.display())))?;
        roots
            .add(der)
            .or_else(|e| fail(format!("CA file {}: {e}", path.display())))?;
    }
    if roots.is_empty() {
        return fail(format!(
            "CA file {}: no PEM CERTIFICATE block",
            path.display()
        ));
    }
    Ok(roots)
}

/// Marks a request that arrived over TLS (a request extension set by the server).
#[derive(Debug, Clone, Copy)]
pub struct OverTls;

/// Extractor: whether the request came over TLS, so that URLs built from its Host header keep
/// the scheme the client used (an https:// client is not sent back to http://).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheme {
    pub https: bool,
}

impl Scheme {
    pub fn as_str(&self) -> &'static str {
        if self.https {
            "https"
        } else {
            "http"
        }
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Scheme {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Scheme, Self::Rejection> {
        Ok(Scheme {
            https: parts.extensions.get::<OverTls>().is_some(),
        })
    }
}

/// The `tls_listen` sockets of a server and the TLS they speak.
pub(crate) struct TlsListeners {
    listeners: Vec<std::net::TcpListener>,
    pub(crate) server: Option<Arc<TlsServer>>,
}

impl TlsListeners {
    /// Binds `tls_listen` with `bind_one`; a `tls = { cert, key }` pair is loaded here.
    pub(crate) fn bind(
        config: &HttpConfig,
        bind_one: fn(SocketAddr) -> io::Result<std::net::TcpListener>,
    ) -> io::Result<TlsListeners> {
        let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        let addrs = config
            .tls_listen_addrs()
            .map_err(|e| invalid(e.to_string()))?;
        let mut listeners = Vec::new();
        for addr in addrs {
            let l = bind_one(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("http.tls_listen {addr}: {e}")))?;
            listeners.push(l);
        }
        let server = match &config.tls {
            Some(TlsSource::Files(files)) if !listeners.is_empty() => Some(
                TlsServer::new("http", files, None)
                    .map_err(|e| invalid(format!("http.tls: {e}")))?,
            ),
            _ => None,
        };
        Ok(TlsListeners { listeners, server })
    }

    pub(crate) fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The listeners for the serving threads, each with its TLS.
    #[allow(clippy::type_complexity)]
    pub(crate) fn into_listeners(
        self,
    ) -> io::Result<Vec<(std::net::TcpListener, Option<Arc<TlsServer>>)>> {
        if self.listeners.is_empty() {
            return Ok(Vec::new());
        }
        let Some(server) = self.server else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "http.tls_listen: no certificate to serve TLS with",
            ));
        };
        Ok(self
            .listeners
            .into_iter()
            .map(|l| (l, Some(server.clone())))
            .collect())
    }
}

/// The connection as hyper will see it: as accepted, or after a TLS handshake bounded by
/// `header_read_timeout` (None: the handshake failed and the connection is done).
pub(crate) async fn wrap<IO>(
    tls: Option<&TlsServer>,
    io: IO,
    cfg: &HttpConfig,
    stats: &HttpStats,
    peer: SocketAddr,
) -> Option<MaybeTls<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match tls {
        None => Some(MaybeTls::Plain(io)),
        Some(t) => t
            .accept(io, cfg.header_read_timeout, stats, peer)
            .await
            .map(|s| MaybeTls::Tls(Box::new(s))),
    }
}

/// An accepted connection, as it is or inside TLS.
pub(crate) enum MaybeTls<IO> {
    Plain(IO),
    Tls(Box<tokio_rustls::server::TlsStream<IO>>),
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            // A file chunk's stand-in would be encrypted as its zeros: refuse it (the body
            // never yields one on a TLS connection; this keeps a bug from reaching a client).
            MaybeTls::Tls(_) if crate::sendfile::any_placeholder(&[io::IoSlice::new(buf)]) => {
                Poll::Ready(Err(io::Error::other("file stand-in on a TLS connection")))
            }
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(_) if crate::sendfile::any_placeholder(bufs) => {
                Poll::Ready(Err(io::Error::other("file stand-in on a TLS connection")))
            }
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_is_lab_or_a_cert_and_key() {
        #[derive(Deserialize)]
        struct T {
            tls: TlsSource,
        }
        let t: T = toml::from_str("tls = \"lab\"").unwrap();
        assert_eq!(t.tls, TlsSource::Lab);
        let t: T = toml::from_str("tls = { cert = \"/a.pem\", key = \"/b.pem\" }").unwrap();
        assert_eq!(
            t.tls,
            TlsSource::Files(TlsFiles {
                cert: "/a.pem".into(),
                key: "/b.pem".into()
            })
        );
        for bad in ["tls = \"yes\"", "tls = { cert = \"/a\" }", "tls = 1"] {
            let e = toml::from_str::<T>(bad).err().unwrap().to_string();
            assert!(e.contains("expected \"lab\""), "{bad}: {e}");
        }
    }
}
