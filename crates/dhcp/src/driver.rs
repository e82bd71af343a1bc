//! The UDP driver both DHCP servers run: DHCPv4 ([`crate::server`]) and DHCPv6
//! (chainboot-dhcp6's `server`). It moves bytes between sockets and a sans-IO engine; what
//! differs between the two families (which interface a datagram came in on, where a reply
//! goes, how leases become durable) is their [`Family`].
//!
//! - The engine is one state machine behind a mutex, shared by the receive threads.
//! - Each socket is read by its own thread blocked in `recvmmsg`, not a tokio task: a datagram
//!   then wakes its thread directly, where the reactor costs an epoll_wait plus a recvmsg that
//!   finds the queue empty per wake-up. At thousands of packets per second those system calls
//!   and wake-ups were most of the receive side's CPU time.
//! - A burst's replies leave in one `sendmmsg` ([`chainboot_udp::send`]), each to its own
//!   destination from its own address and interface.
//! - Datagrams the engine leaves to a fleet peer are kept a few seconds per socket; when the
//!   fleet loses that peer, the receive threads run them through the engine again
//!   ([`Takeover`]), so its clients' pending exchanges are answered at once rather than at
//!   their next retransmission.
//! - Replies that carry a lease go through the committer thread: it writes all leases that
//!   queued up during the previous fsync in one transaction (group commit, like ISC's
//!   delayed-ack; under load it also waits [`COMMIT_LINGER`] for more) and only then sends
//!   those replies. Never a reply before its lease is durable.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use chainboot_config::Issue;
use chainboot_udp::{RecvBatch, RecvMeta, Transmit};
use parking_lot::Mutex;
use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::sync::CancellationToken;

/// A failure to start or run a DHCP server; `family` is the server's ([`Family::NAME`]:
/// `dhcp` or `dhcp6`), which every message starts with.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("{family}: config: {message}")]
    Config {
        family: &'static str,
        message: String,
    },
    #[error("{family}: cannot bind UDP port {port}: {source}")]
    Bind {
        family: &'static str,
        port: u16,
        source: std::io::Error,
    },
    #[error("{family}: cannot join {group} on {iface}: {source}")]
    Join {
        family: &'static str,
        group: IpAddr,
        iface: String,
        source: std::io::Error,
    },
    #[error("{family}: socket: {source}")]
    Io {
        family: &'static str,
        source: std::io::Error,
    },
    #[error("{family}: store: {source}")]
    Store {
        family: &'static str,
        source: chainboot_store::StoreError,
    },
}

impl DhcpError {
    /// Every problem of a config section at once (`[dhcp]`, `[dhcp6]`), or none.
    pub fn check_config(family: &'static str, problems: &[Issue]) -> Result<(), DhcpError> {
        if problems.is_empty() {
            return Ok(());
        }
        let text: Vec<String> = problems.iter().map(|i| format!("{family}.{i}")).collect();
        Err(DhcpError::Config {
            family,
            message: text.join("; "),
        })
    }
}

/// A DHCP engine as the driver runs it (DHCPv4's [`Engine`](crate::Engine), DHCPv6's
/// `Engine6`): a datagram in; replies out, with the leases that must be durable before they
/// leave.
pub trait DrivenEngine: Send + 'static {
    /// Where a datagram came in, as the engine needs to know it.
    type Ingress;
    /// The engine's account of one datagram (what the observer is told).
    type Handled;
    /// A reply ready for the wire.
    type Reply: Send + 'static;
    /// A lease to make durable.
    type Lease: Send + 'static;

    fn handle(
        &mut self,
        now: SystemTime,
        ingress: &Self::Ingress,
        datagram: &[u8],
    ) -> Self::Handled;

    /// The replies of an exchange and the leases that must be durable before they leave.
    fn into_replies(handled: Self::Handled) -> (Vec<Self::Reply>, Vec<Self::Lease>);

    /// Learns leases as the store holds them (at start; and the fleet's database's answer to
    /// this server's writes of addresses it gave to other servers' clients).
    fn load_leases(&mut self, leases: &[Self::Lease]);

    /// Whether the engine left the datagram to a fleet peer (a client of a peer's, or a
    /// message naming a peer): the datagrams a [`Takeover`] runs again.
    fn left_to_peer(handled: &Self::Handled) -> bool;
}

