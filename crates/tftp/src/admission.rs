//! Who may start a transfer: the `[tftp]` limits as a sans-IO ledger, decided without sockets
//! or clocks (the driver in `server.rs` asks it for every read request and tells it when a
//! transfer's client first acknowledges something or the transfer ends).
//!
//! A read request costs its sender one datagram and its source address can be forged, so a
//! transfer is *unproven* until its client acknowledges something. Unproven transfers hold at
//! most `unproven_percent` of `max_transfers`, and at most `max_per_prefix` of them come from
//! one IPv4 /24 or IPv6 /64, so that one host forging many addresses of its own network cannot
//! take the whole unproven share.
//!
//! The per-prefix cap alone cannot tell that host from a real boot storm: ten thousand machines
//! powering on in one pool put hundreds of first stages into every /24 at once, and on a loaded
//! server each stays unproven for as long as its first datagram takes. So a request over the
//! prefix's cap is still admitted when its address **belongs to a booting machine**: this
//! host's DHCP server holds a bound lease of it (and the kernel's neighbour table, where it
//! knows the address, names the lease's hardware address) — what a [`Vouch`] answers. Each
//! such address gets one transfer outside the prefix's count at a time. A forger gains nothing
//! by inventing addresses (none of them is leased), and by using the addresses of real
//! machines it holds at most one such transfer per machine that really got a lease; a lease
//! costs a whole DHCP exchange under the DHCP server's own rate limits. The unproven share of
//! `max_transfers` applies to these transfers as to all others.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Whether an address belongs to a machine this host knows is booting: see the module
/// documentation. Implemented by the binary from the DHCP lease table and the neighbour table;
/// asked only for a request that the per-prefix cap would refuse, so it may take a lock and a
/// system call.
pub trait Vouch: Send + Sync + 'static {
    fn vouches_for(&self, ip: IpAddr) -> bool;
}

/// Vouches for nobody: the per-prefix cap applies to every address.
pub struct NoVouch;

impl Vouch for NoVouch {
    fn vouches_for(&self, _ip: IpAddr) -> bool {
        false
    }
}

/// The limits of `[tftp]` that decide admission (already made consistent by the config).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_transfers: usize,
    pub max_per_client: usize,
    pub max_per_prefix: usize,
    pub max_unproven: usize,
}

/// Why a read request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The client's TID already has a transfer (a retransmitted RRQ): ignored, not answered.
    Duplicate,
    /// `max_transfers`.
    Busy,
    /// `max_per_client`.
    BusyClient,
    /// `max_per_prefix`, and the address is not a booting machine's (or already has its one
    /// transfer outside the prefix's count).
    BusyPrefix,
    /// The unproven share of `max_transfers`.
    BusyUnproven,
}

/// Where an admitted transfer is counted until its client first acknowledges something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Against its network prefix's `max_per_prefix`.
    Prefix(IpAddr),
    /// As the one transfer of a booting machine's address outside its prefix's count.
    Vouched(IpAddr),
}

/// Who holds the running transfers: client TIDs, and counts per address.
#[derive(Debug, Default)]
pub struct Occupancy {
    running: HashSet<SocketAddr>,
    per_ip: HashMap<IpAddr, usize>,
}

impl Occupancy {
    pub fn add(&mut self, client: SocketAddr) {
        self.running.insert(client);
        *self.per_ip.entry(client.ip()).or_insert(0) += 1;
    }

    pub fn remove(&mut self, client: SocketAddr) {
        self.running.remove(&client);
        decrement(&mut self.per_ip, client.ip());
    }

    fn per_ip(&self, client: SocketAddr) -> usize {
        self.per_ip.get(&client.ip()).copied().unwrap_or(0)
    }

    /// Transfers running now.
    pub fn len(&self) -> usize {
        self.running.len()
    }
}

/// Transfers admitted whose client has not acknowledged anything yet: in all, per prefix, and
/// the booting machines' addresses that hold their one transfer outside the prefix count.
#[derive(Debug, Default)]
pub struct Unproven {
    total: usize,
    by_prefix: HashMap<IpAddr, usize>,
    vouched: HashSet<IpAddr>,
}

impl Unproven {
    /// Unproven transfers in all.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Unproven transfers counted against `client`'s prefix.
    pub fn in_prefix(&self, client: IpAddr) -> usize {
        self.by_prefix.get(&prefix_of(client)).copied().unwrap_or(0)
    }

