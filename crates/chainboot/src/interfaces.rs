//! Which network interfaces chainboot serves: those named in `[server] interfaces`, or every
//! interface that is up, not loopback, and has an IPv4 address.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub ipv4: Vec<(Ipv4Addr, u8)>,
}

/// Lists interfaces with their IPv4 addresses (and prefix lengths).
pub fn list() -> std::io::Result<Vec<Interface>> {
    let mut by_name: BTreeMap<String, Interface> = BTreeMap::new();
    for ifa in getifaddrs().map_err(std::io::Error::from)? {
        let up = ifa.flags.contains(InterfaceFlags::IFF_UP);
        let loopback = ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK);
        if !up || loopback {
            continue;
        }
        let entry = by_name
            .entry(ifa.interface_name.clone())
            .or_insert_with(|| Interface {
                name: ifa.interface_name.clone(),
                ipv4: Vec::new(),
            });
        let addr = ifa
            .address
            .as_ref()
            .and_then(|a| a.as_sockaddr_in())
            .map(|s| s.ip());
        let mask = ifa
            .netmask
            .as_ref()
            .and_then(|a| a.as_sockaddr_in())
            .map(|s| s.ip());
        if let (Some(addr), Some(mask)) = (addr, mask) {
            entry.ipv4.push((addr, u32::from(mask).count_ones() as u8));
        }
    }
    Ok(by_name
        .into_values()
        .filter(|i| !i.ipv4.is_empty())
        .collect())
}

/// The interfaces to serve: the configured names (each must exist, with or without an IPv4
/// address yet), or every eligible one.
pub fn select(configured: &[String]) -> std::io::Result<Vec<Interface>> {
    let all = list()?;
    if configured.is_empty() {
        return Ok(all);
    }
    Ok(configured
        .iter()
        .map(|name| {
            all.iter()
                .find(|i| &i.name == name)
                .cloned()
                .unwrap_or(Interface {
                    name: name.clone(),
                    ipv4: Vec::new(),
                })
        })
        .collect())
}
