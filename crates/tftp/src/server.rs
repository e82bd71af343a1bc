//! The tokio driver: moves datagrams and timers between sockets and [`Transfer`]s.
//!
//! One socket receives requests (port 69). Each admitted read request gets a task with its own
//! socket on an ephemeral port of the address the request came to (RFC 1350 section 4: the
//! server's TID), so transfers never share a receive queue and an unknown TID is simply a
//! datagram from the wrong source on that socket.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chainboot_content::{CleanPath, Content, ResolveError, Resolver, Served, Transport};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::admission::{self, Limits, NoVouch, Occupancy, Place, Refusal, Unproven, Vouch};
use crate::batch::Batch;
use crate::busy_poll::{BusyPoll, Waited};
use crate::config::TftpConfig;
use crate::filecache::FileCache;
use crate::proto::{self, ErrorCode, Mode, Packet, Request};
use crate::readahead::ReadAhead;
use crate::resolve_pool::ResolvePool;
use crate::runnable::{Runnable, RunnableSource};
use crate::socket::{recv_polling, TransferSocket};
use crate::transfer::{BlockSource, Handled, Outcome, Transfer, TransferSettings};

/// Counters for the metrics endpoint (all monotonic except `active`).
#[derive(Debug, Default)]
pub struct TftpStats {
    /// Transfers that began sending (the path resolved to content).
    pub started: AtomicU64,
    /// Transfers whose last block was acknowledged.
    pub finished: AtomicU64,
    /// Transfers that began but did not complete (client error, silence, read failure).
    pub failed: AtomicU64,
    /// Requests refused for their path (traversal, escapes): possible attacks.
    pub refused: AtomicU64,
    /// Requests for names that do not exist.
    pub not_found: AtomicU64,
    /// Requests turned away by `max_transfers` or `max_per_client`.
    pub busy: AtomicU64,
    /// Requests turned away by `max_per_prefix` (unacknowledged transfers per IPv4 /24, IPv6
    /// /64).
    pub busy_prefix: AtomicU64,
    /// Requests admitted over `max_per_prefix` because their address belongs to a booting
    /// machine (a bound lease of this host's DHCP server; see `admission.rs`).
    pub leased_over_prefix: AtomicU64,
    /// Requests turned away because transfers whose client has not acknowledged anything
    /// yet already hold their share (`unproven_percent`) of `max_transfers`.
    pub busy_unproven: AtomicU64,
    /// Transfers given up before their client acknowledged anything (a forged or silent
    /// source).
    pub unproven_timeouts: AtomicU64,
    /// Write requests (always refused).
    pub writes_refused: AtomicU64,
    /// Datagrams that were not valid TFTP, or made no sense where they arrived.
    pub malformed: AtomicU64,
    /// Datagrams from a source that is not the transfer's client (RFC 1350 error 5).
    pub unknown_tid: AtomicU64,
    /// Retransmitted RRQs for a transfer already running (ignored).
    pub duplicate_requests: AtomicU64,
    /// Payload bytes acknowledged by clients.
    pub bytes: AtomicU64,
    /// Transfers running now.
    pub active: AtomicU64,
    /// Admitted transfers whose client has not acknowledged anything yet (now).
    pub unproven: AtomicU64,
    /// Waits for an ACK that busy-polled first (`[tftp] busy_poll`), and those of them whose
    /// ACK came while polling (the rest then slept: CPU spent for nothing).
    pub busy_polls: AtomicU64,
    pub busy_polls_answered: AtomicU64,
    /// Unacknowledged transfers in all, per network prefix and per booting machine's address
    /// (`admission.rs`): claimed by the receive loop, released by the transfers.
    unproven_ledger: std::sync::Mutex<Unproven>,
}

impl TftpStats {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Unproven> {
        self.unproven_ledger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// A plain copy of [`TftpStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TftpStatsSnapshot {
    pub started: u64,
    pub finished: u64,
    pub failed: u64,
    pub refused: u64,
    pub not_found: u64,
    pub busy: u64,
    pub busy_prefix: u64,
    pub leased_over_prefix: u64,
    pub busy_unproven: u64,
    pub unproven_timeouts: u64,
    pub writes_refused: u64,
    pub malformed: u64,
    pub unknown_tid: u64,
    pub duplicate_requests: u64,
    pub bytes: u64,
    pub active: u64,
    pub unproven: u64,
    pub busy_polls: u64,
    pub busy_polls_answered: u64,
}

impl TftpStats {
    pub fn snapshot(&self) -> TftpStatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TftpStatsSnapshot {
            started: g(&self.started),
            finished: g(&self.finished),
            failed: g(&self.failed),
            refused: g(&self.refused),
            not_found: g(&self.not_found),
            busy: g(&self.busy),
            busy_prefix: g(&self.busy_prefix),
            leased_over_prefix: g(&self.leased_over_prefix),
            busy_unproven: g(&self.busy_unproven),
            unproven_timeouts: g(&self.unproven_timeouts),
            writes_refused: g(&self.writes_refused),
            malformed: g(&self.malformed),
            unknown_tid: g(&self.unknown_tid),
            duplicate_requests: g(&self.duplicate_requests),
            bytes: g(&self.bytes),
            active: g(&self.active),
            unproven: g(&self.unproven),
            busy_polls: g(&self.busy_polls),
            busy_polls_answered: g(&self.busy_polls_answered),
        }
    }
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// A transfer about to send its first datagram.
#[derive(Debug, Clone)]
pub struct TransferStart<'a> {
    pub client: SocketAddr,
    /// The normalised path.
    pub path: &'a str,
    /// Content length in bytes.
    pub size: u64,
    pub blksize: usize,
    pub windowsize: u16,
}

