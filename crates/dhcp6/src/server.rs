//! The DHCPv6 driver: one socket on `[::]:547` (IPv6 only) with IPV6_PKTINFO, joined to
//! All_DHCP_Relay_Agents_and_Servers (ff02::1:2) on the serving interfaces; a receive thread
//! blocked in `recvmmsg` feeding the engine; a committer thread that makes the leases of a
//! batch durable in one transaction before it sends the batch's Replies (the DHCPv4 driver's
//! group commit). Never a Reply before its lease is on disk.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use chainboot_dhcp::BootSettings;
use chainboot_store::leases6::{self, Lease6Record};
use chainboot_store::Store;
use chainboot_udp::{RecvBatch, RecvMeta, Transmit};
use parking_lot::Mutex;
use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::sync::CancellationToken;

use crate::config::{Dhcp6Config, Mode6};
use crate::engine::{Counters6, Engine6, Handled6, Ingress6, Outgoing6};

/// All_DHCP_Relay_Agents_and_Servers (RFC 8415 §7.1).
pub const ALL_DHCP_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);

/// A failure to start the DHCPv6 server.
#[derive(Debug, thiserror::Error)]
pub enum Dhcp6Error {
    #[error("dhcp6: config: {0}")]
    Config(String),
    #[error("dhcp6: cannot bind UDP port {port}: {source}")]
    Bind { port: u16, source: std::io::Error },
    #[error("dhcp6: cannot join ff02::1:2 on {iface}: {source}")]
    Join {
        iface: String,
        source: std::io::Error,
    },
    #[error("dhcp6: socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("dhcp6: store: {0}")]
    Store(#[from] chainboot_store::StoreError),
}

/// Told about every packet the engine handled (the event log, metrics).
pub trait Dhcp6Observer: Send + Sync {
    fn exchange(&self, _ingress: &Ingress6, _handled: &Handled6, _decided_in: Duration) {}
}

/// The observer that does nothing.
pub struct NoObserver6;
impl Dhcp6Observer for NoObserver6 {}

/// How often the blocked receive thread looks at the shutdown flag.
const RECEIVE_TICK: Duration = Duration::from_millis(200);
const RECEIVE_BATCH: usize = 32;
/// Largest datagram read; longer ones are cut and dropped as malformed by the engine.
const MAX_DATAGRAM: usize = 4096;
/// Most leases in one transaction.
const MAX_COMMIT_BATCH: usize = 4096;

/// Interface index → (name, addresses other than link-local), refreshed at most once a
/// second when an unknown index shows up (a flood must not become a getifaddrs storm).
struct Interfaces {
    by_index: HashMap<u32, (String, Vec<Ipv6Addr>)>,
    refreshed: Option<Instant>,
}

impl Interfaces {
    fn read() -> HashMap<u32, (String, Vec<Ipv6Addr>)> {
        let mut out: HashMap<u32, (String, Vec<Ipv6Addr>)> = HashMap::new();
        let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
            return out;
        };
        for a in addrs {
            let Ok(idx) = nix::net::if_::if_nametoindex(a.interface_name.as_str()) else {
                continue;
            };
            let entry = out
                .entry(idx)
                .or_insert_with(|| (a.interface_name.clone(), Vec::new()));
            if let Some(ip) = a
                .address
                .as_ref()
                .and_then(|s| s.as_sockaddr_in6())
                .map(|s| s.ip())
            {
                let link_local = ip.segments()[0] & 0xffc0 == 0xfe80;
                if !link_local && !ip.is_loopback() && entry.1.len() < 64 {
                    entry.1.push(ip);
                }
            }
        }
        out
    }

    fn lookup(&mut self, ifindex: u32) -> Option<(String, Vec<Ipv6Addr>)> {
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
        self.by_index = Interfaces::read();
        self.by_index.get(&ifindex).cloned()
    }
}

/// The interfaces to join ff02::1:2 on: the configured ones, else every multicast-capable
/// interface other than loopback (server mode: those with an address in a prefix).
fn serving_interfaces(cfg: &Dhcp6Config) -> Vec<(String, u32)> {
    let all = Interfaces::read();
    let mut out: Vec<(String, u32)> = all
        .iter()
        .filter(|(_, (name, addrs))| {
            if !cfg.interfaces.is_empty() {
                return cfg.interfaces.contains(name);
            }
            name != "lo"
                && (cfg.mode != Mode6::Server
                    || addrs
                        .iter()
                        .any(|a| cfg.subnet.iter().any(|s| s.prefix.contains(a))))
        })
        .map(|(idx, (name, _))| (name.clone(), *idx))
        .collect();
    out.sort();
    out
}

