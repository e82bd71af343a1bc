//! The sans-IO core: router solicitations and advertisements in, the time to send an empty
//! advertisement out.

use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

/// ICMPv6 type of a router solicitation (RFC 4861 §4.1).
pub const ROUTER_SOLICITATION: u8 = 133;
/// ICMPv6 type of a router advertisement (RFC 4861 §4.2).
pub const ROUTER_ADVERTISEMENT: u8 = 134;

/// The advertisement chainboot sends: current hop limit 0 (unspecified), M and O clear (no
/// DHCPv6), router lifetime 0 (not a default router: hosts install no IPv6 route), reachable
/// time and retransmit timer 0 (unspecified), no options (no prefix: nobody configures an
/// address from it). The checksum is left 0: the kernel fills it for raw ICMPv6 sockets
/// (RFC 3542 §3.1).
pub const EMPTY_ADVERTISEMENT: [u8; 16] = [
    ROUTER_ADVERTISEMENT,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
];

/// When to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Answer unless a real IPv6 router has been heard on the link recently.
    Auto,
    /// Always answer (a lab network known to have no IPv6 router).
    Always,
}

/// What arrived, as far as this module cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// A host asks for routers.
    Solicitation,
    /// Some router (not us) advertised; `carries_service` is false for advertisements that, like
    /// ours, offer nothing (lifetime 0, M/O clear, no options): another chainboot, say.
    Advertisement { carries_service: bool },
    /// Not a well-formed RS/RA; ignored.
    Other,
}

/// Classifies an ICMPv6 message (the payload of a raw ICMPv6 socket: no IPv6 header).
pub fn classify(msg: &[u8]) -> Heard {
    // RFC 4861 §6.1.1 and §6.1.2: code 0 and a minimum length; anything else is silently
    // discarded.
    match msg {
        [ROUTER_SOLICITATION, 0, ..] if msg.len() >= 8 => Heard::Solicitation,
        [ROUTER_ADVERTISEMENT, 0, ..] if msg.len() >= 16 => {
            let flags = msg[5];
            let lifetime = u16::from_be_bytes([msg[6], msg[7]]);
            let managed_or_other = flags & 0xc0 != 0;
            let has_options = msg.len() > 16;
            Heard::Advertisement {
                carries_service: lifetime != 0 || managed_or_other || has_options,
            }
        }
        _ => Heard::Other,
    }
}

/// Per-link state.
/// What chainboot advertises: nothing (the empty advertisement, IPv4-only boot networks), or,
/// when its DHCPv6 hands out addresses, M and O set with the DHCPv6 prefixes on-link (L set, A
/// clear: addresses come from DHCPv6 only, as /128s, so hosts must learn from here that the
/// prefix is on the link) and the router lifetime the operator chose.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Advertisement {
    /// M: addresses from DHCPv6 (iPXE then sends a Solicit).
    pub managed: bool,
    /// O: other configuration from DHCPv6 (alone: iPXE sends an Information-Request).
    pub other: bool,
    /// Seconds; 0 = not a default router.
    pub router_lifetime: u16,
    /// On-link prefixes (address, length) with their valid and preferred lifetimes.
    pub prefixes: Vec<(Ipv6Addr, u8, u32, u32)>,
}

impl Advertisement {
    /// The ICMPv6 message (RFC 4861 §4.2, prefix information §4.6.2); the kernel fills the
    /// checksum of a raw ICMPv6 socket.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = EMPTY_ADVERTISEMENT.to_vec();
        out[5] = if self.managed { 0x80 } else { 0 } | if self.other { 0x40 } else { 0 };
        out[6..8].copy_from_slice(&self.router_lifetime.to_be_bytes());
        for (prefix, len, valid, preferred) in &self.prefixes {
            out.extend_from_slice(&[3, 4, *len, 0x80]);
            out.extend_from_slice(&valid.to_be_bytes());
            out.extend_from_slice(&preferred.to_be_bytes());
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(&prefix.octets());
        }
        out
    }
}