    /// Whether a request from `client` can only be admitted if its address is vouched for:
    /// its prefix is at its cap and the address does not already hold its one transfer
    /// outside it. The driver asks the [`Vouch`] only then (and outside any lock).
    pub fn needs_vouch(&self, limits: &Limits, client: IpAddr) -> bool {
        self.in_prefix(client) >= limits.max_per_prefix
            && !self.vouched.contains(&canonical(client))
    }

    pub fn claim(&mut self, place: Place) {
        self.total += 1;
        match place {
            Place::Prefix(prefix) => *self.by_prefix.entry(prefix).or_insert(0) += 1,
            Place::Vouched(ip) => {
                self.vouched.insert(ip);
            }
        }
    }

    pub fn release(&mut self, place: Place) {
        self.total = self.total.saturating_sub(1);
        match place {
            Place::Prefix(prefix) => decrement(&mut self.by_prefix, prefix),
            Place::Vouched(ip) => {
                self.vouched.remove(&ip);
            }
        }
    }
}

/// Decides a read request from `client`: where it is counted while unproven, or why it is
/// refused. `vouched` says whether the client's address belongs to a booting machine; it is
/// called only when the per-prefix cap would refuse the request.
pub fn decide(
    limits: &Limits,
    running: &Occupancy,
    unproven: &Unproven,
    client: SocketAddr,
    vouched: impl FnOnce() -> bool,
) -> Result<Place, Refusal> {
    if running.running.contains(&client) {
        return Err(Refusal::Duplicate);
    }
    if running.len() >= limits.max_transfers {
        return Err(Refusal::Busy);
    }
    if running.per_ip(client) >= limits.max_per_client {
        return Err(Refusal::BusyClient);
    }
    let ip = client.ip();
    let place = if !unproven.needs_vouch(limits, ip) {
        if unproven.in_prefix(ip) >= limits.max_per_prefix {
            // Over the cap, and this address already holds its transfer outside it.
            return Err(Refusal::BusyPrefix);
        }
        Place::Prefix(prefix_of(ip))
    } else if vouched() {
        Place::Vouched(canonical(ip))
    } else {
        return Err(Refusal::BusyPrefix);
    };
    if unproven.total() >= limits.max_unproven {
        return Err(Refusal::BusyUnproven);
    }
    Ok(place)
}

fn decrement<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K) {
    if let Some(n) = counts.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(&key);
        }
    }
}

