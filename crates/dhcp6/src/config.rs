//! The `[dhcp6]` section, with `[[dhcp6.subnet]]` inside it, and its validation.

use std::net::Ipv6Addr;
use std::time::Duration;

use chainboot_config::Issue;
use ipnet::Ipv6Net;
use serde::{Deserialize, Serialize};

/// How chainboot takes part in DHCPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode6 {
    /// No DHCPv6 (IPv4-only networks; the default).
    #[default]
    Off,
    /// Stateful DHCPv6 server for the configured prefixes: addresses (IA_NA) and boot-file
    /// URLs.
    Server,
    /// Beside a site's own DHCPv6 server: boot-file URLs only, never an address (Advertise
    /// without IA_NA to PXE/HTTP clients, Information-Request answered).
    BootInfo,
}

impl Mode6 {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode6::Off => "off",
            Mode6::Server => "server",
            Mode6::BootInfo => "boot-info",
        }
    }
}

/// UDP ports; only tests change them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ports6 {
    pub server: u16,
    pub client: u16,
}

impl Default for Ports6 {
    fn default() -> Self {
        Ports6 {
            server: 547,
            client: 546,
        }
    }
}

/// One `[[dhcp6.subnet]]`: a prefix on a link chainboot serves (directly: one of the
/// interface's addresses is inside it; relayed: the relay's link-address is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subnet6Config {
    pub prefix: Ipv6Net,
    /// Inclusive address ranges handed out (IA_NA).
    #[serde(default)]
    pub pools: Vec<[Ipv6Addr; 2]>,
    /// Option 23.
    #[serde(default)]
    pub dns: Vec<Ipv6Addr>,
    /// Overrides `[dhcp6] valid_lifetime` for this subnet.
    #[serde(default, with = "chainboot_config::duration::option")]
    pub valid_lifetime: Option<Duration>,
}

/// Abuse limits (the DHCPv4 ones, keyed by DUID and relay address).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits6 {
    /// Sustained packets per second accepted from one DUID; more are dropped and counted.
    pub per_duid_rate: f64,
    /// Packets one DUID may send in a burst before the rate applies.
    pub per_duid_burst: f64,
    /// Sustained packets per second through one relay (its source address).
    pub per_relay_rate: f64,
    pub per_relay_burst: f64,
    /// Longer requests are dropped as oversized. A client's Solicit is a few hundred bytes;
    /// each relay adds 34 bytes and its options, and 8 relays fit well within the default.
    pub max_request_bytes: usize,
    /// Starvation guard: addresses held by clients that have not come back (renewed,
    /// rebound) may take at most this share of a pool. 1.0 turns it off.
    pub new_client_share: f64,
    /// The guard logs its refusals at most once per window.
    #[serde(with = "chainboot_config::duration")]
    pub new_client_window: Duration,
}

impl Default for Limits6 {
    fn default() -> Self {
        Limits6 {
            per_duid_rate: 10.0,
            per_duid_burst: 20.0,
            per_relay_rate: 5000.0,
            per_relay_burst: 10000.0,
            max_request_bytes: 2048,
            new_client_share: 0.5,
            new_client_window: Duration::from_secs(10),
        }
    }
}

/// The `[dhcp6]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dhcp6Config {
    pub mode: Mode6,
    pub ports: Ports6,
    /// Interfaces to listen on (joining ff02::1:2 there); empty = every interface with an
    /// address inside a configured prefix (server mode) or every up, multicast-capable one
    /// (boot-info mode).
    pub interfaces: Vec<String>,
    /// Address put into boot-file URLs; unset = the interface's address inside the client's
    /// prefix (or its first global one).
    pub advertise: Option<Ipv6Addr>,
    /// Valid lifetime of addresses; the preferred lifetime is 5/8 of it, T1 half and T2 4/5
    /// of the preferred lifetime (RFC 8415 §21.4 recommends 0.5 and 0.8).
    #[serde(with = "chainboot_config::duration")]
    pub valid_lifetime: Duration,
    /// How long an Advertised address stays held for the client.
    #[serde(with = "chainboot_config::duration")]
    pub offer_time: Duration,
    /// How long an address a client Declined stays out of the pool.
    #[serde(with = "chainboot_config::duration")]
    pub decline_time: Duration,
    /// Answer a Solicit with Rapid Commit (option 14) by a Reply at once (RFC 8415 §18.3.1).
    pub rapid_commit: bool,
    /// Preference option (7) in server mode's Advertise messages: 255 makes clients take the
    /// offer at once instead of collecting others for a second. Boot-info mode sends none.
    pub preference: u8,
    pub subnet: Vec<Subnet6Config>,
    pub limits: Limits6,
}

