//! Which of chainboot's ports another program already holds, and which program: read from the
//! kernel's socket tables of this network namespace (/proc/net/{udp,tcp}{,6}) and the
//! processes' descriptors, without binding anything.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Transport protocol of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Udp,
    Tcp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Udp => "UDP",
            Proto::Tcp => "TCP",
        }
    }
}

/// A bound socket found in the kernel's tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    pub local: SocketAddr,
    pub inode: u64,
}

/// TCP's LISTEN state in /proc/net/tcp.
const TCP_LISTEN: &str = "0A";
/// Processes looked at for a socket's owner at most (a host has far fewer).
const MAX_PROCESSES: usize = 100_000;

/// Sockets bound to `port` that a listener on `addr:port` would collide with: the same
/// address, or either side the wildcard.
pub fn holders(proto: Proto, want: SocketAddr) -> Vec<Bound> {
    let files: &[&str] = match proto {
        Proto::Udp => &["/proc/net/udp", "/proc/net/udp6"],
        Proto::Tcp => &["/proc/net/tcp", "/proc/net/tcp6"],
    };
    let mut out = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for b in parse_table(&text, proto) {
            if b.local.port() == want.port() && overlaps(b.local.ip(), want.ip()) {
                out.push(b);
            }
        }
    }
    out
}

fn overlaps(a: IpAddr, b: IpAddr) -> bool {
    a.is_unspecified() || b.is_unspecified() || a == b || mapped(a) == mapped(b)
}

fn mapped(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

/// Rows of /proc/net/{udp,tcp}{,6}: `sl local rem st tx:rx tr:when retrnsmt uid timeout inode`.
pub fn parse_table(text: &str, proto: Proto) -> Vec<Bound> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        if proto == Proto::Tcp && f[3] != TCP_LISTEN {
            continue;
        }
        let (Some(local), Ok(inode)) = (parse_addr(f[1]), f[9].parse::<u64>()) else {
            continue;
        };
        out.push(Bound { local, inode });
    }
    out
}

/// `0100007F:0050` (IPv4, each 32-bit word in host order) or 32 hex digits for IPv6.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // The kernel prints each 32-bit word of the network-order address as a host-order
    // number.
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(ip, 16).ok()?.to_ne_bytes(),
        )),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let w = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&w.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The processes holding each socket inode: `name (pid N)`, from /proc/PID/fd links. Sockets
/// of processes this user may not look into stay unnamed.
pub fn owners(inodes: &[u64]) -> BTreeMap<u64, Vec<String>> {
    let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    if inodes.is_empty() {
        return out;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in procs.flatten().take(MAX_PROCESSES) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = link
                .to_str()
                .and_then(|l| l.strip_prefix("socket:["))
                .and_then(|l| l.strip_suffix(']'))
                .and_then(|l| l.parse::<u64>().ok())
            else {
                continue;
            };
            if inodes.contains(&inode) {
                let name = std::fs::read_to_string(entry.path().join("comm"))
                    .map(|c| c.trim().to_string())
                    .unwrap_or_else(|_| "?".into());
                let who = format!("{name} (pid {pid})");
                let list = out.entry(inode).or_default();
                if !list.contains(&who) {
                    list.push(who);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const UDP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  1: 00000000:0043 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 0
  2: 0100007F:0045 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4243 2 0000000000000000 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 01 00000000:00000000 00:00000000 00000000     0        0 778 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn udp_rows_give_address_port_and_inode() {
        let rows = parse_table(UDP, Proto::Udp);
        assert_eq!(
            rows,
            vec![
                Bound {
                    local: "0.0.0.0:67".parse().unwrap(),
                    inode: 4242
                },
                Bound {
                    local: "127.0.0.1:69".parse().unwrap(),
                    inode: 4243
                },
            ]
        );
    }

    #[test]
    fn only_listening_tcp_sockets_count() {
        let rows = parse_table(TCP6, Proto::Tcp);
        assert_eq!(
            rows,
            vec![Bound {
                local: "[::]:80".parse().unwrap(),
                inode: 777
            }]
        );
    }

    #[test]
    fn a_wildcard_collides_with_every_address_of_its_port() {
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        let one: IpAddr = "198.18.0.1".parse().unwrap();
        let other: IpAddr = "198.18.0.2".parse().unwrap();
        assert!(overlaps(any, one));
        assert!(overlaps(one, any));
        assert!(overlaps(one, one));
        assert!(!overlaps(one, other));
        assert!(overlaps("::ffff:198.18.0.1".parse().unwrap(), one));
    }
}