/// IPv4-mapped IPv6 addresses (a dual-stack listener) as plain IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The network a client address belongs to for `max_per_prefix`: its IPv4 /24 (also for an
/// IPv4 client seen through a dual-stack socket) or its IPv6 /64, the smallest block a
/// single site is usually given, so one host cannot escape the per-address cap by using
/// many addresses of its own network.
pub fn prefix_of(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) & 0xffff_ff00)),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(
            u128::from(v6) & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_transfers: 100,
        max_per_client: 4,
        max_per_prefix: 3,
        max_unproven: 8,
    };

    fn at(ip: &str, port: u16) -> SocketAddr {
        SocketAddr::new(ip.parse().expect("test address"), port)
    }

    /// The ledger and the running transfers, as the driver keeps them.
    #[derive(Default)]
    struct Server {
        running: Occupancy,
        unproven: Unproven,
        places: HashMap<SocketAddr, Place>,
    }

    impl Server {
        /// A read request from `client`, whose address is a booting machine's when `leased`.
        fn request(&mut self, client: SocketAddr, leased: bool) -> Result<Place, Refusal> {
            let place = decide(&LIMITS, &self.running, &self.unproven, client, || leased)?;
            self.running.add(client);
            self.unproven.claim(place);
            self.places.insert(client, place);
            Ok(place)
        }

        /// The client's first acknowledgement.
        fn acknowledged(&mut self, client: SocketAddr) {
            if let Some(place) = self.places.remove(&client) {
                self.unproven.release(place);
            }
        }

        fn ended(&mut self, client: SocketAddr) {
            self.acknowledged(client);
            self.running.remove(client);
        }
    }

    #[test]
    fn a_forger_inventing_addresses_of_one_prefix_is_held_to_its_cap() {
        let mut s = Server::default();
        let answers: Vec<_> = (1..=6)
            .map(|i| s.request(at(&format!("198.18.5.{i}"), 1000), false))
            .collect();
        assert!(answers[..3].iter().all(Result::is_ok), "{answers:?}");
        assert!(
            answers[3..].iter().all(|a| *a == Err(Refusal::BusyPrefix)),
            "{answers:?}"
        );
        // Another prefix has its own cap.
        assert!(s.request(at("198.18.6.1", 1000), false).is_ok());
        // A forged request from an address of the full prefix never acknowledges; once the
        // transfers lapse the prefix is open again.
        for i in 1..=3 {
            s.ended(at(&format!("198.18.5.{i}"), 1000));
        }
        assert_eq!(s.unproven.in_prefix("198.18.5.9".parse().unwrap()), 0);
        assert!(s.request(at("198.18.5.9", 1000), false).is_ok());
    }

    #[test]
    fn booting_machines_over_the_prefix_cap_are_admitted_one_transfer_each() {
        let mut s = Server::default();
        for i in 1..=3 {
            assert!(s.request(at(&format!("198.18.5.{i}"), 1000), false).is_ok());
        }
        // The prefix is full: machines with their own lease still get their first stage.
        for i in 10..=14 {
            let client = at(&format!("198.18.5.{i}"), 2000);
            let ip = client.ip();
            assert_eq!(s.request(client, true), Ok(Place::Vouched(ip)));
        }
        assert_eq!(s.unproven.total(), 8);
        assert_eq!(s.unproven.in_prefix("198.18.5.1".parse().unwrap()), 3);
        // The unproven share still bounds them all.
        assert_eq!(
            s.request(at("198.18.5.20", 2000), true),
            Err(Refusal::BusyUnproven)
        );
        // A second unproven transfer of the same address (another TID) is counted against the
        // prefix like any other, and refused while it is full.
        s.acknowledged(at("198.18.5.13", 2000));
        assert_eq!(
            s.request(at("198.18.5.10", 2001), true),
            Err(Refusal::BusyPrefix)
        );
        // Once the first one is acknowledged, the address may use its place again.
        s.acknowledged(at("198.18.5.10", 2000));
        assert_eq!(
            s.request(at("198.18.5.10", 2001), true),
            Ok(Place::Vouched("198.18.5.10".parse().unwrap()))
        );
    }

    #[test]
    fn the_vouch_is_asked_only_when_the_prefix_cap_would_refuse() {
        let mut s = Server::default();
        let mut asked = 0;
        for i in 1..=5 {
            let client = at(&format!("198.18.7.{i}"), 69);
            let _ = decide(&LIMITS, &s.running, &s.unproven, client, || {
                asked += 1;
                false
            })
            .map(|place| {
                s.running.add(client);
                s.unproven.claim(place);
            });
        }
        assert_eq!(asked, 2, "asked for the fourth and fifth request only");
    }

    #[test]
    fn duplicates_and_the_per_transfer_and_per_client_caps_come_first() {
        let mut s = Server::default();
        let c = at("198.18.8.1", 7);
        assert!(s.request(c, false).is_ok());
        assert_eq!(s.request(c, true), Err(Refusal::Duplicate));
        for port in 8..11 {
            assert!(s.request(at("198.18.8.1", port), true).is_ok());
        }
        assert_eq!(
            s.request(at("198.18.8.1", 11), true),
            Err(Refusal::BusyClient)
        );
        let tight = Limits {
            max_transfers: 4,
            ..LIMITS
        };
        assert_eq!(
            decide(&tight, &s.running, &s.unproven, at("198.18.9.1", 1), || {
                true
            }),
            Err(Refusal::Busy)
        );
    }

    #[test]
    fn ipv4_clients_of_a_dual_stack_socket_count_as_ipv4() {
        let mut s = Server::default();
        for i in 1..=3 {
            assert!(s.request(at(&format!("198.18.5.{i}"), 1), false).is_ok());
        }
        assert_eq!(
            s.request(at("::ffff:198.18.5.9", 1), false),
            Err(Refusal::BusyPrefix)
        );
        assert_eq!(
            s.request(at("::ffff:198.18.5.9", 1), true),
            Ok(Place::Vouched("198.18.5.9".parse().unwrap()))
        );
        assert_eq!(
            prefix_of("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
    }
}