/// How long a datagram left to a peer is kept for a [`Takeover`]: about one retransmission
/// interval of PXE firmware (4 s); a client still waiting on it by then has sent it again.
pub const HELD_FOR_PEERS: Duration = Duration::from_secs(4);
/// Datagrams kept per socket for a [`Takeover`] (the oldest go first): a storm's few seconds
/// of a peer's clients; a flood of them only pushes the oldest out.
const HELD_FOR_PEERS_MAX: usize = 1024;

/// Tells the receive threads that the fleet lost a peer whose clients this server now
/// answers: each runs the datagrams it left to peers in the last [`HELD_FOR_PEERS`] through
/// the engine again (what still belongs to a live peer is left again). An exchange the dead
/// peer had begun (a DISCOVER not yet answered, a REQUEST naming it) is then answered within
/// a receive tick ([`RECEIVE_TICK`], at once when datagrams flow) instead of after the
/// client's retransmission timer, seconds later.
#[derive(Clone, Default)]
pub struct Takeover(Arc<AtomicU64>);

impl Takeover {
    /// Asks for the held datagrams to be run again.
    pub fn now(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn generation(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A receive thread's datagrams left to peers: when each came, its bytes and what the kernel
/// said about it; and the [`Takeover`] generation it last ran them for.
struct HeldForPeers {
    queue: VecDeque<(Instant, Vec<u8>, RecvMeta)>,
    generation: u64,
}

impl HeldForPeers {
    /// Keeps a copy of `datagram`; once full, in the buffer of the oldest, which it replaces
    /// (in a fleet of N servers (N-1)/N of the datagrams are kept: no allocation per datagram
    /// on the receive path once the queue is full).
    fn keep(&mut self, datagram: &[u8], meta: &RecvMeta) {
        let mut bytes = if self.queue.len() >= HELD_FOR_PEERS_MAX {
            self.queue
                .pop_front()
                .map(|(_, b, _)| b)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        bytes.clear();
        bytes.extend_from_slice(datagram);
        self.queue.push_back((Instant::now(), bytes, *meta));
    }

    /// The datagrams to run again if a takeover was asked for since the last call (those not
    /// older than [`HELD_FOR_PEERS`]), emptying the queue.
    fn take_if_asked(&mut self, takeover: &Takeover) -> Vec<(Vec<u8>, RecvMeta)> {
        let generation = takeover.generation();
        if generation == self.generation {
            return Vec::new();
        }
        self.generation = generation;
        std::mem::take(&mut self.queue)
            .into_iter()
            .filter(|(at, _, _)| at.elapsed() <= HELD_FOR_PEERS)
            .map(|(_, d, m)| (d, m))
            .collect()
    }
}

/// Hook for the event log and the metrics: told about every datagram an engine handled (after
/// its replies were queued), with the engine's ingress (`I`) and account (`H`) types. Does
/// nothing unless told otherwise.
pub trait DhcpObserver<I, H>: Send + Sync {
    /// `decided_in`: from taking the engine to its answer (includes waiting for the engine
    /// while another packet is being handled), for the decision-latency metric.
    fn exchange(&self, _ingress: &I, _handled: &H, _decided_in: Duration) {}
}

/// The observer that does nothing.
pub struct NoObserver;
impl<I, H> DhcpObserver<I, H> for NoObserver {}

type Ingress<F> = <<F as Family>::Engine as DrivenEngine>::Ingress;
type Handled<F> = <<F as Family>::Engine as DrivenEngine>::Handled;
type Reply<F> = <<F as Family>::Engine as DrivenEngine>::Reply;
type Lease<F> = <<F as Family>::Engine as DrivenEngine>::Lease;

/// What one DHCP family does around its engine: where a datagram came in, where a reply
/// goes, and how leases become durable.
pub trait Family: Send + Sync + Sized + 'static {
    type Engine: DrivenEngine;
    /// `dhcp` or `dhcp6`: the start of log lines, errors and thread names.
    const NAME: &'static str;

    /// The engine's view of where `meta`'s datagram came in (on the socket bound to
    /// `local_port`); `None` when it is not to be answered (no interface known, an interface
    /// not served).
    fn ingress(&self, meta: &RecvMeta, local_port: u16) -> Option<Ingress<Self>>;

    /// The datagram `reply` becomes: its destination, source address and interface.
    fn transmit<'a>(&self, sock: &UdpSocket, reply: &'a Reply<Self>) -> Transmit<'a>;

    /// Makes the leases of `batch` durable, in as few transactions as the store allows, and
    /// keeps in `batch` only the exchanges whose replies may now leave (none when the leases
    /// could not be stored: not durable, so not acknowledged; the clients retry).
    fn commit(&self, batch: &mut Vec<Pending<Self>>);

    /// Where the driver counts replies it could not send.
    fn send_errors(&self) -> &AtomicU64;

    /// Where the driver counts exchanges it could not hand to the committer.
    fn store_errors(&self) -> &AtomicU64;
}

/// How often a receive thread blocked on an idle socket looks at the shutdown flag.
pub const RECEIVE_TICK: Duration = Duration::from_millis(200);
/// Datagrams received at once: up to this many per `recvmmsg` when they queue up (a boot
/// storm, a load test), one system call and one wake-up for all of them.
const RECEIVE_BATCH: usize = 32;
/// Largest datagram read; a longer one is truncated and the engine drops it as malformed.
const MAX_DATAGRAM: usize = 4096;
/// Most exchanges whose leases are written in one transaction.
const MAX_COMMIT_BATCH: usize = 4096;
/// Under load, how long the committer waits for more leases before it writes a batch (ISC
/// dhcpd's `max-ack-delay` idea, kept far shorter than its 250 ms). A fsync costs about the
/// same CPU for one lease as for fifty, and at thousands of ACKs per second it was most of
/// the server's CPU time (bench/README.md `## DHCP`).
pub const COMMIT_LINGER: Duration = Duration::from_millis(1);

/// A bound socket and its port, read by a thread of its own.
pub struct Listener {
    pub port: u16,
    /// Blocking, with a receive timeout of [`RECEIVE_TICK`].
    pub sock: UdpSocket,
}

impl Listener {
    /// A UDP socket on `addr` for a receive thread: blocking with a receive timeout (to
    /// notice shutdown), pktinfo on (each datagram says which interface it came in on), room
    /// for a storm. An IPv4 socket may send broadcasts; an IPv6 one takes IPv6 only.
    pub fn bind(family: &'static str, addr: SocketAddr) -> Result<Listener, DhcpError> {
        let port = addr.port();
        let wrap = |source| DhcpError::Bind {
            family,
            port,
            source,
        };
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
            .map_err(wrap)?;
        match addr {
            SocketAddr::V4(_) => s.set_broadcast(true),
            SocketAddr::V6(_) => s.set_only_v6(true),
        }
        .map_err(wrap)?;
        s.set_reuse_address(true).map_err(wrap)?;
        s.set_read_timeout(Some(RECEIVE_TICK)).map_err(wrap)?;
        // Room for a storm of requests (a rack powering on) while the receive thread waits
        // for a core. SO_RCVBUF is capped at net.core.rmem_max (208 KiB by default: about 160
        // datagrams of 300 bytes, 5 ms at 32 000/s); SO_RCVBUFFORCE, allowed to a root
        // process (which a server on port 67 is), is not. Measured: with the cap, 3-4% of
        // DISCOVERs were dropped in bursts at 36 000/s while the receive thread was 70% busy.
        let _ = chainboot_udp::set_receive_buffer(&s, 4 << 20);
        chainboot_udp::enable_pktinfo(&s, addr.is_ipv6()).map_err(wrap)?;
        s.bind(&addr.into()).map_err(wrap)?;
        Ok(Listener {
            port,
            sock: s.into(),
        })
    }
}

/// Interface index → (name, what a family needs of its addresses), re-read when an unknown
/// index shows up, at most once a second: a flood on an unconfigured interface must not turn
/// into a getifaddrs storm.
pub struct InterfaceTable<A> {
    by_index: HashMap<u32, (String, A)>,
    refreshed: Option<Instant>,
    read: fn() -> HashMap<u32, (String, A)>,
}

impl<A: Clone> InterfaceTable<A> {
    /// An empty table that `read` fills on the first lookup.
    pub fn new(read: fn() -> HashMap<u32, (String, A)>) -> InterfaceTable<A> {
        InterfaceTable {
            by_index: HashMap::new(),
            refreshed: None,
            read,
        }
    }

    pub fn lookup(&mut self, ifindex: u32) -> Option<(String, A)> {
        if let Some(v) = self.by_index.get(&ifindex) {
            return Some(v.clone());
        }
        if self
            .refreshed
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return None;
        }
        self.refreshed = Some(Instant::now());
        self.by_index = (self.read)();
        self.by_index.get(&ifindex).cloned()
    }
}

/// How often a committer tries the fleet's database while it does not answer.
pub const DEGRADED_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// A committer's memory of the fleet's database failing: while it does not answer each try
/// costs up to its connect timeout, so it is tried again after [`DEGRADED_RETRY`], not once
/// per batch.
#[derive(Default)]
pub struct RetryGate {
    last_failure: Mutex<Option<std::time::Instant>>,
}

impl RetryGate {
    /// Runs `save` unless the store is `degraded` and the last try failed less than
    /// [`DEGRADED_RETRY`] ago (then `Err(None)`: not tried); remembers a failure.
    pub fn attempt<T, E>(
        &self,
        degraded: bool,
        save: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, Option<E>> {
        let mut last = self.last_failure.lock();
        if degraded && last.is_some_and(|t| t.elapsed() < DEGRADED_RETRY) {
            return Err(None);
        }
        let saved = save();
        *last = saved.is_err().then(std::time::Instant::now);
        saved.map_err(Some)
    }
}

/// The fleet's database gave some addresses of `batch` to other servers' clients (`holders`:
/// those addresses' leases as the database holds them): the replies of the exchanges that wrote
/// them are withheld (the clients retry and are answered from what the engine now knows:
/// another address), and the engine learns who holds each address. Counted in `conflicts`, one
/// per address. A set of the refused addresses (`address` of a lease) keeps the work linear in
/// the batch, which may hold thousands of exchanges.
pub fn withhold_refused<F: Family, A: Eq + std::hash::Hash>(
    engine: &Mutex<F::Engine>,
    batch: &mut Vec<Pending<F>>,
    holders: &[Lease<F>],
    address: impl Fn(&Lease<F>) -> A,
    conflicts: &AtomicU64,
) {
    conflicts.fetch_add(holders.len() as u64, Ordering::Relaxed);
    tracing::warn!(
        addresses = holders.len(),
        "{}: the fleet's database holds addresses of this batch for other clients; their replies are withheld",
        F::NAME
    );
    engine.lock().load_leases(holders);
    let refused: HashSet<A> = holders.iter().map(&address).collect();
    batch.retain(|p| !p.leases.iter().any(|r| refused.contains(&address(r))));
}

/// An exchange whose replies wait until its leases are durable.
pub struct Pending<F: Family> {
    pub leases: Vec<Lease<F>>,
    pub replies: Vec<Reply<F>>,
    /// The socket the request came in on, which its replies leave by.
    listener: Arc<Listener>,
}

/// The fleet's database does not answer, and the store's local journal made durable the
/// renewals among a batch's leases (`journaled`: their addresses; a renewal is a lease the
/// database holds for the same client, same address, not expired). The exchanges whose leases
/// are all journaled keep their replies (counted in `renewals`); the others (new clients, other
/// addresses) are withheld until the database answers: their clients retry (one store error
/// per batch). Returns whether any reply is left to send.
pub fn keep_journaled<F: Family, A: Eq + std::hash::Hash>(
    family: &F,
    batch: &mut Vec<Pending<F>>,
    journaled: Result<Vec<A>, chainboot_store::StoreError>,
    address: impl Fn(&Lease<F>) -> A,
    renewals: &AtomicU64,
) -> bool {
    let journaled: HashSet<A> = match journaled {
        Ok(j) => j.into_iter().collect(),
        Err(e) => {
            tracing::error!(
                "{}: renewals could not be journaled, replies withheld: {e}",
                F::NAME
            );
            return false;
        }
    };
    let before = batch.len();
    batch.retain(|p| {
        !p.leases.is_empty() && p.leases.iter().all(|r| journaled.contains(&address(r)))
    });
    renewals.fetch_add(batch.len() as u64, Ordering::Relaxed);
    if batch.len() < before {
        family.store_errors().fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            withheld = before - batch.len(),
            "{}: the fleet's database does not answer; new leases wait for it",
            F::NAME
        );
    }
    !batch.is_empty()
}

/// A family's engine, its sockets and its observer, ready to [`run`](Driver::run).
pub struct Driver<F: Family> {
    pub family: Arc<F>,
    pub engine: Arc<Mutex<F::Engine>>,
    /// None: the server is off, and `run` only waits for shutdown.
    pub listeners: Vec<Arc<Listener>>,
    pub observer: Arc<dyn DhcpObserver<Ingress<F>, Handled<F>>>,
    /// Asked by the fleet loop when a peer is gone.
    pub takeover: Takeover,
}

impl<F: Family> Driver<F> {
    /// Serves until `shutdown` is cancelled. Leases queued for commit are written (and their
    /// replies sent) before this returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), DhcpError> {
        if self.listeners.is_empty() {
            shutdown.cancelled().await;
            return Ok(());
        }
        let (tx, rx) = mpsc::channel::<Pending<F>>();
        let family = self.family.clone();
        let committer = std::thread::Builder::new()
            .name(format!("{}-commit", F::NAME))
            .spawn(move || commit_loop(&*family, &rx))
            .map_err(|source| DhcpError::Io {
                family: F::NAME,
                source,
            })?;
        let stop = Arc::new(AtomicBool::new(false));
        // Once every receive thread has ended, its sender is gone and the committer drains
        // what is queued and ends too.
        let (receivers, result) = match self.spawn_receivers(tx, &stop) {
            Ok(threads) => {
                shutdown.cancelled().await;
                (threads, Ok(()))
            }
            Err(e) => (Vec::new(), Err(e)),
        };
        // Each receive thread notices within RECEIVE_TICK.
        stop.store(true, Ordering::Relaxed);
        let _ = tokio::task::spawn_blocking(move || {
            for t in receivers {
                let _ = t.join();
            }
            let _ = committer.join();
        })
        .await;
        result
    }

