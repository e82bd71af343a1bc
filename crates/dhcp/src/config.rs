//! The `[dhcp]` section of the config file, with `[[dhcp.subnet]]` and
//! `[[dhcp.host]]` inside it, and its validation (overlapping pools, a host outside
//! its subnet or a pool outside its CIDR are refused at start).

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use chainboot_machine::Mac;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// How chainboot takes part in DHCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Beside another DHCP server: answer PXE/iPXE/HTTPClient clients with boot information
    /// only, never an address (UDP 67 and 4011).
    #[default]
    Proxy,
    /// Authoritative DHCPv4 server for the configured subnets.
    Server,
    /// No DHCP at all; another server does everything (`chainboot dhcp-config`).
    Off,
}

/// UDP ports; only tests change them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ports {
    pub server: u16,
    pub client: u16,
    /// The PXE boot server port (PXE spec 2.1: ProxyDHCP REQUESTs go to 4011).
    pub proxy: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            server: 67,
            client: 68,
            proxy: 4011,
        }
    }
}

/// An extra DHCP option: a code and exactly one way to give its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CustomOption {
    pub code: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Raw bytes as hex ("0a0b0c" or "0a:0b:0c").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ips: Option<Vec<Ipv4Addr>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub u8: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub u16: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub u32: Option<u32>,
}

impl CustomOption {
    /// The option's payload, or why it has none.
    pub fn value(&self) -> Result<Vec<u8>, String> {
        let mut given = Vec::new();
        if let Some(t) = &self.text {
            given.push(t.as_bytes().to_vec());
        }
        if let Some(h) = &self.hex {
            given.push(parse_hex(h)?);
        }
        if let Some(ips) = &self.ips {
            given.push(ips.iter().flat_map(|ip| ip.octets()).collect());
        }
        if let Some(v) = self.u8 {
            given.push(vec![v]);
        }
        if let Some(v) = self.u16 {
            given.push(v.to_be_bytes().to_vec());
        }
        if let Some(v) = self.u32 {
            given.push(v.to_be_bytes().to_vec());
        }
        match given.len() {
            1 => {
                let v = given.remove(0);
                if v.len() > 255 {
                    Err(format!(
                        "option {} value is {} bytes; at most 255 fit",
                        self.code,
                        v.len()
                    ))
                } else {
                    Ok(v)
                }
            }
            0 => Err(format!(
                "option {} has no value: give one of text, hex, ips, u8, u16, u32",
                self.code
            )),
            _ => Err(format!(
                "option {} has several values: give exactly one of text, hex, ips, u8, u16, u32",
                self.code
            )),
        }
    }
}

fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let digits: String = s
        .chars()
        .filter(|c| !matches!(c, ':' | '-' | ' '))
        .collect();
    if digits.len() & 1 == 1 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("`{s}` is not hex bytes (e.g. \"0a0b0c\")"));
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

/// One `[[dhcp.subnet]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetConfig {
    pub cidr: Ipv4Net,
    /// Inclusive address ranges handed out dynamically.
    #[serde(default)]
    pub pools: Vec<[Ipv4Addr; 2]>,
    /// Option 3.
    #[serde(default)]
    pub router: Option<Ipv4Addr>,
    /// Option 6.
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// Option 15.
    #[serde(default)]
    pub domain: Option<String>,
    /// Option 42.
    #[serde(default)]
    pub ntp: Vec<Ipv4Addr>,
    /// Option 26.
    #[serde(default)]
    pub mtu: Option<u16>,
    /// Option 28; default: the CIDR's broadcast address.
    #[serde(default)]
    pub broadcast: Option<Ipv4Addr>,
    /// Overrides `[dhcp] lease_time` for this subnet.
    #[serde(default, with = "chainboot_config::duration::option")]
    pub lease_time: Option<Duration>,
    /// Option 66 (TFTP server name) for non-PXE clients that want one.
    #[serde(default)]
    pub tftp_server: Option<String>,
    /// Option 67 (boot file) for non-PXE clients; PXE clients get chainboot's decision.
    #[serde(default)]
    pub boot_file: Option<String>,
    #[serde(default)]
    pub options: Vec<CustomOption>,
}

/// One `[[dhcp.host]]`: a fixed address (and optionally a name) for one MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    pub mac: Mac,
    pub ip: Ipv4Addr,
    /// Option 12.
    #[serde(default)]
    pub hostname: Option<String>,
}

