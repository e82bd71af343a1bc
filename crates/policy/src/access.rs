//! Who may act for a machine.
//!
//! Every boot request names a MAC (`/ipxe?mac=`, `/boot/MAC/...`, `/config/MAC/...`), and any
//! host on the boot network can type any MAC. A request is obeyed for MAC X (its facts
//! recorded, its decision remembered, its boot-once state changed, its per-machine files and
//! secrets rendered) only when it proves it comes from X:
//!
//! 1. **its source address is X's**: chainboot's own DHCP server holds a lease of that address
//!    for X (also true for relayed, routed clients), or the kernel's neighbour table maps the
//!    address to X's hardware address (an on-link client: the neighbour entry exists because
//!    the client just talked to this host);
//! 2. **or it carries a boot capability for X**: a token chainboot put into the URLs of X's own
//!    script (bound to X, optionally to one profile, and to an expiry; an HMAC under a key
//!    derived from the API token, compared in constant time), so later fetches of the same boot
//!    work from wherever the machine is;
//! 3. **or its source is trusted**: the server host itself (loopback) and the operator's
//!    `[boot] trusted_networks` (e.g. a routed lab in proxy mode, where neither of the above can
//!    be known).
//!
//! Everything else is refused with a reason the machine's console prints. docs/security.md
//! has the threat model and what a host that spoofs both a MAC and an IP can still do.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chainboot_machine::Mac;
use hmac::{Hmac, Mac as _};
use ipnet::IpNet;
use sha2::{Digest, Sha256};

/// What the host knows about an address: who chainboot's DHCP leased it to, and whose hardware
/// address the kernel's neighbour table holds for it. Implemented by the binary (DHCP lease
/// table + neighbour table); the policy only asks.
pub trait AddressBook: Send + Sync + 'static {
    /// The MAC holding a bound DHCP lease of `ip` from this server.
    fn leased_to(&self, ip: IpAddr) -> Option<Mac>;
    /// The hardware address the neighbour table maps `ip` to (on-link clients only).
    fn neighbour(&self, ip: IpAddr) -> Option<Mac>;
    /// Whether chainboot's own DHCP hands out addresses of `ip`'s family (server mode): then
    /// an address of a machine's is one it leased.
    fn hands_out_addresses(&self, _ip: IpAddr) -> bool {
        false
    }
}

/// An address book that knows nothing (tests without a network, `explain`).
pub struct NoAddresses;

impl AddressBook for NoAddresses {
    fn leased_to(&self, _ip: IpAddr) -> Option<Mac> {
        None
    }
    fn neighbour(&self, _ip: IpAddr) -> Option<Mac> {
        None
    }
}

/// How a request proved it acts for its machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// chainboot's DHCP leased the source address to the machine.
    Lease,
    /// The neighbour table maps the source address to the machine's MAC.
    Neighbour,
    /// A boot capability from the machine's own script; `Some(profile)` when it was issued for
    /// one profile (a menu choice), which the request then answers for.
    Capability(Option<String>),
    /// Loopback or a configured trusted network.
    Trusted,
}

impl Proof {
    /// The profile a capability was issued for, if any.
    pub fn profile(&self) -> Option<&str> {
        match self {
            Proof::Capability(p) => p.as_deref(),
            _ => None,
        }
    }
}

/// Why a request may not act for the MAC it names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// Signs and checks boot capabilities.
#[derive(Clone)]
pub struct Capabilities {
    key: [u8; 32],
}

/// Bytes of HMAC kept in a token: 128 bits cannot be guessed, and URLs stay short.
const TAG_LEN: usize = 16;

impl Capabilities {
    /// Keys derived from `secret`: the API token (rotating it revokes every capability), or
    /// in a fleet the secret the servers share through the database.
    pub fn new(secret: &str) -> Capabilities {
        let mut h = Sha256::new();
        h.update(b"chainboot boot capability key v1\0");
        h.update(secret.as_bytes());
        Capabilities {
            key: h.finalize().into(),
        }
    }

    fn tag(&self, mac: Mac, expiry: u64, profile: &str) -> [u8; TAG_LEN] {
        // new_from_slice only fails for key lengths HMAC cannot take; every length works.
        let mut m = match Hmac::<Sha256>::new_from_slice(&self.key) {
            Ok(m) => m,
            Err(_) => return [0; TAG_LEN],
        };
        m.update(&mac.0);
        m.update(&expiry.to_be_bytes());
        m.update(profile.as_bytes());
        let full = m.finalize().into_bytes();
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(&full[..TAG_LEN]);
        out
    }

