//! What this host knows about who holds an address, for the policy's identity checks
//! (`chainboot_policy::access`): the DHCP server's bound leases and the kernel's neighbour
//! table.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chainboot_dhcp::Engine;
use chainboot_machine::Mac;
use chainboot_policy::access::AddressBook;
use parking_lot::Mutex;

/// The DHCP lease table (server mode) and the IPv4 neighbour table.
pub struct HostAddressBook {
    pub dhcp: Option<Arc<Mutex<Engine>>>,
    pub neighbours: NeighbourTable,
}

impl AddressBook for HostAddressBook {
    fn leased_to(&self, ip: IpAddr) -> Option<Mac> {
        let (IpAddr::V4(v4), Some(engine)) = (ip, &self.dhcp) else {
            return None;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        engine.lock().bound_to(v4, now)
    }

    fn neighbour(&self, ip: IpAddr) -> Option<Mac> {
        match ip {
            IpAddr::V4(v4) => self.neighbours.lookup(v4),
            // IPv6 neighbours need netlink; until chainboot serves HTTP over IPv6 no boot
            // request arrives over it from a non-loopback peer.
            IpAddr::V6(_) => None,
        }
    }
}

/// A cached view of `/proc/net/arp`. The file is generated in full on every read (a storm of
/// thousands of clients makes it hundreds of KB), so a snapshot is reused for up to
/// `MAX_AGE`, and a miss re-reads it at most once per `MIN_REREAD`: an attacker asking for
/// addresses that are not there cannot make every request pay for a full read.
pub struct NeighbourTable {
    path: std::path::PathBuf,
    snapshot: Mutex<Snapshot>,
}

struct Snapshot {
    read_at: Option<Instant>,
    entries: HashMap<Ipv4Addr, Mac>,
}

const MAX_AGE: Duration = Duration::from_secs(1);
const MIN_REREAD: Duration = Duration::from_millis(50);
/// Entries kept from one read (the kernel's own default gc_thresh3 is 1024; large sites raise
/// it, but not past this).
const MAX_ENTRIES: usize = 1 << 20;

impl Default for NeighbourTable {
    fn default() -> Self {
        NeighbourTable::at("/proc/net/arp")
    }
}

impl NeighbourTable {
    pub fn at(path: impl Into<std::path::PathBuf>) -> NeighbourTable {
        NeighbourTable {
            path: path.into(),
            snapshot: Mutex::new(Snapshot {
                read_at: None,
                entries: HashMap::new(),
            }),
        }
    }

    pub fn lookup(&self, ip: Ipv4Addr) -> Option<Mac> {
        let mut snap = self.snapshot.lock();
        let age = snap.read_at.map(|t| t.elapsed());
        let hit = snap.entries.get(&ip).copied();
        let reread = match (age, hit) {
            (None, _) => true,
            (Some(a), Some(_)) => a > MAX_AGE,
            (Some(a), None) => a > MIN_REREAD,
        };
        if !reread {
            return hit;
        }
        match std::fs::read_to_string(&self.path) {
            Ok(text) => snap.entries = parse_arp(&text),
            Err(e) => tracing::debug!(path = %self.path.display(), error = %e, "neighbour table"),
        }
        snap.read_at = Some(Instant::now());
        snap.entries.get(&ip).copied()
    }
}

/// `/proc/net/arp`: `IP  HW-type  Flags  HW-address  Mask  Device`; only complete entries
/// (flag 0x2) name a hardware address that answered.
fn parse_arp(text: &str) -> HashMap<Ipv4Addr, Mac> {
    const ATF_COM: u32 = 0x2;
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [ip, _hw, flags, mac, ..] = f.as_slice() else {
                return None;
            };
            let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).ok()?;
            if flags & ATF_COM == 0 {
                return None;
            }
            Some((ip.parse().ok()?, mac.parse().ok()?))
        })
        .take(MAX_ENTRIES)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_entries_only() {
        let text = "IP address       HW type     Flags       HW address            Mask     Device\n\
                    198.18.0.2       0x1         0x2         52:54:00:12:34:56     *        veth0\n\
                    198.18.0.3       0x1         0x0         00:00:00:00:00:00     *        veth0\n\
                    garbage line\n";
        let t = parse_arp(text);
        assert_eq!(t.len(), 1);
        assert_eq!(
            t.get(&Ipv4Addr::new(198, 18, 0, 2)).map(|m| m.to_string()),
            Some("52:54:00:12:34:56".into())
        );
    }

    #[test]
    fn misses_reread_at_most_every_interval() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("arp");
        let header = "IP address HW type Flags HW address Mask Device\n";
        std::fs::write(&path, header).expect("write");
        let t = NeighbourTable::at(&path);
        let ip = Ipv4Addr::new(198, 18, 0, 9);
        assert_eq!(t.lookup(ip), None);
        std::fs::write(
            &path,
            format!("{header}198.18.0.9 0x1 0x2 52:54:00:00:00:09 * veth0\n"),
        )
        .expect("write");
        // Within MIN_REREAD the snapshot answers; after it the file is read again.
        assert_eq!(t.lookup(ip), None);
        std::thread::sleep(MIN_REREAD + Duration::from_millis(20));
        assert_eq!(t.lookup(ip).map(|m| m.to_string()), Some("52:54:00:00:00:09".into()));
    }
}
