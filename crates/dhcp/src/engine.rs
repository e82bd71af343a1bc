//! The DHCP engine: bytes + time + ingress facts in, replies + lease writes out. No sockets,
//! no clock, no store (STYLE.md, quinn-proto's shape): the driver in `server.rs` feeds it and
//! persists `Handled::lease_writes` *before* sending `Handled::outgoing` (issue 3: never ACK
//! before the lease is durable). `chainboot explain` drives it with a made-up packet.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use chainboot_machine::Mac;
use chainboot_store::leases::{LeaseRecord, LeaseState};
use ipnet::Ipv4Net;

use crate::boot::{decide, BootAnswer, BootDecision, BootSettings, BootStage, ClientFacts, NoBoot};
use crate::config::{usable, DhcpConfig, Mode};
use crate::wire::{code, parse_request, MessageType, ParseError, Reply, Request};

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
    /// The client selected another server's offer.
    OtherServer,
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
    pub request: Option<(MessageType, ClientFacts)>,
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

/// Counters (atomics so that `/metrics` can read them while the driver runs).
#[derive(Debug, Default)]
pub struct Counters {
    pub received: AtomicU64,
    pub discover: AtomicU64,
    pub request: AtomicU64,
    pub decline: AtomicU64,
    pub release: AtomicU64,
    pub inform: AtomicU64,
    pub offer_sent: AtomicU64,
    pub ack_sent: AtomicU64,
    pub nak_sent: AtomicU64,
    pub boot_first_stage: AtomicU64,
    pub boot_first_stage_http: AtomicU64,
    pub boot_script_http: AtomicU64,
    pub boot_script_tftp: AtomicU64,
    pub ignored_not_boot_client: AtomicU64,
    pub ignored_unknown_arch: AtomicU64,
    pub ignored_no_subnet: AtomicU64,
    pub ignored_other_server: AtomicU64,
    pub pool_exhausted: AtomicU64,
    pub drop_malformed: AtomicU64,
    pub drop_oversized: AtomicU64,
    pub drop_rate_limited: AtomicU64,
    pub drop_relay_rate_limited: AtomicU64,
    /// Unproven clients refused by the starvation guard.
    pub refused_new_client: AtomicU64,
    pub drop_reply_too_large: AtomicU64,
    /// Filled by the driver.
    pub send_errors: AtomicU64,
    pub store_errors: AtomicU64,
    pub arp_fallback_broadcast: AtomicU64,
    /// Lease transactions (fsyncs) and the leases they carried: their ratio is the group
    /// commit's batching factor.
    pub commit_batches: AtomicU64,
    pub committed_leases: AtomicU64,
}

impl Counters {
    /// Every counter by name (`chainboot_dhcp_<name>` in /metrics).
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("received", g(&self.received)),
            ("discover", g(&self.discover)),
            ("request", g(&self.request)),
            ("decline", g(&self.decline)),
            ("release", g(&self.release)),
            ("inform", g(&self.inform)),
            ("offer_sent", g(&self.offer_sent)),
            ("ack_sent", g(&self.ack_sent)),
            ("nak_sent", g(&self.nak_sent)),
            ("boot_first_stage", g(&self.boot_first_stage)),
            ("boot_first_stage_http", g(&self.boot_first_stage_http)),
            ("boot_script_http", g(&self.boot_script_http)),
            ("boot_script_tftp", g(&self.boot_script_tftp)),
            ("ignored_not_boot_client", g(&self.ignored_not_boot_client)),
            ("ignored_unknown_arch", g(&self.ignored_unknown_arch)),
            ("ignored_no_subnet", g(&self.ignored_no_subnet)),
            ("ignored_other_server", g(&self.ignored_other_server)),
            ("pool_exhausted", g(&self.pool_exhausted)),
            ("drop_malformed", g(&self.drop_malformed)),
            ("drop_oversized", g(&self.drop_oversized)),
            ("drop_rate_limited", g(&self.drop_rate_limited)),
            ("drop_relay_rate_limited", g(&self.drop_relay_rate_limited)),
            ("refused_new_client", g(&self.refused_new_client)),
            ("drop_reply_too_large", g(&self.drop_reply_too_large)),
            ("send_errors", g(&self.send_errors)),
            ("store_errors", g(&self.store_errors)),
            ("arp_fallback_broadcast", g(&self.arp_fallback_broadcast)),
            ("commit_batches", g(&self.commit_batches)),
            ("committed_leases", g(&self.committed_leases)),
        ]
    }
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// State of an address in the engine's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStatus {
    /// Offered, held for the client until `expires` (not persisted).
    Offered,
    Bound,
    Released,
    Declined,
}

/// One address in the engine's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub client_id: Option<Vec<u8>>,
    pub hostname: Option<String>,
    pub status: LeaseStatus,
    /// Seconds since the Unix epoch.
    pub expires: i64,
    /// The client has come back since this binding was made (renewed, rebooted into it, did a
    /// second DORA), or the lease predates this run (loaded from the store). Unproven offers
    /// and leases count against `limits.new_client_share` (starvation guard).
    pub proven: bool,
}

/// A client's identity for leases: option 61 when sent (RFC 2131 §4.2), else chaddr.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ClientKey {
    Id(Vec<u8>),
    Hw(Mac),
}

impl ClientKey {
    /// Option 61 when sent, else chaddr. A client identifier that is just the hardware type 1
    /// (Ethernet) followed by the MAC names the same client as chaddr alone: UEFI firmware
    /// (OVMF) sends no option 61 while the iPXE it loads sends `01:<mac>`, and one machine must
    /// keep one address from firmware to OS (dnsmasq treats them alike too).
    fn of(client_id: Option<&[u8]>, mac: Mac) -> ClientKey {
        let is_hw_form = |id: &[u8]| id.len() == 7 && id[0] == 1 && id[1..] == mac.0;
        match client_id {
            Some(id) if !id.is_empty() && !is_hw_form(id) => ClientKey::Id(id.to_vec()),
            _ => ClientKey::Hw(mac),
        }
    }
}

impl Lease {
    fn key(&self) -> ClientKey {
        ClientKey::of(self.client_id.as_deref(), self.mac)
    }