impl Default for Dhcp6Config {
    fn default() -> Self {
        Dhcp6Config {
            mode: Mode6::Off,
            ports: Ports6::default(),
            interfaces: Vec::new(),
            advertise: None,
            valid_lifetime: Duration::from_secs(12 * 3600),
            offer_time: Duration::from_secs(30),
            decline_time: Duration::from_secs(600),
            rapid_commit: true,
            preference: 255,
            subnet: Vec::new(),
            limits: Limits6::default(),
        }
    }
}

fn usable_v6(addr: Ipv6Addr) -> bool {
    !(addr.is_unspecified()
        || addr.is_loopback()
        || addr.is_multicast()
        || addr.segments()[0] & 0xffc0 == 0xfe80)
}

impl Dhcp6Config {
    /// Everything wrong with this section; empty when it can be used.
    pub fn validate(&self) -> Vec<Issue> {
        let mut out = Vec::new();
        if self.mode == Mode6::Server && self.subnet.is_empty() {
            out.push(Issue::at(
                &["mode"],
                "mode = \"server\" needs at least one [[dhcp6.subnet]]",
            ));
        }
        if self.ports.server == 0
            || self.ports.client == 0
            || self.ports.server == self.ports.client
        {
            out.push(Issue::at(
                &["ports"],
                "ports must be non-zero and different",
            ));
        }
        for (name, d) in [
            ("valid_lifetime", self.valid_lifetime),
            ("offer_time", self.offer_time),
            ("decline_time", self.decline_time),
        ] {
            if d.as_secs() == 0 {
                out.push(Issue::at(
                    &[name],
                    format!("{name} must be at least one second"),
                ));
            }
        }
        if self.valid_lifetime.as_secs() > u64::from(u32::MAX - 1) {
            out.push(Issue::at(
                &["valid_lifetime"],
                "valid_lifetime does not fit DHCPv6's 32-bit seconds (infinity is not offered)",
            ));
        }
        if let Some(a) = self.advertise.filter(|a| !usable_v6(*a)) {
            out.push(Issue::at(
                &["advertise"],
                format!("{a} cannot be reached by clients (link-local, multicast, loopback or unspecified)"),
            ));
        }
        self.check_limits(&mut out);
        self.check_subnets(&mut out);
        out
    }

    fn check_limits(&self, out: &mut Vec<Issue>) {
        let l = &self.limits;
        if !(l.per_duid_rate > 0.0 && l.per_duid_burst >= 1.0) {
            out.push(Issue::at(
                &["limits"],
                "per_duid_rate must be > 0 and per_duid_burst >= 1",
            ));
        }
        if !(l.per_relay_rate > 0.0 && l.per_relay_burst >= 1.0) {
            out.push(Issue::at(
                &["limits"],
                "per_relay_rate must be > 0 and per_relay_burst >= 1",
            ));
        }
        if !(l.new_client_share > 0.0 && l.new_client_share <= 1.0) {
            out.push(Issue::at(
                &["limits", "new_client_share"],
                "new_client_share must be > 0 and <= 1",
            ));
        }
        if l.new_client_window.as_secs() == 0 {
            out.push(Issue::at(
                &["limits", "new_client_window"],
                "new_client_window must be at least one second",
            ));
        }
        if !(256..=65535).contains(&l.max_request_bytes) {
            out.push(Issue::at(
                &["limits", "max_request_bytes"],
                "max_request_bytes must be 256..=65535",
            ));
        }
    }