    /// A receive thread per socket, each with a sender to the committer. On an error the
    /// threads already started see `stop` and end.
    fn spawn_receivers(
        &self,
        tx: mpsc::Sender<Pending<F>>,
        stop: &Arc<AtomicBool>,
    ) -> Result<Vec<JoinHandle<()>>, DhcpError> {
        let mut threads = Vec::new();
        for listener in &self.listeners {
            let receiver = Receiver {
                family: self.family.clone(),
                engine: self.engine.clone(),
                observer: self.observer.clone(),
                tx: tx.clone(),
                listener: listener.clone(),
                takeover: self.takeover.clone(),
            };
            let stop = stop.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{}-recv-{}", F::NAME, listener.port))
                .spawn(move || receiver.run(&stop));
            match spawned {
                Ok(t) => threads.push(t),
                Err(source) => {
                    return Err(DhcpError::Io {
                        family: F::NAME,
                        source,
                    })
                }
            }
        }
        Ok(threads)
    }
}

/// What a receive thread shares with the server: the engine, the family, the observer, the
/// committer's queue; and the socket it reads.
struct Receiver<F: Family> {
    family: Arc<F>,
    engine: Arc<Mutex<F::Engine>>,
    observer: Arc<dyn DhcpObserver<Ingress<F>, Handled<F>>>,
    tx: mpsc::Sender<Pending<F>>,
    listener: Arc<Listener>,
    takeover: Takeover,
}