/// A transfer that ended, successfully or not.
#[derive(Debug, Clone)]
pub struct TransferSummary<'a> {
    pub client: SocketAddr,
    pub path: &'a str,
    /// Payload bytes the client acknowledged.
    pub bytes: u64,
    pub blksize: usize,
    pub windowsize: u16,
    pub duration: Duration,
    pub outcome: &'a Outcome,
    /// What the resolver said it served (a first stage, a generated script, an ISO file).
    pub served: Served,
}

/// Hooks for the event log and metrics (a later issue); every method defaults to doing nothing.
/// Called from transfer tasks: keep them quick and non-blocking.
pub trait TransferObserver: Send + Sync + 'static {
    fn on_start(&self, _start: &TransferStart<'_>) {}
    fn on_finish(&self, _summary: &TransferSummary<'_>) {}
    /// A request refused before any data was sent (bad path, not found, write request).
    fn on_refused(&self, _client: SocketAddr, _path: &str, _reason: &str) {}
}

struct NoObserver;
impl TransferObserver for NoObserver {}

/// What every transfer task shares.
struct Shared {
    resolver: Arc<dyn Resolver>,
    /// The threads that resolve paths (see `resolve_pool.rs`).
    resolvers: ResolvePool,
    /// Lock-step transfers that may run on a thread of their own (see [`lockstep_thread`]).
    lockstep_slots: Arc<tokio::sync::Semaphore>,
    /// `[tftp] busy_poll`, and the most transfers running at once for which a lock-step
    /// thread still polls (see [`polling_transfers`]).
    busy_poll: Duration,
    busy_poll_transfers: u64,
    /// Where polling threads read the runnable-task count (see `runnable.rs`).
    runnable: RunnableSource,
    settings: TransferSettings,
    stats: Arc<TftpStats>,
    observer: Arc<dyn TransferObserver>,
    /// Whether an address belongs to a booting machine, for requests over `max_per_prefix`.
    vouch: Arc<dyn Vouch>,
    /// Small files (first stages) shared in memory by every transfer of them.
    files: FileCache,
}

/// A bound TFTP server, ready to [`run`](TftpServer::run).
pub struct TftpServer {
    socket: UdpSocket,
    local: SocketAddr,
    limits: Limits,
    grace: Duration,
    shared: Arc<Shared>,
}

/// Receive buffer of the request socket: a boot storm sends hundreds of RRQs at once, and
/// each small datagram costs about a kilobyte of buffer in the kernel.
const REQUEST_SOCKET_RCVBUF: usize = 4 << 20;
/// Threads resolving paths: resolutions running at once. A resolution takes tens of
/// microseconds (a small file's bytes come from the file cache), so a few threads keep up
/// with any storm; more would only be idle (an unbounded number used to start a thread per
/// request: 246 threads for 500 clients on a fresh server).
const RESOLVE_THREADS: usize = 4;
/// Largest datagram we read on the request socket; requests longer than this are malformed.
const MAX_REQUEST: usize = 2048;
/// Unknown TIDs answered per transfer; beyond this they are only counted (bounded memory and
/// bounded replies to a flood).
const MAX_UNKNOWN_TIDS_ANSWERED: usize = 16;

impl TftpServer {
    /// Binds the request socket of `config.listen`. Files come from `resolver` (the binary
    /// composes the iPXE binaries, `[tftp] root` and generated files into one).
    pub fn bind(config: &TftpConfig, resolver: Arc<dyn Resolver>) -> io::Result<TftpServer> {
        let socket = new_udp_socket(config.listen, REQUEST_SOCKET_RCVBUF)?;
        // On a wildcard address, ask the kernel which address each request was sent to, so
        // the transfer socket answers from that same address (a client that sent to
        // 198.18.0.1 will not accept data from 198.18.1.1).
        if config.listen.ip().is_unspecified() {
            chainboot_udp::enable_pktinfo(&socket, config.listen.is_ipv6())?;
        }
        let local = socket.local_addr()?;
        let socket = UdpSocket::from_std(socket)?;
        Ok(TftpServer {
            socket,
            local,
            limits: Limits {
                max_transfers: config.max_transfers.max(1),
                max_per_client: config.max_per_client.max(1),
                max_per_prefix: config.effective_max_per_prefix(),
                max_unproven: config.max_unproven(),
            },
            grace: config.shutdown_grace,
            shared: Arc::new(Shared {
                resolver,
                settings: config.transfer_settings(),
                stats: Arc::new(TftpStats::default()),
                observer: Arc::new(NoObserver),
                vouch: Arc::new(NoVouch),
                files: FileCache::default(),
                resolvers: ResolvePool::start(RESOLVE_THREADS)?,
                lockstep_slots: Arc::new(tokio::sync::Semaphore::new(
                    config
                        .lockstep_threads
                        .unwrap_or_else(default_lockstep_threads),
                )),
                busy_poll: config.busy_poll,
                busy_poll_transfers: polling_transfers(),
                runnable: RunnableSource::LoadAvg,
            }),
        })
    }

    /// Installs the observer (before `run`).
    pub fn with_observer(mut self, observer: Arc<dyn TransferObserver>) -> TftpServer {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.observer = observer;
        }
        self
    }

    /// Installs what tells a booting machine's address (before `run`): a request over
    /// `max_per_prefix` from such an address is still admitted (see `admission.rs`).
    pub fn with_vouch(mut self, vouch: Arc<dyn Vouch>) -> TftpServer {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.vouch = vouch;
        }
        self
    }

    /// Makes polling threads see a fixed runnable-task count instead of `/proc/loadavg`'s
    /// (before `run`): tests of the polling decisions must not depend on how busy the machine
    /// running them is.
    pub fn with_runnable_count(mut self, runnable: u32) -> TftpServer {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.runnable = RunnableSource::Fixed(runnable);
        }
        self
    }

    /// The request socket's address (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn stats(&self) -> Arc<TftpStats> {
        self.shared.stats.clone()
    }

    /// Serves until `shutdown` is cancelled; then stops taking requests, lets running
    /// transfers go on for the configured grace period, and ends the rest with an ERROR.
    pub async fn run(self, shutdown: CancellationToken) -> io::Result<()> {
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut owners: HashMap<tokio::task::Id, SocketAddr> = HashMap::new();
        let mut occupancy = Occupancy::default();
        let abort = CancellationToken::new();
        let mut buf = vec![0u8; MAX_REQUEST];
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(done) = tasks.join_next_with_id() => {
                    let id = match done {
                        Ok((id, ())) => id,
                        Err(e) => {
                            warn!(error = %e, "tftp transfer task ended abnormally");
                            e.id()
                        }
                    };
                    if let Some(client) = owners.remove(&id) {
                        occupancy.remove(client);
                    }
                }
                received = recv_with_destination(&self.socket, &mut buf) => {
                    let (n, client, dst) = match received {
                        Ok(r) => r,
                        Err(e) => {
                            // Not expected on an unconnected UDP socket; pause so that a
                            // persistent error cannot spin a core.
                            warn!(error = %e, "tftp request socket receive error");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let Some(n) = n else {
                        bump(&self.shared.stats.malformed);
                        if proto::ParseError::was_request(&buf) {
                            self.reply_error(client, ErrorCode::IllegalOperation, "request too long").await;
                        }
                        continue;
                    };
                    let local_ip = dst.unwrap_or(self.local.ip());
                    match self.admit(&buf[..n], client, &occupancy).await {
                        Admission::Start(request, place) => {
                            let unproven = UnprovenSlot::claim(&self.shared.stats, place);
                            let handle = tasks.spawn(run_transfer(
                                self.shared.clone(),
                                request,
                                client,
                                local_ip,
                                unproven,
                                abort.clone(),
                            ));
                            owners.insert(handle.id(), client);
                            occupancy.add(client);
                        }
                        Admission::Answered => {}
                    }
                }
            }
        }
        drop(self.socket);
        wind_down(tasks, self.grace, abort).await;
        Ok(())
    }

    async fn admit(&self, datagram: &[u8], client: SocketAddr, occupancy: &Occupancy) -> Admission {
        let stats = &self.shared.stats;
        let request = match proto::parse(datagram) {
            Ok(Packet::Rrq(r)) => r,
            Ok(Packet::Wrq(r)) => {
                bump(&stats.writes_refused);
                info!(client = %client, path = %chainboot_content::shown_path(&r.filename).escape_debug(), "tftp write request refused");
                self.shared
                    .observer
                    .on_refused(client, &r.filename, "write request");
                self.reply_error(
                    client,
                    ErrorCode::AccessViolation,
                    "write requests are not accepted",
                )
                .await;
                return Admission::Answered;
            }
            Ok(_) => {
                // DATA/ACK/ERROR/OACK to the request port: stray or spoofed; answering could
                // be used for reflection, so only count it.
                bump(&stats.malformed);
                return Admission::Answered;
            }
            Err(e) => {
                bump(&stats.malformed);
                if proto::ParseError::was_request(datagram) {
                    debug!(client = %client, error = %e, "malformed tftp request");
                    self.reply_error(client, ErrorCode::IllegalOperation, &e.to_string())
                        .await;
                }
                return Admission::Answered;
            }
        };
        let limits = &self.limits;
        // The vouch (a lease lookup and a neighbour-table ioctl) is asked outside the ledger's
        // lock, which transfers take when their client first acknowledges. Only this loop
        // claims places, so what it read cannot grow before the claim.
        let over_prefix = stats.ledger().needs_vouch(limits, client.ip());
        let vouched = over_prefix && self.shared.vouch.vouches_for(client.ip());
        let decided = admission::decide(limits, occupancy, &stats.ledger(), client, || vouched);
        let (counter, message) = match decided {
            Ok(place) => {
                if matches!(place, Place::Vouched(_)) {
                    bump(&stats.leased_over_prefix);
                    debug!(client = %client, "tftp request over the prefix cap admitted: the address is a booting machine's");
                }
                return Admission::Start(request, place);
            }
            Err(Refusal::Duplicate) => {
                // The client resent its RRQ because our first datagram is slow or lost; the
                // running transfer will resend it. A second transfer would send from a second
                // TID, which the client must reject.
                bump(&stats.duplicate_requests);
                return Admission::Answered;
            }
            Err(Refusal::Busy) => {
                warn!(client = %client, limit = limits.max_transfers, "tftp request refused: too many transfers");
                (&stats.busy, "server busy, try again")
            }
            Err(Refusal::BusyClient) => {
                warn!(client = %client, limit = limits.max_per_client, "tftp request refused: too many transfers from this client");
                (&stats.busy, "too many transfers from this client")
            }
            Err(Refusal::BusyPrefix) => {
                warn!(client = %client, prefix = %admission::prefix_of(client.ip()), limit = limits.max_per_prefix, "tftp request refused: too many transfers from this network prefix");
                (&stats.busy_prefix, "too many transfers from this network")
            }
            Err(Refusal::BusyUnproven) => {
                debug!(client = %client, limit = limits.max_unproven, "tftp request refused: too many unproven transfers");
                (&stats.busy_unproven, "server busy, try again")
            }
        };
        bump(counter);
        self.reply_error(client, ErrorCode::NotDefined, message)
            .await;
        Admission::Answered
    }

    async fn reply_error(&self, client: SocketAddr, code: ErrorCode, message: &str) {
        let mut buf = [0u8; 512];
        let n = proto::put_error(&mut buf, code, message);
        if let Err(e) = self.socket.send_to(&buf[..n], client).await {
            debug!(client = %client, error = %e, "tftp error reply not sent");
        }
    }
}