/// Abuse limits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Sustained packets per second accepted from one MAC; more are dropped and counted.
    pub per_mac_rate: f64,
    /// Packets one MAC may send in a burst before the rate applies.
    pub per_mac_burst: f64,
    /// Requests longer than this many bytes are dropped as oversized (an Ethernet frame's
    /// UDP payload is at most 1472 bytes; anything larger is not a firmware DHCP client).
    pub max_request_bytes: usize,
    /// Sustained packets per second accepted through one relay (giaddr); more are dropped and
    /// counted. A relay speaks for a whole link, so this is far above the per-MAC rate.
    pub per_relay_rate: f64,
    /// Packets one relay may forward in a burst before the rate applies.
    pub per_relay_burst: f64,
    /// Starvation guard: offers and leases held by *unproven* clients may take at most this
    /// share of a subnet's dynamic pool (rounded up). Unproven = given an address and not come
    /// back since: a client is proven by a second DORA (iPXE after the firmware), a REQUEST
    /// renewing, rebinding or rebooting into its lease, a static host entry, or a lease loaded
    /// from the store at start. Beyond the share, unproven clients get no OFFER (counted as
    /// `refused_new_client`); proven clients and static hosts are always served. A flood of
    /// made-up MACs (one DORA each) therefore never holds more than the share, however long it
    /// lasts. 1.0 turns the guard off.
    pub new_client_share: f64,
    /// The starvation guard logs its refusals at most once per window (with their count).
    #[serde(with = "chainboot_config::duration")]
    pub new_client_window: Duration,
    /// Leases of unproven clients last at most this long (unset: the full `lease_time`). A
    /// real client is proven when it renews at half of it and gets the full lease then; a
    /// flood's leases lapse this soon after it stops, so the guard lets new machines in again
    /// sooner.
    #[serde(default, with = "chainboot_config::duration::option")]
    pub new_client_lease_time: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_mac_rate: 10.0,
            per_mac_burst: 20.0,
            max_request_bytes: 1472,
            per_relay_rate: 5000.0,
            per_relay_burst: 10000.0,
            new_client_share: 0.5,
            new_client_window: Duration::from_secs(10),
            new_client_lease_time: None,
        }
    }
}

/// The `[dhcp]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DhcpConfig {
    pub mode: Mode,
    pub ports: Ports,
    /// Lease time for subnets that do not set their own.
    #[serde(with = "chainboot_config::duration")]
    pub lease_time: Duration,
    /// How long an OFFERed address stays held for the client that was offered it.
    #[serde(with = "chainboot_config::duration")]
    pub offer_time: Duration,
    /// How long an address a client DECLINEd stays out of the pool.
    #[serde(with = "chainboot_config::duration")]
    pub decline_time: Duration,
    /// Options given in every subnet (a subnet's own option with the same code wins).
    pub options: Vec<CustomOption>,
    pub subnet: Vec<SubnetConfig>,
    pub host: Vec<HostConfig>,
    pub limits: Limits,
}

impl Default for DhcpConfig {
    fn default() -> Self {
        DhcpConfig {
            mode: Mode::Proxy,
            ports: Ports::default(),
            lease_time: Duration::from_secs(12 * 3600),
            offer_time: Duration::from_secs(30),
            decline_time: Duration::from_secs(600),
            options: Vec::new(),
            subnet: Vec::new(),
            host: Vec::new(),
            limits: Limits::default(),
        }
    }
}

/// A key path inside `[dhcp]` and what is wrong there.
pub use chainboot_config::Issue;

fn path(parts: &[&dyn fmt::Display]) -> Vec<String> {
    parts.iter().map(|p| p.to_string()).collect()
}

/// Option codes chainboot sets itself; a custom option may not replace them.
const RESERVED_CODES: [u8; 7] = [0, 52, 53, 54, 55, 57, 255];

fn check_options(prefix: &[&dyn fmt::Display], opts: &[CustomOption], out: &mut Vec<Issue>) {
    for (i, o) in opts.iter().enumerate() {
        let mut p: Vec<&dyn fmt::Display> = prefix.to_vec();
        p.push(&i);
        if RESERVED_CODES.contains(&o.code) {
            out.push(Issue::new(
                path(&p),
                format!(
                    "option {} is managed by the DHCP engine and cannot be set",
                    o.code
                ),
            ));
        }
        if let Err(e) = o.value() {
            out.push(Issue::new(path(&p), e));
        }
    }
}