    /// Free for another client.
    fn reclaimable(&self, now: i64) -> bool {
        match self.status {
            LeaseStatus::Released => true,
            LeaseStatus::Offered | LeaseStatus::Bound | LeaseStatus::Declined => {
                self.expires <= now
            }
        }
    }

    fn record(&self, now: i64) -> Option<LeaseRecord> {
        let state = match self.status {
            LeaseStatus::Offered => return None,
            LeaseStatus::Bound => LeaseState::Bound,
            LeaseStatus::Released => LeaseState::Released,
            LeaseStatus::Declined => LeaseState::Declined,
        };
        Some(LeaseRecord {
            ip: self.ip,
            mac: self.mac.to_string(),
            client_id: self.client_id.clone(),
            hostname: self.hostname.clone(),
            state,
            expires: self.expires,
            updated: now,
        })
    }
}

struct SubnetPlan {
    index: usize,
    net: Ipv4Net,
    pools: Vec<(u32, u32)>,
    /// Next pool offset to try (round robin keeps recently freed addresses cool).
    cursor: u64,
    size: u64,
    /// Starvation guard: the pool addresses held (offered, bound, declined) by unproven
    /// clients. Kept exact on every state change so that the check is O(1) per packet.
    unproven: HashSet<Ipv4Addr>,
    /// When each of them stops counting (lazy: an entry whose lease has since been extended or
    /// proven is skipped when popped), so expiry costs no scan of the pool.
    unproven_expiry: BinaryHeap<Reverse<(i64, u32)>>,
    /// ceil(new_client_share x dynamic addresses of the pool).
    unproven_cap: u64,
    /// Refusals not logged yet, and when the last warning was logged (one per window).
    refused_unlogged: u64,
    last_warning: Option<i64>,
}

/// The starvation guard's state for one subnet (tests, diagnostics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardState {
    pub subnet: Ipv4Net,
    /// Pool addresses held by unproven clients now.
    pub unproven: u64,
    /// What they may hold at most.
    pub cap: u64,
}

impl SubnetPlan {
    fn in_pool(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        self.pools.iter().any(|&(a, b)| a <= v && v <= b)
    }

    fn nth(&self, mut n: u64) -> Ipv4Addr {
        for &(a, b) in &self.pools {
            let len = (b - a) as u64 + 1;
            if n < len {
                return Ipv4Addr::from(a + n as u32);
            }
            n -= len;
        }
        Ipv4Addr::UNSPECIFIED
    }
}

struct Bucket {
    tokens: f64,
    last: f64,
}

/// Token buckets per key (client MAC, relay address), bounded in memory and in time per packet
/// under a flood of made-up keys.
///
/// Idle buckets (refilled, so indistinguishable from new ones) are swept out when the table
/// reaches `sweep_at`; the next sweep waits until the table has doubled, so a sweep's cost is
/// paid by as many inserts as it scanned. (Sweeping at a fixed size, as first written, made
/// every packet scan the table once a flood of more than 65 536 distinct MACs arrived within
/// one refill time: at 36 000 DORA/s the receive thread fell behind within 2 s, see
/// bench/README.md `## DHCP`.) If a sweep frees too little, the table is emptied: every key
/// gets a full bucket again, which only forgives clients that were being limited, never
/// refuses one.
struct RateTable<K> {
    buckets: HashMap<K, Bucket>,
    sweep_at: usize,
}

/// Keys kept before the first sweep.
const RATE_SWEEP_AT: usize = 65_536;
/// Keys kept at most (about 10 MiB).
const RATE_MAX_KEYS: usize = 262_144;

impl<K: std::hash::Hash + Eq> RateTable<K> {
    fn new() -> Self {
        RateTable {
            buckets: HashMap::new(),
            sweep_at: RATE_SWEEP_AT,
        }
    }

    /// Takes a token from `key`'s bucket (refilled at `rate` per second up to `burst`).
    fn take(&mut self, key: K, t: f64, rate: f64, burst: f64) -> bool {
        if self.buckets.len() >= self.sweep_at {
            self.buckets.retain(|_, b| t - b.last < burst / rate);
            if self.buckets.len() * 2 > RATE_MAX_KEYS {
                self.buckets.clear();
            }
            self.sweep_at = (self.buckets.len() * 2).max(RATE_SWEEP_AT);
        }
        let b = self.buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            last: t,
        });
        b.tokens = (b.tokens + (t - b.last).max(0.0) * rate).min(burst);
        b.last = t;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod rate_table_tests {
    use super::*;

    #[test]
    fn a_flood_of_new_keys_costs_amortised_constant_time_and_bounded_memory() {
        let mut table = RateTable::new();
        let mut sweeps = 0;
        let mut last_sweep_at = table.sweep_at;
        // Two million distinct keys within one refill time (burst / rate = 5 s): nothing is
        // ever idle, the worst case for sweeping.
        for i in 0..2_000_000u32 {
            assert!(table.take(i, 1.0 + f64::from(i) * 1e-6, 2.0, 10.0));
            if table.sweep_at != last_sweep_at {
                sweeps += 1;
                last_sweep_at = table.sweep_at;
            }
            assert!(table.len() <= RATE_MAX_KEYS, "{} keys", table.len());
        }
        // Doubling between sweeps: a handful of sweeps, not one per packet.
        assert!(sweeps < 40, "{sweeps} sweeps");
    }

    #[test]
    fn limits_still_apply_to_a_key_that_floods() {
        let mut table = RateTable::new();
        let allowed = (0..100)
            .filter(|i| table.take(7u8, f64::from(*i) * 1e-3, 2.0, 10.0))
            .count();
        assert_eq!(allowed, 10, "the burst, and no refill within 0.1 s at 2/s");
    }

    #[test]
    fn idle_keys_are_swept_and_busy_ones_kept() {
        let mut table = RateTable::new();
        for i in 0..RATE_SWEEP_AT as u32 {
            table.take(i, 0.0, 2.0, 10.0);
        }
        // 10 s later (refill time 5 s) one more key: the sweep drops every idle one.
        table.take(u32::MAX, 10.0, 2.0, 10.0);
        assert_eq!(table.len(), 1);
    }
}

