//! The listener side: sockets, connection cap, timeouts, keep-alive, graceful shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tower_http::limit::RequestBodyLimitLayer;

use crate::per_client::PerClient;
use crate::sendfile::{Lane, LaneSlot};
use crate::stats::{AccessRecord, LoggedBody};
use crate::{HttpConfig, HttpObserver, HttpStats, NoObserver};
use chainboot_content::{Served, What};

/// How long `run` waits for responses in flight after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// After the server ends a connection it keeps reading, and discarding, what the client still
/// sends for at most this long and this many bytes before it closes. Closing a socket with
/// unread bytes makes the kernel send a reset, and a client still sending a body the server
/// refused (over `request_body_limit`) then loses the error response it had not read yet.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 16 << 20;

/// Bound HTTP listeners plus the limits to serve them with.
pub struct HttpServer {
    listeners: Vec<std::net::TcpListener>,
    tls: crate::tls::TlsListeners,
    config: HttpConfig,
    stats: Arc<HttpStats>,
    observer: Arc<dyn HttpObserver>,
    /// Serving threads, each with a runtime of its own ([`HttpServer::run`]).
    threads: usize,
    /// [`HttpServer::with_half_close`].
    half_close: bool,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("listen", &self.local_addrs())
            .finish()
    }
}

