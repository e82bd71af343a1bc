//! The DHCPv6 engine: bytes + time + ingress facts in, replies + lease writes out, no sockets
//! and no clock (the DHCPv4 engine's shape). The driver persists `Handled6::lease_writes`
//! before it sends `Handled6::outgoing`: never a Reply before the lease is durable.
//!
//! Files by concern:
//! - this file: the public types, the state, [`Engine6::handle`] (parse, rate limits, facts,
//!   the boot decision, then the message type's function);
//! - `exchange`: one function per message type (RFC 8415 §18.3);
//! - `pool`: prefixes, pools, address choice, leases in the shared lease table;
//! - `fleet`: which server of a fleet answers a client, and which DUIDs are its peers';
//! - `tests`: packet traces with a fake clock.

mod exchange;
mod fleet;
mod pool;

use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use chainboot_dhcp::boot::BootStage;
use chainboot_dhcp::engine::fleet::Fleet;
use chainboot_dhcp::engine::{LeaseTable, RateTable};
use chainboot_dhcp::{decide, BootDecision, BootSettings};
use chainboot_store::leases6::Lease6Record;

use crate::config::{Dhcp6Config, Mode6};
use crate::facts::Facts6;
use crate::wire::{self, msg, ParseError, Received};
use pool::Subnet6Plan;

/// Where a request came in: the driver learns it from IPV6_PKTINFO and the interface list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingress6 {
    pub ifindex: u32,
    /// Interface name, for logs.
    pub iface: String,
    /// The interface's addresses other than link-local ones: which prefix a direct client is
    /// on, and the server address of its boot-file URLs.
    pub local: Vec<Ipv6Addr>,
    /// The packet's destination (ff02::1:2, or a unicast address of ours).
    pub dst: Ipv6Addr,
    /// The UDP port it arrived on (547 by default).
    pub local_port: u16,
    /// Sender address (with the interface as scope for link-local ones) and port.
    pub src: SocketAddrV6,
}

/// A reply to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing6 {
    pub bytes: Vec<u8>,
    pub dest: SocketAddrV6,
    /// Out of this interface ...
    pub ifindex: u32,
    /// ... from this address (`None`: the kernel's choice for `dest`, a link-local one for a
    /// link-local client).
    pub source: Option<Ipv6Addr>,
    /// The client message type inside (Advertise or Reply), also when relayed.
    pub msg_type: u8,
}

/// Why a valid request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ignored6 {
    ModeOff,
    /// Boot-info mode and not a PXE/HTTP Boot/iPXE client.
    NotBootClient,
    /// No configured prefix for the client's link.
    NoSubnet,
    /// No address of ours that a client could reach for its boot-file URL.
    NoServerAddress,
    PoolExhausted,
    /// The starvation guard refused an unproven client.
    NewClientLimit,
    /// It names another server (option 2), one this fleet does not know, or a message this
    /// mode does not answer.
    NotForUs,
    /// It names a live peer of this fleet (option 2): that server answers it.
    PeerServer,
    /// Another live server of the fleet answers this client (load balancing by client hash).
    PeerClient,
    /// Rebind or Confirm about bindings chainboot cannot speak for (RFC 8415 §18.3.5/§18.3.3:
    /// no reply, another server may know).
    NoReply,
}

/// Why a packet was dropped before being looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason6 {
    Malformed(ParseError),
    /// Beyond `limits.per_duid_rate` for its DUID.
    RateLimited,
    /// Beyond `limits.per_relay_rate` for the relay that sent it.
    RelayRateLimited,
}

/// What the engine did with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome6 {
    /// Advertise or Reply.
    Replied(u8),
    Ignored(Ignored6),
    Dropped(DropReason6),
}

impl Outcome6 {
    /// The outcome as words (for `explain`, logs and events): what happened, and why when
    /// nothing was sent.
    pub fn words(&self) -> (&'static str, Option<&'static str>) {
        match self {
            Outcome6::Replied(t) if *t == msg::ADVERTISE => ("advertise", None),
            Outcome6::Replied(_) => ("reply", None),
            Outcome6::Ignored(i) => (
                "ignored",
                Some(match i {
                    Ignored6::ModeOff => "mode-off",
                    Ignored6::NotBootClient => "not-boot-client",
                    Ignored6::NoSubnet => "no-subnet",
                    Ignored6::NoServerAddress => "no-server-address",
                    Ignored6::PoolExhausted => "pool-exhausted",
                    Ignored6::NewClientLimit => "new-client-limit",
                    Ignored6::NotForUs => "other-server",
                    Ignored6::PeerServer => "peer-server",
                    Ignored6::PeerClient => "peer-client",
                    Ignored6::NoReply => "no-reply",
                }),
            ),
            Outcome6::Dropped(d) => (
                "dropped",
                Some(match d {
                    DropReason6::Malformed(e) => e.as_str(),
                    DropReason6::RateLimited => "rate-limited",
                    DropReason6::RelayRateLimited => "relay-rate-limited",
                }),
            ),
        }
    }
}

