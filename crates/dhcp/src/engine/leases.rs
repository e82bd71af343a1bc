//! Lease bookkeeping: who holds which address, in which state, until when. [`LeaseTable`]
//! and [`Lease`] are generic over the address type (a DHCPv6 engine keeps IPv6 addresses
//! keyed by DUID the same way); what is IPv4-only (the store's record, loading, the
//! `impl Engine`) is said so below.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::net::Ipv4Addr;

use chainboot_machine::Mac;
use chainboot_store::leases::{LeaseRecord, LeaseState};

use super::Engine;

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
pub struct Lease<A = Ipv4Addr> {
    pub ip: A,
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
pub enum ClientKey {
    Id(Vec<u8>),
    Hw(Mac),
}

impl ClientKey {
    /// Option 61 when sent, else chaddr. A client identifier that is just the hardware type 1
    /// (Ethernet) followed by the MAC names the same client as chaddr alone: UEFI firmware
    /// (OVMF) sends no option 61 while the iPXE it loads sends `01:<mac>`, and one machine must
    /// keep one address from firmware to OS (dnsmasq treats them alike too).
    pub fn of(client_id: Option<&[u8]>, mac: Mac) -> ClientKey {
        let is_hw_form = |id: &[u8]| id.len() == 7 && id[0] == 1 && id[1..] == mac.0;
        match client_id {
            Some(id) if !id.is_empty() && !is_hw_form(id) => ClientKey::Id(id.to_vec()),
            _ => ClientKey::Hw(mac),
        }
    }
}

impl<A> Lease<A> {
    pub fn key(&self) -> ClientKey {
        ClientKey::of(self.client_id.as_deref(), self.mac)
    }

    /// Free for another client.
    pub fn reclaimable(&self, now: i64) -> bool {
        match self.status {
            LeaseStatus::Released => true,
            LeaseStatus::Offered | LeaseStatus::Bound | LeaseStatus::Declined => {
                self.expires <= now
            }
        }
    }
}

impl Lease<Ipv4Addr> {
    /// What the store keeps of it (offers are not persisted).
    pub fn record(&self, now: i64) -> Option<LeaseRecord> {
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

/// Every address with a lease or offer, and each client's current address.
pub struct LeaseTable<A> {
    by_ip: HashMap<A, Lease<A>>,
    by_client: HashMap<ClientKey, A>,
    /// The addresses of `by_ip` in order, so that a listing is read a page at a time (the
    /// API's) without sorting the whole table per page. The hash map stays the lookup of
    /// every packet; this is touched only when an address enters or leaves the table.
    order: BTreeSet<A>,
}

impl<A: Copy + Eq + Hash + Ord> Default for LeaseTable<A> {
    fn default() -> Self {
        LeaseTable::new()
    }
}

impl<A: Copy + Eq + Hash + Ord> LeaseTable<A> {
    pub fn new() -> LeaseTable<A> {
        LeaseTable {
            by_ip: HashMap::new(),
            by_client: HashMap::new(),
            order: BTreeSet::new(),
        }
    }

    pub fn get(&self, ip: A) -> Option<&Lease<A>> {
        self.by_ip.get(&ip)
    }

    pub fn get_mut(&mut self, ip: A) -> Option<&mut Lease<A>> {
        self.by_ip.get_mut(&ip)
    }

    /// When the lease or offer of `ip` ends.
    pub fn expires(&self, ip: A) -> Option<i64> {
        self.by_ip.get(&ip).map(|l| l.expires)
    }

    /// The address the client `key` holds or held last.
    pub fn of_client(&self, key: &ClientKey) -> Option<A> {
        self.by_client.get(key).copied()
    }

    /// Puts `lease` in the table, replacing whatever held its address.
    pub fn insert(&mut self, lease: Lease<A>) {
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
        self.order.insert(lease.ip);
        self.by_ip.insert(lease.ip, lease);
    }

    /// Quarantines the address `declined.ip` that the client `key` held: it belongs to
    /// nobody until `declined` expires, and the client is forgotten (it starts over).
    pub fn decline(&mut self, key: &ClientKey, declined: Lease<A>) {
        self.by_client.remove(key);
        self.order.insert(declined.ip);
        self.by_ip.insert(declined.ip, declined);
    }

    /// Drops the client's pending offer (it chose another server). Returns its address.
    pub fn withdraw_offer(&mut self, key: &ClientKey) -> Option<A> {
        let ip = self.of_client(key)?;
        if self
            .by_ip
            .get(&ip)
            .is_none_or(|l| l.status != LeaseStatus::Offered)
        {
            return None;
        }
        self.by_ip.remove(&ip);
        self.order.remove(&ip);
        self.by_client.remove(key);
        Some(ip)
    }

    /// Does `key` hold `ip` (offered or leased, not declined)?
    pub fn held_by(&self, ip: A, key: &ClientKey) -> bool {
        self.by_ip
            .get(&ip)
            .is_some_and(|l| &l.key() == key && l.status != LeaseStatus::Declined)
    }

    /// May `key` use `ip` at `now` (nobody else holds it)?
    pub fn free_for(&self, ip: A, key: &ClientKey, now: i64) -> bool {
        match self.by_ip.get(&ip) {
            None => true,
            Some(l) if &l.key() == key => l.status != LeaseStatus::Declined || l.expires <= now,
            Some(l) => l.reclaimable(now),
        }
    }

    /// Has the client `key` come back since it was first given an address? Its record
    /// (current or previous lease) is proven, or it completed an exchange before (bound or
    /// released).
    pub fn has_returned(&self, key: &ClientKey) -> bool {
        self.of_client(key)
            .and_then(|ip| self.by_ip.get(&ip))
            .is_some_and(|l| {
                &l.key() == key
                    && (l.proven || matches!(l.status, LeaseStatus::Bound | LeaseStatus::Released))
            })
    }

    pub fn values(&self) -> impl Iterator<Item = &Lease<A>> {
        self.by_ip.values()
    }

    pub fn into_leases(self) -> impl Iterator<Item = Lease<A>> {
        self.by_ip.into_values()
    }

    /// At most `n` leases in address order, those after `after` (from the first when `None`).
    pub fn page(&self, after: Option<A>, n: usize) -> Vec<&Lease<A>> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.order
            .range((from, Bound::Unbounded))
            .filter_map(|ip| self.by_ip.get(ip))
            .take(n)
            .collect()
    }
}

impl Engine {
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

    /// The client holding a bound, unexpired lease of `ip` (`now`: seconds since the epoch).
    /// Other parts of chainboot use it to tell which machine an address belongs to.
    pub fn bound_to(&self, ip: Ipv4Addr, now: i64) -> Option<Mac> {
        self.leases
            .get(ip)
            .filter(|l| l.status == LeaseStatus::Bound && l.expires > now)
            .map(|l| l.mac)
    }

    /// Every address in the table (offers included), in address order.
    pub fn leases(&self) -> Vec<Lease> {
        self.leases_after(None, usize::MAX)
    }

    /// At most `n` addresses of the table (offers included) in address order, those after
    /// `after`: one page of a listing, without copying or sorting the rest of the table.
    pub fn leases_after(&self, after: Option<Ipv4Addr>, n: usize) -> Vec<Lease> {
        self.leases.page(after, n).into_iter().cloned().collect()
    }

    /// Puts `lease` in the table (replacing whatever held its address) and updates the
    /// starvation guard's count.
    pub(super) fn insert(&mut self, lease: Lease, now: i64) {
        let ip = lease.ip;
        self.leases.insert(lease);
        self.account(ip, now);
    }
}