impl HttpServer {
    /// Validates the config and binds every `listen` address (works outside a runtime, so
    /// the binary can bind port 80 before dropping privileges). Errors name the address.
    pub fn bind(config: &HttpConfig) -> io::Result<HttpServer> {
        let issues = config.validate();
        if !issues.is_empty() {
            let text: Vec<String> = issues.iter().map(|i| format!("http.{i}")).collect();
            return Err(io::Error::new(io::ErrorKind::InvalidInput, text.join("; ")));
        }
        let addrs = config
            .listen_addrs()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let mut listeners = Vec::new();
        for addr in addrs {
            let l = bind_one(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("http.listen {addr}: {e}")))?;
            listeners.push(l);
        }
        Ok(HttpServer {
            listeners,
            tls: crate::tls::TlsListeners::bind(config, bind_one)?,
            config: config.clone(),
            stats: Arc::new(HttpStats::default()),
            observer: Arc::new(NoObserver),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            half_close: false,
        })
    }

    /// Lets clients half-close: the server does not read a connection while it answers a
    /// request on it. A client that shuts down its sending side after its request
    /// (`printf ... | nc`) gets the answer instead of being cut off; one that is really gone is
    /// noticed when a write fails, not at once, and a handler still running is bounded by
    /// `request_timeout`. For listeners of many short answers (the boot listener): the read
    /// that notices a departure at once costs each request a fresh 8 KiB read buffer (the
    /// request's head still holds the old one), glibc's slow path for a large block every
    /// time. Not for long-lived answers that write rarely (the operator's event stream, whose
    /// per-address slots must come back as soon as a client leaves).
    pub fn with_half_close(mut self) -> HttpServer {
        self.half_close = true;
        self
    }

    /// Serves on `n` threads (at least one) instead of one per CPU (a listener that carries
    /// little traffic, like the operator's API, needs no more than one).
    pub fn with_threads(mut self, n: usize) -> HttpServer {
        self.threads = n.max(1);
        self
    }

    /// The bound addresses (with the real port when the config said port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The counters, shared with whoever renders `/metrics`.
    pub fn stats(&self) -> Arc<HttpStats> {
        self.stats.clone()
    }

    /// Sets the observer told about every response and connection.
    pub fn with_observer(mut self, observer: Arc<dyn HttpObserver>) -> HttpServer {
        self.observer = observer;
        self
    }

    /// Sets the TLS of the `tls_listen` listeners (`bind` sets it from a `tls = { cert, key }`
    /// config; a lab certificate or client-certificate checks come this way).
    pub fn with_tls(mut self, tls: Arc<crate::tls::TlsServer>) -> HttpServer {
        self.tls.server = Some(tls);
        self
    }

    /// The bound TLS addresses.
    pub fn tls_local_addrs(&self) -> Vec<SocketAddr> {
        self.tls.local_addrs()
    }

    /// Serves `router` on every listener until `shutdown` is cancelled, then stops accepting,
    /// lets responses in flight finish (up to 10 s) and returns. Every response is counted and
    /// logged (target `chainboot::http::access`, at `info` or `debug` per `[http]
    /// access_log`) and says `X-Content-Type-Options: nosniff`; each request carries
    /// `ConnectInfo<SocketAddr>` for handlers that want the client address.
    ///
    /// Connections are served by threads of their own (one per CPU unless
    /// [`HttpServer::with_threads`] says otherwise), each running a single-threaded runtime
    /// and accepting from every listener: a connection lives its whole life on the thread
    /// that accepted it, with no work stealing and no wake-ups across threads (the multi-threaded
    /// scheduler's share of a small request's cost). The threads share one listening
    /// socket per address (each its own descriptor of it), not one `SO_REUSEPORT` socket
    /// each: a busy thread leaves new connections to an idle one instead of queueing those
    /// the kernel hashed to it, and a second server on the same port still fails to bind
    /// instead of silently taking half the connections. The connection caps, per-client
    /// limits and counters are shared by all threads.
    pub async fn run(self, router: Router, shutdown: CancellationToken) -> io::Result<()> {
        let cfg = Arc::new(self.config);
        let mut listeners: Vec<_> = self.listeners.into_iter().map(|l| (l, None)).collect();
        listeners.extend(self.tls.into_listeners()?);
        let ctx = ConnCtx {
            tls: None,
            plain: router.clone(),
            app: with_body_layers(router, &cfg),
            cfg: cfg.clone(),
            stats: self.stats,
            observer: self.observer,
            // Ends every thread when `shutdown` does, or when one of them failed.
            shutdown: shutdown.child_token(),
            per_client: Arc::new(PerClient::new(cfg.max_connections_per_client)),
            half_close: self.half_close,
        };
        let stop = ctx.shutdown.clone();
        let slots = Arc::new(Semaphore::new(cfg.max_connections));
        let threads = self.threads;
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(threads);
        let mut started = 0;
        let mut result = Ok(());
        for i in 0..threads {
            let done = done_tx.clone();
            let spawned = listeners
                .iter()
                .map(|(l, tls)| Ok((l.try_clone()?, tls.clone())))
                .collect::<io::Result<Vec<_>>>()
                .and_then(|mine| {
                    let (ctx, slots) = (ctx.clone(), slots.clone());
                    std::thread::Builder::new()
                        .name(format!("http-{i}"))
                        .spawn(move || {
                            let share = ThreadShare { slots, of: threads };
                            let _ = done.blocking_send(serve_thread(mine, ctx, share));
                        })
                });
            if let Err(e) = spawned {
                result = Err(io::Error::new(e.kind(), format!("HTTP thread: {e}")));
                stop.cancel();
                break;
            }
            started += 1;
        }
        drop((done_tx, listeners));
        for _ in 0..started {
            let ended = match done_rx.recv().await {
                Some(r) => r,
                None => Err(io::Error::other("an HTTP thread ended by a panic")),
            };
            if let Err(e) = ended {
                stop.cancel();
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }
}

/// `router` inside the layers that bound and read request bodies and turn rejections into
/// JSON for `/api/`. Requests with neither a body nor an `/api/` path (every boot client's
/// GET) skip them ([`answer`]): the layers would pass such a request through unchanged, for a
/// boxed future and a service clone each.
fn with_body_layers(router: Router, cfg: &HttpConfig) -> Router {
    let body_timeout = cfg.body_read_timeout;
    router
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                body_deadline(body_timeout, req, next)
            },
        ))
        .layer(RequestBodyLimitLayer::new(cfg.request_body_limit))
        .layer(axum::middleware::from_fn(api_errors_as_json))
}