impl DhcpConfig {
    /// Everything wrong with this section; empty when it can be used.
    pub fn validate(&self) -> Vec<Issue> {
        let mut out = Vec::new();
        self.check_basics(&mut out);
        self.check_limits(&mut out);
        check_options(&[&"options"], &self.options, &mut out);
        self.check_subnets(&mut out);
        self.check_hosts(&mut out);
        out
    }

    /// Mode, ports and times.
    fn check_basics(&self, out: &mut Vec<Issue>) {
        if self.mode == Mode::Server && self.subnet.is_empty() {
            out.push(Issue::new(
                path(&[&"mode"]),
                "mode = \"server\" needs at least one [[dhcp.subnet]]".to_string(),
            ));
        }
        let ports = [self.ports.server, self.ports.client, self.ports.proxy];
        if ports.contains(&0) || self.ports.server == self.ports.proxy {
            out.push(Issue::new(
                path(&[&"ports"]),
                "ports must be non-zero and server != proxy".to_string(),
            ));
        }
        for (name, d) in [
            ("lease_time", self.lease_time),
            ("offer_time", self.offer_time),
            ("decline_time", self.decline_time),
        ] {
            if d.as_secs() == 0 {
                out.push(Issue::new(
                    path(&[&name]),
                    format!("{name} must be at least one second"),
                ));
            }
        }
    }

    /// `[dhcp.limits]`.
    fn check_limits(&self, out: &mut Vec<Issue>) {
        if !(self.limits.per_mac_rate > 0.0 && self.limits.per_mac_burst >= 1.0) {
            out.push(Issue::new(
                path(&[&"limits"]),
                "per_mac_rate must be > 0 and per_mac_burst >= 1".to_string(),
            ));
        }
        if !(self.limits.per_relay_rate > 0.0 && self.limits.per_relay_burst >= 1.0) {
            out.push(Issue::new(
                path(&[&"limits"]),
                "per_relay_rate must be > 0 and per_relay_burst >= 1".to_string(),
            ));
        }
        if !(self.limits.new_client_share > 0.0 && self.limits.new_client_share <= 1.0) {
            out.push(Issue::new(
                path(&[&"limits", &"new_client_share"]),
                "new_client_share must be > 0 and <= 1".to_string(),
            ));
        }
        if self
            .limits
            .new_client_lease_time
            .is_some_and(|d| d < Duration::from_secs(120))
        {
            out.push(Issue::new(
                path(&[&"limits", &"new_client_lease_time"]),
                "new_client_lease_time must be at least 2m (clients renew at half of it)"
                    .to_string(),
            ));
        }
        if self.limits.new_client_window.as_secs() == 0 {
            out.push(Issue::new(
                path(&[&"limits", &"new_client_window"]),
                "new_client_window must be at least one second".to_string(),
            ));
        }
        if self.limits.max_request_bytes < 300 {
            out.push(Issue::new(
                path(&[&"limits", &"max_request_bytes"]),
                "max_request_bytes below 300 would refuse valid BOOTP messages".to_string(),
            ));
        }
    }

    /// Each subnet, its pools (no overlaps, also across subnets), router and options.
    fn check_subnets(&self, out: &mut Vec<Issue>) {
        // Every pool with where it came from, for the overlap check across subnets.
        let mut all_pools: Vec<(usize, usize, u32, u32)> = Vec::new();
        for (si, s) in self.subnet.iter().enumerate() {
            if s.cidr.prefix_len() > 30 {
                out.push(Issue::new(
                    path(&[&"subnet", &si, &"cidr"]),
                    format!(
                        "{} leaves no room for clients (prefix longer than /30)",
                        s.cidr
                    ),
                ));
            }
            for (sj, other) in self.subnet.iter().enumerate().skip(si + 1) {
                if s.cidr.contains(&other.cidr.network()) || other.cidr.contains(&s.cidr.network())
                {
                    out.push(Issue::new(
                        path(&[&"subnet", &sj, &"cidr"]),
                        format!("{} overlaps subnet {} ({})", other.cidr, si, s.cidr),
                    ));
                }
            }
            for (pi, [a, b]) in s.pools.iter().enumerate() {
                let p = path(&[&"subnet", &si, &"pools", &pi]);
                if u32::from(*a) > u32::from(*b) {
                    out.push(Issue::new(
                        p.clone(),
                        format!("pool {a} - {b} ends before it starts"),
                    ));
                    continue;
                }
                if !usable(&s.cidr, *a) || !usable(&s.cidr, *b) {
                    out.push(Issue::new(p, format!("pool {a} - {b} is not inside {} (network and broadcast addresses excluded)", s.cidr)));
                    continue;
                }
                all_pools.push((si, pi, u32::from(*a), u32::from(*b)));
            }
            if let Some(r) = s.router {
                if !s.cidr.contains(&r) {
                    out.push(Issue::new(
                        path(&[&"subnet", &si, &"router"]),
                        format!("router {r} is not inside {}", s.cidr),
                    ));
                }
            }
            if let Some(d) = s.lease_time {
                if d.as_secs() == 0 {
                    out.push(Issue::new(
                        path(&[&"subnet", &si, &"lease_time"]),
                        "lease_time must be at least one second".to_string(),
                    ));
                }
            }
            check_options(&[&"subnet", &si, &"options"], &s.options, out);
        }
        for (i, &(si, pi, a, b)) in all_pools.iter().enumerate() {
            for &(sj, pj, c, d) in &all_pools[i + 1..] {
                if a <= d && c <= b {
                    out.push(Issue::new(
                        path(&[&"subnet", &sj, &"pools", &pj]),
                        format!(
                            "pool overlaps subnet {si} pool {pi} ({} - {})",
                            Ipv4Addr::from(a),
                            Ipv4Addr::from(b)
                        ),
                    ));
                }
            }
        }
    }