/// The DHCP engine. One per server; the driver serialises calls.
pub struct Engine {
    cfg: DhcpConfig,
    boot: BootSettings,
    subnets: Vec<SubnetPlan>,
    hosts: HashMap<Mac, usize>,
    reserved: HashSet<Ipv4Addr>,
    by_ip: HashMap<Ipv4Addr, Lease>,
    by_client: HashMap<ClientKey, Ipv4Addr>,
    buckets: RateTable<[u8; 6]>,
    relay_buckets: RateTable<Ipv4Addr>,
    unknown_arch_logged: HashSet<Mac>,
    counters: Arc<Counters>,
}

const PXE_DISCOVERY_CONTROL_SKIP: [u8; 4] = [6, 1, 8, 255];
const IPXE_NO_PXEDHCP: [u8; 3] = [176, 1, 1];

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
        let subnets = cfg
            .subnet
            .iter()
            .enumerate()
            .map(|(index, s)| {
                let pools: Vec<(u32, u32)> = s
                    .pools
                    .iter()
                    .map(|[a, b]| (u32::from(*a), u32::from(*b)))
                    .filter(|(a, b)| a <= b)
                    .collect();
                let size = pools.iter().map(|(a, b)| (b - a) as u64 + 1).sum();
                let in_pool = |ip: &&Ipv4Addr| {
                    let v = u32::from(**ip);
                    pools.iter().any(|&(a, b)| a <= v && v <= b)
                };
                let dynamic: u64 = size - reserved.iter().filter(in_pool).count() as u64;
                // The epsilon keeps 0.7 x 10 from rounding up to 8.
                let share = cfg.limits.new_client_share;
                let unproven_cap = (share * dynamic as f64 - 1e-9).ceil().max(0.0) as u64;
                SubnetPlan {
                    index,
                    net: s.cidr,
                    pools,
                    cursor: 0,
                    size,
                    unproven: HashSet::new(),
                    unproven_expiry: BinaryHeap::new(),
                    unproven_cap,
                    refused_unlogged: 0,
                    last_warning: None,
                }
            })
            .collect();
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
            by_ip: HashMap::new(),
            by_client: HashMap::new(),
            buckets: RateTable::new(),
            relay_buckets: RateTable::new(),
            unknown_arch_logged: HashSet::new(),
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

    /// Loads persisted leases (at start, before the first packet).
    pub fn load_leases(&mut self, records: &[LeaseRecord]) {
        for r in records {
            let Ok(mac) = r.mac.parse::<Mac>() else {
                tracing::warn!(ip = %r.ip, mac = r.mac, "dhcp: stored lease has a bad MAC; skipped");
                continue;
            };
            let status = match r.state {
                LeaseState::Bound => LeaseStatus::Bound,
                LeaseState::Released => LeaseStatus::Released,
                LeaseState::Declined => LeaseStatus::Declined,
            };
            // It existed before this run: proven, so never counted (the time does not matter).
            self.insert(
                Lease {
                    ip: r.ip,
                    mac,
                    client_id: r.client_id.clone(),
                    hostname: r.hostname.clone(),
                    status,
                    expires: r.expires,
                    proven: true,
                },
                0,
            );
        }
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
        let leases: Vec<Lease> = self.by_ip.drain().map(|(_, l)| l).collect();
        let counters = self.counters.clone();
        let boot = self.boot.clone();
        *self = Engine::new(cfg, boot);
        self.counters = counters;
        for lease in leases {
            self.insert(
                Lease {
                    proven: true,
                    ..lease
                },
                0,
            );
        }
    }

    /// The client holding a bound, unexpired lease of `ip` (`now`: seconds since the epoch).
    /// Other parts of chainboot use it to tell which machine an address belongs to.
    pub fn bound_to(&self, ip: Ipv4Addr, now: i64) -> Option<Mac> {
        self.by_ip
            .get(&ip)
            .filter(|l| l.status == LeaseStatus::Bound && l.expires > now)
            .map(|l| l.mac)
    }

    /// Every address in the table (offers included).
    pub fn leases(&self) -> Vec<Lease> {
        let mut v: Vec<Lease> = self.by_ip.values().cloned().collect();
        v.sort_by_key(|l| u32::from(l.ip));
        v
    }

    /// Puts `lease` in the table (replacing whatever held its address) and updates the
    /// starvation guard's count.
    fn insert(&mut self, lease: Lease, now: i64) {
        let ip = lease.ip;
        let key = lease.key();
        if let Some(old) = self.by_ip.get(&lease.ip) {
            let old_key = old.key();
            if old_key != key && self.by_client.get(&old_key) == Some(&lease.ip) {
                self.by_client.remove(&old_key);
            }
        }
        if lease.status != LeaseStatus::Declined {
            self.by_client.insert(key, lease.ip);
        }
        self.by_ip.insert(lease.ip, lease);
        self.account(ip, now);
    }

    /// The subnet whose dynamic pool holds `ip` (static hosts' addresses are in none).
    fn pool_of(&self, ip: Ipv4Addr) -> Option<usize> {
        if self.reserved.contains(&ip) {
            return None;
        }
        self.subnets.iter().position(|p| p.in_pool(ip))
    }

    /// Brings the starvation guard's count up to date for `ip` after its entry in `by_ip`
    /// changed (every mutation of `by_ip` calls this: that is what keeps the count exact).
    fn account(&mut self, ip: Ipv4Addr, now: i64) {
        let Some(sub) = self.pool_of(ip) else { return };
        let held = self
            .by_ip
            .get(&ip)
            .filter(|l| !l.proven && l.status != LeaseStatus::Released && l.expires > now)
            .map(|l| l.expires);
        let by_ip = &self.by_ip;
        let plan = &mut self.subnets[sub];
        let Some(expires) = held else {
            plan.unproven.remove(&ip);
            return;
        };
        plan.unproven.insert(ip);
        plan.unproven_expiry.push(Reverse((expires, u32::from(ip))));
        // Superseded entries pile up when leases are extended; rebuild the heap from the set
        // now and then (amortised O(1): only after more pushes than the set holds).
        if plan.unproven_expiry.len() > 2 * plan.unproven.len() + 1024 {
            plan.unproven_expiry = plan
                .unproven
                .iter()
                .filter_map(|ip| by_ip.get(ip).map(|l| Reverse((l.expires, u32::from(*ip)))))
                .collect();
        }
    }

    /// Stops counting the unproven offers and leases of subnet `sub` that lapsed by `now`.
    fn expire_unproven(&mut self, sub: usize, now: i64) {
        let by_ip = &self.by_ip;
        let plan = &mut self.subnets[sub];
        while let Some(&Reverse((expires, v))) = plan.unproven_expiry.peek() {
            if expires > now {
                break;
            }
            plan.unproven_expiry.pop();
            let ip = Ipv4Addr::from(v);
            // Still held past `now` means the entry was superseded by a later one.
            if by_ip.get(&ip).is_none_or(|l| l.expires <= now) {
                plan.unproven.remove(&ip);
            }
        }
    }

    /// May an unproven client of `sub` take `ip` at `now`? Yes when it already holds it (an
    /// offer turning into a lease) or the pool's unproven holdings are below the cap.
    fn unproven_room(&mut self, sub: usize, ip: Ipv4Addr, now: i64) -> bool {
        let l = self.cfg.limits;
        if l.new_client_share >= 1.0 {
            return true;
        }
        let plan = &mut self.subnets[sub];
        if plan.unproven.contains(&ip) || (plan.unproven.len() as u64) < plan.unproven_cap {
            return true;
        }
        plan.refused_unlogged += 1;
        let window = l.new_client_window.0.as_secs().max(1) as i64;
        if plan
            .last_warning
            .is_none_or(|t| now >= t + window || now < t)
        {
            tracing::warn!(subnet = %plan.net, held = plan.unproven.len(), cap = plan.unproven_cap, refused = plan.refused_unlogged, "dhcp: starvation guard: clients that never came back hold limits.new_client_share of the pool; refusing new clients (many unknown MACs, possible starvation attack); returning clients and static hosts are still served");
            plan.last_warning = Some(now);
            plan.refused_unlogged = 0;
        }
        false
    }

    /// The starvation guard's state per subnet at `now`.
    pub fn guard_state(&mut self, now: SystemTime) -> Vec<GuardState> {
        let now = unix(now);
        (0..self.subnets.len())
            .map(|sub| {
                self.expire_unproven(sub, now);
                let p = &self.subnets[sub];
                GuardState {
                    subnet: p.net,
                    unproven: p.unproven.len() as u64,
                    cap: p.unproven_cap,
                }
            })
            .collect()
    }

    /// Has the client `key` come back since it was first given an address (or is it a static
    /// host)? Its record (current or previous lease) is proven, or it completed a DORA before
    /// (bound or released): this packet is its return.
    fn returning(&self, key: &ClientKey, mac: Mac, sub: usize) -> bool {
        if self.reservation(mac, sub).is_some() {
            return true;
        }
        self.by_client
            .get(key)
            .and_then(|ip| self.by_ip.get(ip))
            .is_some_and(|l| {
                &l.key() == key
                    && (l.proven || matches!(l.status, LeaseStatus::Bound | LeaseStatus::Released))
            })
    }

    fn rate_ok(&mut self, chaddr: &[u8], now: SystemTime) -> bool {
        let mut k = [0u8; 6];
        for (d, s) in k.iter_mut().zip(chaddr) {
            *d = *s;
        }
        let (rate, burst) = (self.cfg.limits.per_mac_rate, self.cfg.limits.per_mac_burst);
        self.buckets.take(k, unix_f(now), rate, burst)
    }

    fn relay_rate_ok(&mut self, giaddr: Ipv4Addr, now: SystemTime) -> bool {
        if giaddr.is_unspecified() {
            return true;
        }
        let l = &self.cfg.limits;
        let (rate, burst) = (l.per_relay_rate, l.per_relay_burst);
        self.relay_buckets.take(giaddr, unix_f(now), rate, burst)
    }

    /// Handles one received packet.
    pub fn handle(&mut self, now: SystemTime, ingress: &Ingress, bytes: &[u8]) -> Handled {
        let c = self.counters.clone();
        bump(&c.received);
        if self.cfg.mode == Mode::Off {
            return Handled::new(Outcome::Ignored(Ignored::ModeOff));
        }
        let req = match parse_request(bytes, self.cfg.limits.max_request_bytes) {
            Ok(r) => r,
            Err(e) => {
                bump(if e == ParseError::Oversized {
                    &c.drop_oversized
                } else {
                    &c.drop_malformed
                });
                return Handled::new(Outcome::Dropped(DropReason::Malformed(e)));
            }
        };
        if !self.relay_rate_ok(req.header.giaddr(), now) {
            bump(&c.drop_relay_rate_limited);
            return Handled::new(Outcome::Dropped(DropReason::RelayRateLimited));
        }
        if !self.rate_ok(req.header.chaddr(), now) {
            bump(&c.drop_rate_limited);
            return Handled::new(Outcome::Dropped(DropReason::RateLimited));
        }
        match req.msg_type {
            MessageType::Discover => bump(&c.discover),
            MessageType::Request => bump(&c.request),
            MessageType::Decline => bump(&c.decline),
            MessageType::Release => bump(&c.release),
            MessageType::Inform => bump(&c.inform),
            // Server-to-client types sent to a server port: counted as received only.
            MessageType::Offer | MessageType::Ack | MessageType::Nak => {}
        }
        let facts = ClientFacts::from_request(&req);
        let server = self.boot.server_for(ingress.local_addr);
        let decision = decide(&facts, &self.boot, server);
        let mut out = if ingress.local_port == self.cfg.ports.proxy {
            self.boot_server(&req, &facts, &decision, ingress)
        } else {
            match self.cfg.mode {
                Mode::Proxy => self.proxy(&req, &facts, &decision, ingress),
                Mode::Server => self.server(now, &req, &facts, &decision, ingress),
                Mode::Off => Handled::new(Outcome::Ignored(Ignored::ModeOff)),
            }
        };
        match &out.outcome {
            Outcome::Replied(t) => {
                bump(match t {
                    MessageType::Offer => &c.offer_sent,
                    MessageType::Ack => &c.ack_sent,
                    _ => &c.nak_sent,
                });
                if let BootDecision::Boot(a) = &decision {
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
                Ignored::PoolExhausted => bump(&c.pool_exhausted),
                Ignored::NewClientLimit => bump(&c.refused_new_client),
                Ignored::ModeOff | Ignored::NoReply => {}
            },
            Outcome::Dropped(DropReason::ReplyTooLarge) => bump(&c.drop_reply_too_large),
            Outcome::Dropped(_) => {}
        }
        out.request = Some((req.msg_type, facts));
        out.decision = Some(decision);
        out
    }

    /// Logs an unknown architecture once per MAC (PROTOCOL.md: answer nothing, log the value).
    fn note_unknown_arch(&mut self, facts: &ClientFacts, value: u16) {
        let Some(mac) = facts.mac else { return };
        if self.unknown_arch_logged.len() >= 4096 {
            self.unknown_arch_logged.clear();
        }
        if self.unknown_arch_logged.insert(mac) {
            tracing::warn!(%mac, option93 = value, "dhcp: client architecture {value} has no first-stage binary; not answering");
        }
    }

    /// Proxy mode on the DHCP port: boot information only, never an address.
    fn proxy(
        &mut self,
        req: &Request,
        facts: &ClientFacts,
        decision: &BootDecision,
        ingress: &Ingress,
    ) -> Handled {
        let answer = match decision {
            BootDecision::Boot(a) => a,
            BootDecision::NoBoot(NoBoot::UnknownArch { value }) => {
                self.note_unknown_arch(facts, *value);
                return Handled::new(Outcome::Ignored(Ignored::UnknownArch));
            }
            BootDecision::NoBoot(NoBoot::NotBootClient) => {
                return Handled::new(Outcome::Ignored(Ignored::NotBootClient));
            }
        };
        let reply_type = match req.msg_type {
            MessageType::Discover => MessageType::Offer,
            // A REQUEST addressed to us on port 67 (some ROMs do not use 4011).
            MessageType::Request if req.opt_ip(code::SERVER_ID) == Some(ingress.local_addr) => {
                MessageType::Ack
            }
            _ => return Handled::new(Outcome::Ignored(Ignored::NoReply)),
        };
        let mut r = Reply::to(req, reply_type);
        r.push(code::SERVER_ID, ingress.local_addr.octets().to_vec());
        self.add_boot(&mut r, req, facts, answer, false);
        let dest = if !req.header.giaddr().is_unspecified() {
            Destination::Unicast(SocketAddrV4::new(
                req.header.giaddr(),
                self.cfg.ports.server,
            ))
        } else if !req.header.ciaddr().is_unspecified() {
            Destination::Unicast(SocketAddrV4::new(
                req.header.ciaddr(),
                self.cfg.ports.client,
            ))
        } else {
            Destination::Broadcast {
                port: self.cfg.ports.client,
            }
        };
        self.finish(req, r, dest, ingress, reply_type, None)
    }

    /// The PXE boot server port (4011): REQUEST/INFORM from a client that already has an
    /// address, answered with an ACK holding the file (UEFI builds that insist on it).
    fn boot_server(
        &mut self,
        req: &Request,
        facts: &ClientFacts,
        decision: &BootDecision,
        ingress: &Ingress,
    ) -> Handled {
        if !matches!(req.msg_type, MessageType::Request | MessageType::Inform) {
            return Handled::new(Outcome::Ignored(Ignored::NoReply));
        }
        let answer = match decision {
            BootDecision::Boot(a) => a,
            BootDecision::NoBoot(NoBoot::UnknownArch { value }) => {
                self.note_unknown_arch(facts, *value);
                return Handled::new(Outcome::Ignored(Ignored::UnknownArch));
            }
            BootDecision::NoBoot(NoBoot::NotBootClient) => {
                return Handled::new(Outcome::Ignored(Ignored::NotBootClient));
            }
        };
        let mut r = Reply::to(req, MessageType::Ack);
        r.msg.set_ciaddr(req.header.ciaddr());
        r.push(code::SERVER_ID, ingress.local_addr.octets().to_vec());
        self.add_boot(&mut r, req, facts, answer, false);
        let dest = if !ingress.src.ip().is_unspecified() {
            Destination::Unicast(ingress.src)
        } else if !req.header.ciaddr().is_unspecified() {
            Destination::Unicast(SocketAddrV4::new(
                req.header.ciaddr(),
                self.cfg.ports.client,
            ))
        } else {
            Destination::Broadcast {
                port: self.cfg.ports.client,
            }
        };
        self.finish(req, r, dest, ingress, MessageType::Ack, None)
    }

    /// Boot fields and options for a boot client. `with_address`: the same reply hands out
    /// the address, so iPXE may skip waiting for ProxyDHCP (175.176, PROTOCOL.md: ~2 s).
    fn add_boot(
        &self,
        r: &mut Reply,
        req: &Request,
        facts: &ClientFacts,
        a: &BootAnswer,
        with_address: bool,
    ) {
        // siaddr always: iPXE ignores a ProxyDHCP reply without it (PROTOCOL.md).
        r.msg.set_siaddr(a.next_server);
        if a.file.len() < 128 {
            r.msg.set_fname_str(&a.file);
        }
        r.push(code::VENDOR_CLASS, a.vendor_class.as_bytes().to_vec());
        if let Some(uuid) = &facts.uuid {
            // Echo 97 when sent; some Intel ROMs never send it (pixiecore#21).
            r.push(code::CLIENT_UUID, uuid.clone());
        }
        if a.vendor_class == "PXEClient" && !facts.is_ipxe {
            // 43: PXE_DISCOVERY_CONTROL = 8, "use the boot file, skip boot server discovery".
            r.push(code::VENDOR_SPECIFIC, PXE_DISCOVERY_CONTROL_SKIP.to_vec());
        }
        if a.file.len() >= 128 || req.requested(code::BOOTFILE) {
            r.push(code::BOOTFILE, a.file.as_bytes().to_vec());
        }
        if facts.is_ipxe && with_address {
            r.push(code::IPXE, IPXE_NO_PXEDHCP.to_vec());
        }
    }

    fn finish(
        &mut self,
        req: &Request,
        r: Reply,
        dest: Destination,
        ingress: &Ingress,
        t: MessageType,
        address: Option<Ipv4Addr>,
    ) -> Handled {
        let mut r = r;
        r.mark_essential();
        self.finish_with_extras(req, r, dest, ingress, t, address, Vec::new())
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_with_extras(
        &mut self,
        req: &Request,
        r: Reply,
        dest: Destination,
        ingress: &Ingress,
        t: MessageType,
        address: Option<Ipv4Addr>,
        lease_writes: Vec<LeaseRecord>,
    ) -> Handled {
        let Some(bytes) = r.encode(req.max_reply_len()) else {
            return Handled::new(Outcome::Dropped(DropReason::ReplyTooLarge));
        };
        let mut h = Handled::new(Outcome::Replied(t));
        h.outgoing.push(Outgoing {
            bytes,
            dest,
            ifindex: ingress.ifindex,
            source: ingress.local_addr,
            msg_type: t,
        });
        h.lease_writes = lease_writes;
        h.address = address;
        h
    }

    fn subnet_for(&self, req: &Request, ingress: &Ingress) -> Option<usize> {
        // Relayed: the relay's address names the client's link (RFC 2131 §4.3.1).
        let anchor = if req.header.giaddr().is_unspecified() {
            ingress.local_addr
        } else {
            req.header.giaddr()
        };
        self.subnets.iter().position(|s| s.net.contains(&anchor))
    }

    fn client_key(req: &Request, mac: Mac) -> ClientKey {
        ClientKey::of(req.opt(code::CLIENT_ID), mac)
    }

    fn held_by(&self, ip: Ipv4Addr, key: &ClientKey) -> bool {
        self.by_ip
            .get(&ip)
            .is_some_and(|l| &l.key() == key && l.status != LeaseStatus::Declined)
    }

    /// An address nobody else may use for `key` at `now`.
    fn free_for(&self, ip: Ipv4Addr, key: &ClientKey, now: i64) -> bool {
        match self.by_ip.get(&ip) {
            None => true,
            Some(l) if &l.key() == key => l.status != LeaseStatus::Declined || l.expires <= now,
            Some(l) => l.reclaimable(now),
        }
    }

    fn reservation(&self, mac: Mac, sub: usize) -> Option<Ipv4Addr> {
        let h = &self.cfg.host[*self.hosts.get(&mac)?];
        usable(&self.subnets[sub].net, h.ip).then_some(h.ip)
    }

    /// The address to offer (RFC 2131 §4.3.1 order: reservation, the client's current or
    /// previous address, the requested one, then a free one).
    fn choose_address(
        &mut self,
        sub: usize,
        key: &ClientKey,
        mac: Mac,
        requested: Option<Ipv4Addr>,
        now: i64,
    ) -> Option<Ipv4Addr> {
        if let Some(ip) = self.reservation(mac, sub) {
            return Some(ip);
        }
        if let Some(&ip) = self.by_client.get(key) {
            if self.subnets[sub].in_pool(ip)
                && !self.reserved.contains(&ip)
                && self.free_for(ip, key, now)
            {
                return Some(ip);
            }
        }
        if let Some(ip) = requested {
            if self.subnets[sub].in_pool(ip)
                && !self.reserved.contains(&ip)
                && self.free_for(ip, key, now)
            {
                return Some(ip);
            }
        }
        let plan = &self.subnets[sub];
        let size = plan.size;
        if size == 0 {
            return None;
        }
        // First pass: never-used addresses; second: reclaimable ones (expired, released).
        for pass in 0..2 {
            for i in 0..size {
                let n = (plan.cursor + i) % size;
                let ip = plan.nth(n);
                if self.reserved.contains(&ip) {
                    continue;
                }
                let ok = match self.by_ip.get(&ip) {
                    None => true,
                    Some(l) => pass == 1 && l.reclaimable(now),
                };
                if ok {
                    self.subnets[sub].cursor = n + 1;
                    return Some(ip);
                }
            }
        }
        None
    }

    fn server(
        &mut self,
        now_t: SystemTime,
        req: &Request,
        facts: &ClientFacts,
        decision: &BootDecision,
        ingress: &Ingress,
    ) -> Handled {
        let now = unix(now_t);
        let Some(sub) = self.subnet_for(req, ingress) else {
            return Handled::new(Outcome::Ignored(Ignored::NoSubnet));
        };
        let mac = facts
            .mac
            .unwrap_or_else(|| Mac::from_slice(req.header.chaddr()).unwrap_or(Mac([0; 6])));
        let key = Self::client_key(req, mac);
        if let BootDecision::NoBoot(NoBoot::UnknownArch { value }) = decision {
            // Still a DHCP client that deserves an address; it just gets no boot file.
            self.note_unknown_arch(facts, *value);
        }
        let our_id = ingress.local_addr;
        let server_id = req.opt_ip(code::SERVER_ID);
        let requested = req.opt_ip(code::REQUESTED_IP);
        let ciaddr = req.header.ciaddr();
        let net = self.subnets[sub].net;
        // Starvation guard: offers and leases lapsed by now stop counting before we decide.
        self.expire_unproven(sub, now);
        match req.msg_type {
            MessageType::Discover => {
                let Some(ip) = self.choose_address(sub, &key, mac, requested, now) else {
                    tracing::warn!(subnet = %net, %mac, "dhcp: pool exhausted, no address to offer");
                    return Handled::new(Outcome::Ignored(Ignored::PoolExhausted));
                };
                // A second DORA (iPXE after the firmware) proves the client: a boot storm is
                // limited only while its machines are in their first DORA.
                let proven = self.returning(&key, mac, sub);
                if !proven && !self.unproven_room(sub, ip, now) {
                    return Handled::new(Outcome::Ignored(Ignored::NewClientLimit));
                }
                let keep_bound = self.by_ip.get(&ip).is_some_and(|l| {
                    l.key() == key && l.status == LeaseStatus::Bound && l.expires > now
                });
                if keep_bound {
                    if let Some(l) = self.by_ip.get_mut(&ip) {
                        l.proven |= proven;
                    }
                    self.account(ip, now);
                } else {
                    self.insert(
                        Lease {
                            ip,
                            mac,
                            client_id: req.opt(code::CLIENT_ID).map(<[u8]>::to_vec),
                            hostname: facts.hostname.clone(),
                            status: LeaseStatus::Offered,
                            expires: now + self.cfg.offer_time.0.as_secs() as i64,
                            proven,
                        },
                        now,
                    );
                }
                self.address_reply(
                    req,
                    facts,
                    decision,
                    ingress,
                    sub,
                    MessageType::Offer,
                    ip,
                    Vec::new(),
                )
            }
            MessageType::Request => {
                let (ip, proven) = if let Some(sid) = server_id {
                    // SELECTING (RFC 2131 §4.3.2).
                    if sid != our_id {
                        if let Some(&ip) = self.by_client.get(&key) {
                            if self
                                .by_ip
                                .get(&ip)
                                .is_some_and(|l| l.status == LeaseStatus::Offered)
                            {
                                self.by_ip.remove(&ip);
                                self.by_client.remove(&key);
                                self.account(ip, now);
                            }
                        }
                        return Handled::new(Outcome::Ignored(Ignored::OtherServer));
                    }
                    let Some(ip) = requested.or((!ciaddr.is_unspecified()).then_some(ciaddr))
                    else {
                        return self.nak(req, ingress, "no requested address");
                    };
                    let reserved = self.reservation(mac, sub) == Some(ip);
                    if !(self.held_by(ip, &key) || reserved) {
                        return self.nak(req, ingress, "address not offered to you");
                    }
                    // Proven at the DISCOVER or not at all: a retransmitted REQUEST is no
                    // return.
                    let proven = reserved || self.by_ip.get(&ip).is_some_and(|l| l.proven);
                    // Its offer may have lapsed (and stopped counting) in the meantime.
                    if !proven && !self.unproven_room(sub, ip, now) {
                        return Handled::new(Outcome::Ignored(Ignored::NewClientLimit));
                    }
                    (ip, proven)
                } else {
                    // INIT-REBOOT (requested, no ciaddr) or RENEWING/REBINDING (ciaddr).
                    let Some(ip) = requested.or((!ciaddr.is_unspecified()).then_some(ciaddr))
                    else {
                        return Handled::new(Outcome::Ignored(Ignored::NoReply));
                    };
                    if !usable(&net, ip) {
                        return self.nak(req, ingress, "wrong network");
                    }
                    match self.reservation(mac, sub) {
                        Some(r) if r != ip => {
                            return self.nak(req, ingress, "you have a reserved address")
                        }
                        Some(_) => (ip, true),
                        None => {
                            let adoptable = self.subnets[sub].in_pool(ip)
                                && !self.reserved.contains(&ip)
                                && self.free_for(ip, &key, now);
                            if !adoptable {
                                return self.nak(req, ingress, "address not available");
                            }
                            // Renewing, rebinding or rebooting into the lease it was given is
                            // the return that proves a client; claiming an address it was
                            // never given (or only offered) is not.
                            let proven = self.returning(&key, mac, sub);
                            if !proven && !self.unproven_room(sub, ip, now) {
                                return Handled::new(Outcome::Ignored(Ignored::NewClientLimit));
                            }
                            (ip, proven)
                        }
                    }
                };
                let secs = self
                    .cfg
                    .lease_time_for(&self.cfg.subnet[self.subnets[sub].index], proven)
                    .as_secs() as i64;
                let lease = Lease {
                    ip,
                    mac,
                    client_id: req.opt(code::CLIENT_ID).map(<[u8]>::to_vec),
                    hostname: facts.hostname.clone(),
                    status: LeaseStatus::Bound,
                    expires: now + secs,
                    proven,
                };
                let rec = lease.record(now).into_iter().collect();
                self.insert(lease, now);
                self.address_reply(
                    req,
                    facts,
                    decision,
                    ingress,
                    sub,
                    MessageType::Ack,
                    ip,
                    rec,
                )
            }
            MessageType::Decline => {
                if server_id.is_some_and(|s| s != our_id) {
                    return Handled::new(Outcome::Ignored(Ignored::OtherServer));
                }
                let mut h = Handled::new(Outcome::Ignored(Ignored::NoReply));
                if let Some(ip) = requested {
                    // Only a current offer or lease can be declined: quarantining a lapsed one
                    // would let an unproven client hold an address beyond the guard's cap.
                    let current = self.by_ip.get(&ip).is_some_and(|l| l.expires > now);
                    if self.held_by(ip, &key) && current {
                        tracing::warn!(%ip, %mac, "dhcp: client declined address (in use by another host); quarantined");
                        // An unproven client's decline keeps counting for the quarantine:
                        // otherwise DISCOVER + DECLINE per made-up MAC would empty the pool
                        // for decline_time without ever reaching the cap.
                        let proven = self.by_ip.get(&ip).is_some_and(|l| l.proven);
                        let lease = Lease {
                            ip,
                            mac,
                            client_id: None,
                            hostname: None,
                            status: LeaseStatus::Declined,
                            expires: now + self.cfg.decline_time.0.as_secs() as i64,
                            proven,
                        };
                        self.by_client.remove(&key);
                        h.lease_writes.extend(lease.record(now));
                        self.by_ip.insert(ip, lease);
                        self.account(ip, now);
                    }
                }
                h
            }
            MessageType::Release => {
                if server_id.is_some_and(|s| s != our_id) {
                    return Handled::new(Outcome::Ignored(Ignored::OtherServer));
                }
                let mut h = Handled::new(Outcome::Ignored(Ignored::NoReply));
                if let Some(l) = self.by_ip.get_mut(&ciaddr) {
                    if l.key() == key && l.status == LeaseStatus::Bound {
                        l.status = LeaseStatus::Released;
                        l.expires = now;
                        h.lease_writes.extend(l.record(now));
                    }
                }
                self.account(ciaddr, now);
                h
            }
            MessageType::Inform => {
                // RFC 2131 §4.3.5: configuration only; no lease, no yiaddr, reply to ciaddr.
                let mut r = Reply::to(req, MessageType::Ack);
                r.msg.set_ciaddr(ciaddr);
                r.push(code::SERVER_ID, our_id.octets().to_vec());
                r.mark_essential();
                self.add_subnet_options(&mut r, sub, mac);
                if let BootDecision::Boot(a) = decision {
                    self.add_boot(&mut r, req, facts, a, false);
                }
                let dest = self.server_destination(req, None, false);
                self.finish_with_extras(req, r, dest, ingress, MessageType::Ack, None, Vec::new())
            }
            _ => Handled::new(Outcome::Ignored(Ignored::NoReply)),
        }
    }

    fn nak(&mut self, req: &Request, ingress: &Ingress, why: &str) -> Handled {
        let mut r = Reply::to(req, MessageType::Nak);
        r.push(code::SERVER_ID, ingress.local_addr.octets().to_vec());
        r.push(code::MESSAGE, why.as_bytes().to_vec());
        if let Some(ri) = req.opt(code::RELAY_AGENT) {
            r.push(code::RELAY_AGENT, ri.to_vec());
        }
        if !req.header.giaddr().is_unspecified() {
            // RFC 2131 §4.3.2: a relayed NAK sets the broadcast bit for the relay.
            r.msg.set_flags(r.msg.flags().set_broadcast());
        }
        let dest = self.server_destination(req, None, true);
        self.finish(req, r, dest, ingress, MessageType::Nak, None)
    }

    fn server_destination(
        &self,
        req: &Request,
        yiaddr: Option<Ipv4Addr>,
        nak: bool,
    ) -> Destination {
        let h = &req.header;
        let client_port = self.cfg.ports.client;
        if !h.giaddr().is_unspecified() {
            return Destination::Unicast(SocketAddrV4::new(h.giaddr(), self.cfg.ports.server));
        }
        if nak {
            return Destination::Broadcast { port: client_port };
        }
        if !h.ciaddr().is_unspecified() {
            return Destination::Unicast(SocketAddrV4::new(h.ciaddr(), client_port));
        }
        if h.flags().broadcast() {
            return Destination::Broadcast { port: client_port };
        }
        match (yiaddr, h.hlen() == 6, Mac::from_slice(h.chaddr())) {
            (Some(ip), true, Some(mac)) => Destination::UnicastNoArp {
                addr: SocketAddrV4::new(ip, client_port),
                mac,
            },
            _ => Destination::Broadcast { port: client_port },
        }
    }

    fn add_subnet_options(&self, r: &mut Reply, sub: usize, mac: Mac) {
        let s = &self.cfg.subnet[self.subnets[sub].index];
        let net = self.subnets[sub].net;
        r.push(code::SUBNET_MASK, net.netmask().octets().to_vec());
        if let Some(router) = s.router {
            r.push(code::ROUTER, router.octets().to_vec());
        }
        let ips = |v: &[Ipv4Addr]| v.iter().flat_map(|i| i.octets()).collect::<Vec<u8>>();
        if !s.dns.is_empty() {
            r.push(code::DNS, ips(&s.dns));
        }
        if let Some(&hi) = self.hosts.get(&mac) {
            if let Some(name) = &self.cfg.host[hi].hostname {
                r.push(code::HOSTNAME, name.as_bytes().to_vec());
            }
        }
        if let Some(d) = &s.domain {
            r.push(code::DOMAIN, d.as_bytes().to_vec());
        }
        if let Some(mtu) = s.mtu {
            r.push(code::MTU, mtu.to_be_bytes().to_vec());
        }
        r.push(
            code::BROADCAST,
            s.broadcast.unwrap_or(net.broadcast()).octets().to_vec(),
        );
        if !s.ntp.is_empty() {
            r.push(code::NTP, ips(&s.ntp));
        }
        if let Some(t) = &s.tftp_server {
            r.push(code::TFTP_SERVER, t.as_bytes().to_vec());
        }
        if let Some(f) = &s.boot_file {
            r.push(code::BOOTFILE, f.as_bytes().to_vec());
        }
        // Global options first, so that a subnet's own option with the same code replaces it.
        for o in self.cfg.options.iter().chain(&s.options) {
            if let Ok(v) = o.value() {
                r.push(o.code, v);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn address_reply(
        &mut self,
        req: &Request,
        facts: &ClientFacts,
        decision: &BootDecision,
        ingress: &Ingress,
        sub: usize,
        t: MessageType,
        ip: Ipv4Addr,
        writes: Vec<LeaseRecord>,
    ) -> Handled {
        // The offer or lease for `ip` was just recorded, with whether its client is proven.
        let proven = self.by_ip.get(&ip).is_some_and(|l| l.proven);
        let secs = self
            .cfg
            .lease_time_for(&self.cfg.subnet[self.subnets[sub].index], proven)
            .as_secs();
        let lease = u32::try_from(secs).unwrap_or(u32::MAX);
        let mut r = Reply::to(req, t);
        r.msg.set_yiaddr(ip);
        r.msg.set_siaddr(ingress.local_addr);
        r.push(code::SERVER_ID, ingress.local_addr.octets().to_vec());
        r.push(code::LEASE_TIME, lease.to_be_bytes().to_vec());
        r.push(code::RENEWAL_T1, (lease / 2).to_be_bytes().to_vec());
        r.push(code::REBINDING_T2, (lease / 8 * 7).to_be_bytes().to_vec());
        if let Some(ri) = req.opt(code::RELAY_AGENT) {
            // RFC 3046 §2.2: echo option 82 to the relay.
            r.push(code::RELAY_AGENT, ri.to_vec());
        }
        let mac = facts.mac.unwrap_or(Mac([0; 6]));
        r.push(
            code::SUBNET_MASK,
            self.subnets[sub].net.netmask().octets().to_vec(),
        );
        if let Some(router) = self.cfg.subnet[self.subnets[sub].index].router {
            r.push(code::ROUTER, router.octets().to_vec());
        }
        if let BootDecision::Boot(a) = decision {
            self.add_boot(&mut r, req, facts, a, true);
        }
        r.mark_essential();
        self.add_subnet_options(&mut r, sub, mac);
        let dest = self.server_destination(req, Some(ip), false);
        self.finish_with_extras(req, r, dest, ingress, t, Some(ip), writes)
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