/// Everything the engine decided for one packet.
#[derive(Debug, Clone)]
pub struct Handled6 {
    /// To be sent only after `lease_writes` are durable.
    pub outgoing: Vec<Outgoing6>,
    pub lease_writes: Vec<Lease6Record>,
    pub outcome: Outcome6,
    /// The request's type and facts, when it parsed.
    pub request: Option<(u8, Facts6)>,
    pub decision: Option<BootDecision>,
    /// The addresses advertised or bound in this exchange.
    pub addresses: Vec<Ipv6Addr>,
}

impl Handled6 {
    fn new(outcome: Outcome6) -> Handled6 {
        Handled6 {
            outgoing: Vec::new(),
            lease_writes: Vec::new(),
            outcome,
            request: None,
            decision: None,
            addresses: Vec::new(),
        }
    }
}

/// The counters behind `/metrics` (family "ipv6"), readable while the driver runs.
#[derive(Debug, Default)]
pub struct Counters6 {
    pub received: AtomicU64,
    pub solicit: AtomicU64,
    pub request: AtomicU64,
    pub renew: AtomicU64,
    pub rebind: AtomicU64,
    pub confirm: AtomicU64,
    pub release: AtomicU64,
    pub decline: AtomicU64,
    pub information_request: AtomicU64,
    pub relayed: AtomicU64,
    pub advertise_sent: AtomicU64,
    pub reply_sent: AtomicU64,
    pub boot_first_stage: AtomicU64,
    pub boot_first_stage_http: AtomicU64,
    pub boot_script_http: AtomicU64,
    pub boot_script_tftp: AtomicU64,
    pub ignored_not_boot_client: AtomicU64,
    pub ignored_no_subnet: AtomicU64,
    pub ignored_no_server_address: AtomicU64,
    pub ignored_other_server: AtomicU64,
    /// Messages naming a live peer of the fleet as their server (counted, no event).
    pub ignored_peer_server: AtomicU64,
    /// Clients another live server of the fleet answers (load balancing).
    pub ignored_peer_client: AtomicU64,
    pub pool_exhausted: AtomicU64,
    pub refused_new_client: AtomicU64,
    pub drop_malformed: AtomicU64,
    pub drop_oversized: AtomicU64,
    pub drop_rate_limited: AtomicU64,
    pub drop_relay_rate_limited: AtomicU64,
    /// Filled by the driver.
    pub send_errors: AtomicU64,
    pub store_errors: AtomicU64,
    /// Lease writes the fleet's database refused (another server's client holds the address);
    /// their replies were withheld.
    pub lease_conflicts: AtomicU64,
    /// Renewals answered from the local journal while the fleet's database did not answer.
    pub degraded_renewals: AtomicU64,
    pub commit_batches: AtomicU64,
    pub committed_leases: AtomicU64,
}

