//! The DHCP engine: bytes + time + ingress facts in, replies + lease writes out. No sockets,
//! no clock, no store (quinn-proto's shape): the driver in `server.rs` feeds it and persists
//! `Handled::lease_writes` *before* sending `Handled::outgoing` (never an ACK before the lease
//! is durable). `chainboot explain` drives it with a made-up packet.
//!
//! One type, files by concern (each an `impl Engine` block where it needs the engine):
//! - this file: the public types, the engine's state, and [`Engine::handle`], which parses,
//!   rate-limits, decides the boot answer and hands an [`Exchange`] to the mode;
//! - `exchange`: one function per message type (proxy, boot server, DISCOVER, REQUEST,
//!   DECLINE, RELEASE, INFORM);
//! - `reply`: building and addressing replies;
//! - `pool`: subnets, pools, address choice;
//! - `leases`: the lease table (generic over the address type);
//! - `guard`: the starvation guard (generic over the address type);
//! - `rate`: token buckets per key (generic over the key);
//!
//! [`LeaseTable`], [`Guard`] and [`RateTable`] are public for the DHCPv6 engine
//! (`chainboot-dhcp6`), which keeps IPv6 leases keyed by DUID + IAID in the same tables.
//! - `counters`: the counters behind `/metrics`;
//! - `tests`: the engine as packet traces with a fake clock.

mod counters;
mod exchange;
pub mod fleet;
mod guard;
mod leases;
mod pool;
mod rate;
mod reply;

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::SystemTime;

use chainboot_machine::Mac;
use chainboot_store::leases::LeaseRecord;

use crate::boot::{decide, BootDecision, BootSettings, BootStage, PacketFacts};
use crate::config::{DhcpConfig, Mode};
use crate::wire::{parse_request, MessageType, ParseError, Request};
use counters::bump;
pub use counters::Counters;
pub use guard::{Guard, GuardState};
pub use leases::{ClientKey, Lease, LeaseStatus, LeaseTable};
pub use pool::PoolUsage;
use pool::SubnetPlan;
pub use rate::RateTable;

/// Where a request came in: the driver learns it from IP_PKTINFO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingress {
    /// Interface index (for sending broadcasts back out of the same interface).
    pub ifindex: u32,
    /// Interface name, for logs.
    pub iface: String,
    /// The interface's IPv4 address: the server identifier (option 54) of replies.
    pub local_addr: Ipv4Addr,
    /// The UDP port the request arrived on (67 or 4011 by default).
    pub local_port: u16,
    /// Sender address and port.
    pub src: SocketAddrV4,
}

/// Where a reply goes (RFC 2131 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// A normal unicast: relay agent, a client with ciaddr, or a 4011 requester.
    Unicast(SocketAddrV4),
    /// 255.255.255.255 on the ingress interface.
    Broadcast { port: u16 },
    /// Unicast to a client that does not have its address yet: the driver must insert an ARP
    /// entry (SIOCSARP) for `mac` first, and broadcast when it cannot.
    UnicastNoArp { addr: SocketAddrV4, mac: Mac },
}

/// A reply to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub bytes: Vec<u8>,
    pub dest: Destination,
    /// Send out of this interface ...
    pub ifindex: u32,
    /// ... from this address.
    pub source: Ipv4Addr,
    pub msg_type: MessageType,
}

/// Why a request got no answer although it was valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ignored {
    ModeOff,
    /// Proxy mode and not a PXE/iPXE/HTTP Boot client.
    NotBootClient,
    UnknownArch,
    /// Server mode: no configured subnet for this link or relay.
    NoSubnet,
    PoolExhausted,
    /// An unproven client (one that has not come back yet) while the pool's unproven holdings
    /// are at `limits.new_client_share` of the pool (starvation guard).
    NewClientLimit,
    /// The message names another server (option 54), one this fleet does not know: possibly
    /// another DHCP server on the segment.
    OtherServer,
    /// The message names a live peer of this fleet (option 54): that server answers it.
    PeerServer,
    /// Another live server of the fleet answers this client (load balancing by client hash).
    PeerClient,
    /// A message type this port/mode does not answer (or one that gets no reply: DECLINE,
    /// RELEASE).
    NoReply,
}

/// What the engine did with one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Replied(MessageType),
    Ignored(Ignored),
    Dropped(DropReason),
}

/// Why a packet was dropped before being looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    Malformed(ParseError),
    RateLimited,
    /// Beyond `limits.per_relay_rate` for the relay (giaddr) that forwarded it.
    RelayRateLimited,
    /// The reply would not fit the client's maximum message size even without extras.
    ReplyTooLarge,
}

/// Everything the engine decided for one packet.
#[derive(Debug, Clone)]
pub struct Handled {
    /// To be sent only after `lease_writes` are durable.
    pub outgoing: Vec<Outgoing>,
    pub lease_writes: Vec<LeaseRecord>,
    pub outcome: Outcome,
    /// The request's type and facts, when it parsed (for the observer / event log).
    pub request: Option<(MessageType, PacketFacts)>,
    pub decision: Option<BootDecision>,
    /// The address offered or acknowledged.
    pub address: Option<Ipv4Addr>,
}