/// After the request socket closed: lets running transfers go on for `grace`, then ends the
/// rest with an ERROR (through `abort`), forcing them after a bounded wait.
async fn wind_down(mut tasks: JoinSet<()>, grace: Duration, abort: CancellationToken) {
    info!(
        running = tasks.len(),
        grace = ?grace,
        "tftp server stopped accepting requests"
    );
    let grace = tokio::time::sleep(grace);
    tokio::pin!(grace);
    while !tasks.is_empty() {
        tokio::select! {
            _ = &mut grace => break,
            _ = tasks.join_next() => {}
        }
    }
    if tasks.is_empty() {
        return;
    }
    warn!(
        running = tasks.len(),
        "ending tftp transfers still running after the grace period"
    );
    abort.cancel();
    // Each task only has to send one ERROR; a bounded wait, then force.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
}

enum Admission {
    Start(Request, Place),
    Answered,
}

/// A transfer's place in the unproven share (`[tftp] unproven_percent`), from admission until
/// its client first acknowledges something or the transfer ends, whichever comes first; it
/// carries the counters the transfer reports to.
struct UnprovenSlot {
    stats: Arc<TftpStats>,
    place: Option<Place>,
}

impl UnprovenSlot {
    fn claim(stats: &Arc<TftpStats>, place: Place) -> UnprovenSlot {
        stats.unproven.fetch_add(1, Ordering::Relaxed);
        stats.ledger().claim(place);
        UnprovenSlot {
            stats: stats.clone(),
            place: Some(place),
        }
    }

