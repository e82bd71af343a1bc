//! Sharing clients among the live servers of a fleet, so that one server answers each client
//! and two servers on one segment do not both OFFER (each OFFER holds a pool address for
//! `offer_time`).
//!
//! As in RFC 3074 (DHC load balancing), a client's hardware address is hashed into one of 256
//! buckets with the RFC's Pearson hash; a server answers the DISCOVERs and the REQUESTs
//! without a server identifier (INIT-REBOOT, REBINDING, and renewals) of its buckets only.
//! Which server owns a bucket is not configured by hand as in the RFC but follows from the live
//! servers' names by rendezvous hashing: every server computes the same owner from the same
//! list, and when a server stops heart-beating only its buckets move, spread over the others.
//! The hash key is the hardware address even when the client sends a client identifier: PXE
//! firmware and iPXE on one machine send different identifiers but the same MAC, and one
//! machine is best served by one server from power-on to the installer.

use std::net::Ipv4Addr;

/// RFC 3074 section 6's permutation of 0..=255 for the Pearson hash.
const PEARSON: [u8; 256] = [
    251, 175, 119, 215, 81, 14, 79, 191, 103, 49, 181, 143, 186, 157, 0, 232, 31, 32, 55, 60, 152,
    58, 17, 237, 174, 70, 160, 144, 220, 90, 57, 223, 59, 3, 18, 140, 111, 166, 203, 196, 134, 243,
    124, 95, 222, 179, 197, 65, 180, 48, 36, 15, 107, 46, 233, 130, 165, 30, 123, 161, 209, 23, 97,
    16, 40, 91, 219, 61, 100, 10, 210, 109, 250, 127, 22, 138, 29, 108, 244, 67, 207, 9, 178, 204,
    74, 98, 126, 249, 167, 116, 34, 77, 193, 200, 121, 5, 20, 113, 71, 35, 128, 13, 182, 94, 25,
    226, 227, 199, 75, 27, 41, 245, 230, 224, 43, 225, 177, 26, 155, 150, 212, 142, 218, 115, 241,
    73, 88, 105, 39, 114, 62, 255, 192, 201, 145, 214, 168, 158, 221, 148, 154, 122, 12, 84, 82,
    163, 44, 139, 228, 236, 205, 242, 217, 11, 187, 146, 159, 64, 86, 239, 195, 42, 106, 198, 118,
    112, 184, 172, 87, 2, 173, 117, 176, 229, 247, 253, 137, 185, 99, 164, 102, 147, 45, 66, 231,
    52, 141, 211, 194, 206, 246, 238, 56, 110, 78, 248, 63, 240, 189, 93, 92, 51, 53, 183, 19, 171,
    72, 50, 33, 104, 101, 69, 8, 252, 83, 120, 76, 135, 85, 54, 202, 125, 188, 213, 96, 235, 136,
    208, 162, 129, 190, 132, 156, 38, 47, 1, 7, 254, 24, 4, 216, 131, 89, 21, 28, 133, 37, 153,
    149, 80, 170, 68, 6, 169, 234, 151,
];

/// RFC 3074's hash bucket of a key (the client's hardware address).
pub fn bucket(key: &[u8]) -> u8 {
    key.iter()
        .fold(key.len() as u8, |h, b| PEARSON[usize::from(h ^ b)])
}

/// A server's weight for a bucket: FNV-1a over the name and the bucket, then a 64-bit
/// finaliser so that names differing in one letter still weigh independently.
fn weight(name: &str, bucket: u8) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes().chain([0, bucket]) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// The live servers as this server sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    me: String,
    /// Sorted, without duplicates, `me` included.
    live: Vec<String>,
    /// The server identifiers (interface addresses) the live peers published, sorted.
    peer_addresses: Vec<Ipv4Addr>,
    /// Those of servers that stopped lately (see [`Fleet::with_departed_addresses`]), sorted.
    departed_addresses: Vec<Ipv4Addr>,
}

impl Fleet {
    /// `me` and its live peers (`me` is counted live whether listed or not: a server that is
    /// answering is alive, even if its own heartbeat is late).
    pub fn new(me: &str, live: impl IntoIterator<Item = String>) -> Fleet {
        let mut live: Vec<String> = live.into_iter().collect();
        live.push(me.to_string());
        live.sort();
        live.dedup();
        Fleet {
            me: me.to_string(),
            live,
            peer_addresses: Vec::new(),
            departed_addresses: Vec::new(),
        }
    }

