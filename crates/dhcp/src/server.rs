//! The driver: sockets, ingress facts, reply routing, group-committed leases.
//!
//! - One UDP socket per port (server port 67 and the PXE boot server port 4011) bound to
//!   0.0.0.0 with IP_PKTINFO: each datagram says which interface it came in on, so each reply
//!   carries that interface's address as server id and advertised address.
//! - Each socket is read by its own thread blocked in `recvmmsg` (not a tokio task: see
//!   [`DhcpServer::run`]); the engine is one state machine behind a mutex that both share.
//! - Replies follow RFC 2131 §4.1 ([`Destination`]): broadcasts leave through the ingress
//!   interface (IP_PKTINFO ifindex on send), unicasts to a client without an address get an
//!   ARP entry first (SIOCSARP, as dnsmasq does) and fall back to broadcast when that fails.
//! - Replies that carry a lease (every ACK) go through the committer thread: it writes all
//!   leases that queued up during the previous fsync in one transaction (group commit, like
//!   ISC's delayed-ack; under load it also waits `COMMIT_LINGER` (1 ms) for more) and only then
//!   sends those replies. Never an ACK before it is durable.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chainboot_machine::Mac;
use chainboot_store::leases::{self, LeaseRecord};
use chainboot_store::Store;
use chainboot_udp::{RecvBatch, RecvMeta, Transmit};
use parking_lot::Mutex;
use socket2::{Domain, Protocol, Socket, Type};

use tokio_util::sync::CancellationToken;

use crate::boot::BootSettings;
use crate::config::{DhcpConfig, Mode};
use crate::engine::{Counters, Destination, Engine, Handled, Ingress, Outgoing};

/// A failure to start or run the DHCP server.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("dhcp: config: {0}")]
    Config(String),
    #[error("dhcp: cannot bind UDP port {port}: {source}")]
    Bind { port: u16, source: std::io::Error },
    #[error("dhcp: socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("dhcp: loading leases: {0}")]
    Store(#[from] chainboot_store::StoreError),
}

/// Hook for the event log / dashboard: told about every packet the engine handled (after its
/// replies were queued). Default methods do nothing.
pub trait DhcpObserver: Send + Sync {
    /// `decided_in`: from taking the engine to its answer (includes waiting for the engine
    /// while another packet is being handled), for the decision-latency metric.
    fn exchange(&self, _ingress: &Ingress, _handled: &Handled, _decided_in: Duration) {}
}

/// The observer that does nothing.
pub struct NoObserver;
impl DhcpObserver for NoObserver {}

/// Options of the driver that are not part of `[dhcp]`.
#[derive(Clone)]
pub struct ServerOptions {
    /// `[server] interfaces`: answer only requests that arrive on these (empty = all).
    pub interfaces: Vec<String>,
    pub observer: Arc<dyn DhcpObserver>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            interfaces: Vec::new(),
            observer: Arc::new(NoObserver),
        }
    }
}

struct Listener {
    port: u16,
    /// A blocking socket with a receive timeout (see [`RECEIVE_TICK`]), read by its own thread.
    sock: std::net::UdpSocket,
}

/// How often a receive thread blocked on an idle socket looks at the shutdown flag.
const RECEIVE_TICK: Duration = Duration::from_millis(200);

/// Interface index → (name, first IPv4 address), refreshed when an unknown index shows up.
struct Interfaces {
    by_index: HashMap<u32, (String, Ipv4Addr)>,
    refreshed: Option<Instant>,
}

impl Interfaces {
    fn lookup(&mut self, ifindex: u32) -> Option<(String, Ipv4Addr)> {
        if let Some(v) = self.by_index.get(&ifindex) {
            return Some(v.clone());
        }
        // Re-read at most once a second: a flood on an unconfigured interface must not turn
        // into a getifaddrs storm.
        if self
            .refreshed
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return None;
        }
        self.refreshed = Some(Instant::now());
        self.by_index.clear();
        if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
            for a in addrs {
                let Some(ip) = a
                    .address
                    .as_ref()
                    .and_then(|s| s.as_sockaddr_in())
                    .map(|s| s.ip())
                else {
                    continue;
                };
                if let Ok(idx) = nix::net::if_::if_nametoindex(a.interface_name.as_str()) {
                    self.by_index
                        .entry(idx)
                        .or_insert((a.interface_name.clone(), ip));
                }
            }
        }
        self.by_index.get(&ifindex).cloned()
    }
}