/// Threads for blocking work (file opens on the blocking paths, reads the page cache does not
/// hold) of all serving threads together: tokio's default for one runtime, shared out.
const BLOCKING_THREADS: usize = 512;

/// What one serving thread shares with the others.
struct ThreadShare {
    /// `max_connections`.
    slots: Arc<Semaphore>,
    /// How many serving threads there are.
    of: usize,
}

/// One serving thread: its own single-threaded runtime accepting on every listener until
/// shutdown, then up to [`SHUTDOWN_GRACE`] for the responses in flight.
fn serve_thread(
    listeners: Vec<(std::net::TcpListener, Option<Arc<crate::tls::TlsServer>>)>,
    ctx: ConnCtx,
    share: ThreadShare,
) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads((BLOCKING_THREADS / share.of.max(1)).max(16))
        .build()?;
    let slots = share.slots;
    let result = rt.block_on(async move {
        let tracker = TaskTracker::new();
        for (listener, tls) in listeners {
            let listener = TcpListener::from_std(listener)?;
            let ctx = Arc::new(ConnCtx { tls, ..ctx.clone() });
            let (slots, tracker2) = (slots.clone(), tracker.clone());
            tracker.spawn(accept_loop(listener, ctx, slots, tracker2));
        }
        ctx.shutdown.cancelled().await;
        tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                target: "chainboot::http",
                "connections still open {}s after shutdown; dropping them",
                SHUTDOWN_GRACE.as_secs()
            );
        }
        Ok::<(), io::Error>(())
    });
    // A read still waiting for a slow disk on the blocking pool is not waited for.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

fn bind_one(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // `[::]:80` next to `0.0.0.0:80` in the same list must not collide.
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    // A deep backlog: when the connection cap is reached, clients wait here rather than
    // being refused (iPXE does not retry a refused connection quickly).
    socket.listen(4096)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[derive(Clone)]
struct ConnCtx {
    /// The router as given, for requests without a body outside `/api/`.
    plain: Router,
    /// The router inside the body and API-error layers, for every other request.
    app: Router,
    cfg: Arc<HttpConfig>,
    stats: Arc<HttpStats>,
    observer: Arc<dyn HttpObserver>,
    shutdown: CancellationToken,
    per_client: Arc<PerClient>,
    tls: Option<Arc<crate::tls::TlsServer>>,
    /// [`HttpServer::with_half_close`].
    half_close: bool,
}

/// Accepts connections on one listener for one serving thread. A connection takes one of
/// `slots` (`max_connections`, shared by every listener and thread) after it is accepted: at
/// the cap each accept loop holds at most one accepted connection waiting for a slot, and the
/// rest wait in the kernel's backlog. Taking the slot before accepting would leave idle loops
/// (a listener per address and thread) sitting on slots that a busier listener's clients need.
async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ConnCtx>,
    slots: Arc<Semaphore>,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE/ENFILE and friends: back off instead of spinning on the error.
                tracing::warn!(target: "chainboot::http", error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(client_slot) = ctx.per_client.claim(peer) else {
            // Closed at once with a reset: nothing is read or sent.
            ctx.stats
                .connections_refused_per_client
                .fetch_add(1, Ordering::Relaxed);
            ctx.per_client.log_refusal(peer);
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            continue;
        };
        let permit = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        tracker.spawn(async move {
            serve_connection(stream, peer, ctx).await;
            drop(client_slot);
            drop(permit);
        });
    }
}

fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// `Activity::request_started_ms` when no request has started.
const NOT_STARTED: u64 = u64::MAX;