    fn stats(&self) -> Arc<TftpStats> {
        self.stats.clone()
    }

    /// Gives the slot back once the client has acknowledged something.
    fn release_if_proven(&mut self, transfer: &Transfer) {
        if transfer.is_proven() {
            self.release();
        }
    }

    fn release(&mut self) {
        if let Some(place) = self.place.take() {
            self.stats.unproven.fetch_sub(1, Ordering::Relaxed);
            self.stats.ledger().release(place);
        }
    }
}

impl Drop for UnprovenSlot {
    fn drop(&mut self) {
        self.release();
    }
}

/// One transfer, from resolving its path to its last datagram.
async fn run_transfer(
    shared: Arc<Shared>,
    request: Request,
    client: SocketAddr,
    local_ip: IpAddr,
    unproven: UnprovenSlot,
    abort: CancellationToken,
) {
    let (bind_ip, client) = same_family(local_ip, client);
    let socket = match new_udp_socket(SocketAddr::new(bind_ip, 0), 0).and_then(TransferSocket::new)
    {
        Ok(s) => s,
        Err(e) => {
            warn!(client = %client, error = %e, "tftp: cannot open a transfer socket");
            bump(&shared.stats.failed);
            return;
        }
    };
    let (path, content) = match resolve(&shared, &request, client).await {
        Ok(resolved) => resolved,
        Err((code, message)) => {
            // A refusal is best effort: if this one datagram is lost the client times out.
            let mut buf = [0u8; 512];
            let n = proto::put_error(&mut buf, code, message);
            let _ = socket.send_to(&buf[..n], client).await;
            return;
        }
    };
    let started = Instant::now();
    let served = content.served();
    let transfer = Transfer::new(&request, content.len(), started, &shared.settings);
    let stats = &shared.stats;
    bump(&stats.started);
    stats.active.fetch_add(1, Ordering::Relaxed);
    shared.observer.on_start(&TransferStart {
        client,
        path: &path,
        size: content.len(),
        blksize: transfer.blksize(),
        windowsize: transfer.windowsize(),
    });
    let moved = move_datagrams(&shared, transfer, content, socket, client, abort, unproven);
    let transfer = match moved.await {
        Ok(t) => t,
        Err(e) => {
            warn!(client = %client, path = %path, error = %e, "tftp transfer thread panicked");
            stats.active.fetch_sub(1, Ordering::Relaxed);
            bump(&stats.failed);
            return;
        }
    };
    let finished = Finished {
        client,
        path: &path,
        netascii: request.mode == Mode::Netascii,
        started,
        served,
    };
    report_finished(&shared, &transfer, &finished);
}

