//! DHCPv6 on chainboot-dhcp's [driver](chainboot_dhcp::driver): one socket on `[::]:547`
//! (IPv6 only) with IPV6_PKTINFO, joined to All_DHCP_Relay_Agents_and_Servers (ff02::1:2) on
//! the serving interfaces; the driver's receive thread feeds the engine and its committer
//! makes the leases of a batch durable in one transaction before it sends the batch's
//! Replies. Never a Reply before its lease is on disk. On a fleet's PostgreSQL store an
//! address the database gave another client withholds the Reply (the client asks again and
//! gets another address); while the database does not answer, renewals of leases it holds are
//! journaled locally and answered, and Replies that bind anything else wait for it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use chainboot_dhcp::driver::{
    keep_journaled, withhold_refused, DhcpError, DhcpObserver, DrivenEngine, Driver, Family,
    InterfaceTable, Listener, Pending, RetryGate, Takeover,
};
use chainboot_dhcp::BootSettings;
use chainboot_store::leases6::{self, Lease6Record};
use chainboot_store::Store;
use chainboot_udp::{RecvMeta, Transmit};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::config::{Dhcp6Config, Mode6};
use crate::engine::{Counters6, Engine6, Handled6, Ignored6, Ingress6, Outcome6, Outgoing6};

/// All_DHCP_Relay_Agents_and_Servers (RFC 8415 §7.1).
pub const ALL_DHCP_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);

impl DrivenEngine for Engine6 {
    type Ingress = Ingress6;
    type Handled = Handled6;
    type Reply = Outgoing6;
    type Lease = Lease6Record;

    fn handle(&mut self, now: SystemTime, ingress: &Ingress6, datagram: &[u8]) -> Handled6 {
        Engine6::handle(self, now, ingress, datagram)
    }

    fn into_replies(handled: Handled6) -> (Vec<Outgoing6>, Vec<Lease6Record>) {
        (handled.outgoing, handled.lease_writes)
    }

    fn load_leases(&mut self, leases: &[Lease6Record]) {
        Engine6::load_leases(self, leases)
    }

    fn left_to_peer(handled: &Handled6) -> bool {
        matches!(
            handled.outcome,
            Outcome6::Ignored(Ignored6::PeerClient | Ignored6::PeerServer)
        )
    }
}

/// Every interface: index → (name, its addresses other than link-local ones, at most 64).
fn ipv6_interfaces() -> HashMap<u32, (String, Vec<Ipv6Addr>)> {
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

/// The interfaces to join ff02::1:2 on: the configured ones, else every multicast-capable
/// interface other than loopback (server mode: those with an address in a prefix).
fn serving_interfaces(cfg: &Dhcp6Config) -> Vec<(String, u32)> {
    let all = ipv6_interfaces();
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

/// The socket on `[dhcp6] ports.server`, joined to ff02::1:2 on the serving interfaces.
fn listen(cfg: &Dhcp6Config) -> Result<Listener, DhcpError> {
    let addr = SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, cfg.ports.server, 0, 0);
    let listener = Listener::bind(Dhcpv6::NAME, addr.into())?;
    let ifaces = serving_interfaces(cfg);
    if ifaces.is_empty() {
        tracing::warn!("dhcp6: no interface to serve (none named in [dhcp6] interfaces, or none with an address in a [[dhcp6.subnet]] prefix): only relayed requests will be answered");
    }
    for (iface, idx) in ifaces {
        listener
            .sock
            .join_multicast_v6(&ALL_DHCP_SERVERS, idx)
            .map_err(|source| DhcpError::Join {
                family: Dhcpv6::NAME,
                group: IpAddr::V6(ALL_DHCP_SERVERS),
                iface,
                source,
            })?;
    }
    Ok(listener)
}

/// The DHCPv6 server: the bound socket and the engine, ready to [`run`](Dhcp6Server::run).
pub struct Dhcp6Server {
    driver: Driver<Dhcpv6>,
    counters: Arc<Counters6>,
}

impl Dhcp6Server {
    /// Validates the config, loads the stored leases and the server DUID (made once per state
    /// directory), binds the socket and joins ff02::1:2. In mode `off` nothing is bound.
    pub fn bind(
        cfg: Dhcp6Config,
        boot: BootSettings,
        store: Arc<Store>,
        observer: Arc<dyn DhcpObserver<Ingress6, Handled6>>,
    ) -> Result<Dhcp6Server, DhcpError> {
        DhcpError::check_config(Dhcpv6::NAME, &cfg.validate())?;
        let stored = |source| DhcpError::Store {
            family: Dhcpv6::NAME,
            source,
        };
        // Made (and stored) only when DHCPv6 runs: `off` leaves the store untouched.
        let duid = if cfg.mode == Mode6::Off {
            Vec::new()
        } else {
            leases6::server_duid(&store, new_server_duid).map_err(stored)?
        };
        let mut engine = Engine6::new(cfg.clone(), boot, duid);
        if cfg.mode == Mode6::Server {
            engine.load_leases(&leases6::load_all(&store).map_err(stored)?);
        }
        let counters = engine.counters();
        let listeners = match cfg.mode {
            Mode6::Off => Vec::new(),
            _ => vec![Arc::new(listen(&cfg)?)],
        };
        let engine = Arc::new(Mutex::new(engine));
        let family = Dhcpv6 {
            engine: engine.clone(),
            retry: RetryGate::default(),
            store,
            counters: counters.clone(),
            interfaces: Mutex::new(InterfaceTable::new(ipv6_interfaces)),
        };
        let driver = Driver {
            family: Arc::new(family),
            engine,
            listeners,
            observer,
            takeover: Takeover::default(),
        };
        Ok(Dhcp6Server { driver, counters })
    }

    pub fn counters(&self) -> Arc<Counters6> {
        self.counters.clone()
    }

    /// The engine, for read-only views (leases, which machine an address belongs to).
    pub fn engine(&self) -> Arc<Mutex<Engine6>> {
        self.driver.engine.clone()
    }

    /// What the fleet loop tells when a peer is gone (see `chainboot_dhcp::driver::Takeover`).
    pub fn takeover(&self) -> Takeover {
        self.driver.takeover.clone()
    }

    /// Serves until `shutdown`; queued leases are written (and their Replies sent) first.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), DhcpError> {
        self.driver.run(shutdown).await
    }
}