/// Last traffic and requests in flight on one connection, for the idle and request timeouts.
struct Activity {
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// When the first byte of the next request arrived ([`NOT_STARTED`] before it has).
    request_started_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            last_ms: AtomicU64::new(now_ms()),
            in_flight: AtomicUsize::new(0),
            request_started_ms: AtomicU64::new(NOT_STARTED),
        }
    }

    /// When the request beginning now must be answered: request_timeout runs from the
    /// request's first byte (a pipelined request, read while the previous one was in flight,
    /// from now).
    fn request_deadline(&self, request_timeout: Duration) -> tokio::time::Instant {
        let first_byte = self.request_started_ms.swap(NOT_STARTED, Ordering::Relaxed);
        let waited = match first_byte {
            NOT_STARTED => Duration::ZERO,
            t => Duration::from_millis(now_ms().saturating_sub(t)),
        };
        tokio::time::Instant::now() + request_timeout.saturating_sub(waited)
    }

    /// No request in flight and no bytes moved for `idle_ms`.
    fn idle_for(&self, idle_ms: u64) -> bool {
        let idle = now_ms().saturating_sub(self.last_ms.load(Ordering::Relaxed));
        self.in_flight.load(Ordering::Relaxed) == 0 && idle >= idle_ms
    }
}

/// Decrements the in-flight count when a response body is gone.
pub(crate) struct InFlight(Arc<Activity>);
impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.last_ms.store(now_ms(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A TCP stream that records when bytes last moved and when a request began, and fails a
/// write the peer has not accepted a byte of for `send_timeout`.
struct TrackedStream {
    inner: TcpStream,
    activity: Arc<Activity>,
    peer: SocketAddr,
    stats: Arc<HttpStats>,
    send_timeout: Duration,
    /// Armed when a write first finds the socket full; created on first use (most
    /// connections never fill their send buffer).
    send_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A write is waiting for the peer (the timer runs).
    write_blocked: bool,
    /// Gets a second handle on the socket when this stream is dropped, so that the connection
    /// can be closed gracefully ([`linger_close`]) after hyper is done with it. `None` once
    /// sent, or when the connection is to end with a reset (send timeout).
    on_close: Option<tokio::sync::oneshot::Sender<Socket>>,
    /// File segments to send with `sendfile` where hyper writes their stand-ins (plain TCP
    /// only; `None` under TLS).
    lane: Option<Lane>,
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        if let Some(tx) = self.on_close.take() {
            if let Ok(dup) = socket2::SockRef::from(&self.inner).try_clone() {
                let _ = tx.send(dup);
            }
        }
    }
}

impl TrackedStream {
    /// The peer accepted bytes: the send clock stops.
    fn wrote(&mut self) {
        self.write_blocked = false;
        self.activity.last_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// A write found the socket full: start the send clock if it is not running, and fail
    /// the write once it has run for `send_timeout`. The error ends hyper's connection; the
    /// linger of 0 makes the close a reset, so the kernel drops the unsent bytes at once
    /// instead of keeping an orphaned socket's buffers for a peer that does not read.
    fn write_pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.send_timeout;
        let timer = self
            .send_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if !self.write_blocked {
            self.write_blocked = true;
            timer.as_mut().reset(tokio::time::Instant::now() + timeout);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.write_blocked = false;
        self.stats.send_timeouts.fetch_add(1, Ordering::Relaxed);
        self.stats
            .connections_timed_out
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            target: "chainboot::http",
            client = %self.peer,
            "client accepted no bytes for [http] send_timeout ({}); closing the connection",
            humantime::format_duration(timeout)
        );
        let _ = socket2::SockRef::from(&self.inner).set_linger(Some(Duration::ZERO));
        self.on_close = None;
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "send_timeout: the client accepts no bytes",
        )))
    }
}

