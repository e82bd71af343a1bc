//! Subnets and their pools (IPv4): which subnet a request belongs to, which address a client
//! gets (RFC 2131 §4.3.1), which clients count as returning for the starvation guard.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use chainboot_machine::Mac;
use ipnet::Ipv4Net;

use super::guard::Guard;
use super::leases::ClientKey;
use super::{Engine, Ingress};
use crate::config::{usable, DhcpConfig};
use crate::wire::Request;

/// One `[[dhcp.subnet]]` as the engine uses it.
pub(crate) struct SubnetPlan {
    /// Its position in the config's subnet list.
    pub(crate) index: usize,
    pub(crate) net: Ipv4Net,
    pools: Vec<(u32, u32)>,
    /// Next pool offset to try (round robin keeps recently freed addresses cool).
    cursor: u64,
    size: u64,
    pub(crate) guard: Guard<Ipv4Addr>,
}

impl SubnetPlan {
    /// The plans of `cfg`'s subnets; `reserved`: the static hosts' addresses, which are in no
    /// dynamic pool.
    pub(crate) fn all(cfg: &DhcpConfig, reserved: &HashSet<Ipv4Addr>) -> Vec<SubnetPlan> {
        cfg.subnet
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
                let dynamic = size - reserved.iter().filter(in_pool).count() as u64;
                SubnetPlan {
                    index,
                    net: s.cidr,
                    pools,
                    cursor: 0,
                    size,
                    guard: Guard::new(cfg.limits.new_client_share, dynamic),
                }
            })
            .collect()
    }

    pub(crate) fn in_pool(&self, ip: Ipv4Addr) -> bool {
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

impl Engine {
    /// The subnet whose dynamic pool holds `ip` (static hosts' addresses are in none).
    pub(super) fn pool_of(&self, ip: Ipv4Addr) -> Option<usize> {
        if self.reserved.contains(&ip) {
            return None;
        }
        self.subnets.iter().position(|p| p.in_pool(ip))
    }

    /// The subnet of the client's link.
    pub(super) fn subnet_for(&self, req: &Request, ingress: &Ingress) -> Option<usize> {
        // Relayed: the relay's address names the client's link (RFC 2131 §4.3.1).
        let anchor = if req.header.giaddr().is_unspecified() {
            ingress.local_addr
        } else {
            req.header.giaddr()
        };
        self.subnets.iter().position(|s| s.net.contains(&anchor))
    }

    /// The static host address of `mac`, when it lies in subnet `sub`.
    pub(super) fn reservation(&self, mac: Mac, sub: usize) -> Option<Ipv4Addr> {
        let h = &self.cfg.host[*self.hosts.get(&mac)?];
        usable(&self.subnets[sub].net, h.ip).then_some(h.ip)
    }

    /// Has the client `key` come back since it was first given an address (or is it a static
    /// host)? Then this packet is its return.
    pub(super) fn returning(&self, key: &ClientKey, mac: Mac, sub: usize) -> bool {
        self.reservation(mac, sub).is_some() || self.leases.has_returned(key)
    }

    /// May `key` take the dynamic address `ip` of subnet `sub` at `now`?
    pub(super) fn adoptable(&self, sub: usize, ip: Ipv4Addr, key: &ClientKey, now: i64) -> bool {
        self.subnets[sub].in_pool(ip)
            && !self.reserved.contains(&ip)
            && self.leases.free_for(ip, key, now)
    }

    /// The address to offer (RFC 2131 §4.3.1 order: reservation, the client's current or
    /// previous address, the requested one, then a free one).
    pub(super) fn choose_address(
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
        let known = self.leases.of_client(key);
        if let Some(ip) = [known, requested]
            .into_iter()
            .flatten()
            .find(|ip| self.adoptable(sub, *ip, key, now))
        {
            return Some(ip);
        }
        let plan = &self.subnets[sub];
        let size = plan.size;
        // In a fleet, each server takes from its own share of the pool first (the addresses
        // whose hash bucket it owns, as for clients), so that servers answering at the same
        // moment do not pick the same free address; the database would refuse the second
        // one's lease and that client would have to ask again. Only when its share is used up
        // does it take from the others'.
        let fleet = self.fleet.as_ref().filter(|f| f.live().len() > 1);
        let shares: &[bool] = if fleet.is_some() {
            &[true, false]
        } else {
            &[false]
        };
        // First pass: never-used addresses; second: reclaimable ones (expired, released).
        for pass in 0..2 {
            for &own_share_only in shares {
                for i in 0..size {
                    let n = (plan.cursor + i) % size;
                    let ip = plan.nth(n);
                    if self.reserved.contains(&ip) {
                        continue;
                    }
                    if own_share_only && !fleet.is_some_and(|f| f.serves(&ip.octets())) {
                        continue;
                    }
                    let ok = match self.leases.get(ip) {
                        None => true,
                        Some(l) => pass == 1 && l.reclaimable(now),
                    };
                    if ok {
                        self.subnets[sub].cursor = n + 1;
                        return Some(ip);
                    }
                }
            }
        }
        None
    }
}

/// How full one pool is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUsage {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
    pub size: u64,
    /// Addresses bound, offered or quarantined (declined).
    pub in_use: u64,
}

impl Engine {
    /// Every pool's usage, in address order: one pass over the lease table (each lease finds
    /// its pool by binary search), nothing cloned, so a metrics scrape holds the engine only
    /// briefly even with tens of thousands of leases.
    pub fn pool_usage(&self) -> Vec<PoolUsage> {
        let mut pools: Vec<PoolUsage> = self
            .cfg
            .subnet
            .iter()
            .flat_map(|s| s.pools.iter())
            .map(|[start, end]| PoolUsage {
                start: *start,
                end: *end,
                size: u64::from(u32::from(*end).saturating_sub(u32::from(*start))) + 1,
                in_use: 0,
            })
            .collect();
        pools.sort_by_key(|p| u32::from(p.start));
        for l in self.leases.values() {
            if !matches!(
                l.status,
                super::LeaseStatus::Bound
                    | super::LeaseStatus::Offered
                    | super::LeaseStatus::Declined
            ) {
                continue;
            }
            let ip = u32::from(l.ip);
            let i = pools.partition_point(|p| u32::from(p.start) <= ip);
            if let Some(p) = i.checked_sub(1).and_then(|i| pools.get_mut(i)) {
                if ip <= u32::from(p.end) {
                    p.in_use += 1;
                }
            }
        }
        pools
    }
}