struct PendingCommit {
    records: Vec<LeaseRecord>,
    outgoing: Vec<Outgoing>,
    /// The socket the request came in on, which its replies leave by.
    listener: Arc<Listener>,
}

/// The DHCP server: bound sockets plus the engine, ready to [`run`](DhcpServer::run).
pub struct DhcpServer {
    engine: Arc<Mutex<Engine>>,
    listeners: Vec<Arc<Listener>>,
    store: Arc<Store>,
    options: ServerOptions,
    counters: Arc<Counters>,
}

fn bind_udp(port: u16) -> Result<Socket, DhcpError> {
    let wrap = |source| DhcpError::Bind { port, source };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(wrap)?;
    s.set_reuse_address(true).map_err(wrap)?;
    s.set_broadcast(true).map_err(wrap)?;
    // Blocking, read by a thread of its own; the timeout lets it notice shutdown.
    s.set_read_timeout(Some(RECEIVE_TICK)).map_err(wrap)?;
    // Room for a storm of DISCOVERs (a rack powering on) while the receive thread waits for
    // a core. SO_RCVBUF is capped at net.core.rmem_max (208 KiB by default: about 160
    // datagrams of 300 bytes, 5 ms at 32 000/s); SO_RCVBUFFORCE, allowed to a root process
    // (which a server on port 67 is), is not. Measured: with the cap, 3-4% of DISCOVERs were
    // dropped in bursts at 36 000/s while the receive thread was 70% busy.
    let _ = chainboot_udp::set_receive_buffer(&s, 4 << 20);
    chainboot_udp::enable_pktinfo(&s, false).map_err(wrap)?;
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())
        .map_err(wrap)?;
    Ok(s)
}

impl DhcpServer {
    /// Validates the config, loads the stored leases and binds the sockets. In mode `off`
    /// nothing is bound and `run` just waits for shutdown.
    pub fn bind(
        cfg: DhcpConfig,
        boot: BootSettings,
        store: Arc<Store>,
        options: ServerOptions,
    ) -> Result<DhcpServer, DhcpError> {
        let problems = cfg.validate();
        if !problems.is_empty() {
            let msg: Vec<String> = problems
                .iter()
                .map(|i| format!("dhcp.{}: {}", i.path.join("."), i.message))
                .collect();
            return Err(DhcpError::Config(msg.join("; ")));
        }
        let mut engine = Engine::new(cfg.clone(), boot);
        if cfg.mode == Mode::Server {
            engine.load_leases(&leases::load_all(&store)?);
        }
        let counters = engine.counters();
        let mut listeners = Vec::new();
        if cfg.mode != Mode::Off {
            for port in [cfg.ports.server, cfg.ports.proxy] {
                let sock = std::net::UdpSocket::from(bind_udp(port)?);
                listeners.push(Arc::new(Listener { port, sock }));
            }
        }
        Ok(DhcpServer {
            engine: Arc::new(Mutex::new(engine)),
            listeners,
            store,
            options,
            counters,
        })
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// The engine, for read-only views (leases in the API, `explain` against live state).
    pub fn engine(&self) -> Arc<Mutex<Engine>> {
        self.engine.clone()
    }

    /// Serves until `shutdown` is cancelled. Leases queued for commit are written (and their
    /// ACKs sent) before this returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), DhcpError> {
        let (tx, rx) = mpsc::channel::<PendingCommit>();
        let store = self.store.clone();
        let counters = self.counters.clone();
        let engine = self.engine.clone();
        let committer = std::thread::Builder::new()
            .name("dhcp-commit".into())
            .spawn(move || commit_loop(rx, store, engine, counters))?;
        let ifaces = Arc::new(Mutex::new(Interfaces {
            by_index: HashMap::new(),
            refreshed: None,
        }));
        // Receive loops are plain threads blocked in recvmsg, not tokio tasks: a datagram
        // then wakes its thread directly, where the reactor costs an epoll_wait plus a
        // recvmsg that finds the queue empty per wake-up. At thousands of packets per second
        // those system calls and wake-ups were most of the receive side's CPU time.
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for l in &self.listeners {
            let l = l.clone();
            let receiver = Receiver {
                engine: self.engine.clone(),
                tx: tx.clone(),
                ifaces: ifaces.clone(),
                options: self.options.clone(),
                counters: self.counters.clone(),
            };
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("dhcp-recv-{}", l.port))
                    .spawn(move || receiver.run(&l, &stop))?,
            );
        }
        drop(tx);
        shutdown.cancelled().await;
        stop.store(true, Ordering::Relaxed);
        // Each thread notices within RECEIVE_TICK; its sender then drops, and once all have,
        // the committer drains what is queued and exits.
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                if let Ok(Err(e)) = t.join() {
                    tracing::error!("dhcp: receive loop failed: {e}");
                }
            }
            let _ = committer.join();
        })
        .await;
        Ok(())
    }
}