fn bind_udp(port: u16) -> Result<Socket, Dhcp6Error> {
    let wrap = |source| Dhcp6Error::Bind { port, source };
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).map_err(wrap)?;
    s.set_only_v6(true).map_err(wrap)?;
    s.set_reuse_address(true).map_err(wrap)?;
    s.set_read_timeout(Some(RECEIVE_TICK)).map_err(wrap)?;
    let _ = chainboot_udp::set_receive_buffer(&s, 4 << 20);
    chainboot_udp::enable_pktinfo(&s, true).map_err(wrap)?;
    s.bind(&SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0).into())
        .map_err(wrap)?;
    Ok(s)
}

struct PendingCommit {
    records: Vec<Lease6Record>,
    outgoing: Vec<Outgoing6>,
}

/// The DHCPv6 server: the bound socket and the engine, ready to [`run`](Dhcp6Server::run).
pub struct Dhcp6Server {
    engine: Arc<Mutex<Engine6>>,
    sock: Option<Arc<std::net::UdpSocket>>,
    store: Arc<Store>,
    observer: Arc<dyn Dhcp6Observer>,
    counters: Arc<Counters6>,
}

impl Dhcp6Server {
    /// Validates the config, loads the stored leases and the server DUID (made once per state
    /// directory), binds the socket and joins ff02::1:2. In mode `off` nothing is bound.
    pub fn bind(
        cfg: Dhcp6Config,
        boot: BootSettings,
        store: Arc<Store>,
        observer: Arc<dyn Dhcp6Observer>,
    ) -> Result<Dhcp6Server, Dhcp6Error> {
        let problems = cfg.validate();
        if !problems.is_empty() {
            let msg: Vec<String> = problems.iter().map(|i| format!("dhcp6.{i}")).collect();
            return Err(Dhcp6Error::Config(msg.join("; ")));
        }
        // Made (and stored) only when DHCPv6 runs: `off` leaves the store untouched.
        let duid = if cfg.mode == Mode6::Off {
            Vec::new()
        } else {
            leases6::server_duid(&store, new_server_duid)?
        };
        let mut engine = Engine6::new(cfg.clone(), boot, duid);
        if cfg.mode == Mode6::Server {
            engine.load_leases(&leases6::load_all(&store)?);
        }
        let counters = engine.counters();
        let sock = if cfg.mode == Mode6::Off {
            None
        } else {
            let s = bind_udp(cfg.ports.server)?;
            let ifaces = serving_interfaces(&cfg);
            if ifaces.is_empty() {
                tracing::warn!("dhcp6: no interface to serve (none named in [dhcp6] interfaces, or none with an address in a [[dhcp6.subnet]] prefix): only relayed requests will be answered");
            }
            for (iface, idx) in ifaces {
                s.join_multicast_v6(&ALL_DHCP_SERVERS, idx)
                    .map_err(|source| Dhcp6Error::Join { iface, source })?;
            }
            Some(Arc::new(std::net::UdpSocket::from(s)))
        };
        Ok(Dhcp6Server {
            engine: Arc::new(Mutex::new(engine)),
            sock,
            store,
            observer,
            counters,
        })
    }

    pub fn counters(&self) -> Arc<Counters6> {
        self.counters.clone()
    }

    /// The engine, for read-only views (leases, which machine an address belongs to).
    pub fn engine(&self) -> Arc<Mutex<Engine6>> {
        self.engine.clone()
    }

    /// Serves until `shutdown`; queued leases are written (and their Replies sent) first.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Dhcp6Error> {
        let Some(sock) = self.sock.clone() else {
            shutdown.cancelled().await;
            return Ok(());
        };
        let (tx, rx) = mpsc::channel::<PendingCommit>();
        let committer = {
            let (store, counters, sock) = (self.store.clone(), self.counters.clone(), sock.clone());
            std::thread::Builder::new()
                .name("dhcp6-commit".into())
                .spawn(move || commit_loop(rx, &store, &counters, &sock))?
        };
        let stop = Arc::new(AtomicBool::new(false));
        let receiver = {
            let stop = stop.clone();
            let (engine, observer, counters) = (
                self.engine.clone(),
                self.observer.clone(),
                self.counters.clone(),
            );
            std::thread::Builder::new()
                .name("dhcp6-recv".into())
                .spawn(move || receive_loop(&sock, &engine, &*observer, &counters, &tx, &stop))?
        };
        shutdown.cancelled().await;
        stop.store(true, Ordering::Relaxed);
        let _ = tokio::task::spawn_blocking(move || {
            let _ = receiver.join();
            let _ = committer.join();
        })
        .await;
        Ok(())
    }
}