impl TrackedStream {
    /// A write of `bufs`, among which is a file chunk's stand-in: the bytes before it are
    /// written, or, when it comes first, its file range is sent with `sendfile`
    /// ([`Lane::write`]). Without a lane (or for a stand-in that matches no segment) the write
    /// fails and the connection ends: a stand-in's zeros are never sent.
    fn poll_send_file(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Some(lane) = &self.lane else {
            return Poll::Ready(Err(io::Error::other(
                "file stand-in on a connection without sendfile",
            )));
        };
        let (sock, stats) = (&self.inner, &self.stats);
        loop {
            match sock.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return self.write_pending(cx),
            }
            let r = sock.try_io(tokio::io::Interest::WRITABLE, || {
                lane.write(
                    bufs,
                    |b, more| {
                        let flags = if more { libc::MSG_MORE } else { 0 };
                        socket2::SockRef::from(sock).send_vectored_with_flags(b, flags)
                    },
                    |file, offset, len| {
                        let n = crate::sendfile::sendfile(sock, file, offset, len)?;
                        stats.sendfile_bytes.fetch_add(n as u64, Ordering::Relaxed);
                        Ok(n)
                    },
                )
            });
            match r {
                // Readiness is cleared: the next poll waits for the socket.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => {
                    if r.is_ok() {
                        self.wrote();
                    }
                    return Poll::Ready(r);
                }
            }
        }
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if r.is_ready() {
            let now = now_ms();
            self.activity.last_ms.store(now, Ordering::Relaxed);
            // Bytes while no request is in flight: the next request has begun, and its
            // request_timeout runs from here (the head's time counts too).
            if buf.filled().len() > before && self.activity.in_flight.load(Ordering::Relaxed) == 0 {
                let _ = self.activity.request_started_ms.compare_exchange(
                    NOT_STARTED,
                    now,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        }
        r
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if crate::sendfile::any_placeholder(&[io::IoSlice::new(buf)]) {
            return this.poll_send_file(cx, &[io::IoSlice::new(buf)]);
        }
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                this.wrote();
                Poll::Ready(r)
            }
            Poll::Pending => this.write_pending(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if crate::sendfile::any_placeholder(bufs) {
            return this.poll_send_file(cx, bufs);
        }
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                this.wrote();
                Poll::Ready(r)
            }
            Poll::Pending => this.write_pending(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

struct ConnGuard(Arc<HttpStats>);
impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.active_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, ctx: Arc<ConnCtx>) {
    ctx.stats.connections_total.fetch_add(1, Ordering::Relaxed);
    ctx.stats.active_connections.fetch_add(1, Ordering::Relaxed);
    let _guard = ConnGuard(ctx.stats.clone());
    ctx.observer.on_connection(peer);

    let activity = Arc::new(Activity::new());
    // File bodies go out with sendfile on plain TCP; TLS must encrypt them in user space.
    let lane = ctx.tls.is_none().then(Lane::default);
    let (closed_tx, mut closed_rx) = tokio::sync::oneshot::channel();
    let tracked = TrackedStream {
        inner: stream,
        activity: activity.clone(),
        peer,
        stats: ctx.stats.clone(),
        send_timeout: ctx.cfg.send_timeout,
        send_timer: None,
        write_blocked: false,
        on_close: Some(closed_tx),
        lane: lane.clone(),
    };
    let Some(io) = crate::tls::wrap(ctx.tls.as_deref(), tracked, &ctx.cfg, &ctx.stats, peer).await
    else {
        return;
    };
    // The handshake's bytes are not a request: request_timeout starts with the first request.
    activity
        .request_started_ms
        .store(NOT_STARTED, Ordering::Relaxed);
    let io = TokioIo::new(io);

    let service = {
        let (ctx, activity) = (ctx.clone(), activity.clone());
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            answer(ctx.clone(), activity.clone(), lane.clone(), peer, req)
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.cfg.header_read_timeout)
        .max_buf_size(ctx.cfg.max_header_bytes.max(8192))
        .keep_alive(true)
        .half_close(ctx.half_close);
    // Ends with whether the connection may be closed gracefully (not when a peer ignored the
    // close during shutdown: it has had its grace time).
    let graceful = {
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);

        let idle_ms = ctx.cfg.idle_timeout.as_millis() as u64;
        let mut tick = tokio::time::interval(
            (ctx.cfg.idle_timeout / 4).clamp(Duration::from_millis(25), Duration::from_secs(5)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut closing_since: Option<Instant> = None;
        loop {
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        if e.is_timeout() {
                            ctx.stats.connections_timed_out.fetch_add(1, Ordering::Relaxed);
                        }
                        tracing::debug!(target: "chainboot::http", client = %peer, error = %e, "connection ended");
                    }
                    break true;
                }
                _ = ctx.shutdown.cancelled(), if closing_since.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    closing_since = Some(Instant::now());
                }
                _ = tick.tick() => {
                    if let Some(since) = closing_since {
                        // A peer that ignores the close: give up on it after the grace time.
                        if since.elapsed() > SHUTDOWN_GRACE {
                            break false;
                        }
                        continue;
                    }
                    if activity.idle_for(idle_ms) {
                        ctx.stats.connections_timed_out.fetch_add(1, Ordering::Relaxed);
                        conn.as_mut().graceful_shutdown();
                        closing_since = Some(Instant::now());
                    }
                }
            }
        }
    };
    if let (true, Ok(sock)) = (graceful, closed_rx.try_recv()) {
        linger_close(sock).await;
    }
}

