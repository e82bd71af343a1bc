//! The whole DHCP engine: arbitrary packets in, replies and lease table out, in proxy and
//! server mode, over a sequence of packets with a fake clock.
//!
//! Input layout: a sequence of chunks, each `[ctl, len_hi, len_lo, bytes...]`. `ctl` picks the
//! clock advance, the port (67 or 4011) and one of four MACs patched into chaddr (so that
//! several clients share one table); the bytes are the packet.
//!
//! Invariants: every reply is at least 300 bytes and at most the client's maximum (option 57,
//! never below 576, minus IP+UDP headers); in server mode no OFFER/ACK names an address outside
//! the pools and hosts, or one the table holds for another client; the table never holds one
//! address twice and never a non-pool, non-host address; proxy mode never gives an address;
//! what unproven clients hold never exceeds the starvation guard's share of a pool.
#![no_main]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, SystemTime};

use chainboot_dhcp::config::{HostConfig, SubnetConfig};
use chainboot_dhcp::engine::LeaseStatus;
use chainboot_dhcp::{BootSettings, DhcpConfig, Engine, Ingress, Mode};
use libfuzzer_sys::fuzz_target;

const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const HOST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x50];
const HOST_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 50);
const MACS: [[u8; 6]; 4] = [
    HOST_MAC,
    [0x52, 0x54, 0x00, 0x00, 0x01, 0x01],
    [0x52, 0x54, 0x00, 0x00, 0x01, 0x02],
    [0x52, 0x54, 0x00, 0x00, 0x01, 0x03],
];

fn subnet(cidr: &str, a: [u8; 4], b: [u8; 4]) -> SubnetConfig {
    SubnetConfig {
        cidr: cidr.parse().expect("cidr"),
        pools: vec![[Ipv4Addr::from(a), Ipv4Addr::from(b)]],
        router: Some(SERVER),
        dns: vec![SERVER],
        domain: Some("lab.test".into()),
        ntp: vec![],
        mtu: None,
        broadcast: None,
        lease_time: None,
        tftp_server: None,
        boot_file: None,
        options: vec![],
    }
}

fn config(mode: Mode) -> DhcpConfig {
    DhcpConfig {
        mode,
        lease_time: Duration::from_secs(600),
        offer_time: Duration::from_secs(30),
        decline_time: Duration::from_secs(60),
        // Small pools so that exhaustion and reuse are reachable.
        subnet: vec![
            subnet("198.18.0.0/24", [198, 18, 0, 100], [198, 18, 0, 103]),
            subnet("198.18.7.0/24", [198, 18, 7, 10], [198, 18, 7, 11]),
        ],
        host: vec![HostConfig {
            mac: "52:54:00:00:00:50".parse().expect("mac"),
            ip: HOST_IP,
            hostname: Some("node50".into()),
        }],
        ..Default::default()
    }
}

fn allowed(cfg: &DhcpConfig, ip: Ipv4Addr) -> bool {
    let v = u32::from(ip);
    cfg.host.iter().any(|h| h.ip == ip)
        || cfg
            .subnet
            .iter()
            .flat_map(|s| s.pools.iter())
            .any(|[a, b]| u32::from(*a) <= v && v <= u32::from(*b))
}

/// Option `c` of a reply (header 236 bytes, magic cookie, then options; no overload in replies).
fn reply_opt(bytes: &[u8], c: u8) -> Option<&[u8]> {
    let mut i = 240;
    while i < bytes.len() {
        match bytes[i] {
            0 => i += 1,
            255 => return None,
            code => {
                let len = *bytes.get(i + 1)? as usize;
                let data = bytes.get(i + 2..i + 2 + len)?;
                if code == c {
                    return Some(data);
                }
                i += 2 + len;
            }
        }
    }
    None
}

/// Option 57 of the request, read independently of the engine's parser (first occurrence).
fn max_size(req: &[u8]) -> usize {
    let declared = match reply_opt(req, 57) {
        Some(&[a, b]) => u16::from_be_bytes([a, b]) as usize,
        _ => 576,
    };
    declared.clamp(576, 1500) - 28
}