/// The request's path resolved to content, or the error to answer with (counted, logged and
/// told to the observer here).
async fn resolve(
    shared: &Arc<Shared>,
    request: &Request,
    client: SocketAddr,
) -> Result<(String, Content), (ErrorCode, &'static str)> {
    let stats = &shared.stats;
    let path = match CleanPath::parse(&request.filename) {
        Ok(p) => p,
        Err(e) => {
            let raw_name = request.filename.escape_debug().to_string();
            bump(&stats.refused);
            warn!(client = %client, path = %chainboot_content::shown_path(&raw_name), reason = %e, "tftp request refused");
            shared
                .observer
                .on_refused(client, &raw_name, &e.to_string());
            return Err((ErrorCode::AccessViolation, "access violation"));
        }
    };
    let resolve_path = path.clone();
    let path = path.as_string();
    let shared_files = shared.clone();
    let cache_key = path.clone();
    // Resolvers touch the file system (and render templates), and a small file is read whole
    // into the cache: on the resolver threads, off the runtime's workers.
    let resolved = shared
        .resolvers
        .run(move || {
            shared_files
                .resolver
                .resolve(&chainboot_content::Request {
                    path: &resolve_path,
                    client,
                    transport: Transport::Tftp,
                })
                .map(|content| shared_files.files.get(&cache_key, content))
        })
        .await;
    match resolved {
        Some(Ok(content)) => Ok((path, content)),
        Some(Err(e)) => {
            let answer = match &e {
                ResolveError::NotFound | ResolveError::IsDirectory => {
                    bump(&stats.not_found);
                    info!(client = %client, path = %chainboot_content::shown_path(&path), reason = %e, "tftp file not found");
                    (ErrorCode::FileNotFound, "file not found")
                }
                e if e.is_refusal() => {
                    bump(&stats.refused);
                    warn!(client = %client, path = %chainboot_content::shown_path(&path), reason = %e, "tftp request refused");
                    (ErrorCode::AccessViolation, "access violation")
                }
                _ => {
                    bump(&stats.failed);
                    warn!(client = %client, path = %path, error = %e, "tftp request failed");
                    (ErrorCode::NotDefined, "cannot read file")
                }
            };
            shared.observer.on_refused(client, &path, &e.to_string());
            Err(answer)
        }
        None => {
            bump(&stats.failed);
            warn!(client = %client, path = %path, "tftp resolver panicked");
            Err((ErrorCode::NotDefined, "cannot read file"))
        }
    }
}

/// Runs the transfer to its end, on a lock-step thread when it is lock-step and one is free,
/// else as this task; `unproven` is given back when the client first acknowledges something.
/// An error: the thread panicked.
async fn move_datagrams(
    shared: &Shared,
    mut transfer: Transfer,
    content: Content,
    socket: TransferSocket,
    client: SocketAddr,
    abort: CancellationToken,
    mut unproven: UnprovenSlot,
) -> Result<Transfer, tokio::task::JoinError> {
    let Some(permit) = lockstep_thread(shared, &transfer) else {
        drive(
            &mut transfer,
            &content,
            &socket,
            client,
            &abort,
            &mut unproven,
        )
        .await;
        return Ok(transfer);
    };
    let socket = socket.into_std();
    let polling = Polling {
        busy: BusyPoll::new(shared.busy_poll, cpus()),
        // Busy-polling is tuned for a lock-step client's turnaround; a window's client answers
        // once per window.
        max_transfers: if transfer.windowsize() == 1 {
            shared.busy_poll_transfers
        } else {
            0
        },
        runnable: shared.runnable,
    };
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        drive_blocking(
            &mut transfer,
            &content,
            socket,
            client,
            &abort,
            &mut unproven,
            polling,
        );
        transfer
    })
    .await
}

/// What the end-of-transfer report needs besides the transfer itself.
struct Finished<'a> {
    client: SocketAddr,
    path: &'a str,
    netascii: bool,
    started: Instant,
    served: Served,
}

/// Counts, logs and tells the observer how a transfer ended.
fn report_finished(shared: &Shared, transfer: &Transfer, f: &Finished<'_>) {
    let stats = &shared.stats;
    let duration = f.started.elapsed();
    let bytes = transfer.bytes_acked();
    let outcome = transfer
        .outcome()
        .cloned()
        .unwrap_or_else(|| Outcome::Failed("ended without outcome".into()));
    stats.active.fetch_sub(1, Ordering::Relaxed);
    stats.bytes.fetch_add(bytes, Ordering::Relaxed);
    if outcome.is_success() {
        bump(&stats.finished);
    } else {
        bump(&stats.failed);
        if outcome == Outcome::TimedOut && !transfer.is_proven() {
            bump(&stats.unproven_timeouts);
        }
    }
    let secs = duration.as_secs_f64();
    let mb_per_s = if secs > 0.0 {
        bytes as f64 / secs / 1e6
    } else {
        0.0
    };
    let c = transfer.counters();
    info!(
        client = %f.client,
        path = %f.path,
        bytes,
        blksize = transfer.blksize(),
        windowsize = transfer.windowsize(),
        duration_ms = duration.as_millis() as u64,
        mb_per_s = format_args!("{mb_per_s:.1}"),
        mode = if f.netascii { "netascii" } else { "octet" },
        resent = c.resent,
        outcome = %outcome,
        "tftp transfer finished"
    );
    shared.observer.on_finish(&TransferSummary {
        client: f.client,
        path: f.path,
        bytes,
        blksize: transfer.blksize(),
        windowsize: transfer.windowsize(),
        duration,
        outcome: &outcome,
        served: f.served,
    });
}

/// Fills `batch` with the next datagrams the transfer has ready (at most a batch); false when
/// there are none.
fn next_window<S: BlockSource + ?Sized>(
    transfer: &mut Transfer,
    source: &S,
    batch: &mut Batch,
) -> bool {
    batch.clear();
    let now = Instant::now();
    while !batch.is_full() {
        match transfer.poll_transmit(now, source, batch.next_slot()) {
            Some(n) => batch.commit(n),
            None => break,
        }
    }
    !batch.is_empty()
}