#[derive(Debug, Clone)]
pub struct Responder {
    policy: Policy,
    /// Minimum time between two of our advertisements. One multicast advertisement answers
    /// every host that solicited before it went out, so a storm of solicitations costs one
    /// packet per interval.
    min_interval: Duration,
    /// How long a heard router keeps us quiet in `Auto`.
    quiet_after_router: Duration,
    last_sent: Option<Instant>,
    due: Option<Instant>,
    router_heard: Option<Instant>,
    /// The advertisement sent (encoded once).
    advertisement: Vec<u8>,
}

impl Responder {
    pub fn new(policy: Policy, min_interval: Duration, quiet_after_router: Duration) -> Self {
        Responder {
            policy,
            min_interval,
            quiet_after_router,
            last_sent: None,
            due: None,
            router_heard: None,
            advertisement: EMPTY_ADVERTISEMENT.to_vec(),
        }
    }

    /// Sends `advertisement` instead of the empty one.
    pub fn with_advertisement(mut self, advertisement: &Advertisement) -> Self {
        self.advertisement = advertisement.encode();
        self
    }

    /// Feeds one received ICMPv6 message from `source`. Messages from our own addresses must
    /// not be fed (the driver disables multicast loopback and filters them).
    pub fn handle(&mut self, now: Instant, _source: Ipv6Addr, msg: &[u8]) {
        match classify(msg) {
            Heard::Solicitation => {
                if self.silenced(now) {
                    return;
                }
                if self.due.is_none() {
                    let earliest = self.last_sent.map(|t| t + self.min_interval).unwrap_or(now);
                    self.due = Some(earliest.max(now));
                }
            }
            Heard::Advertisement {
                carries_service: true,
            } => {
                self.router_heard = Some(now);
                if self.policy == Policy::Auto {
                    self.due = None;
                }
            }
            Heard::Advertisement {
                carries_service: false,
            }
            | Heard::Other => {}
        }
    }

    fn silenced(&self, now: Instant) -> bool {
        self.policy == Policy::Auto
            && self
                .router_heard
                .is_some_and(|t| now.saturating_duration_since(t) < self.quiet_after_router)
    }