impl<F: Family> Receiver<F> {
    /// Reads the socket until `stop`: each burst through the engine, its replies in one
    /// `sendmmsg`.
    fn run(&self, stop: &AtomicBool) {
        // Blocks (up to the socket's receive timeout) for one datagram, then takes whatever
        // else has queued: one system call and one wake-up for a burst.
        let mut batch = RecvBatch::new(RECEIVE_BATCH, MAX_DATAGRAM);
        let mut replies: Vec<Reply<F>> = Vec::with_capacity(RECEIVE_BATCH);
        let mut held = HeldForPeers {
            queue: VecDeque::new(),
            generation: self.takeover.generation(),
        };
        while !stop.load(Ordering::Relaxed) {
            let again = held.take_if_asked(&self.takeover);
            if !again.is_empty() {
                tracing::info!(
                    datagrams = again.len(),
                    port = self.listener.port,
                    "{}: a fleet peer is gone: answering what its clients sent it in the last seconds",
                    F::NAME
                );
                for (datagram, meta) in &again {
                    self.handle(datagram, meta, &mut replies, &mut held);
                }
                send_all(&*self.family, &self.listener.sock, replies.iter());
                replies.clear();
            }
            if let Err(e) = batch.recv(&self.listener.sock) {
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) {
                    tracing::warn!("{}: recvmmsg on port {}: {e}", F::NAME, self.listener.port);
                    // Not expected on a UDP socket; pause so that a persistent error cannot
                    // spin.
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            for (datagram, meta) in batch.iter() {
                self.handle(datagram, meta, &mut replies, &mut held);
            }
            send_all(&*self.family, &self.listener.sock, replies.iter());
            replies.clear();
        }
    }

    /// One datagram through the engine; its replies added to `replies` (sent when the burst
    /// is done), or queued for the committer when they carry a lease; kept in `held` when the
    /// engine left it to a peer.
    fn handle(
        &self,
        datagram: &[u8],
        meta: &RecvMeta,
        replies: &mut Vec<Reply<F>>,
        held: &mut HeldForPeers,
    ) {
        let Some(ingress) = self.family.ingress(meta, self.listener.port) else {
            return;
        };
        let started = Instant::now();
        let handled = self
            .engine
            .lock()
            .handle(SystemTime::now(), &ingress, datagram);
        self.observer
            .exchange(&ingress, &handled, started.elapsed());
        if <F::Engine as DrivenEngine>::left_to_peer(&handled) {
            held.keep(datagram, meta);
        }
        let (outgoing, leases) = <F::Engine as DrivenEngine>::into_replies(handled);
        if leases.is_empty() {
            replies.extend(outgoing);
            return;
        }
        let pending = Pending {
            leases,
            replies: outgoing,
            listener: self.listener.clone(),
        };
        if self.tx.send(pending).is_err() {
            self.family.store_errors().fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The committer: blocks for the first exchange waiting for its leases, then takes
/// everything that queued up meanwhile (while the previous batch was being fsynced): one
/// transaction, one fsync for the lot. When the first one came hard on the heels of the
/// previous (less than [`COMMIT_LINGER`] apart: load), it also waits up to `COMMIT_LINGER`
/// for more. A lone client (one machine booting) never waits: its reply goes out as soon as
/// its lease is on disk.
fn commit_loop<F: Family>(family: &F, rx: &mpsc::Receiver<Pending<F>>) {
    let mut previous_arrival: Option<Instant> = None;
    while let Ok(first) = rx.recv() {
        let arrived = Instant::now();
        if previous_arrival.is_some_and(|p| arrived - p < COMMIT_LINGER) {
            // Sleep rather than wait on the channel: a waiting receiver is woken (a futex
            // call and a context switch) by every exchange sent to it.
            std::thread::sleep(COMMIT_LINGER);
        }
        let mut batch = vec![first];
        while batch.len() < MAX_COMMIT_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        previous_arrival = Some(Instant::now());
        family.commit(&mut batch);
        send_batch(family, &batch);
    }
}

/// One `sendmmsg` per socket (DHCPv4's ports 67 and 4011) for the whole batch.
fn send_batch<F: Family>(family: &F, batch: &[Pending<F>]) {
    let mut listeners: Vec<&Arc<Listener>> = batch.iter().map(|p| &p.listener).collect();
    listeners.sort_by_key(|l| l.port);
    listeners.dedup_by_key(|l| l.port);
    for l in listeners {
        let replies = batch
            .iter()
            .filter(|p| p.listener.port == l.port)
            .flat_map(|p| p.replies.iter());
        send_all(family, &l.sock, replies);
    }
}

/// Sends replies, each to its own destination with its own source address and interface
/// (pktinfo), in as few `sendmmsg` calls as possible.
///
/// Why not one `sendmsg` each: a burst of replies sent one by one wakes the receiving side once
/// per datagram, the cost that dominated the receive thread's profile at 28 000 exchanges/s;
/// sent together, the datagrams land in the receiver's queue before it runs. A reply never
/// waits for send buffer space (the sockets block for receiving): without space it is lost
/// like any datagram, and the client retransmits.
fn send_all<'a, F: Family>(
    family: &F,
    sock: &UdpSocket,
    replies: impl Iterator<Item = &'a Reply<F>>,
) {
    let transmits: Vec<Transmit> = replies.map(|r| family.transmit(sock, r)).collect();
    let mut i = 0;
    while i < transmits.len() {
        match chainboot_udp::send(sock, &transmits[i..]) {
            Ok(sent) => i += sent.max(1),
            Err(e) => {
                // The datagram at `i` failed (the ones after it go in the next call).
                family.send_errors().fetch_add(1, Ordering::Relaxed);
                tracing::warn!("{}: sending to {}: {e}", F::NAME, transmits[i].destination);
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn meta(port: u16) -> RecvMeta {
        RecvMeta {
            len: 1,
            source: SocketAddr::from(([198, 18, 0, 9], port)),
            destination: None,
            local: None,
            ifindex: Some(2),
            truncated: false,
        }
    }

    #[test]
    fn datagrams_left_to_peers_are_run_again_once_per_takeover_and_bounded() {
        let takeover = Takeover::default();
        let mut held = HeldForPeers {
            queue: VecDeque::new(),
            generation: takeover.generation(),
        };
        for i in 0..HELD_FOR_PEERS_MAX + 10 {
            held.keep(&[1, 2, 3], &meta(i as u16));
        }
        assert_eq!(held.queue.len(), HELD_FOR_PEERS_MAX, "bounded");
        assert!(
            held.take_if_asked(&takeover).is_empty(),
            "no takeover asked"
        );
        takeover.now();
        let again = held.take_if_asked(&takeover);
        assert_eq!(again.len(), HELD_FOR_PEERS_MAX);
        // The oldest went first.
        assert_eq!(again[0].1.source.port(), 10);
        assert!(held.queue.is_empty());
        assert!(
            held.take_if_asked(&takeover).is_empty(),
            "once per takeover"
        );
        // Older than a retransmission interval: not worth answering any more.
        held.queue.push_back((
            Instant::now() - HELD_FOR_PEERS - Duration::from_millis(1),
            vec![4],
            meta(1),
        ));
        held.keep(&[5], &meta(2));
        takeover.now();
        let again = held.take_if_asked(&takeover);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].0, vec![5]);
    }

    static READS: AtomicUsize = AtomicUsize::new(0);

    fn host_with_eth0() -> HashMap<u32, (String, u8)> {
        READS.fetch_add(1, Ordering::Relaxed);
        HashMap::from([(2, ("eth0".to_string(), 7))])
    }

    #[test]
    fn a_flood_on_an_unknown_interface_reads_the_host_once_a_second_at_most() {
        let mut table = InterfaceTable::new(host_with_eth0);
        assert_eq!(table.lookup(2), Some(("eth0".to_string(), 7)));
        for _ in 0..1000 {
            assert_eq!(table.lookup(9), None);
        }
        assert_eq!(table.lookup(2), Some(("eth0".to_string(), 7)));
        assert_eq!(READS.load(Ordering::Relaxed), 1);
    }

    /// DHCPv4's engine around nothing: only the committer's side is exercised.
    struct Committed;

    impl Family for Committed {
        type Engine = crate::Engine;
        const NAME: &'static str = "dhcp";
        fn ingress(&self, _: &RecvMeta, _: u16) -> Option<crate::Ingress> {
            None
        }
        fn transmit<'a>(&self, _: &UdpSocket, reply: &'a crate::Outgoing) -> Transmit<'a> {
            Transmit {
                destination: SocketAddr::from(([127, 0, 0, 1], 9)),
                source: None,
                ifindex: 0,
                contents: &reply.bytes,
            }
        }
        fn commit(&self, _: &mut Vec<Pending<Self>>) {}
        fn send_errors(&self) -> &AtomicU64 {
            unreachable!("nothing is sent")
        }
        fn store_errors(&self) -> &AtomicU64 {
            unreachable!("nothing is stored")
        }
    }

    fn lease(ip: [u8; 4], mac: &str) -> chainboot_store::leases::LeaseRecord {
        chainboot_store::leases::LeaseRecord {
            ip: ip.into(),
            mac: mac.into(),
            client_id: None,
            hostname: None,
            state: chainboot_store::leases::LeaseState::Bound,
            expires: 1_800_003_600,
            updated: 1_800_000_000,
        }
    }

    #[test]
    fn exchanges_that_wrote_an_address_the_fleet_gave_away_are_withheld_and_the_engine_learns_its_holder(
    ) {
        // No pool needed: the leases come from the fleet's database.
        let cfg = crate::DhcpConfig {
            mode: crate::Mode::Server,
            ..Default::default()
        };
        let engine = Mutex::new(crate::Engine::new(cfg, crate::BootSettings::default()));
        let listener = Arc::new(Listener::bind("dhcp", "127.0.0.1:0".parse().unwrap()).unwrap());
        let pending = |leases| Pending::<Committed> {
            leases,
            replies: Vec::new(),
            listener: listener.clone(),
        };
        // Three exchanges of this server: the first and the last wrote addresses the fleet's
        // database holds for other servers' clients.
        let mut batch = vec![
            pending(vec![lease([198, 18, 0, 100], "52:54:00:00:00:01")]),
            pending(vec![lease([198, 18, 0, 101], "52:54:00:00:00:02")]),
            pending(vec![lease([198, 18, 0, 102], "52:54:00:00:00:03")]),
        ];
        let holders = [
            lease([198, 18, 0, 100], "52:54:00:00:00:a1"),
            lease([198, 18, 0, 102], "52:54:00:00:00:a3"),
        ];
        let conflicts = AtomicU64::new(0);
        withhold_refused(&engine, &mut batch, &holders, |r| r.ip, &conflicts);
        let left: Vec<_> = batch.iter().map(|p| p.leases[0].ip).collect();
        assert_eq!(left, [std::net::Ipv4Addr::new(198, 18, 0, 101)]);
        assert_eq!(conflicts.load(Ordering::Relaxed), 2);
        let e = engine.lock();
        assert_eq!(
            e.bound_to([198, 18, 0, 100].into(), 1_800_000_001),
            Some("52:54:00:00:00:a1".parse().unwrap())
        );
        assert_eq!(
            e.bound_to([198, 18, 0, 102].into(), 1_800_000_001),
            Some("52:54:00:00:00:a3".parse().unwrap())
        );
    }

    #[test]
    fn config_problems_come_all_at_once_under_the_section_name() {
        let problems = [
            Issue::new(vec!["subnet".into(), "0".into()], "first".into()),
            Issue::new(vec!["mode".into()], "second".into()),
        ];
        let err = DhcpError::check_config("dhcp6", &problems).expect_err("two problems");
        assert_eq!(
            err.to_string(),
            "dhcp6: config: dhcp6.subnet[0]: first; dhcp6.mode: second"
        );
        assert!(DhcpError::check_config("dhcp", &[]).is_ok());
    }
}