/// Moves one transfer's datagrams as a task: windows go out with one `sendmmsg`, ACKs and the
/// retransmission timer come in through the reactor.
async fn drive(
    transfer: &mut Transfer,
    content: &Content,
    socket: &TransferSocket,
    client: SocketAddr,
    abort: &CancellationToken,
    unproven: &mut UnprovenSlot,
) {
    let stats = unproven.stats();
    let source = ReadAhead::new(
        content,
        transfer.blksize() * transfer.windowsize() as usize,
        content.len(),
    );
    let mut inbuf = [0u8; 1024];
    let mut unknown_tids = UnknownTids::default();
    // The timer is armed lazily: in a lock-step transfer the deadline moves with every ACK,
    // and resetting a tokio timer per block costs a lock on the timer wheel. It is only moved
    // earlier here; when it fires at a deadline that has since moved on, it is re-armed.
    let far = || Instant::now() + Duration::from_secs(3600);
    let mut armed = far();
    let timer = tokio::time::sleep_until(tokio::time::Instant::from_std(armed));
    tokio::pin!(timer);
    let cancelled = abort.cancelled();
    tokio::pin!(cancelled);
    let mut aborted = false;
    let mut batch = Batch::new(transfer.windowsize() as usize, transfer.datagram_capacity());
    loop {
        while next_window(transfer, &source, &mut batch) {
            if let Err(e) = batch.send(socket, client).await {
                // Treated like a lost window (ENOBUFS under load is transient): the
                // retransmission timer resends it, and a persistent error (no route) ends the
                // transfer after `retries` attempts like a silent client would.
                debug!(client = %client, error = %e, "tftp send failed");
                break;
            }
        }
        if transfer.is_done() {
            break;
        }
        let Some(deadline) = transfer.poll_timeout() else {
            // Not done, nothing to send and nothing in flight cannot happen; end rather than
            // hang if it ever does.
            transfer.abort("internal error: transfer stalled");
            batch.clear();
            if let Some(n) = transfer.poll_transmit(Instant::now(), &source, batch.next_slot()) {
                batch.commit(n);
                let _ = batch.send(socket, client).await;
            }
            break;
        };
        if deadline < armed {
            armed = deadline;
            timer
                .as_mut()
                .reset(tokio::time::Instant::from_std(deadline));
        }
        tokio::select! {
            biased;
            _ = &mut cancelled, if !aborted => {
                aborted = true;
                transfer.abort("server shutting down");
            }
            received = socket.recv_from(&mut inbuf) => {
                let (n, from) = match received {
                    Ok(r) => r,
                    Err(e) => {
                        // ICMP errors (port unreachable: the client is gone) surface here on
                        // Linux; the retransmit timer decides when to give up.
                        debug!(client = %client, error = %e, "tftp transfer socket receive error");
                        continue;
                    }
                };
                if from != client {
                    bump(&stats.unknown_tid);
                    if let Some(error) = unknown_tids.answer(from) {
                        let _ = socket.send_to(error.as_bytes(), from).await;
                    }
                    continue;
                }
                if transfer.handle(Instant::now(), &inbuf[..n]) == Handled::Malformed {
                    bump(&stats.malformed);
                }
                unproven.release_if_proven(transfer);
            }
            _ = &mut timer => {
                // Re-armed on the next turn at the transfer's current deadline, which may
                // have moved on since this one was set (the state machine ignores an early
                // call).
                armed = far();
                transfer.handle_timeout(Instant::now());
            }
        }
    }
}

/// `[tftp] lockstep_threads` when unset (see [`lockstep_thread`]): 64, whatever the CPU count.
/// A transfer beyond it runs as a task on the runtime that also streams every HTTP body, and
/// in a boot storm each of its blocks then waits behind a thousand bodies: with 4 threads
/// (the former 2 x CPUs) a 1000-machine storm's UEFI first stages (`ipxe.efi`, 580 blocks)
/// took up to 12 s and the storm's p99 time-to-kernel was 25-27 s; with 64, 7-8 s (A/B in
/// bench/README.md). A thread blocked in `recvfrom` costs its stack's touched pages only.
fn default_lockstep_threads() -> usize {
    64
}

/// Transfers running at once up to which lock-step threads busy-poll: one per two CPUs, so
/// each polling thread leaves a CPU for its client (often a VM on the same host) and the rest
/// of the server; none on a single CPU, where polling would only delay them.
fn polling_transfers() -> u64 {
    u64::from(cpus() / 2)
}