    /// When the driver should call [`Responder::poll_transmit`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.due
    }

    /// The advertisement to multicast now, if one is due.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<&[u8]> {
        let due = self.due?;
        if now < due {
            return None;
        }
        self.due = None;
        if self.silenced(now) {
            return None;
        }
        self.last_sent = Some(now);
        Some(&self.advertisement)
    }

    /// The advertisement from the last [`Responder::poll_transmit`] could not be sent (e.g.
    /// the interface's link-local address is still tentative right after start): try again
    /// after `delay`, so the hosts that solicited are still answered.
    pub fn send_failed(&mut self, now: Instant, delay: Duration) {
        self.last_sent = None;
        if self.due.is_none() {
            self.due = Some(now + delay);
        }
    }

    /// Whether a real router has been heard (for `check`/logs).
    pub fn router_heard(&self) -> Option<Instant> {
        self.router_heard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RS: [u8; 8] = [133, 0, 0, 0, 0, 0, 0, 0];
    const SRC: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

    fn real_router_ra() -> Vec<u8> {
        let mut ra = EMPTY_ADVERTISEMENT.to_vec();
        ra[6..8].copy_from_slice(&1800u16.to_be_bytes());
        ra
    }

    fn responder(policy: Policy) -> Responder {
        Responder::new(
            policy,
            Duration::from_millis(250),
            Duration::from_secs(3600),
        )
    }

    #[test]
    fn a_solicitation_is_answered_at_once_with_the_empty_advertisement() {
        let t0 = Instant::now();
        let mut r = responder(Policy::Auto);
        r.handle(t0, SRC, &RS);
        assert_eq!(r.poll_timeout(), Some(t0));
        let ra = r.poll_transmit(t0).unwrap();
        assert_eq!(ra.len(), 16);
        assert_eq!(ra[0], ROUTER_ADVERTISEMENT);
        assert_eq!(ra[5] & 0xc0, 0, "M and O clear");
        assert_eq!(&ra[6..8], &[0, 0], "router lifetime 0");
        assert_eq!(
            classify(ra),
            Heard::Advertisement {
                carries_service: false
            }
        );
        assert!(r.poll_transmit(t0).is_none());
    }

    #[test]
    fn a_managed_advertisement_carries_m_o_the_lifetime_and_on_link_prefixes() {
        let t0 = Instant::now();
        let adv = Advertisement {
            managed: true,
            other: true,
            router_lifetime: 1800,
            prefixes: vec![("2001:db8:1::".parse().unwrap(), 64, 3600, 2250)],
        };
        let mut r = responder(Policy::Auto).with_advertisement(&adv);
        r.handle(t0, SRC, &RS);
        let ra = r.poll_transmit(t0).unwrap().to_vec();
        assert_eq!(ra.len(), 16 + 32);
        assert_eq!(ra[5], 0xc0, "M and O");
        assert_eq!(&ra[6..8], &1800u16.to_be_bytes());
        assert_eq!(
            &ra[16..20],
            &[3, 4, 64, 0x80],
            "prefix information, on-link, no SLAAC"
        );
        assert_eq!(&ra[20..24], &3600u32.to_be_bytes());
        assert_eq!(
            &ra[32..48],
            &"2001:db8:1::".parse::<Ipv6Addr>().unwrap().octets()
        );
        // Another router still silences it in auto mode.
        r.handle(t0, SRC, &real_router_ra());
        r.handle(t0 + Duration::from_secs(1), SRC, &RS);
        assert!(r.poll_transmit(t0 + Duration::from_secs(1)).is_none());
    }

    #[test]
    fn a_storm_of_solicitations_costs_one_advertisement_per_interval() {
        let t0 = Instant::now();
        let mut r = responder(Policy::Auto);
        let mut sent = 0;
        for i in 0..100u64 {
            let now = t0 + Duration::from_millis(i * 10);
            r.handle(now, SRC, &RS);
            if r.poll_transmit(now).is_some() {
                sent += 1;
            }
        }
        // 1 s of solicitations at a 250 ms interval: at most 4 (+1 for the first).
        assert!(sent <= 5, "sent {sent}");
        // The last solicitation is still answered, later.
        let due = r.poll_timeout().unwrap();
        assert!(r.poll_transmit(due).is_some());
    }

    #[test]
    fn a_real_router_silences_auto_but_not_always() {
        let t0 = Instant::now();
        for (policy, expect) in [(Policy::Auto, false), (Policy::Always, true)] {
            let mut r = responder(policy);
            r.handle(t0, SRC, &real_router_ra());
            r.handle(t0, SRC, &RS);
            assert_eq!(r.poll_transmit(t0).is_some(), expect, "{policy:?}");
        }
        // After the quiet period, auto answers again.
        let mut r = responder(Policy::Auto);
        r.handle(t0, SRC, &real_router_ra());
        let later = t0 + Duration::from_secs(3601);
        r.handle(later, SRC, &RS);
        assert!(r.poll_transmit(later).is_some());
    }

    #[test]
    fn another_empty_advertiser_does_not_silence_us() {
        let t0 = Instant::now();
        let mut r = responder(Policy::Auto);
        r.handle(t0, SRC, &EMPTY_ADVERTISEMENT);
        r.handle(t0, SRC, &RS);
        assert!(r.poll_transmit(t0).is_some());
    }

    #[test]
    fn a_failed_send_is_retried() {
        let t0 = Instant::now();
        let mut r = responder(Policy::Auto);
        r.handle(t0, SRC, &RS);
        assert!(r.poll_transmit(t0).is_some());
        r.send_failed(t0, Duration::from_millis(500));
        let retry = t0 + Duration::from_millis(500);
        assert_eq!(r.poll_timeout(), Some(retry));
        assert!(r.poll_transmit(retry).is_some());
    }

    #[test]
    fn malformed_messages_are_ignored() {
        let t0 = Instant::now();
        let mut r = responder(Policy::Always);
        for junk in [
            &[][..],
            &[133][..],
            &[133, 1, 0, 0, 0, 0, 0, 0][..],
            &[134, 0, 0][..],
            &[1, 2, 3][..],
        ] {
            r.handle(t0, SRC, junk);
        }
        assert!(r.poll_timeout().is_none());
        // A truncated "RA" with a lifetime must not count as a router either.
        assert_eq!(classify(&[134, 0, 0, 0, 0, 0, 7, 8]), Heard::Other);
    }
}