impl Counters6 {
    /// Every counter with its metric name (without the `chainboot_dhcp6_` prefix).
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("received_total", g(&self.received)),
            ("solicit_total", g(&self.solicit)),
            ("request_total", g(&self.request)),
            ("renew_total", g(&self.renew)),
            ("rebind_total", g(&self.rebind)),
            ("confirm_total", g(&self.confirm)),
            ("release_total", g(&self.release)),
            ("decline_total", g(&self.decline)),
            ("information_request_total", g(&self.information_request)),
            ("relayed_total", g(&self.relayed)),
            ("advertise_sent_total", g(&self.advertise_sent)),
            ("reply_sent_total", g(&self.reply_sent)),
            ("boot_first_stage_total", g(&self.boot_first_stage)),
            (
                "boot_first_stage_http_total",
                g(&self.boot_first_stage_http),
            ),
            ("boot_script_http_total", g(&self.boot_script_http)),
            ("boot_script_tftp_total", g(&self.boot_script_tftp)),
            (
                "ignored_not_boot_client_total",
                g(&self.ignored_not_boot_client),
            ),
            ("ignored_no_subnet_total", g(&self.ignored_no_subnet)),
            (
                "ignored_no_server_address_total",
                g(&self.ignored_no_server_address),
            ),
            ("ignored_other_server_total", g(&self.ignored_other_server)),
            ("ignored_peer_server_total", g(&self.ignored_peer_server)),
            ("ignored_peer_client_total", g(&self.ignored_peer_client)),
            ("pool_exhausted_total", g(&self.pool_exhausted)),
            ("refused_new_client_total", g(&self.refused_new_client)),
            ("drop_malformed_total", g(&self.drop_malformed)),
            ("drop_oversized_total", g(&self.drop_oversized)),
            ("drop_rate_limited_total", g(&self.drop_rate_limited)),
            (
                "drop_relay_rate_limited_total",
                g(&self.drop_relay_rate_limited),
            ),
            ("send_errors_total", g(&self.send_errors)),
            ("store_errors_total", g(&self.store_errors)),
            ("lease_conflicts_total", g(&self.lease_conflicts)),
            ("degraded_renewals_total", g(&self.degraded_renewals)),
            ("commit_batches_total", g(&self.commit_batches)),
            ("committed_leases_total", g(&self.committed_leases)),
        ]
    }
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// One request on its way through the engine.
pub(crate) struct Exchange6<'a> {
    pub(crate) rx: &'a Received,
    pub(crate) facts: &'a Facts6,
    pub(crate) decision: &'a BootDecision,
    pub(crate) ingress: &'a Ingress6,
    /// The client's prefix (index into the plans), when known.
    pub(crate) sub: Option<usize>,
    /// Seconds since the Unix epoch.
    pub(crate) now: i64,
}

/// The DHCPv6 engine. One per server; the driver serialises calls.
pub struct Engine6 {
    cfg: Dhcp6Config,
    boot: BootSettings,
    server_duid: Vec<u8>,
    subnets: Vec<Subnet6Plan>,
    leases: LeaseTable<Ipv6Addr>,
    buckets: RateTable<Vec<u8>>,
    relay_buckets: RateTable<Ipv6Addr>,
    counters: Arc<Counters6>,
    /// The fleet this server shares clients with; `None`: it answers everyone.
    fleet: Option<Fleet>,
    /// The DUIDs of the fleet's live peers, sorted.
    peer_duids: Vec<Vec<u8>>,
}