fn run(mode: Mode, data: &[u8]) {
    let cfg = config(mode);
    let mut engine = Engine::new(cfg.clone(), BootSettings::default());
    let mut now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut rest = data;
    let mut packets = 0;
    while rest.len() >= 3 && packets < 32 {
        packets += 1;
        let ctl = rest[0];
        let len = (u16::from_be_bytes([rest[1], rest[2]]) as usize).min(rest.len() - 3);
        let mut pkt = rest[3..3 + len].to_vec();
        rest = &rest[3 + len..];
        now += Duration::from_secs(match ctl >> 5 {
            0 => 0,
            1 => 1,
            2 => 10,
            3 => 29,
            4 => 31,
            5 => 300,
            6 => 601,
            _ => 3600,
        });
        let port = if ctl & 0x10 != 0 { 4011 } else { 67 };
        let mac_sel = ctl & 0x3;
        // Patch one of the known MACs into chaddr (and hlen 6) unless bit 2 says "keep".
        if ctl & 0x4 == 0 && pkt.len() >= 34 {
            pkt[2] = 6;
            pkt[28..34].copy_from_slice(&MACS[mac_sel as usize]);
        }
        let relayed = ctl & 0x8 != 0;
        let ingress = Ingress {
            ifindex: 3,
            iface: "veth0".into(),
            local_addr: SERVER,
            local_port: port,
            src: if relayed {
                SocketAddrV4::new(Ipv4Addr::new(198, 18, 7, 1), 67)
            } else {
                SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)
            },
        };
        let before: HashMap<Ipv4Addr, chainboot_dhcp::engine::Lease> =
            engine.leases().into_iter().map(|l| (l.ip, l)).collect();
        let h = engine.handle(now, &ingress, &pkt);
        let limit = max_size(&pkt);
        for out in &h.outgoing {
            assert!(
                out.bytes.len() >= 300,
                "reply of {} bytes < 300",
                out.bytes.len()
            );
            assert!(
                out.bytes.len() <= limit,
                "reply of {} bytes > client limit {limit}",
                out.bytes.len()
            );
            let yiaddr = Ipv4Addr::new(out.bytes[16], out.bytes[17], out.bytes[18], out.bytes[19]);
            let msg_type = reply_opt(&out.bytes, 53).and_then(|t| t.first().copied());
            let offer_or_ack = matches!(msg_type, Some(2) | Some(5));
            if mode == Mode::Proxy || port == 4011 {
                assert_eq!(
                    yiaddr,
                    Ipv4Addr::UNSPECIFIED,
                    "proxy/4011 reply gives an address"
                );
                continue;
            }
            if offer_or_ack && !yiaddr.is_unspecified() {
                assert!(
                    allowed(&cfg, yiaddr),
                    "offered {yiaddr} outside pools/hosts"
                );
                let chaddr: [u8; 6] = pkt[28..34].try_into().expect("6 bytes");
                if let Some(prev) = before.get(&yiaddr) {
                    let held =
                        !matches!(prev.status, LeaseStatus::Released) && prev.expires > unix(now);
                    // Another client's live lease must not be handed out. The same client may
                    // appear with or without a client id: compare MACs.
                    let same_id = prev.client_id.is_some()
                        && chainboot_dhcp::wire::parse_request(&pkt, usize::MAX)
                            .ok()
                            .and_then(|r| r.opt(61).map(<[u8]>::to_vec))
                            == prev.client_id;
                    assert!(
                        !held || prev.mac.0 == chaddr || same_id,
                        "{yiaddr} is held by {} until {} but was given to {:02x?}",
                        prev.mac,
                        prev.expires,
                        chaddr
                    );
                }
                if yiaddr == HOST_IP {
                    assert_eq!(chaddr, HOST_MAC, "static host address given to another MAC");
                }
                // An ACK is only sent with its lease write (persisted before sending) and the
                // table then holds the address, bound, for this client.
                if msg_type == Some(5) {
                    assert!(
                        h.lease_writes.iter().any(|w| w.ip == yiaddr),
                        "ACK of {yiaddr} without a lease write"
                    );
                    let now_table = engine.leases();
                    let l = now_table
                        .iter()
                        .find(|l| l.ip == yiaddr)
                        .expect("ACKed address is in the table");
                    assert_eq!(l.status, LeaseStatus::Bound, "ACKed {yiaddr} not bound");
                    assert!(l.expires > unix(now), "ACKed {yiaddr} already expired");
                }
            }
        }
        // Table consistency after every packet.
        let leases = engine.leases();
        let mut seen = std::collections::HashSet::new();
        for l in &leases {
            assert!(seen.insert(l.ip), "{} twice in the table", l.ip);
            assert!(
                allowed(&cfg, l.ip),
                "table holds {} outside pools/hosts",
                l.ip
            );
            if l.ip == HOST_IP {
                assert_eq!(
                    l.mac.0, HOST_MAC,
                    "static address in the table for another MAC"
                );
            }
        }
        // The starvation guard: what unproven clients hold never exceeds its share of a pool.
        for g in engine.guard_state(now) {
            assert!(
                g.unproven <= g.cap,
                "unproven clients hold {} of {} in {}",
                g.unproven,
                g.cap,
                g.subnet
            );
        }
        if mode == Mode::Proxy {
            assert!(leases.is_empty(), "proxy mode holds leases");
            assert!(h.lease_writes.is_empty(), "proxy mode writes leases");
        }
        for w in &h.lease_writes {
            assert!(
                allowed(&cfg, w.ip),
                "lease write for {} outside pools/hosts",
                w.ip
            );
        }
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fuzz_target!(|data: &[u8]| {
    run(Mode::Proxy, data);
    run(Mode::Server, data);
});