    /// A token for `mac` (and `profile`, for a menu choice), valid for `lifetime`.
    pub fn issue(
        &self,
        mac: Mac,
        profile: Option<&str>,
        now: SystemTime,
        lifetime: Duration,
    ) -> String {
        let expiry = unix_secs(now) + lifetime.as_secs().max(1);
        let tag = self.tag(mac, expiry, profile.unwrap_or(""));
        let mut token = format!("{expiry:x}.{}", hex::encode(tag));
        if let Some(p) = profile {
            token.push('.');
            token.push_str(p);
        }
        token
    }

    /// Checks a token presented for `mac`: `Ok(profile)` when it is genuine and unexpired.
    pub fn check(&self, token: &str, mac: Mac, now: SystemTime) -> Result<Option<String>, Refusal> {
        let bad = || Refusal("the boot capability in the URL is not valid for this machine".into());
        if token.len() > 200 {
            return Err(bad());
        }
        let mut parts = token.splitn(3, '.');
        let expiry = parts
            .next()
            .and_then(|e| u64::from_str_radix(e, 16).ok())
            .ok_or_else(bad)?;
        let tag = parts
            .next()
            .and_then(|t| hex::decode(t).ok())
            .filter(|t| t.len() == TAG_LEN)
            .ok_or_else(bad)?;
        let profile = parts.next().filter(|p| !p.is_empty());
        let want = self.tag(mac, expiry, profile.unwrap_or(""));
        if !chainboot_api::ct_eq(&tag, &want) {
            return Err(bad());
        }
        if unix_secs(now) > expiry {
            return Err(Refusal(
                "the boot capability in the URL has expired; reboot the machine".into(),
            ));
        }
        Ok(profile.map(str::to_string))
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Decides whether a request may act for a machine.
pub struct Gate<'a> {
    pub book: &'a dyn AddressBook,
    pub caps: &'a Capabilities,
    pub trusted: &'a [IpNet],
}

impl Gate<'_> {
    /// `peer` is the request's source address (`None` only for in-process callers), `cap` the
    /// capability it presented.
    pub fn verify(
        &self,
        mac: Mac,
        peer: Option<IpAddr>,
        cap: Option<&str>,
        now: SystemTime,
    ) -> Result<Proof, Refusal> {
        // A presented capability decides on its own: a wrong one is refused even from an
        // address that would pass, so a forged menu choice cannot ride on a genuine address.
        if let Some(token) = cap.filter(|t| !t.is_empty()) {
            return self.caps.check(token, mac, now).map(Proof::Capability);
        }
        let Some(ip) = peer.map(canonical) else {
            return Ok(Proof::Trusted);
        };
        if ip.is_loopback() || self.trusted.iter().any(|n| n.contains(&ip)) {
            return Ok(Proof::Trusted);
        }
        if self.book.leased_to(ip) == Some(mac) {
            return Ok(Proof::Lease);
        }
        match self.book.neighbour(ip) {
            Some(m) if m == mac => Ok(Proof::Neighbour),
            Some(m) => Err(Refusal(format!(
                "request for {mac} came from {ip}, which is {m} on this network"
            ))),
            None => Err(Refusal(format!(
                "request for {mac} came from {ip}, which holds no lease from this server for it and is not on a boot network (add it to [boot] trusted_networks if it is routed and trusted)"
            ))),
        }
    }
}

/// Whether `ip` is `mac`'s own address, by a stricter rule than [`Gate::verify`]'s, for
/// evidence that changes what a machine boots without any request of its own (its firmware
/// refusing the unsigned first stage): the kernel's neighbour table maps `ip` to `mac` (so the
/// transfer's packets went to that hardware address and were answered), and where chainboot's
/// DHCP hands out addresses, its bound lease of `ip` is `mac`'s too. A stranger that named
/// `mac` in its DHCP requests and fetched from the address it was given answers ARP with its
/// own hardware address and fails the first part; loopback, trusted networks and capabilities
/// prove nothing here.
pub fn own_address(book: &dyn AddressBook, mac: Mac, ip: IpAddr) -> Result<(), String> {
    let ip = canonical(ip);
    if book.hands_out_addresses(ip) {
        match book.leased_to(ip) {
            Some(m) if m == mac => {}
            Some(m) => return Err(format!("{ip} is leased to {m}")),
            None => return Err(format!("{ip} holds no lease from this server")),
        }
    }
    match book.neighbour(ip) {
        Some(m) if m == mac => Ok(()),
        Some(m) => Err(format!("the neighbour table maps {ip} to {m}")),
        None => Err(format!(
            "{ip} is not in the neighbour table (loopback, routed, or IPv6)"
        )),
    }
}