    /// Static hosts: inside a subnet, no MAC or address given twice.
    fn check_hosts(&self, out: &mut Vec<Issue>) {
        for (hi, h) in self.host.iter().enumerate() {
            if !self.subnet.iter().any(|s| usable(&s.cidr, h.ip)) {
                out.push(Issue::new(
                    path(&[&"host", &hi, &"ip"]),
                    format!("{} is not inside any [[dhcp.subnet]]", h.ip),
                ));
            }
            for (hj, other) in self.host.iter().enumerate().skip(hi + 1) {
                if other.mac == h.mac {
                    out.push(Issue::new(
                        path(&[&"host", &hj, &"mac"]),
                        format!("{} is already host {hi}", h.mac),
                    ));
                }
                if other.ip == h.ip {
                    out.push(Issue::new(
                        path(&[&"host", &hj, &"ip"]),
                        format!("{} is already given to host {hi}", h.ip),
                    ));
                }
            }
        }
    }

    /// The lease time of a subnet.
    pub fn lease_time_of(&self, subnet: &SubnetConfig) -> Duration {
        subnet.lease_time.unwrap_or(self.lease_time)
    }

    /// The lease a client gets in `subnet`: shortened to `limits.new_client_lease_time` while
    /// it is unproven (see the starvation guard).
    pub fn lease_time_for(&self, subnet: &SubnetConfig, proven: bool) -> Duration {
        let full = self.lease_time_of(subnet);
        match self.limits.new_client_lease_time {
            Some(short) if !proven => full.min(short),
            _ => full,
        }
    }
}

