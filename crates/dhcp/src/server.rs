//! The DHCPv4 side of the [driver](crate::driver): sockets, ingress facts, reply routing,
//! leases made durable in the fleet's store.
//!
//! - One UDP socket per port (server port 67 and the PXE boot server port 4011) bound to
//!   0.0.0.0 with IP_PKTINFO: each datagram says which interface it came in on, so each reply
//!   carries that interface's address as server id and advertised address.
//! - Replies follow RFC 2131 §4.1 ([`Destination`]): broadcasts leave through the ingress
//!   interface (IP_PKTINFO ifindex on send), unicasts to a client without an address get an
//!   ARP entry first (SIOCSARP, as dnsmasq does) and fall back to broadcast when that fails.
//! - Every ACK's lease is durable before the ACK leaves (the driver's group commit); on the
//!   fleet's PostgreSQL store an address the database gave another client withholds the
//!   reply, and while the database does not answer, renewals are journaled locally.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use chainboot_machine::Mac;
use chainboot_store::leases::{self, LeaseRecord};
use chainboot_store::Store;
use chainboot_udp::{RecvMeta, Transmit};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::boot::BootSettings;
use crate::config::{DhcpConfig, Mode};
use crate::driver::{
    keep_journaled, withhold_refused, DhcpError, DhcpObserver, DrivenEngine, Driver, Family,
    InterfaceTable, Listener, NoObserver, Pending, RetryGate, Takeover,
};
use crate::engine::{Counters, Destination, Engine, Handled, Ignored, Ingress, Outcome, Outgoing};

/// Options of the driver that are not part of `[dhcp]`.
#[derive(Clone)]
pub struct ServerOptions {
    /// `[server] interfaces`: answer only requests that arrive on these (empty = all).
    pub interfaces: Vec<String>,
    pub observer: Arc<dyn DhcpObserver<Ingress, Handled>>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            interfaces: Vec::new(),
            observer: Arc::new(NoObserver),
        }
    }
}

impl DrivenEngine for Engine {
    type Ingress = Ingress;
    type Handled = Handled;
    type Reply = Outgoing;
    type Lease = LeaseRecord;

    fn handle(&mut self, now: SystemTime, ingress: &Ingress, datagram: &[u8]) -> Handled {
        Engine::handle(self, now, ingress, datagram)
    }

    fn into_replies(handled: Handled) -> (Vec<Outgoing>, Vec<LeaseRecord>) {
        (handled.outgoing, handled.lease_writes)
    }

    fn load_leases(&mut self, leases: &[LeaseRecord]) {
        Engine::load_leases(self, leases)
    }

    fn left_to_peer(handled: &Handled) -> bool {
        matches!(
            handled.outcome,
            Outcome::Ignored(Ignored::PeerClient | Ignored::PeerServer)
        )
    }
}

/// Every interface with an IPv4 address: index → (name, its first IPv4 address).
fn ipv4_interfaces() -> HashMap<u32, (String, Ipv4Addr)> {
    let mut by_index = HashMap::new();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return by_index;
    };
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
            by_index
                .entry(idx)
                .or_insert((a.interface_name.clone(), ip));
        }
    }
    by_index
}

/// The DHCP server: bound sockets plus the engine, ready to [`run`](DhcpServer::run).
pub struct DhcpServer {
    driver: Driver<Dhcpv4>,
    counters: Arc<Counters>,
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
        DhcpError::check_config(Dhcpv4::NAME, &cfg.validate())?;
        let mut engine = Engine::new(cfg.clone(), boot);
        if cfg.mode == Mode::Server {
            let stored = leases::load_all(&store).map_err(|source| DhcpError::Store {
                family: Dhcpv4::NAME,
                source,
            })?;
            engine.load_leases(&stored);
        }
        let counters = engine.counters();
        let mut listeners = Vec::new();
        if cfg.mode != Mode::Off {
            for port in [cfg.ports.server, cfg.ports.proxy] {
                let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
                listeners.push(Arc::new(Listener::bind(Dhcpv4::NAME, addr.into())?));
            }
        }
        let engine = Arc::new(Mutex::new(engine));
        let family = Dhcpv4 {
            engine: engine.clone(),
            store,
            counters: counters.clone(),
            interfaces: Mutex::new(InterfaceTable::new(ipv4_interfaces)),
            served: options.interfaces,
            retry: RetryGate::default(),
        };
        let driver = Driver {
            family: Arc::new(family),
            engine,
            listeners,
            observer: options.observer,
            takeover: Takeover::default(),
        };
        Ok(DhcpServer { driver, counters })
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// The engine, for read-only views (leases in the API, `explain` against live state).
    pub fn engine(&self) -> Arc<Mutex<Engine>> {
        self.driver.engine.clone()
    }