/// A DUID-UUID (RFC 6355) from 16 random bytes: the server's identity, stored once.
fn new_server_duid() -> Vec<u8> {
    let mut d = vec![0, 4];
    d.extend_from_slice(&rand::random::<[u8; 16]>());
    d
}

/// What DHCPv6 does around its engine.
struct Dhcpv6 {
    /// The engine the receive thread uses, for the addresses the fleet's database gave to
    /// other servers' clients.
    engine: Arc<Mutex<Engine6>>,
    /// When the fleet's database is tried again after a failed commit.
    retry: RetryGate,
    store: Arc<Store>,
    counters: Arc<Counters6>,
    interfaces: Mutex<InterfaceTable<Vec<Ipv6Addr>>>,
}

impl Family for Dhcpv6 {
    type Engine = Engine6;
    const NAME: &'static str = "dhcp6";

    /// The engine's view of where a datagram came in, from its pktinfo.
    fn ingress(&self, meta: &RecvMeta, local_port: u16) -> Option<Ingress6> {
        let (Some(ifindex), Some(IpAddr::V6(dst)), SocketAddr::V6(src)) =
            (meta.ifindex, meta.destination, meta.source)
        else {
            return None;
        };
        let (iface, local) = self.interfaces.lock().lookup(ifindex)?;
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

    fn transmit<'a>(&self, _sock: &UdpSocket, reply: &'a Outgoing6) -> Transmit<'a> {
        Transmit {
            destination: SocketAddr::V6(reply.dest),
            source: reply.source.map(IpAddr::V6),
            ifindex: reply.ifindex,
            contents: &reply.bytes,
        }
    }

    fn commit(&self, batch: &mut Vec<Pending<Self>>) {
        let records: Vec<Lease6Record> = batch
            .iter()
            .flat_map(|p| p.leases.iter().cloned())
            .collect();
        // While the fleet's database is away renewals are served from the journal, and the
        // database tried again after DEGRADED_RETRY.
        let saved = self.retry.attempt(self.store.degraded(), || {
            leases6::save_batch(&self.store, &records)
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
                    let journaled = leases6::save_renewals_while_degraded(&self.store, &records);
                    let renewals = &self.counters.degraded_renewals;
                    if keep_journaled(self, batch, journaled, |r| r.ip, renewals) {
                        return;
                    }
                }
                // Not durable, so not answered: the clients retransmit.
                batch.clear();
                self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                if let Some(e) = e {
                    tracing::error!(
                        "dhcp6: could not store {} lease(s), replies withheld: {e}",
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