/// What a receive thread shares with the server: the engine, the committer's queue, the
/// interface table, the options and the counters.
struct Receiver {
    engine: Arc<Mutex<Engine>>,
    tx: mpsc::Sender<PendingCommit>,
    ifaces: Arc<Mutex<Interfaces>>,
    options: ServerOptions,
    counters: Arc<Counters>,
}

impl Receiver {
    /// Reads `l` until `stop`: each burst through the engine, its replies in one `sendmmsg`.
    fn run(&self, l: &Arc<Listener>, stop: &AtomicBool) -> std::io::Result<()> {
        // Blocks (up to the socket's receive timeout) for one datagram, then takes whatever
        // else has queued: one system call and one wake-up for a burst.
        let mut batch = RecvBatch::new(RECEIVE_BATCH, MAX_DATAGRAM);
        let mut replies: Vec<Outgoing> = Vec::with_capacity(RECEIVE_BATCH);
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = batch.recv(&l.sock) {
                match e.kind() {
                    std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted => {}
                    _ => {
                        tracing::warn!("dhcp: recvmmsg on port {}: {e}", l.port);
                        // Not expected on a UDP socket; pause so that a persistent error
                        // cannot spin.
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                continue;
            }
            for (datagram, meta) in batch.iter() {
                self.handle(l, datagram, meta, &mut replies);
            }
            // The burst's replies in one system call (see `send_all`).
            send_all(&l.sock, replies.iter(), &self.counters);
            replies.clear();
        }
        Ok(())
    }

    /// One datagram through the engine; its replies added to `replies` (sent when the burst
    /// is done), or queued for the committer when they carry a lease.
    fn handle(
        &self,
        l: &Arc<Listener>,
        datagram: &[u8],
        meta: &RecvMeta,
        replies: &mut Vec<Outgoing>,
    ) {
        let (Some(ifindex), Some(IpAddr::V4(spec_dst))) = (meta.ifindex, meta.local) else {
            return;
        };
        let src = match meta.source {
            SocketAddr::V4(src) => src,
            SocketAddr::V6(_) => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        };
        let Some((iface, addr)) = self.ifaces.lock().lookup(ifindex) else {
            return;
        };
        let options = &self.options;
        if !options.interfaces.is_empty() && !options.interfaces.contains(&iface) {
            return;
        }
        let local_addr = if spec_dst.is_unspecified() || spec_dst.is_broadcast() {
            addr
        } else {
            spec_dst
        };
        let ingress = Ingress {
            ifindex,
            iface,
            local_addr,
            local_port: l.port,
            src,
        };
        let started = Instant::now();
        let handled = self
            .engine
            .lock()
            .handle(SystemTime::now(), &ingress, datagram);
        options
            .observer
            .exchange(&ingress, &handled, started.elapsed());
        if handled.lease_writes.is_empty() {
            replies.extend(handled.outgoing);
            return;
        }
        let pending = PendingCommit {
            records: handled.lease_writes,
            outgoing: handled.outgoing,
            listener: l.clone(),
        };
        if self.tx.send(pending).is_err() {
            self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Datagrams received at once: up to this many per `recvmmsg` when they queue up (a boot
/// storm, a load test), one system call and one wake-up for all of them.
const RECEIVE_BATCH: usize = 32;
/// Largest datagram read; a longer one is truncated and the engine drops it as malformed.
const MAX_DATAGRAM: usize = 4096;

/// Most leases written in one transaction.
const MAX_COMMIT_BATCH: usize = 4096;
/// Under load, how long the committer waits for more leases before it writes a batch (ISC
/// dhcpd's `max-ack-delay` idea, kept far shorter than its 250 ms). A fsync costs about the
/// same CPU for one lease as for fifty, and at thousands of ACKs per second it was most of
/// the server's CPU time (bench/README.md `## DHCP`).
const COMMIT_LINGER: Duration = Duration::from_millis(1);

fn commit_loop(
    rx: mpsc::Receiver<PendingCommit>,
    store: Arc<Store>,
    engine: Arc<Mutex<Engine>>,
    counters: Arc<Counters>,
) {
    // Blocks for the first pending ACK, then takes everything that queued up meanwhile (while
    // the previous batch was being fsynced): one transaction, one fsync for the lot. When the
    // first one came hard on the heels of the previous (less than COMMIT_LINGER apart: load),
    // it also waits up to COMMIT_LINGER for more. A lone client (one machine booting) never
    // waits: its ACK goes out as soon as its lease is on disk.
    let mut previous_arrival: Option<Instant> = None;
    let mut last_failure: Option<Instant> = None;
    while let Ok(first) = rx.recv() {
        let arrived = Instant::now();
        let under_load = previous_arrival.is_some_and(|p| arrived - p < COMMIT_LINGER);
        if under_load {
            // Sleep rather than wait on the channel: a waiting receiver is woken (a futex
            // call and a context switch) by every lease sent to it.
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
        let records: Vec<LeaseRecord> = batch
            .iter()
            .flat_map(|p| p.records.iter().cloned())
            .collect();
        // While the fleet's database is away, each try costs up to its connect timeout:
        // renewals are served from the journal meanwhile, and the database tried again
        // after DEGRADED_RETRY.
        let skip = store.degraded() && last_failure.is_some_and(|t| t.elapsed() < DEGRADED_RETRY);
        let saved = if skip {
            Err(None)
        } else {
            leases::save_batch(&store, &records).map_err(Some)
        };
        match saved {
            Ok(refused) => {
                last_failure = None;
                if !refused.is_empty() {
                    withhold_refused(&mut batch, &refused, &engine, &counters);
                }
                counters.commit_batches.fetch_add(1, Ordering::Relaxed);
                counters
                    .committed_leases
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                send_batch(&batch, &counters);
            }
            Err(e) => {
                if e.is_some() {
                    last_failure = Some(Instant::now());
                }
                if store.degraded() && serve_renewals(&store, &mut batch, &records, &counters) {
                    send_batch(&batch, &counters);
                    continue;
                }
                // Not durable, so not acknowledged: the clients retry.
                counters.store_errors.fetch_add(1, Ordering::Relaxed);
                if let Some(e) = e {
                    tracing::error!(
                        "dhcp: could not store {} lease(s), replies withheld: {e}",
                        records.len()
                    );
                }
            }
        }
    }
}

/// How often the committer tries the fleet's database while it does not answer.
const DEGRADED_RETRY: Duration = Duration::from_secs(1);

/// One `sendmmsg` per socket (port 67 and 4011) for the whole batch.
fn send_batch(batch: &[PendingCommit], counters: &Counters) {
    let mut listeners: Vec<&Arc<Listener>> = batch.iter().map(|p| &p.listener).collect();
    listeners.sort_by_key(|l| l.port);
    listeners.dedup_by_key(|l| l.port);
    for l in listeners {
        let replies = batch
            .iter()
            .filter(|p| p.listener.port == l.port)
            .flat_map(|p| p.outgoing.iter());
        send_all(&l.sock, replies, counters);
    }
}

/// The fleet's database does not answer: the requests of `batch` that only renew leases the
/// database holds for their clients are made durable in the store's local journal and keep
/// their replies; the others (new clients, other addresses) are withheld until the database
/// answers. Returns whether any reply is left to send.
fn serve_renewals(
    store: &Store,
    batch: &mut Vec<PendingCommit>,
    records: &[LeaseRecord],
    counters: &Counters,
) -> bool {
    let journaled = match leases::save_renewals_while_degraded(store, records) {
        Ok(j) => j,
        Err(e) => {
            tracing::error!("dhcp: renewals could not be journaled, replies withheld: {e}");
            return false;
        }
    };
    let before = batch.len();
    batch.retain(|p| !p.records.is_empty() && p.records.iter().all(|r| journaled.contains(&r.ip)));
    counters
        .degraded_renewals
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    if batch.len() < before {
        counters.store_errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            withheld = before - batch.len(),
            "dhcp: the fleet's database does not answer; new leases wait for it"
        );
    }
    !batch.is_empty()
}

/// The fleet's database gave some addresses of this batch to other servers' clients: the
/// replies of the requests that wrote them are withheld (the clients retry and are answered
/// from what the engine now knows), and the engine learns who holds each address.
fn withhold_refused(
    batch: &mut Vec<PendingCommit>,
    holders: &[LeaseRecord],
    engine: &Mutex<Engine>,
    counters: &Counters,
) {
    counters
        .lease_conflicts
        .fetch_add(holders.len() as u64, Ordering::Relaxed);
    tracing::warn!(
        addresses = holders.len(),
        "dhcp: the fleet's database holds addresses of this batch for other clients; their replies are withheld"
    );
    engine.lock().load_leases(holders);
    batch.retain(|p| {
        !p.records
            .iter()
            .any(|r| holders.iter().any(|h| h.ip == r.ip))
    });
}

/// Where a reply goes, as RFC 2131 section 4.1 says, and the interface it must leave by (0: the
/// routing table decides). A unicast to a client without an address needs an ARP entry first;
/// when that cannot be made, the reply is broadcast instead.
fn destination(
    sock: &std::net::UdpSocket,
    o: &Outgoing,
    counters: &Counters,
) -> (SocketAddrV4, u32) {
    match o.dest {
        Destination::Unicast(a) => (a, 0),
        Destination::Broadcast { port } => {
            (SocketAddrV4::new(Ipv4Addr::BROADCAST, port), o.ifindex)
        }
        Destination::UnicastNoArp { addr, mac } => {
            match set_arp(sock, o.ifindex, *addr.ip(), mac) {
                Ok(()) => (addr, o.ifindex),
                Err(e) => {
                    tracing::debug!(
                        "dhcp: SIOCSARP for {} failed ({e}); broadcasting",
                        addr.ip()
                    );
                    counters
                        .arp_fallback_broadcast
                        .fetch_add(1, Ordering::Relaxed);
                    (
                        SocketAddrV4::new(Ipv4Addr::BROADCAST, addr.port()),
                        o.ifindex,
                    )
                }
            }
        }
    }
}

/// Sends replies, each to its own destination with its own source address and interface
/// (IP_PKTINFO), in as few `sendmmsg` calls as possible.
///
/// Why not one `sendmsg` each: a burst of replies sent one by one wakes the receiving side once
/// per datagram, the cost that dominated the receive thread's profile at 28 000 exchanges/s;
/// sent together, the datagrams land in the receiver's queue before it runs. A reply never
/// waits for send buffer space (the sockets block for receiving): without space it is lost
/// like any datagram, and the client retransmits.
fn send_all<'a>(
    sock: &std::net::UdpSocket,
    replies: impl Iterator<Item = &'a Outgoing>,
    counters: &Counters,
) {
    let replies: Vec<&Outgoing> = replies.collect();
    let transmits: Vec<Transmit> = replies
        .iter()
        .map(|o| {
            let (to, ifindex) = destination(sock, o, counters);
            Transmit {
                destination: SocketAddr::V4(to),
                source: Some(IpAddr::V4(o.source)),
                ifindex,
                contents: &o.bytes,
            }
        })
        .collect();
    let mut i = 0;
    while i < transmits.len() {
        match chainboot_udp::send(sock, &transmits[i..]) {
            Ok(sent) => i += sent.max(1),
            Err(e) => {
                // The datagram at `i` failed (the ones after it go in the next call).
                counters.send_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "dhcp: sending {} to {}: {e}",
                    replies[i].msg_type.name(),
                    transmits[i].destination
                );
                i += 1;
            }
        }
    }
}

/// Inserts a complete ARP entry `ip` → `mac` on interface `ifindex`, so that a unicast reply
/// reaches a client that does not answer ARP yet (RFC 2131 §4.1).
fn set_arp(
    sock: &std::net::UdpSocket,
    ifindex: u32,
    ip: Ipv4Addr,
    mac: Mac,
) -> std::io::Result<()> {
    let name = nix::net::if_::if_indextoname(ifindex).map_err(std::io::Error::from)?;
    let name = name
        .to_str()
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
    chainboot_udp::set_arp_entry(sock, name, ip, mac.0)
}