    /// What the fleet loop tells when a peer is gone (see [`Takeover`]).
    pub fn takeover(&self) -> Takeover {
        self.driver.takeover.clone()
    }

    /// Serves until `shutdown` is cancelled. Leases queued for commit are written (and their
    /// ACKs sent) before this returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), DhcpError> {
        self.driver.run(shutdown).await
    }
}

/// What DHCPv4 does around its engine.
struct Dhcpv4 {
    /// The engine the receive threads use, for the addresses the fleet's database gave to
    /// other servers' clients.
    engine: Arc<Mutex<Engine>>,
    store: Arc<Store>,
    counters: Arc<Counters>,
    interfaces: Mutex<InterfaceTable<Ipv4Addr>>,
    /// `[server] interfaces` (empty: all).
    served: Vec<String>,
    /// When the fleet's database is tried again after a failed commit.
    retry: RetryGate,
}

impl Family for Dhcpv4 {
    type Engine = Engine;
    const NAME: &'static str = "dhcp";

    fn ingress(&self, meta: &RecvMeta, local_port: u16) -> Option<Ingress> {
        let (Some(ifindex), Some(IpAddr::V4(spec_dst))) = (meta.ifindex, meta.local) else {
            return None;
        };
        let src = match meta.source {
            SocketAddr::V4(src) => src,
            SocketAddr::V6(_) => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        };
        let (iface, addr) = self.interfaces.lock().lookup(ifindex)?;
        if !self.served.is_empty() && !self.served.contains(&iface) {
            return None;
        }
        let local_addr = if spec_dst.is_unspecified() || spec_dst.is_broadcast() {
            addr
        } else {
            spec_dst
        };
        Some(Ingress {
            ifindex,
            iface,
            local_addr,
            local_port,
            src,
        })
    }

    fn transmit<'a>(&self, sock: &UdpSocket, reply: &'a Outgoing) -> Transmit<'a> {
        let (to, ifindex) = destination(sock, reply, &self.counters);
        Transmit {
            destination: SocketAddr::V4(to),
            source: Some(IpAddr::V4(reply.source)),
            ifindex,
            contents: &reply.bytes,
        }
    }

    fn commit(&self, batch: &mut Vec<Pending<Self>>) {
        let records: Vec<LeaseRecord> = batch
            .iter()
            .flat_map(|p| p.leases.iter().cloned())
            .collect();
        // While the fleet's database is away renewals are served from the journal, and the
        // database tried again after DEGRADED_RETRY.
        let saved = self.retry.attempt(self.store.degraded(), || {
            leases::save_batch(&self.store, &records)
        });
        match saved {
            Ok(refused) => {
                if !refused.is_empty() {
                    let conflicts = &self.counters.lease_conflicts;
                    withhold_refused(&self.engine, batch, &refused, |r| r.ip, conflicts);
                }
                self.counters.commit_batches.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .committed_leases
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                if self.store.degraded() {
                    let journaled = leases::save_renewals_while_degraded(&self.store, &records);
                    let renewals = &self.counters.degraded_renewals;
                    if keep_journaled(self, batch, journaled, |r| r.ip, renewals) {
                        return;
                    }
                }
                // Not durable, so not acknowledged: the clients retry.
                batch.clear();
                self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                if let Some(e) = e {
                    tracing::error!(
                        "dhcp: could not store {} lease(s), replies withheld: {e}",
                        records.len()
                    );
                }
            }
        }
    }

    fn send_errors(&self) -> &AtomicU64 {
        &self.counters.send_errors
    }

    fn store_errors(&self) -> &AtomicU64 {
        &self.counters.store_errors
    }
}

/// Where a reply goes, as RFC 2131 section 4.1 says, and the interface it must leave by (0: the
/// routing table decides). A unicast to a client without an address needs an ARP entry first;
/// when that cannot be made, the reply is broadcast instead.
fn destination(sock: &UdpSocket, o: &Outgoing, counters: &Counters) -> (SocketAddrV4, u32) {
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

/// Inserts a complete ARP entry `ip` → `mac` on interface `ifindex`, so that a unicast reply
/// reaches a client that does not answer ARP yet (RFC 2131 §4.1).
fn set_arp(sock: &UdpSocket, ifindex: u32, ip: Ipv4Addr, mac: Mac) -> std::io::Result<()> {
    let name = nix::net::if_::if_indextoname(ifindex).map_err(std::io::Error::from)?;
    let name = name
        .to_str()
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
    chainboot_udp::set_arp_entry(sock, name, ip, mac.0)
}