impl Handled {
    fn new(outcome: Outcome) -> Handled {
        Handled {
            outgoing: Vec::new(),
            lease_writes: Vec::new(),
            outcome,
            request: None,
            decision: None,
            address: None,
        }
    }
}

/// One request on its way through the engine: what every step needs to know about it.
struct Exchange<'a> {
    req: &'a Request,
    facts: &'a PacketFacts,
    decision: &'a BootDecision,
    ingress: &'a Ingress,
    /// Seconds since the Unix epoch.
    now: i64,
}

/// The client of a server-mode exchange: its subnet, hardware address and lease identity.
struct Client {
    sub: usize,
    mac: Mac,
    key: ClientKey,
}

/// The DHCP engine. One per server; the driver serialises calls.
pub struct Engine {
    cfg: DhcpConfig,
    boot: BootSettings,
    subnets: Vec<SubnetPlan>,
    hosts: HashMap<Mac, usize>,
    reserved: HashSet<Ipv4Addr>,
    leases: LeaseTable<Ipv4Addr>,
    buckets: RateTable<[u8; 6]>,
    relay_buckets: RateTable<Ipv4Addr>,
    unknown_arch_logged: HashSet<Mac>,
    counters: Arc<Counters>,
    /// The fleet this server shares clients with; `None`: it answers everyone.
    fleet: Option<fleet::Fleet>,
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn unix_f(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Engine {
    /// An engine for a validated config (see [`DhcpConfig::validate`]).
    pub fn new(cfg: DhcpConfig, boot: BootSettings) -> Engine {
        let reserved: HashSet<Ipv4Addr> = cfg.host.iter().map(|h| h.ip).collect();
        let subnets = SubnetPlan::all(&cfg, &reserved);
        let hosts = cfg
            .host
            .iter()
            .enumerate()
            .map(|(i, h)| (h.mac, i))
            .collect();
        Engine {
            cfg,
            boot,
            subnets,
            hosts,
            reserved,
            leases: LeaseTable::new(),
            buckets: RateTable::new(),
            relay_buckets: RateTable::new(),
            unknown_arch_logged: HashSet::new(),
            fleet: None,
            counters: Arc::new(Counters::default()),
        }
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    pub fn config(&self) -> &DhcpConfig {
        &self.cfg
    }

    pub fn boot_settings(&self) -> &BootSettings {
        &self.boot
    }

    /// Takes a new `[dhcp]` section (SIGHUP) without a restart: subnets, pools, static hosts,
    /// options, lease times and limits apply to the next packet. The lease table is kept:
    /// a lease whose address the new config no longer hands out (pool shrunk, subnet gone,
    /// address now a static host's) stays until it ends, is never offered again, and a client
    /// renewing it is NAKed and starts over (RFC 2131 §4.3.2), like after a restart with the
    /// new file. Carried-over leases count as proven (as after a restart), rate-limit buckets
    /// start full, counters go on. Mode and ports belong to the sockets: the caller restarts
    /// for those.
    pub fn reconfigure(&mut self, cfg: DhcpConfig) {
        let leases = std::mem::take(&mut self.leases);
        let counters = self.counters.clone();
        let boot = self.boot.clone();
        let fleet = self.fleet.take();
        *self = Engine::new(cfg, boot);
        self.counters = counters;
        self.fleet = fleet;
        for lease in leases.into_leases() {
            self.insert(
                Lease {
                    proven: true,
                    ..lease
                },
                0,
            );
        }
    }

    /// Handles one received packet.
    pub fn handle(&mut self, now: SystemTime, ingress: &Ingress, bytes: &[u8]) -> Handled {
        bump(&self.counters.received);
        if self.cfg.mode == Mode::Off {
            return Handled::new(Outcome::Ignored(Ignored::ModeOff));
        }
        let req = match self.admit(now, bytes) {
            Ok(req) => req,
            Err(why) => return Handled::new(Outcome::Dropped(why)),
        };
        self.count_request(req.msg_type);
        if !self.answers(&req, ingress) {
            bump(&self.counters.ignored_peer_client);
            return Handled::new(Outcome::Ignored(Ignored::PeerClient));
        }
        let facts = PacketFacts::from_request(&req);
        let server = self.boot.server_for(ingress.local_addr);
        let decision = decide(&facts, &self.boot, server);
        let x = Exchange {
            req: &req,
            facts: &facts,
            decision: &decision,
            ingress,
            now: unix(now),
        };
        let mut out = if ingress.local_port == self.cfg.ports.proxy {
            self.boot_server(&x)
        } else {
            match self.cfg.mode {
                Mode::Proxy => self.proxy(&x),
                Mode::Server => self.server(&x),
                Mode::Off => Handled::new(Outcome::Ignored(Ignored::ModeOff)),
            }
        };
        self.count_outcome(&out.outcome, &decision);
        out.request = Some((req.msg_type, facts));
        out.decision = Some(decision);
        out
    }

    /// Shares clients with the fleet's other live servers (`None`: answer everyone).
    pub fn set_fleet(&mut self, fleet: Option<fleet::Fleet>) {
        self.fleet = fleet;
    }

    /// The fleet as last set.
    pub fn fleet(&self) -> Option<&fleet::Fleet> {
        self.fleet.as_ref()
    }

    /// Whether this server answers `req`: always on the PXE boot server port and for
    /// messages naming a server (a REQUEST after an OFFER carries its server identifier, and
    /// only that server answers anyway); otherwise when the client's hash bucket is this
    /// server's.
    fn answers(&self, req: &Request, ingress: &Ingress) -> bool {
        let Some(fleet) = &self.fleet else {
            return true;
        };
        if ingress.local_port == self.cfg.ports.proxy {
            return true;
        }
        match req.msg_type {
            MessageType::Discover => fleet.serves(req.header.chaddr()),
            MessageType::Request if req.opt_ip(crate::wire::code::SERVER_ID).is_none() => {
                fleet.serves(req.header.chaddr())
            }
            _ => true,
        }
    }

    /// Parses the packet and applies the rate limits (per relay, then per client).
    fn admit(&mut self, now: SystemTime, bytes: &[u8]) -> Result<Request, DropReason> {
        let c = self.counters.clone();
        let req = match parse_request(bytes, self.cfg.limits.max_request_bytes) {
            Ok(r) => r,
            Err(e) => {
                bump(if e == ParseError::Oversized {
                    &c.drop_oversized
                } else {
                    &c.drop_malformed
                });
                return Err(DropReason::Malformed(e));
            }
        };
        if !self.relay_rate_ok(req.header.giaddr(), now) {
            bump(&c.drop_relay_rate_limited);
            return Err(DropReason::RelayRateLimited);
        }
        if !self.rate_ok(req.header.chaddr(), now) {
            bump(&c.drop_rate_limited);
            return Err(DropReason::RateLimited);
        }
        Ok(req)
    }

    fn count_request(&self, t: MessageType) {
        let c = &self.counters;
        match t {
            MessageType::Discover => bump(&c.discover),
            MessageType::Request => bump(&c.request),
            MessageType::Decline => bump(&c.decline),
            MessageType::Release => bump(&c.release),
            MessageType::Inform => bump(&c.inform),
            // Server-to-client types sent to a server port: counted as received only.
            MessageType::Offer | MessageType::Ack | MessageType::Nak => {}
        }
    }

    fn count_outcome(&self, outcome: &Outcome, decision: &BootDecision) {
        let c = &self.counters;
        match outcome {
            Outcome::Replied(t) => {
                bump(match t {
                    MessageType::Offer => &c.offer_sent,
                    MessageType::Ack => &c.ack_sent,
                    _ => &c.nak_sent,
                });
                if let BootDecision::Boot(a) = decision {
                    if *t != MessageType::Nak {
                        bump(match a.stage {
                            BootStage::FirstStage => &c.boot_first_stage,
                            BootStage::FirstStageHttp => &c.boot_first_stage_http,
                            BootStage::ScriptHttp => &c.boot_script_http,
                            BootStage::ScriptTftp => &c.boot_script_tftp,
                        });
                    }
                }
            }
            Outcome::Ignored(i) => match i {
                Ignored::NotBootClient => bump(&c.ignored_not_boot_client),
                Ignored::UnknownArch => bump(&c.ignored_unknown_arch),
                Ignored::NoSubnet => bump(&c.ignored_no_subnet),
                Ignored::OtherServer => bump(&c.ignored_other_server),
                Ignored::PeerServer => bump(&c.ignored_peer_server),
                Ignored::PeerClient => {}
                Ignored::PoolExhausted => bump(&c.pool_exhausted),
                Ignored::NewClientLimit => bump(&c.refused_new_client),
                Ignored::ModeOff | Ignored::NoReply => {}
            },
            Outcome::Dropped(DropReason::ReplyTooLarge) => bump(&c.drop_reply_too_large),
            Outcome::Dropped(_) => {}
        }
    }

    /// Logs an unknown architecture once per MAC: it gets no answer, and the value in the
    /// log is what tells an operator which binary is missing.
    fn note_unknown_arch(&mut self, facts: &PacketFacts, value: u16) {
        let Some(mac) = facts.mac else { return };
        if self.unknown_arch_logged.len() >= 4096 {
            self.unknown_arch_logged.clear();
        }
        if self.unknown_arch_logged.insert(mac) {
            tracing::warn!(%mac, option93 = value, "dhcp: client architecture {value} has no first-stage binary; not answering");
        }
    }
}

#[cfg(test)]
mod tests;
