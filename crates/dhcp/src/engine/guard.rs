//! The starvation guard: the addresses of a pool held (offered, bound, declined) by unproven
//! clients, those that have not come back since they were first given one, are capped at
//! `limits.new_client_share` of the pool, so a flood of made-up MACs cannot take every
//! address. [`Guard`] is generic over the address type (a DHCPv6 engine counts IPv6
//! addresses the same way); the `impl Engine` below ties it to the IPv4 lease table.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::fmt::Display;
use std::hash::Hash;
use std::net::Ipv4Addr;
use std::time::SystemTime;

use ipnet::Ipv4Net;

use super::leases::LeaseStatus;
use super::{unix, Engine};

/// One pool's unproven holdings.
pub struct Guard<A> {
    /// The pool addresses held by unproven clients. Kept exact on every state change so that
    /// the check is O(1) per packet.
    held: HashSet<A>,
    /// When each of them stops counting (lazy: an entry whose lease has since been extended or
    /// proven is skipped when popped), so expiry costs no scan of the pool.
    expiry: BinaryHeap<Reverse<(i64, A)>>,
    /// ceil(new_client_share x dynamic addresses of the pool).
    cap: u64,
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

impl<A: Copy + Ord + Hash> Guard<A> {
    /// A guard for a pool of `dynamic` addresses (static hosts' excluded).
    pub fn new(share: f64, dynamic: u64) -> Guard<A> {
        // The epsilon keeps 0.7 x 10 from rounding up to 8.
        let cap = (share * dynamic as f64 - 1e-9).ceil().max(0.0) as u64;
        Guard {
            held: HashSet::new(),
            expiry: BinaryHeap::new(),
            cap,
            refused_unlogged: 0,
            last_warning: None,
        }
    }

    pub fn held(&self) -> u64 {
        self.held.len() as u64
    }

    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// Records whether `addr` is now held by an unproven client, and until when. `expiry_of`
    /// says when any address's current holding ends (for the occasional rebuild).
    pub fn account(
        &mut self,
        addr: A,
        unproven_until: Option<i64>,
        expiry_of: impl Fn(&A) -> Option<i64>,
    ) {
        let Some(expires) = unproven_until else {
            self.held.remove(&addr);
            return;
        };
        self.held.insert(addr);
        self.expiry.push(Reverse((expires, addr)));
        // Superseded entries pile up when leases are extended; rebuild the heap from the set
        // now and then (amortised O(1): only after more pushes than the set holds).
        if self.expiry.len() > 2 * self.held.len() + 1024 {
            self.expiry = self
                .held
                .iter()
                .filter_map(|a| expiry_of(a).map(|e| Reverse((e, *a))))
                .collect();
        }
    }

    /// Stops counting the holdings that lapsed by `now`.
    pub fn expire(&mut self, now: i64, expiry_of: impl Fn(&A) -> Option<i64>) {
        while let Some(&Reverse((expires, addr))) = self.expiry.peek() {
            if expires > now {
                break;
            }
            self.expiry.pop();
            // Still held past `now` means the entry was superseded by a later one.
            if expiry_of(&addr).is_none_or(|e| e <= now) {
                self.held.remove(&addr);
            }
        }
    }

    /// May an unproven client take `addr` at `now`? Yes when it already holds it (an offer
    /// turning into a lease) or the pool's unproven holdings are below the cap. Refusals are
    /// logged at most once per `window` seconds for `pool`.
    pub fn room(&mut self, addr: A, now: i64, window: i64, pool: &dyn Display) -> bool {
        if self.held.contains(&addr) || self.held() < self.cap {
            return true;
        }
        self.refused_unlogged += 1;
        if self
            .last_warning
            .is_none_or(|t| now >= t + window.max(1) || now < t)
        {
            tracing::warn!(subnet = %pool, held = self.held(), cap = self.cap, refused = self.refused_unlogged, "dhcp: starvation guard: clients that never came back hold limits.new_client_share of the pool; refusing new clients (many unknown MACs, possible starvation attack); returning clients and static hosts are still served");
            self.last_warning = Some(now);
            self.refused_unlogged = 0;
        }
        false
    }
}

impl Engine {
    /// Brings the starvation guard's count up to date for `ip` after its lease changed (every
    /// change to the lease table calls this: that is what keeps the count exact).
    pub(super) fn account(&mut self, ip: Ipv4Addr, now: i64) {
        let Some(sub) = self.pool_of(ip) else { return };
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

    /// Stops counting the unproven offers and leases of subnet `sub` that lapsed by `now`.
    pub(super) fn expire_unproven(&mut self, sub: usize, now: i64) {
        let leases = &self.leases;
        self.subnets[sub].guard.expire(now, |a| leases.expires(*a));
    }

    /// May an unproven client of `sub` take `ip` at `now`?
    pub(super) fn unproven_room(&mut self, sub: usize, ip: Ipv4Addr, now: i64) -> bool {
        let l = self.cfg.limits;
        if l.new_client_share >= 1.0 {
            return true;
        }
        let window = l.new_client_window.as_secs() as i64;
        let plan = &mut self.subnets[sub];
        plan.guard.room(ip, now, window, &plan.net)
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
                    unproven: p.guard.held(),
                    cap: p.guard.cap(),
                }
            })
            .collect()
    }
}