/// The CPUs this process may run on (0 when unknown, which never polls).
fn cpus() -> u32 {
    std::thread::available_parallelism().map_or(0, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
}

/// A lock-step thread's busy-polling: its per-transfer decisions, and the number of running
/// transfers above which it never polls (they would spin on each other's CPUs), and where it
/// reads the runnable-task count.
struct Polling {
    busy: BusyPoll,
    max_transfers: u64,
    runnable: RunnableSource,
}

impl Polling {
    /// Waits for the client's next datagram after a block went out at `sent_at`: busy-polls
    /// first when few enough transfers run and the sans-IO policy asks for it, else blocks (up
    /// to the socket's receive timeout, see [`wait_until`]); what it saw (answered within the
    /// poll, missed, the client's turnaround) goes back into the policy. Also returns when the
    /// wait ended, the one clock reading the caller needs until its next send.
    fn wait(
        &mut self,
        socket: &std::net::UdpSocket,
        inbuf: &mut [u8],
        client: SocketAddr,
        sent_at: Instant,
        runnable: &Runnable,
        stats: &TftpStats,
    ) -> (io::Result<(usize, SocketAddr)>, Instant) {
        let may_poll = stats.active.load(Ordering::Relaxed) <= self.max_transfers;
        // Sampled right after the send, so that a client woken by the block counts.
        if may_poll && self.busy.wants_runnable(sent_at) {
            self.busy.record_runnable(sent_at, runnable.count());
        }
        let poll = if may_poll {
            self.busy.next_wait()
        } else {
            None
        };
        let (received, answered) = match poll {
            Some(budget) => {
                let (received, answered) = recv_polling(socket, inbuf, budget);
                bump(&stats.busy_polls);
                if answered {
                    bump(&stats.busy_polls_answered);
                }
                (received, Some(answered))
            }
            None => (socket.recv_from(inbuf), None),
        };
        let now = Instant::now();
        if may_poll {
            // The client's turnaround: its datagram's arrival after the block went out.
            let turnaround = match &received {
                Ok((_, from)) if *from == client => Some(now.saturating_duration_since(sent_at)),
                _ => None,
            };
            self.busy.record(match (answered, turnaround) {
                (Some(true), Some(t)) => Waited::Answered(t),
                (Some(_), t) => Waited::Missed(t),
                (None, t) => Waited::Slept(t),
            });
        }
        (received, now)
    }
}

/// Longest a lock-step thread waits for an ACK before it looks at the abort token again; it
/// wakes earlier when the transfer's retransmission deadline comes first (see
/// [`wait_until`]). A fixed 20 ms tick used to wake every thread whose client was slower than
/// that fifty times a second for nothing: in a boot storm on a loaded server, most of them.
const LOCKSTEP_TICK: Duration = Duration::from_millis(200);

/// The receive timeout that wakes a lock-step thread at `deadline` (whole milliseconds, at
/// least one, at most [`LOCKSTEP_TICK`]). The thread changes its socket's option only when
/// this differs from the one set: in lock-step the deadline is a whole timeout away after
/// every block, so that is around retransmissions only.
fn wait_until(deadline: Instant, now: Instant) -> Duration {
    let left = deadline.saturating_duration_since(now);
    let ms = left.as_micros().div_ceil(1000).max(1);
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)).min(LOCKSTEP_TICK)
}

/// Windows of at most this many blocks may run on a thread: lock-step (what every PXE ROM and
/// iPXE ask for) and UEFI PXE's small windows (edk2, so OVMF and most vendors' UEFI, asks for
/// 4). Larger windows are bulk transfers, which the task's `sendmmsg` batches serve better.
const THREAD_WINDOW_MAX: u16 = 8;

/// A thread for this transfer if its window is small and one is free.
///
/// Lock-step and small-window transfers are bound by the round trip per window, and on a
/// fast link the server's share of it is its wake-up: a thread blocked in `recvfrom`, as the
/// C servers do it, is woken straight into the system call, where a task costs an
/// `epoll_wait`, the reactor's dispatch and a `recvfrom` per window, and in a boot storm
/// waits for a runtime worker behind every HTTP body. Only a few get a thread (`[tftp]
/// lockstep_threads`; a boot storm of a thousand would be a thousand threads); the rest run
/// as tasks, where a thousand cost nothing but memory. Measured on loopback (bench/README.md
/// `## TFTP`): lock-step went from 0.92-1.01x to 0.94-1.01x of the best C server in quiet
/// runs, a round trip both sides spend almost entirely in the kernel.
fn lockstep_thread(
    shared: &Shared,
    transfer: &Transfer,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    if transfer.windowsize() > THREAD_WINDOW_MAX {
        return None;
    }
    shared.lockstep_slots.clone().try_acquire_owned().ok()
}

/// Moves one lock-step or small-window transfer's datagrams on the calling (blocking) thread.
fn drive_blocking(
    transfer: &mut Transfer,
    content: &Content,
    socket: std::net::UdpSocket,
    client: SocketAddr,
    abort: &CancellationToken,
    unproven: &mut UnprovenSlot,
    mut polling: Polling,
) {
    let stats = unproven.stats();
    let mut tick = LOCKSTEP_TICK;
    if let Err(e) = socket
        .set_nonblocking(false)
        .and_then(|()| socket.set_read_timeout(Some(tick)))
    {
        warn!(client = %client, error = %e, "tftp: cannot make the transfer socket blocking");
        transfer.abort("internal error: transfer socket");
    }
    let source = ReadAhead::new(
        content,
        transfer.blksize() * transfer.windowsize() as usize,
        content.len(),
    );
    let mut out = vec![0u8; transfer.datagram_capacity()];
    let mut inbuf = [0u8; 1024];
    let mut unknown_tids = UnknownTids::default();
    let runnable = Runnable::open(polling.runnable);
    // The clock is read twice per block, right after the send (the retransmission wait and
    // the client's turnaround start there) and when the wait ends (the datagram's time, and
    // the next block's send time, a few microseconds off): a lock-step block costs two
    // system calls, and four more clock reads were about 1% of its CPU time (perf).
    let mut now = Instant::now();
    loop {
        while let Some(n) = transfer.poll_transmit(now, &source, &mut out) {
            if let Err(e) = socket.send_to(&out[..n], client) {
                // Like a lost block: the retransmission timer resends it.
                debug!(client = %client, error = %e, "tftp send failed");
                break;
            }
        }
        if transfer.is_done() {
            break;
        }
        if abort.is_cancelled() && transfer.outcome().is_none() {
            transfer.abort("server shutting down");
            continue;
        }
        let Some(deadline) = transfer.poll_timeout() else {
            // As in `drive`: cannot happen; end rather than hang if it ever does.
            transfer.abort("internal error: transfer stalled");
            continue;
        };
        let sent_at = Instant::now();
        let want = wait_until(deadline, sent_at);
        if want != tick {
            // Best effort: with the old timeout the thread only wakes a little off.
            if socket.set_read_timeout(Some(want)).is_ok() {
                tick = want;
            }
        }
        let (received, at) = polling.wait(&socket, &mut inbuf, client, sent_at, &runnable, &stats);
        now = at;
        match received {
            Ok((_, from)) if from != client => {
                bump(&stats.unknown_tid);
                if let Some(error) = unknown_tids.answer(from) {
                    let _ = socket.send_to(error.as_bytes(), from);
                }
            }
            Ok((n, _)) => {
                if transfer.handle(now, &inbuf[..n]) == Handled::Malformed {
                    bump(&stats.malformed);
                }
                unproven.release_if_proven(transfer);
            }
            // A tick without an ACK (the state machine ignores an early timeout), or an ICMP
            // error (the client is gone; the retransmission timer decides when to give up).
            Err(e) => {
                if !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) {
                    debug!(client = %client, error = %e, "tftp transfer socket receive error");
                }
                transfer.handle_timeout(now);
            }
        }
    }
}