/// Inside the CIDR and neither its network nor its broadcast address.
pub(crate) fn usable(net: &Ipv4Net, ip: Ipv4Addr) -> bool {
    net.contains(&ip) && ip != net.network() && ip != net.broadcast()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> DhcpConfig {
        #[derive(Deserialize)]
        struct Wrap {
            dhcp: DhcpConfig,
        }
        toml::from_str::<Wrap>(s).unwrap().dhcp
    }

    const GOOD: &str = r#"
[dhcp]
mode = "server"
lease_time = "1h"
options = [{ code = 252, text = "http://198.18.0.1/wpad.dat" }]
[[dhcp.subnet]]
cidr = "198.18.0.0/24"
pools = [["198.18.0.100", "198.18.0.200"]]
router = "198.18.0.1"
dns = ["198.18.0.1"]
lease_time = "12h"
[[dhcp.host]]
mac = "52:54:00:12:34:56"
ip = "198.18.0.50"
hostname = "node1"
"#;

    #[test]
    fn product_md_example_parses_and_validates() {
        let c = parse(GOOD);
        assert_eq!(c.mode, Mode::Server);
        assert_eq!(c.subnet[0].lease_time, Some(Duration::from_secs(43200)));
        assert_eq!(c.lease_time_of(&c.subnet[0]), Duration::from_secs(43200));
        assert_eq!(c.host[0].hostname.as_deref(), Some("node1"));
        assert_eq!(c.validate(), Vec::<Issue>::new());
    }

    #[test]
    fn defaults_are_proxy_with_standard_ports() {
        let c = DhcpConfig::default();
        assert_eq!(c.mode, Mode::Proxy);
        assert_eq!(
            c.ports,
            Ports {
                server: 67,
                client: 68,
                proxy: 4011
            }
        );
        assert!(c.validate().is_empty());
    }

    #[test]
    fn unknown_keys_are_refused() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Wrap {
            dhcp: DhcpConfig,
        }
        let e = toml::from_str::<Wrap>("[dhcp]\nmdoe = \"server\"\n").unwrap_err();
        assert!(e.to_string().contains("mdoe"), "{e}");
        let e = toml::from_str::<Wrap>("[dhcp]\nlease_time = \"soon\"\n").unwrap_err();
        assert!(e.to_string().contains("not a duration"), "{e}");
    }

    #[test]
    fn bad_layouts_are_named_by_key_path() {
        let c = parse(
            r#"
[dhcp]
mode = "server"
[[dhcp.subnet]]
cidr = "198.18.0.0/24"
pools = [["198.18.0.100", "198.18.0.200"], ["198.18.0.150", "198.18.0.160"], ["198.18.1.1", "198.18.1.9"], ["198.18.0.9", "198.18.0.5"]]
router = "198.18.5.1"
options = [{ code = 53, u8 = 1 }, { code = 200 }]
[[dhcp.host]]
mac = "52:54:00:12:34:56"
ip = "198.19.0.50"
[[dhcp.host]]
mac = "52:54:00:12:34:56"
ip = "198.18.0.51"
"#,
        );
        let probs = c.validate();
        let has = |p: &[&str], needle: &str| {
            probs.iter().any(
                |Issue {
                     path: k,
                     message: m,
                 }| {
                    k.iter().map(String::as_str).eq(p.iter().copied()) && m.contains(needle)
                },
            )
        };
        assert!(has(&["subnet", "0", "pools", "1"], "overlaps"), "{probs:?}");
        assert!(
            has(&["subnet", "0", "pools", "2"], "not inside"),
            "{probs:?}"
        );
        assert!(
            has(&["subnet", "0", "pools", "3"], "ends before"),
            "{probs:?}"
        );
        assert!(has(&["subnet", "0", "router"], "not inside"), "{probs:?}");
        assert!(
            has(&["subnet", "0", "options", "0"], "managed"),
            "{probs:?}"
        );
        assert!(
            has(&["subnet", "0", "options", "1"], "no value"),
            "{probs:?}"
        );
        assert!(has(&["host", "0", "ip"], "not inside any"), "{probs:?}");
        assert!(has(&["host", "1", "mac"], "already host 0"), "{probs:?}");
        assert_eq!(probs.len(), 8, "{probs:?}");
    }

    #[test]
    fn new_client_lease_time_parses_and_is_checked() {
        let c = parse("[dhcp]\nlimits = { new_client_lease_time = \"10m\" }\n");
        assert_eq!(
            c.limits.new_client_lease_time,
            Some(Duration::from_secs(600))
        );
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        let c = parse("[dhcp]\nlimits = { new_client_lease_time = \"30s\" }\n");
        assert_eq!(
            c.validate()[0].path,
            vec!["limits", "new_client_lease_time"]
        );
    }

    #[test]
    fn overlapping_subnets_and_server_without_subnet() {
        let c = parse("[dhcp]\nmode = \"server\"\n");
        assert_eq!(c.validate()[0].path, vec!["mode"]);
        let c = parse(
            "[dhcp]\n[[dhcp.subnet]]\ncidr = \"198.18.0.0/16\"\n[[dhcp.subnet]]\ncidr = \"198.18.4.0/24\"\n",
        );
        assert_eq!(c.validate()[0].path, vec!["subnet", "1", "cidr"]);
    }

    #[test]
    fn custom_option_values() {
        let o = CustomOption {
            code: 150,
            ips: Some(vec![Ipv4Addr::new(198, 18, 0, 1)]),
            ..Default::default()
        };
        assert_eq!(o.value().unwrap(), vec![198, 18, 0, 1]);
        let o = CustomOption {
            code: 224,
            hex: Some("0a:0B:ff".into()),
            ..Default::default()
        };
        assert_eq!(o.value().unwrap(), vec![10, 11, 255]);
        let o = CustomOption {
            code: 224,
            hex: Some("abc".into()),
            ..Default::default()
        };
        assert!(o.value().is_err());
    }
}