    fn check_subnets(&self, out: &mut Vec<Issue>) {
        let mut pools: Vec<(usize, usize, u128, u128)> = Vec::new();
        for (si, s) in self.subnet.iter().enumerate() {
            let idx = si.to_string();
            if s.prefix.prefix_len() > 120 {
                out.push(Issue::at(
                    &["subnet", &idx, "prefix"],
                    format!(
                        "{} leaves no room for clients (prefix longer than /120)",
                        s.prefix
                    ),
                ));
            }
            if !usable_v6(s.prefix.network()) {
                out.push(Issue::at(
                    &["subnet", &idx, "prefix"],
                    format!("{} is not a prefix clients can be given addresses in (link-local, multicast or loopback)", s.prefix),
                ));
            }
            for (sj, other) in self.subnet.iter().enumerate().skip(si + 1) {
                if s.prefix.contains(&other.prefix.network())
                    || other.prefix.contains(&s.prefix.network())
                {
                    out.push(Issue::at(
                        &["subnet", &sj.to_string(), "prefix"],
                        format!("{} overlaps subnet {si} ({})", other.prefix, s.prefix),
                    ));
                }
            }
            if s.valid_lifetime.is_some_and(|d| d.as_secs() == 0) {
                out.push(Issue::at(
                    &["subnet", &idx, "valid_lifetime"],
                    "valid_lifetime must be at least one second",
                ));
            }
            for (pi, [a, b]) in s.pools.iter().enumerate() {
                let p = ["subnet", &idx, "pools", &pi.to_string()];
                let (lo, hi) = (u128::from(*a), u128::from(*b));
                if lo > hi {
                    out.push(Issue::at(
                        &p,
                        format!("pool {a} - {b} ends before it starts"),
                    ));
                } else if !s.prefix.contains(a) || !s.prefix.contains(b) || *a == s.prefix.network()
                {
                    out.push(Issue::at(
                        &p,
                        format!("pool {a} - {b} is not inside {} (its first address is the subnet-router anycast address)", s.prefix),
                    ));
                } else {
                    pools.push((si, pi, lo, hi));
                }
            }
            if self.mode == Mode6::Server && s.pools.is_empty() {
                out.push(Issue::at(
                    &["subnet", &idx, "pools"],
                    "mode = \"server\" hands out addresses: give the subnet a pool",
                ));
            }
        }
        for (i, (si, pi, lo, hi)) in pools.iter().enumerate() {
            for (sj, pj, lo2, hi2) in pools.iter().skip(i + 1) {
                if lo <= hi2 && lo2 <= hi {
                    out.push(Issue::at(
                        &["subnet", &sj.to_string(), "pools", &pj.to_string()],
                        format!("overlaps pool {pi} of subnet {si}"),
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(prefix: &str, pool: [&str; 2]) -> Dhcp6Config {
        Dhcp6Config {
            mode: Mode6::Server,
            subnet: vec![Subnet6Config {
                prefix: prefix.parse().unwrap(),
                pools: vec![[pool[0].parse().unwrap(), pool[1].parse().unwrap()]],
                dns: vec![],
                valid_lifetime: None,
            }],
            ..Default::default()
        }
    }

    fn paths(c: &Dhcp6Config) -> Vec<String> {
        c.validate().iter().map(|i| i.path.join(".")).collect()
    }

    #[test]
    fn a_pool_inside_its_prefix_is_valid() {
        let c = server("2001:db8:1::/64", ["2001:db8:1::100", "2001:db8:1::1ff"]);
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert!(Dhcp6Config::default().validate().is_empty());
    }

    #[test]
    fn pools_outside_reversed_or_overlapping_are_named() {
        let c = server("2001:db8:1::/64", ["2001:db8:2::1", "2001:db8:2::9"]);
        assert_eq!(paths(&c), ["subnet.0.pools.0"]);
        let c = server("2001:db8:1::/64", ["2001:db8:1::9", "2001:db8:1::1"]);
        assert_eq!(paths(&c), ["subnet.0.pools.0"]);
        let mut c = server("2001:db8:1::/64", ["2001:db8:1::1", "2001:db8:1::9"]);
        c.subnet[0].pools.push([
            "2001:db8:1::5".parse().unwrap(),
            "2001:db8:1::f".parse().unwrap(),
        ]);
        assert_eq!(paths(&c), ["subnet.0.pools.1"]);
        let mut c = server("2001:db8:1::/64", ["2001:db8:1::1", "2001:db8:1::9"]);
        c.subnet.push(c.subnet[0].clone());
        assert!(
            paths(&c).contains(&"subnet.1.prefix".to_string()),
            "{:?}",
            paths(&c)
        );
    }

    #[test]
    fn link_local_prefixes_and_advertise_addresses_are_refused() {
        let mut c = server("fe80::/64", ["fe80::1", "fe80::9"]);
        c.advertise = Some("fe80::1".parse().unwrap());
        let p = paths(&c);
        assert!(p.contains(&"subnet.0.prefix".to_string()), "{p:?}");
        assert!(p.contains(&"advertise".to_string()), "{p:?}");
        let empty = Dhcp6Config {
            mode: Mode6::Server,
            ..Default::default()
        };
        assert_eq!(paths(&empty), ["mode"]);
    }
}