/// A DUID-UUID (RFC 6355) from 16 random bytes: the server's identity, stored once.
fn new_server_duid() -> Vec<u8> {
    let mut d = vec![0, 4];
    d.extend_from_slice(&rand::random::<[u8; 16]>());
    d
}

fn receive_loop(
    sock: &std::net::UdpSocket,
    engine: &Mutex<Engine6>,
    observer: &dyn Dhcp6Observer,
    counters: &Counters6,
    tx: &mpsc::Sender<PendingCommit>,
    stop: &AtomicBool,
) {
    let mut ifaces = Interfaces {
        by_index: HashMap::new(),
        refreshed: None,
    };
    let local_port = sock.local_addr().map(|a| a.port()).unwrap_or(0);
    let mut batch = RecvBatch::new(RECEIVE_BATCH, MAX_DATAGRAM);
    let mut replies: Vec<Outgoing6> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = batch.recv(sock) {
            if !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted
            ) {
                tracing::warn!("dhcp6: recvmmsg: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            continue;
        }
        for (datagram, meta) in batch.iter() {
            let Some(ingress) = ingress_of(meta, &mut ifaces, local_port) else {
                continue;
            };
            let started = Instant::now();
            let handled = engine.lock().handle(SystemTime::now(), &ingress, datagram);
            observer.exchange(&ingress, &handled, started.elapsed());
            if handled.lease_writes.is_empty() {
                replies.extend(handled.outgoing);
            } else if tx
                .send(PendingCommit {
                    records: handled.lease_writes,
                    outgoing: handled.outgoing,
                })
                .is_err()
            {
                counters.store_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        send_all(sock, &replies, counters);
        replies.clear();
    }
}

/// The engine's view of where a datagram came in, from its pktinfo.
fn ingress_of(meta: &RecvMeta, ifaces: &mut Interfaces, local_port: u16) -> Option<Ingress6> {
    let (Some(ifindex), Some(IpAddr::V6(dst)), SocketAddr::V6(src)) =
        (meta.ifindex, meta.destination, meta.source)
    else {
        return None;
    };
    let (iface, local) = ifaces.lookup(ifindex)?;
    let link_local = src.ip().segments()[0] & 0xffc0 == 0xfe80;
    let src = SocketAddrV6::new(
        *src.ip(),
        src.port(),
        0,
        if link_local { ifindex } else { 0 },
    );
    Some(Ingress6 {
        ifindex,
        iface,
        local,
        dst,
        local_port,
        src,
    })
}

fn commit_loop(
    rx: mpsc::Receiver<PendingCommit>,
    store: &Store,
    counters: &Counters6,
    sock: &std::net::UdpSocket,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_COMMIT_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let records: Vec<Lease6Record> = batch
            .iter()
            .flat_map(|p| p.records.iter().cloned())
            .collect();
        match leases6::save_batch(store, &records) {
            Ok(()) => {
                counters.commit_batches.fetch_add(1, Ordering::Relaxed);
                counters
                    .committed_leases
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                let out: Vec<Outgoing6> = batch.into_iter().flat_map(|p| p.outgoing).collect();
                send_all(sock, &out, counters);
            }
            Err(e) => {
                // Not durable, so not answered: the clients retransmit.
                counters.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "dhcp6: could not store {} lease(s), replies withheld: {e}",
                    records.len()
                );
            }
        }
    }
}

/// Sends replies, each from its own source out of its own interface, in as few `sendmmsg`
/// calls as possible.
fn send_all(sock: &std::net::UdpSocket, replies: &[Outgoing6], counters: &Counters6) {
    let transmits: Vec<Transmit> = replies
        .iter()
        .map(|o| Transmit {
            destination: SocketAddr::V6(o.dest),
            source: o.source.map(IpAddr::V6),
            ifindex: o.ifindex,
            contents: &o.bytes,
        })
        .collect();
    let mut i = 0;
    while i < transmits.len() {
        match chainboot_udp::send(sock, &transmits[i..]) {
            Ok(sent) => i += sent.max(1),
            Err(e) => {
                counters.send_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("dhcp6: sending to {}: {e}", transmits[i].destination);
                i += 1;
            }
        }
    }
}