/// RFC 1350 section 4: a datagram from an unknown TID gets error 5 and the transfer goes on;
/// each source is answered once, and only the first few sources (bounded replies to a flood).
#[derive(Default)]
struct UnknownTids(Vec<SocketAddr>);

/// The error 5 datagram.
struct UnknownTidError {
    buf: [u8; 64],
    len: usize,
}

impl UnknownTidError {
    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl UnknownTids {
    fn answer(&mut self, from: SocketAddr) -> Option<UnknownTidError> {
        if self.0.len() >= MAX_UNKNOWN_TIDS_ANSWERED || self.0.contains(&from) {
            return None;
        }
        self.0.push(from);
        let mut buf = [0u8; 64];
        let len = proto::put_error(&mut buf, ErrorCode::UnknownTid, "unknown transfer ID");
        Some(UnknownTidError { buf, len })
    }
}

/// The transfer socket must have the client's address family: an IPv4 client reaching a
/// dual-stack socket shows up as `::ffff:a.b.c.d` (and its destination may be reported either
/// way); such a transfer runs on a plain IPv4 socket bound to the address the client used.
fn same_family(local: IpAddr, client: SocketAddr) -> (IpAddr, SocketAddr) {
    let client = match client {
        SocketAddr::V6(c) => match c.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), c.port()),
            None => client,
        },
        v4 => v4,
    };
    let local = match local {
        IpAddr::V6(l) => l.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(local),
        v4 => v4,
    };
    match (local, client) {
        (IpAddr::V4(_), SocketAddr::V4(_)) | (IpAddr::V6(_), SocketAddr::V6(_)) => (local, client),
        (IpAddr::V6(_), SocketAddr::V4(_)) => (IpAddr::V4(Ipv4Addr::UNSPECIFIED), client),
        (IpAddr::V4(_), SocketAddr::V6(_)) => (IpAddr::V6(Ipv6Addr::UNSPECIFIED), client),
    }
}

fn new_udp_socket(addr: SocketAddr, rcvbuf: usize) -> io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    if rcvbuf > 0 {
        // Best effort: a smaller buffer only drops more of a storm's requests.
        let _ = chainboot_udp::set_receive_buffer(&socket, rcvbuf);
    }
    Ok(socket)
}

/// Receives one datagram with the address it was sent to (when pktinfo is on). The length
/// is `None` when the datagram did not fit the buffer (never a valid request).
async fn recv_with_destination(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(Option<usize>, SocketAddr, Option<IpAddr>)> {
    let meta = socket
        .async_io(Interest::READABLE, || chainboot_udp::recv(socket, buf))
        .await?;
    Ok((
        (!meta.truncated).then_some(meta.len),
        meta.source,
        meta.destination,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lockstep_thread_wakes_at_the_deadline_or_after_a_tick() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(wait_until(now + Duration::from_secs(1), now), LOCKSTEP_TICK);
        assert_eq!(wait_until(now + ms(37), now), ms(37));
        assert_eq!(wait_until(now + Duration::from_micros(36_100), now), ms(37));
        // Due or past: the shortest wait the socket option takes (zero would mean "forever").
        assert_eq!(wait_until(now, now), ms(1));
        assert_eq!(wait_until(now, now + ms(5)), ms(1));
    }

    #[test]
    fn ipv4_clients_of_a_dual_stack_socket_get_an_ipv4_transfer_socket() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        let local: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let (ip, c) = same_family(local, mapped);
        assert_eq!(ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(c, "127.0.0.1:5000".parse::<SocketAddr>().unwrap());
        let v4: SocketAddr = "127.0.0.1:7".parse().unwrap();
        assert_eq!(same_family("127.0.0.2".parse().unwrap(), v4).1, v4);
        // Destination reported as IPv4 (IP_PKTINFO) for a mapped client.
        let (ip, c) = same_family("127.0.0.9".parse().unwrap(), mapped);
        assert_eq!(
            (ip.to_string(), c.to_string()),
            ("127.0.0.9".into(), "127.0.0.1:5000".into())
        );
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        assert_eq!(
            same_family("::1".parse().unwrap(), v6),
            ("::1".parse().unwrap(), v6)
        );
    }
}