    /// The same fleet, knowing the addresses its live peers answer from (their DHCP server
    /// identifiers, published with their heartbeats).
    pub fn with_peer_addresses(mut self, addrs: impl IntoIterator<Item = Ipv4Addr>) -> Fleet {
        self.peer_addresses = addrs.into_iter().collect();
        self.peer_addresses.sort_unstable();
        self.peer_addresses.dedup();
        self
    }

    /// The same fleet, knowing the server identifiers of servers that stopped lately: a client
    /// that chose one's OFFER just before it stopped repeats its REQUEST to it and would wait
    /// for its whole retransmission schedule; the server now owning the client's bucket tells
    /// it to start over instead (a NAK), and answers its next DISCOVER.
    pub fn with_departed_addresses(mut self, addrs: impl IntoIterator<Item = Ipv4Addr>) -> Fleet {
        self.departed_addresses = addrs
            .into_iter()
            .filter(|a| !self.peer_addresses.contains(a))
            .collect();
        self.departed_addresses.sort_unstable();
        self.departed_addresses.dedup();
        self
    }

    /// Whether `server_id` (a client's option 54) is a server of this fleet that stopped
    /// lately (never a live peer's).
    pub fn is_departed(&self, server_id: Ipv4Addr) -> bool {
        self.departed_addresses.binary_search(&server_id).is_ok()
    }

    /// Whether `server_id` (a client's option 54) is a live peer of this fleet.
    pub fn is_peer(&self, server_id: Ipv4Addr) -> bool {
        self.peer_addresses.binary_search(&server_id).is_ok()
    }

    /// The live servers' names, sorted.
    pub fn live(&self) -> &[String] {
        &self.live
    }

    /// The server that answers the clients of `bucket`.
    pub fn owner(&self, bucket: u8) -> &str {
        self.live
            .iter()
            .max_by_key(|name| (weight(name, bucket), name.as_str()))
            .map_or(self.me.as_str(), String::as_str)
    }

    /// Whether this server answers the client with hardware address `chaddr`.
    pub fn serves(&self, chaddr: &[u8]) -> bool {
        self.live.len() <= 1 || self.owner(bucket(chaddr)) == self.me
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_departed_address_is_never_a_live_peers() {
        let a: Ipv4Addr = "198.18.0.1".parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
        let b: Ipv4Addr = "198.18.0.2".parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
        let f = Fleet::new("pxe-a", ["pxe-c".to_string()])
            .with_peer_addresses([b])
            .with_departed_addresses([a, b]);
        assert!(f.is_departed(a));
        assert!(!f.is_departed(b), "a live peer's address is not departed");
        assert!(f.is_peer(b));
    }

    #[test]
    fn the_pearson_table_is_a_permutation() {
        let mut seen = [false; 256];
        for v in PEARSON {
            assert!(!seen[usize::from(v)], "{v} twice");
            seen[usize::from(v)] = true;
        }
    }

    fn macs(n: u32) -> Vec<[u8; 6]> {
        (0..n)
            .map(|i| {
                let b = i.to_be_bytes();
                [0x52, 0x54, b[0], b[1], b[2], b[3]]
            })
            .collect()
    }

    #[test]
    fn every_client_is_answered_by_exactly_one_of_three_servers_and_the_load_is_shared() {
        let names = ["pxe-a", "pxe-b", "pxe-c"];
        let fleets: Vec<Fleet> = names
            .iter()
            .map(|me| Fleet::new(me, names.iter().map(|s| s.to_string())))
            .collect();
        let mut load = [0u32; 3];
        for mac in macs(3000) {
            let answering: Vec<usize> = (0..3).filter(|&i| fleets[i].serves(&mac)).collect();
            assert_eq!(answering.len(), 1, "{mac:02x?}");
            load[answering[0]] += 1;
        }
        for l in load {
            assert!((700..=1300).contains(&l), "uneven: {load:?}");
        }
    }

    #[test]
    fn when_a_server_goes_only_its_clients_move() {
        let all = ["pxe-a", "pxe-b", "pxe-c"].map(String::from);
        let before = Fleet::new("pxe-a", all.clone());
        let after = Fleet::new("pxe-a", ["pxe-a", "pxe-b"].map(String::from));
        for b in 0..=255u8 {
            if before.owner(b) != "pxe-c" {
                assert_eq!(before.owner(b), after.owner(b), "bucket {b} moved");
            } else {
                assert_ne!(after.owner(b), "pxe-c");
            }
        }
    }

    #[test]
    fn a_server_alone_answers_everyone() {
        let f = Fleet::new("pxe-a", Vec::new());
        assert_eq!(f.live(), ["pxe-a"]);
        assert!(macs(100).iter().all(|m| f.serves(m)));
    }
}
