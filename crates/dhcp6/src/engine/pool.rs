//! Prefixes and pools (IPv6): which prefix a client is on, which address an IA gets, and the
//! leases in the shared lease table (keyed by DUID + IAID) with the starvation guard's count.

use std::net::Ipv6Addr;
use std::time::SystemTime;

use chainboot_dhcp::engine::{ClientKey, Guard, Lease, LeaseStatus};
use chainboot_machine::Mac;
use chainboot_store::leases::LeaseState;
use chainboot_store::leases6::Lease6Record;
use ipnet::Ipv6Net;

use super::Engine6;
use crate::config::Dhcp6Config;
use crate::facts::Facts6;
use crate::Ingress6;

/// Stands in for the MAC of a client whose MAC is unknown (the shared lease table wants one;
/// DHCPv6 leases are keyed by DUID + IAID, never by it). Stored as NULL.
pub(crate) const UNKNOWN_MAC: Mac = Mac([0; 6]);

/// Addresses tried from a client's hashed start before a pool counts as full. A /64 pool is
/// never scanned; small pools (up to this size) are tried whole.
const PROBES: u128 = 4096;

pub(crate) fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// One `[[dhcp6.subnet]]` as the engine uses it.
pub(crate) struct Subnet6Plan {
    pub(crate) net: Ipv6Net,
    pools: Vec<(u128, u128)>,
    size: u128,
    pub(crate) guard: Guard<Ipv6Addr>,
    /// Valid lifetime in seconds.
    pub(crate) valid: u32,
}

impl Subnet6Plan {
    pub(crate) fn all(cfg: &Dhcp6Config) -> Vec<Subnet6Plan> {
        cfg.subnet
            .iter()
            .map(|s| {
                let pools: Vec<(u128, u128)> = s
                    .pools
                    .iter()
                    .map(|[a, b]| (u128::from(*a), u128::from(*b)))
                    .filter(|(a, b)| a <= b)
                    .collect();
                let size = pools
                    .iter()
                    .fold(0u128, |n, (a, b)| n.saturating_add(b - a).saturating_add(1));
                let valid = s.valid_lifetime.unwrap_or(cfg.valid_lifetime).as_secs();
                Subnet6Plan {
                    net: s.prefix,
                    pools,
                    size,
                    guard: Guard::new(
                        cfg.limits.new_client_share,
                        u64::try_from(size).unwrap_or(u64::MAX),
                    ),
                    valid: u32::try_from(valid).unwrap_or(u32::MAX - 1),
                }
            })
            .collect()
    }

    pub(crate) fn in_pool(&self, ip: Ipv6Addr) -> bool {
        let v = u128::from(ip);
        self.pools.iter().any(|&(a, b)| a <= v && v <= b)
    }

    /// The `n`th pool address (`n < size`).
    fn nth(&self, mut n: u128) -> Option<Ipv6Addr> {
        for &(a, b) in &self.pools {
            let len = (b - a).saturating_add(1);
            if n < len {
                return Some(Ipv6Addr::from(a + n));
            }
            n -= len;
        }
        None
    }
}

/// The lease table's key for one IA of one client: DUID followed by the IAID.
pub(crate) fn ia_key(duid: &[u8], iaid: u32) -> ClientKey {
    ClientKey::Id([duid, &iaid.to_be_bytes()].concat())
}

/// Where an IA's address starts being looked for: a hash of DUID + IAID (FNV-1a), so a client
/// gets the same address again after its lease lapsed or the server lost its state, without
/// any table of the pool's 2^64 addresses.
fn start_offset(duid: &[u8], iaid: u32, size: u128) -> u128 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in duid.iter().chain(&iaid.to_be_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    if size == 0 {
        0
    } else {
        u128::from(h) % size
    }
}

impl Engine6 {
    /// The prefix of the client's link: the first relay's link-address, else an address of
    /// the ingress interface.
    pub(crate) fn subnet_of(&self, facts: &Facts6, ingress: &Ingress6) -> Option<usize> {
        let find = |a: &Ipv6Addr| self.subnets.iter().position(|s| s.net.contains(a));
        match facts.relay_link {
            Some(link) => find(&link),
            None => ingress.local.iter().find_map(find),
        }
    }

    /// Is `ip` on the link of subnet `sub` (Confirm)?
    pub(crate) fn on_link(&self, sub: usize, ip: Ipv6Addr) -> bool {
        self.subnets[sub].net.contains(&ip)
    }

    /// The address for IA `iaid` of the client: the one it holds, else one it asks for that
    /// is free, else the first free one from its hashed start. `None`: the pool is full.
    ///
    /// In a fleet, the scan from the hashed start takes from this server's share of the pool
    /// first (the addresses whose hash bucket it owns, as for clients), so that two servers
    /// answering different clients at the same moment do not pick the same free address (the
    /// database would refuse the second lease and its client would have to ask again); only
    /// when its share within the probed range is used up does it take from the others'.
    pub(crate) fn choose(
        &self,
        sub: usize,
        duid: &[u8],
        iaid: u32,
        hint: &[Ipv6Addr],
        now: i64,
    ) -> Option<Ipv6Addr> {
        let plan = &self.subnets[sub];
        let key = ia_key(duid, iaid);
        let usable = |ip: Ipv6Addr| plan.in_pool(ip) && self.leases.free_for(ip, &key, now);
        if let Some(ip) = self.leases.of_client(&key).filter(|ip| usable(*ip)) {
            return Some(ip);
        }
        if let Some(ip) = hint.iter().copied().find(|ip| usable(*ip)) {
            return Some(ip);
        }
        let start = start_offset(duid, iaid, plan.size);
        let mut probed =
            (0..plan.size.min(PROBES)).filter_map(|i| plan.nth((start + i) % plan.size));
        if let Some(fleet) = self.fleet.as_ref().filter(|f| f.live().len() > 1) {
            let own = probed
                .clone()
                .find(|ip| fleet.serves(&ip.octets()) && usable(*ip));
            if own.is_some() {
                return own;
            }
        }
        probed.find(|ip| usable(*ip))
    }