fn unix_f(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Engine6 {
    /// An engine for a validated config, answering as `server_duid` (kept in the store so
    /// that clients can renew across restarts).
    pub fn new(cfg: Dhcp6Config, boot: BootSettings, server_duid: Vec<u8>) -> Engine6 {
        let subnets = Subnet6Plan::all(&cfg);
        Engine6 {
            cfg,
            boot,
            server_duid,
            subnets,
            leases: LeaseTable::new(),
            buckets: RateTable::new(),
            relay_buckets: RateTable::new(),
            counters: Arc::new(Counters6::default()),
            fleet: None,
            peer_duids: Vec::new(),
        }
    }

    pub fn counters(&self) -> Arc<Counters6> {
        self.counters.clone()
    }

    pub fn config(&self) -> &Dhcp6Config {
        &self.cfg
    }

    pub fn server_duid(&self) -> &[u8] {
        &self.server_duid
    }

    /// Handles one received packet.
    pub fn handle(&mut self, now: SystemTime, ingress: &Ingress6, bytes: &[u8]) -> Handled6 {
        bump(&self.counters.received);
        if self.cfg.mode == Mode6::Off {
            return Handled6::new(Outcome6::Ignored(Ignored6::ModeOff));
        }
        let rx = match self.admit(now, ingress, bytes) {
            Ok(rx) => rx,
            Err(why) => return Handled6::new(Outcome6::Dropped(why)),
        };
        self.count_request(&rx);
        let facts = Facts6::of(&rx, *ingress.src.ip());
        if !self.answers(&rx, &facts) {
            bump(&self.counters.ignored_peer_client);
            return Handled6::new(Outcome6::Ignored(Ignored6::PeerClient));
        }
        let sub = self.subnet_of(&facts, ingress);
        let decision = match self.server_address(ingress, &rx, sub) {
            Some(server) => decide(&facts.boot, &self.boot, server),
            None => BootDecision::NoBoot(chainboot_dhcp::boot::NoBoot::NotBootClient),
        };
        let x = Exchange6 {
            rx: &rx,
            facts: &facts,
            decision: &decision,
            ingress,
            sub,
            now: pool::unix(now),
        };
        let mut out = self.exchange(&x);
        if facts.boot.is_boot_client()
            && !matches!(decision, BootDecision::Boot(_))
            && out.outcome == Outcome6::Ignored(Ignored6::NotBootClient)
        {
            out.outcome = Outcome6::Ignored(Ignored6::NoServerAddress);
        }
        self.count_outcome(&out, &decision);
        out.request = Some((rx.msg.msg_type, facts));
        out.decision = Some(decision);
        out
    }

    /// Parses the packet and applies the rate limits (per relay, then per DUID).
    fn admit(
        &mut self,
        now: SystemTime,
        ingress: &Ingress6,
        bytes: &[u8],
    ) -> Result<Received, DropReason6> {
        let c = self.counters.clone();
        let rx = match wire::parse(bytes, self.cfg.limits.max_request_bytes) {
            Ok(rx) => rx,
            Err(e) => {
                bump(if e == ParseError::Oversized {
                    &c.drop_oversized
                } else {
                    &c.drop_malformed
                });
                return Err(DropReason6::Malformed(e));
            }
        };
        let t = unix_f(now);
        let l = self.cfg.limits;
        if !rx.relays.is_empty()
            && !self
                .relay_buckets
                .take(*ingress.src.ip(), t, l.per_relay_rate, l.per_relay_burst)
        {
            bump(&c.drop_relay_rate_limited);
            return Err(DropReason6::RelayRateLimited);
        }
        // An Information-Request may come without a DUID: its source address stands in.
        let key = match rx.client_id() {
            [] => ingress.src.ip().octets().to_vec(),
            duid => duid.to_vec(),
        };
        if !self.buckets.take(key, t, l.per_duid_rate, l.per_duid_burst) {
            bump(&c.drop_rate_limited);
            return Err(DropReason6::RateLimited);
        }
        Ok(rx)
    }

    /// The address a client reaches chainboot at for its boot files: `advertise`, else the
    /// address the packet was sent to when unicast and routable, else the interface's
    /// address inside the client's prefix, else its first one.
    fn server_address(
        &self,
        ingress: &Ingress6,
        rx: &Received,
        sub: Option<usize>,
    ) -> Option<Ipv6Addr> {
        if let Some(a) = self.cfg.advertise {
            return Some(a);
        }
        let routable = |a: &Ipv6Addr| !a.is_multicast() && a.segments()[0] & 0xffc0 != 0xfe80;
        if !rx.relays.is_empty() && routable(&ingress.dst) {
            return Some(ingress.dst);
        }
        let in_sub = sub.and_then(|s| {
            let net = self.subnets[s].net;
            ingress.local.iter().find(|a| net.contains(*a)).copied()
        });
        in_sub.or_else(|| ingress.local.iter().find(|a| routable(a)).copied())
    }

    fn count_request(&self, rx: &Received) {
        let c = &self.counters;
        if !rx.relays.is_empty() {
            bump(&c.relayed);
        }
        bump(match rx.msg.msg_type {
            msg::SOLICIT => &c.solicit,
            msg::REQUEST => &c.request,
            msg::RENEW => &c.renew,
            msg::REBIND => &c.rebind,
            msg::CONFIRM => &c.confirm,
            msg::RELEASE => &c.release,
            msg::DECLINE => &c.decline,
            _ => &c.information_request,
        });
    }

    fn count_outcome(&self, out: &Handled6, decision: &BootDecision) {
        let c = &self.counters;
        match out.outcome {
            Outcome6::Replied(t) => {
                bump(if t == msg::ADVERTISE {
                    &c.advertise_sent
                } else {
                    &c.reply_sent
                });
                if let BootDecision::Boot(a) = decision {
                    bump(match a.stage {
                        BootStage::FirstStage => &c.boot_first_stage,
                        BootStage::FirstStageHttp => &c.boot_first_stage_http,
                        BootStage::ScriptHttp => &c.boot_script_http,
                        BootStage::ScriptTftp => &c.boot_script_tftp,
                    });
                }
            }
            Outcome6::Ignored(i) => match i {
                Ignored6::NotBootClient => bump(&c.ignored_not_boot_client),
                Ignored6::NoSubnet => bump(&c.ignored_no_subnet),
                Ignored6::NoServerAddress => bump(&c.ignored_no_server_address),
                Ignored6::NotForUs => bump(&c.ignored_other_server),
                Ignored6::PeerServer => bump(&c.ignored_peer_server),
                Ignored6::PoolExhausted => bump(&c.pool_exhausted),
                Ignored6::NewClientLimit => bump(&c.refused_new_client),
                Ignored6::ModeOff | Ignored6::NoReply | Ignored6::PeerClient => {}
            },
            Outcome6::Dropped(_) => {}
        }
    }
}

#[cfg(test)]
mod tests;