/// One request of a connection: through the router within its request_timeout, its response
/// body wrapped so that the observer and the access log see it once it is sent.
async fn answer(
    ctx: Arc<ConnCtx>,
    activity: Arc<Activity>,
    lane: Option<Lane>,
    peer: SocketAddr,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<LoggedBody>, std::convert::Infallible> {
    let started = Instant::now();
    let deadline = activity.request_deadline(ctx.cfg.request_timeout);
    activity.in_flight.fetch_add(1, Ordering::Relaxed);
    let in_flight = InFlight(activity);
    let mut record = AccessRecord {
        client: peer,
        method: req.method().clone(),
        uri: req.uri().clone(),
        status: http::StatusCode::OK,
        bytes: 0,
        duration: Duration::ZERO,
        complete: false,
        served: Served::new(What::Other),
        file: None,
    };
    let layered = has_body(req.headers()) || req.uri().path().starts_with("/api/");
    // Whether the request body has been received whole (`None`: there is none, as for every
    // GET, which then costs neither a flag nor a boxed body).
    let mut body_done = None;
    let mut req = if http_body::Body::is_end_stream(req.body()) {
        req.map(|_| Body::empty())
    } else {
        let done = Arc::new(AtomicBool::new(false));
        body_done = Some(done.clone());
        req.map(|inner| Body::new(WatchedBody { inner, done }))
    };
    req.extensions_mut().insert(ConnectInfo(peer));
    if ctx.tls.is_some() {
        req.extensions_mut().insert(crate::tls::OverTls);
    }
    let router = if layered { &ctx.app } else { &ctx.plain };
    let resp = match tokio::time::timeout_at(deadline, router.clone().oneshot(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(never)) => match never {},
        Err(_) => request_timed_out(
            &ctx.cfg,
            &ctx.stats,
            peer,
            record.path(),
            body_done.as_ref().is_none_or(|d| d.load(Ordering::Relaxed)),
        ),
    };
    let (mut parts, body) = resp.into_parts();
    // A browser (the dashboard, an operator opening a script) takes the Content-Type as given
    // instead of guessing, so an uploaded or templated text cannot be run as HTML or script.
    parts
        .headers
        .entry(http::header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(http::HeaderValue::from_static("nosniff"));
    if let (Some(slot), Some(lane)) = (parts.extensions.remove::<LaneSlot>(), lane) {
        // A file body may now send its cached chunks with sendfile.
        let _ = slot.0.set(lane);
    }
    record.status = parts.status;
    record.take_served(&mut parts.extensions);
    let body = LoggedBody::new(
        body,
        record,
        started,
        ctx.stats.clone(),
        ctx.observer.clone(),
        ctx.cfg.access_log,
    )
    .with_guard(in_flight);
    Ok(hyper::Response::from_parts(parts, body))
}

/// Whether a request announces a body (a length other than 0, or chunked). Without either,
/// hyper reads none.
fn has_body(h: &http::HeaderMap) -> bool {
    use hyper::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
    h.contains_key(TRANSFER_ENCODING) || h.get(CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0")
}

/// Closes a connection hyper is done with without losing what it sent last: stops sending
/// (FIN after the last response), then reads and discards until the client closes, for at
/// most [`LINGER_TIME`] and [`LINGER_BYTES`]. Only then is the socket closed, so a client that
/// was still sending a refused body reads the refusal instead of a reset.
async fn linger_close(sock: Socket) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = TcpStream::from_std(sock.into()) else {
        return;
    };
    let _ = stream.shutdown().await;
    let deadline = tokio::time::Instant::now() + LINGER_TIME;
    let mut buf = vec![0u8; 16 * 1024];
    let mut drained = 0usize;
    while drained < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
}

/// The answer when [`HttpConfig::request_timeout`] ran out (the handler future is dropped,
/// which cancels it): 408 if the client had not sent the whole body yet, 503 if it had and
/// the handler did not answer in time. `Connection: close` makes hyper close the connection
/// after it: a request body may still be arriving, and a client this slow has used its turn.
fn request_timed_out(
    cfg: &HttpConfig,
    stats: &HttpStats,
    peer: SocketAddr,
    path: &str,
    body_done: bool,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    stats.request_timeouts.fetch_add(1, Ordering::Relaxed);
    stats.connections_timed_out.fetch_add(1, Ordering::Relaxed);
    let limit = humantime::format_duration(cfg.request_timeout);
    let (status, message) = if body_done {
        (
            hyper::StatusCode::SERVICE_UNAVAILABLE,
            format!("no response within [http] request_timeout ({limit})"),
        )
    } else {
        (
            hyper::StatusCode::REQUEST_TIMEOUT,
            format!("request not received within [http] request_timeout ({limit})"),
        )
    };
    tracing::warn!(
        target: "chainboot::http",
        client = %peer,
        path = %path,
        status = status.as_u16(),
        "{message}; closing the connection"
    );
    (
        status,
        [
            (hyper::header::CONTENT_TYPE, "application/json"),
            (hyper::header::CONNECTION, "close"),
        ],
        serde_json::json!({ "error": message }).to_string(),
    )
        .into_response()
}

/// A request body that records when it has been received whole (for 408 versus 503).
struct WatchedBody {
    inner: Incoming,
    done: Arc<AtomicBool>,
}

impl http_body::Body for WatchedBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.done.store(true, Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.done.store(true, Ordering::Relaxed);
        }
        end
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Reads a request's whole body within `timeout` of its head (the size limit is applied by
/// the `RequestBodyLimitLayer` outside this one), then hands it on. Requests without a body
/// pass straight through (those outside `/api/` do not come this way at all).
async fn body_deadline(
    timeout: Duration,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if !has_body(req.headers()) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let error = |status: hyper::StatusCode, msg: String| {
        (
            status,
            [(hyper::header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "error": msg }).to_string(),
        )
            .into_response()
    };
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, usize::MAX)).await {
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => error(
            hyper::StatusCode::BAD_REQUEST,
            format!("cannot read the request body: {e}"),
        ),
        Err(_) => error(
            hyper::StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received within [http] body_read_timeout ({})",
                humantime::format_duration(timeout)
            ),
        ),
    }
}

/// The API speaks JSON, errors included (oversized or malformed JSON is refused with
/// 400 and a message). Rejections produced below the handlers — the body limit's 413, the JSON
/// extractor's 415/422 and plain-text 400s — are turned into `400 {"error": "..."}` for
/// `/api/` paths; other paths keep their status.
async fn api_errors_as_json(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let api = req.uri().path().starts_with("/api/");
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let rejected = matches!(status.as_u16(), 400 | 413 | 415 | 422);
    if !api || !rejected || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = match axum::body::to_bytes(body, 4096).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(_) => String::new(),
    };
    let what = match status.as_u16() {
        413 => "request body too large",
        415 => "expected Content-Type: application/json",
        _ => "malformed request",
    };
    let message = if text.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {text}")
    };
    let mut resp = (
        http::StatusCode::BAD_REQUEST,
        axum::Json(serde_json::json!({ "error": message })),
    )
        .into_response();
    // What the route said it served stays said.
    *resp.extensions_mut() = parts.extensions;
    resp
}