    /// Has this IA come back since it was first given an address (starvation guard)?
    pub(crate) fn returning(&self, duid: &[u8], iaid: u32) -> bool {
        self.leases.has_returned(&ia_key(duid, iaid))
    }

    /// May an unproven client of `sub` take `ip`?
    pub(crate) fn unproven_room(&mut self, sub: usize, ip: Ipv6Addr, now: i64) -> bool {
        let l = self.cfg.limits;
        if l.new_client_share >= 1.0 {
            return true;
        }
        let window = l.new_client_window.as_secs() as i64;
        let leases = &self.leases;
        let plan = &mut self.subnets[sub];
        plan.guard.expire(now, |a| leases.expires(*a));
        plan.guard.room(ip, now, window, &plan.net)
    }

    /// Puts a lease in the table and keeps the guard's count exact.
    pub(crate) fn insert(&mut self, lease: Lease<Ipv6Addr>, now: i64) {
        let ip = lease.ip;
        self.leases.insert(lease);
        self.account(ip, now);
    }

    /// Forgets the client's claim on a declined address, which stays out of the pool until
    /// `declined.expires`.
    pub(crate) fn quarantine(
        &mut self,
        duid: &[u8],
        iaid: u32,
        declined: Lease<Ipv6Addr>,
        now: i64,
    ) {
        let ip = declined.ip;
        self.leases.decline(&ia_key(duid, iaid), declined);
        self.account(ip, now);
    }

    /// Brings the starvation guard's count up to date for `ip` after its lease changed.
    fn account(&mut self, ip: Ipv6Addr, now: i64) {
        let Some(sub) = self.subnets.iter().position(|s| s.in_pool(ip)) else {
            return;
        };
        let unproven_until = self
            .leases
            .get(ip)
            .filter(|l| !l.proven && l.status != LeaseStatus::Released && l.expires > now)
            .map(|l| l.expires);
        let leases = &self.leases;
        self.subnets[sub]
            .guard
            .account(ip, unproven_until, |a| leases.expires(*a));
    }

    pub(crate) fn lease(&self, ip: Ipv6Addr) -> Option<&Lease<Ipv6Addr>> {
        self.leases.get(ip)
    }

    pub(crate) fn held_by(&self, ip: Ipv6Addr, duid: &[u8], iaid: u32) -> bool {
        self.leases.held_by(ip, &ia_key(duid, iaid))
    }

    /// Loads persisted leases (at start, before the first packet); they count as proven.
    pub fn load_leases(&mut self, records: &[Lease6Record]) {
        for r in records {
            let mac = r
                .mac
                .as_deref()
                .and_then(|m| m.parse::<Mac>().ok())
                .unwrap_or(UNKNOWN_MAC);
            let status = match r.state {
                LeaseState::Bound => LeaseStatus::Bound,
                LeaseState::Released => LeaseStatus::Released,
                LeaseState::Declined => LeaseStatus::Declined,
            };
            let lease = Lease {
                ip: r.ip,
                mac,
                client_id: Some([&r.duid[..], &r.iaid.to_be_bytes()].concat()),
                hostname: None,
                status,
                expires: r.expires,
                proven: true,
            };
            if status == LeaseStatus::Declined {
                self.quarantine(&r.duid, r.iaid, lease, 0);
            } else {
                self.insert(lease, 0);
            }
        }
    }

    /// The MAC behind a bound, unexpired lease of `ip`, when it is known: which machine an
    /// IPv6 address belongs to.
    pub fn bound_to(&self, ip: Ipv6Addr, now: i64) -> Option<Mac> {
        self.leases
            .get(ip)
            .filter(|l| l.status == LeaseStatus::Bound && l.expires > now)
            .map(|l| l.mac)
            .filter(|m| *m != UNKNOWN_MAC)
    }

    /// Every address in the table (Advertised ones included), ordered.
    pub fn leases(&self) -> Vec<Lease<Ipv6Addr>> {
        let mut v: Vec<Lease<Ipv6Addr>> = self.leases.values().cloned().collect();
        v.sort_by_key(|l| u128::from(l.ip));
        v
    }
}

/// What the store keeps of a lease (Advertised ones are not persisted).
pub(crate) fn record(l: &Lease<Ipv6Addr>, now: i64) -> Option<Lease6Record> {
    let state = match l.status {
        LeaseStatus::Offered => return None,
        LeaseStatus::Bound => LeaseState::Bound,
        LeaseStatus::Released => LeaseState::Released,
        LeaseStatus::Declined => LeaseState::Declined,
    };
    let id = l.client_id.as_deref()?;
    let (duid, iaid) = id.split_at(id.len().checked_sub(4)?);
    Some(Lease6Record {
        ip: l.ip,
        duid: duid.to_vec(),
        iaid: u32::from_be_bytes(iaid.try_into().ok()?),
        mac: (l.mac != UNKNOWN_MAC).then(|| l.mac.to_string()),
        state,
        expires: l.expires,
        updated: now,
        server: None,
    })
}
