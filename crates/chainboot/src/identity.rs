//! What this host knows about who holds an address, for the policy's identity checks
//! (`chainboot_policy::access`): the DHCP and DHCPv6 servers' bound leases and the kernel's
//! neighbour table.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use chainboot_dhcp::Engine;
use chainboot_machine::Mac;
use chainboot_policy::access::AddressBook;
use parking_lot::Mutex;

/// The DHCP lease tables (server modes) and the IPv4 neighbour table.
pub struct HostAddressBook {
    pub dhcp: Option<Arc<Mutex<Engine>>>,
    /// DHCPv6 leases whose MAC is known (from the DUID, the client's EUI-64 link-local address
    /// or a relay's option 79): an iPXE fetching its script over IPv6 is proven by them.
    pub dhcp6: Option<Arc<Mutex<chainboot_dhcp6::Engine6>>>,
    pub neighbours: Arc<NeighbourTable>,
}

impl AddressBook for HostAddressBook {
    fn leased_to(&self, ip: IpAddr) -> Option<Mac> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        match (ip, &self.dhcp, &self.dhcp6) {
            (IpAddr::V4(v4), Some(engine), _) => engine.lock().bound_to(v4, now),
            (IpAddr::V6(v6), _, Some(engine)) => engine.lock().bound_to(v6, now),
            _ => None,
        }
    }

    fn hands_out_addresses(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(_) => self.dhcp.is_some(),
            IpAddr::V6(_) => self.dhcp6.is_some(),
        }
    }

    fn neighbour(&self, ip: IpAddr) -> Option<Mac> {
        match ip {
            IpAddr::V4(v4) => self.neighbours.lookup(v4),
            // IPv6 neighbours would need netlink; IPv6 clients are proven by their DHCPv6
            // lease instead (`leased_to`).
            IpAddr::V6(_) => None,
        }
    }
}

/// TFTP's question for a request over its per-prefix cap: is the source a booting machine's
/// address? Asked of the policy's address book, which the DHCP server fills in after TFTP is
/// bound (until then, nobody is).
pub struct BootingMachines(pub Arc<chainboot_policy::Policy>);

impl chainboot_tftp::Vouch for BootingMachines {
    fn vouches_for(&self, ip: IpAddr) -> bool {
        self.0.booting_machine_at(ip).is_some()
    }
}

/// The kernel's IPv4 neighbour (ARP) table, asked one address at a time with `SIOCGARP` on the
/// interface whose subnet holds the address: a few microseconds, no matter how many thousand
/// entries a boot storm leaves in the table (reading `/proc/net/arp` would generate all of
/// them per request). Addresses on no local subnet are not neighbours: no ioctl at all.
pub struct NeighbourTable {
    /// (interface name, address, prefix length) of every local IPv4 subnet.
    subnets: Vec<(String, Ipv4Addr, u8)>,
    /// Any AF_INET socket: the ioctl needs one.
    sock: Option<socket2::Socket>,
}

impl NeighbourTable {
    pub fn new(interfaces: &[crate::interfaces::Interface]) -> NeighbourTable {
        let subnets = interfaces
            .iter()
            .flat_map(|i| i.ipv4.iter().map(|(a, p)| (i.name.clone(), *a, *p)))
            .collect();
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
            .inspect_err(|e| tracing::warn!(error = %e, "no socket for neighbour lookups"))
            .ok();
        NeighbourTable { subnets, sock }
    }

    pub fn lookup(&self, ip: Ipv4Addr) -> Option<Mac> {
        let sock = self.sock.as_ref()?;
        self.subnets
            .iter()
            .filter(|(_, a, p)| same_subnet(ip, *a, *p))
            .find_map(|(dev, _, _)| arp_get(sock, ip, dev))
    }
}

/// The event log names clients it was not taught by the same lookup: one ioctl per address,
/// whatever the table's size.
impl chainboot_events::Neighbours for NeighbourTable {
    fn mac_of(&self, ip: IpAddr) -> Option<Mac> {
        match ip {
            IpAddr::V4(v4) => self.lookup(v4),
            IpAddr::V6(_) => None,
        }
    }
}

fn same_subnet(ip: Ipv4Addr, addr: Ipv4Addr, prefix: u8) -> bool {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    u32::from(ip) & mask == u32::from(addr) & mask && ip != addr
}

/// `SIOCGARP` for `ip` on `dev`: the hardware address of a complete entry.
fn arp_get(sock: &socket2::Socket, ip: Ipv4Addr, dev: &str) -> Option<Mac> {
    if dev.len() >= 16 {
        return None;
    }
    chainboot_udp::arp_entry(sock, dev, ip)
        .ok()
        .flatten()
        .map(Mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        let a = Ipv4Addr::new(198, 18, 0, 1);
        assert!(same_subnet(Ipv4Addr::new(198, 18, 0, 200), a, 24));
        assert!(!same_subnet(Ipv4Addr::new(198, 18, 1, 2), a, 24));
        assert!(!same_subnet(a, a, 24), "our own address is no neighbour");
        assert!(same_subnet(Ipv4Addr::new(10, 1, 2, 3), a, 0));
    }

    #[test]
    fn addresses_off_every_subnet_are_not_looked_up() {
        let t = NeighbourTable::new(&[crate::interfaces::Interface {
            name: "nonexistent0".into(),
            ipv4: vec![(Ipv4Addr::new(198, 18, 0, 1), 24)],
        }]);
        assert_eq!(t.lookup(Ipv4Addr::new(198, 19, 0, 2)), None);
        // On the subnet, but the device does not exist: the ioctl fails, no entry.
        assert_eq!(t.lookup(Ipv4Addr::new(198, 18, 0, 2)), None);
    }

    #[test]
    fn the_event_log_names_an_on_link_client_by_its_entry_among_hundreds() {
        use chainboot_events::{EventLog, EventSettings};
        let net = chainboot_testnet::Topology::new("nbr", None);
        // 500 complete entries on the server's link (198.18.0.1/20), as a storm leaves them.
        let dir = tempfile::tempdir().unwrap();
        let batch = dir.path().join("neigh.batch");
        let lines: String = (0..500u32)
            .map(|i| {
                format!(
                    "neigh replace 198.18.{}.{} lladdr 52:54:00:01:{:02x}:{:02x} dev vs nud permanent\n",
                    2 + i / 250,
                    i % 250 + 2,
                    i >> 8,
                    i & 0xff
                )
            })
            .collect();
        std::fs::write(&batch, lines).unwrap();
        chainboot_testnet::run(&["ip", "-n", &net.srv, "-batch", batch.to_str().unwrap()]);
        let store = Arc::new(chainboot_store::Store::open(dir.path()).unwrap());
        let (found, stranger, off_link) = chainboot_testnet::in_netns(&net.srv, move || {
            // The ioctl's socket belongs to the namespace it is made in.
            let table = Arc::new(NeighbourTable::new(&[crate::interfaces::Interface {
                name: "vs".into(),
                ipv4: vec![(Ipv4Addr::new(198, 18, 0, 1), 20)],
            }]));
            let log = EventLog::start(store, EventSettings::default());
            log.use_neighbours(table);
            (
                log.mac_of_address("198.18.3.201".parse().unwrap()),
                log.mac_for_ip("198.18.9.9".parse().unwrap()),
                log.mac_for_ip("198.19.0.5".parse().unwrap()),
            )
        });
        // Entry 449: 198.18.3.201, 52:54:00:01:01:c1.
        assert_eq!(found, Some("52:54:00:01:01:c1".parse().unwrap()));
        assert_eq!(stranger, None);
        assert_eq!(off_link, None);
    }
}