/// The machine that `ip` belongs to while it boots, by the rule that lets a boot storm's
/// first stages past TFTP's per-prefix cap: chainboot's DHCP holds a bound lease of `ip` for
/// that MAC, and the kernel's neighbour table does not map `ip` to another hardware address
/// (it may not know the address at all: a relayed or routed machine). An address nobody leased
/// is nobody's, whatever its traffic says; in proxy mode (no leases here) no address is.
pub fn booting_machine_at(book: &dyn AddressBook, ip: IpAddr) -> Option<Mac> {
    let ip = canonical(ip);
    let mac = book.leased_to(ip)?;
    match book.neighbour(ip) {
        Some(other) if other != mac => None,
        _ => Some(mac),
    }
}

/// IPv4-mapped IPv6 addresses (a dual-stack listener) as plain IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Book {
        lease: Option<(IpAddr, Mac)>,
        neigh: Option<(IpAddr, Mac)>,
    }
    impl AddressBook for Book {
        fn leased_to(&self, ip: IpAddr) -> Option<Mac> {
            self.lease.filter(|(i, _)| *i == ip).map(|(_, m)| m)
        }
        fn neighbour(&self, ip: IpAddr) -> Option<Mac> {
            self.neigh.filter(|(i, _)| *i == ip).map(|(_, m)| m)
        }
    }

    fn mac(s: &str) -> Mac {
        s.parse().expect("test MAC")
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test IP")
    }

    const MINUTE: Duration = Duration::from_secs(60);
    const VICTIM: &str = "52:54:00:00:00:01";
    const ATTACKER: &str = "52:54:00:00:00:66";

    fn gate_with<'a>(book: &'a Book, caps: &'a Capabilities) -> Gate<'a> {
        Gate {
            book,
            caps,
            trusted: &[],
        }
    }

    struct ServerBook(Book);
    impl AddressBook for ServerBook {
        fn leased_to(&self, ip: IpAddr) -> Option<Mac> {
            self.0.leased_to(ip)
        }
        fn neighbour(&self, ip: IpAddr) -> Option<Mac> {
            self.0.neighbour(ip)
        }
        fn hands_out_addresses(&self, _ip: IpAddr) -> bool {
            true
        }
    }

    #[test]
    fn an_own_address_needs_the_neighbour_table_and_in_server_mode_the_lease_too() {
        let (v, a, x) = (mac(VICTIM), mac(ATTACKER), ip("198.18.0.100"));
        // The machine itself: leased to it, and its hardware address answers for it.
        let own = ServerBook(Book {
            lease: Some((x, v)),
            neigh: Some((x, v)),
        });
        assert_eq!(own_address(&own, v, x), Ok(()));
        // A stranger that leased the address in the victim's name answers ARP as itself.
        let stranger = ServerBook(Book {
            lease: Some((x, v)),
            neigh: Some((x, a)),
        });
        let why = own_address(&stranger, v, x).unwrap_err();
        assert!(why.contains("52:54:00:00:00:66"), "{why}");
        // The right hardware address, but not the address chainboot leased to it.
        let unleased = ServerBook(Book {
            lease: None,
            neigh: Some((x, v)),
        });
        assert!(own_address(&unleased, v, x).is_err());
        // Proxy mode: no lease of ours to ask, the neighbour table decides.
        let proxy = Book {
            lease: None,
            neigh: Some((x, v)),
        };
        assert_eq!(own_address(&proxy, v, x), Ok(()));
        // Loopback and unknown addresses prove nothing.
        assert!(own_address(&proxy, v, ip("127.0.0.1")).is_err());
    }

    #[test]
    fn neighbour_entry_of_another_mac_is_refused_with_both_named() {
        let book = Book {
            lease: None,
            neigh: Some((ip("198.18.0.66"), mac(ATTACKER))),
        };
        let caps = Capabilities::new("t");
        let g = gate_with(&book, &caps);
        let err = g
            .verify(
                mac(VICTIM),
                Some(ip("198.18.0.66")),
                None,
                SystemTime::now(),
            )
            .expect_err("attacker refused");
        assert!(err.0.contains(ATTACKER) && err.0.contains(VICTIM), "{err}");
        assert_eq!(
            g.verify(
                mac(ATTACKER),
                Some(ip("198.18.0.66")),
                None,
                SystemTime::now()
            ),
            Ok(Proof::Neighbour)
        );
    }

    #[test]
    fn own_lease_proves_a_routed_client() {
        let book = Book {
            lease: Some((ip("198.19.5.10"), mac(VICTIM))),
            neigh: None,
        };
        let caps = Capabilities::new("t");
        let g = gate_with(&book, &caps);
        assert_eq!(
            g.verify(
                mac(VICTIM),
                Some(ip("198.19.5.10")),
                None,
                SystemTime::now()
            ),
            Ok(Proof::Lease)
        );
        assert!(g
            .verify(
                mac(ATTACKER),
                Some(ip("198.19.5.10")),
                None,
                SystemTime::now()
            )
            .is_err());
        assert!(g
            .verify(
                mac(VICTIM),
                Some(ip("198.19.5.11")),
                None,
                SystemTime::now()
            )
            .is_err());
    }

    #[test]
    fn capabilities_bind_mac_profile_and_expiry() {
        let caps = Capabilities::new("token");
        let now = SystemTime::now();
        let t = caps.issue(mac(VICTIM), None, now, MINUTE);
        assert_eq!(caps.check(&t, mac(VICTIM), now), Ok(None));
        assert!(caps.check(&t, mac(ATTACKER), now).is_err());
        assert!(caps
            .check(&t, mac(VICTIM), now + Duration::from_secs(120))
            .is_err());
        let menu = caps.issue(mac(VICTIM), Some("debian"), now, MINUTE);
        assert_eq!(
            caps.check(&menu, mac(VICTIM), now),
            Ok(Some("debian".into()))
        );
        // The profile cannot be swapped after signing.
        let forged = menu.replace(".debian", ".wipe");
        assert!(caps.check(&forged, mac(VICTIM), now).is_err());
        // Another server's (another token's) capabilities mean nothing here.
        let other = Capabilities::new("other");
        assert!(other.check(&t, mac(VICTIM), now).is_err());
        for junk in ["", ".", "zz.zz", "1.00", &"a".repeat(500)] {
            assert!(caps.check(junk, mac(VICTIM), now).is_err(), "{junk}");
        }
    }

    #[test]
    fn a_bad_capability_is_refused_even_from_a_trusted_address() {
        let book = Book {
            lease: None,
            neigh: None,
        };
        let caps = Capabilities::new("t");
        let g = gate_with(&book, &caps);
        assert!(g
            .verify(
                mac(VICTIM),
                Some(ip("127.0.0.1")),
                Some("1.00"),
                SystemTime::now()
            )
            .is_err());
        assert_eq!(
            g.verify(mac(VICTIM), Some(ip("127.0.0.1")), None, SystemTime::now()),
            Ok(Proof::Trusted)
        );
    }

    #[test]
    fn trusted_networks_and_mapped_addresses() {
        let book = Book {
            lease: Some((ip("198.18.0.10"), mac(VICTIM))),
            neigh: None,
        };
        let caps = Capabilities::new("t");
        let nets: Vec<IpNet> = vec!["198.19.0.0/16".parse().expect("net")];
        let g = Gate {
            book: &book,
            caps: &caps,
            trusted: &nets,
        };
        assert_eq!(
            g.verify(mac(VICTIM), Some(ip("198.19.1.1")), None, SystemTime::now()),
            Ok(Proof::Trusted)
        );
        assert_eq!(
            g.verify(
                mac(VICTIM),
                Some(ip("::ffff:198.18.0.10")),
                None,
                SystemTime::now()
            ),
            Ok(Proof::Lease)
        );
    }

    #[test]
    fn a_booting_machine_is_an_address_leased_here_that_no_other_hardware_answers_for() {
        let leased = |neigh| Book {
            lease: Some((ip("198.18.64.10"), mac(VICTIM))),
            neigh,
        };
        // Routed through a relay or a gateway: the neighbour table does not know it.
        assert_eq!(
            booting_machine_at(&leased(None), ip("198.18.64.10")),
            Some(mac(VICTIM))
        );
        assert_eq!(
            booting_machine_at(&leased(None), ip("::ffff:198.18.64.10")),
            Some(mac(VICTIM))
        );
        // On the link, answering with the lease's hardware address.
        let own = leased(Some((ip("198.18.64.10"), mac(VICTIM))));
        assert_eq!(
            booting_machine_at(&own, ip("198.18.64.10")),
            Some(mac(VICTIM))
        );
        // Another host answers ARP for the leased address: not the machine that leased it.
        let taken = leased(Some((ip("198.18.64.10"), mac(ATTACKER))));
        assert_eq!(booting_machine_at(&taken, ip("198.18.64.10")), None);
        // An address nobody leased is nobody's, even with a neighbour entry.
        let squatter = Book {
            lease: None,
            neigh: Some((ip("198.18.64.11"), mac(ATTACKER))),
        };
        assert_eq!(booting_machine_at(&squatter, ip("198.18.64.11")), None);
        assert_eq!(booting_machine_at(&leased(None), ip("198.18.64.12")), None);
    }
}
