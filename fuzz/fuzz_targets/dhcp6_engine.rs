//! The whole DHCPv6 engine: arbitrary packets in, replies and lease table out, in server and
//! boot-info mode, over a sequence of packets with a fake clock.
//!
//! Input layout: `[mode, chunks...]`, each chunk `[ctl, len_hi, len_lo, bytes...]`. `ctl` picks
//! the clock advance, whether the packet came from a relay or from a client's link-local
//! address, and one of four DUIDs patched over the Client Identifier when the packet starts
//! with one (so that several clients share one table); the bytes are the packet.
//!
//! Invariants: a reply is an Advertise or a Reply (wrapped in Relay-Repl exactly when the
//! request was relayed) and goes back to the sender; every address with a non-zero lifetime
//! in a reply lies in the pool and is not held by another IA; every Reply that binds has its
//! lease write; boot-info mode never gives an address nor writes a lease; unproven clients
//! never hold more than the starvation guard's share of the pool.
#![no_main]

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::{Duration, SystemTime};

use chainboot_dhcp::engine::LeaseStatus;
use chainboot_dhcp::BootSettings;
use chainboot_dhcp6::config::Subnet6Config;
use chainboot_dhcp6::wire::{code, msg, Options};
use chainboot_dhcp6::{Dhcp6Config, Engine6, Ingress6, Mode6};
use libfuzzer_sys::fuzz_target;

const POOL: [u128; 2] = [0x2001_0db8_0001_0000_0000_0000_0000_0100, 0x2001_0db8_0001_0000_0000_0000_0000_0103];
const DUIDS: [[u8; 10]; 4] = [
    [0, 3, 0, 1, 0x52, 0x54, 0, 0, 1, 0],
    [0, 3, 0, 1, 0x52, 0x54, 0, 0, 1, 1],
    [0, 3, 0, 1, 0x52, 0x54, 0, 0, 1, 2],
    [0, 3, 0, 1, 0x52, 0x54, 0, 0, 1, 3],
];

fn config(mode: Mode6) -> Dhcp6Config {
    Dhcp6Config {
        mode,
        valid_lifetime: Duration::from_secs(600),
        offer_time: Duration::from_secs(30),
        decline_time: Duration::from_secs(60),
        subnet: vec![Subnet6Config {
            prefix: "2001:db8:1::/64".parse().expect("prefix"),
            pools: vec![[Ipv6Addr::from(POOL[0]), Ipv6Addr::from(POOL[1])]],
            dns: vec!["2001:db8:1::53".parse().expect("dns")],
            valid_lifetime: None,
        }],
        ..Default::default()
    }
}

fn in_pool(ip: Ipv6Addr) -> bool {
    (POOL[0]..=POOL[1]).contains(&u128::from(ip))
}

/// The client message inside a reply and whether it was wrapped.
fn unwrap(bytes: &[u8]) -> (Vec<u8>, usize) {
    let mut b = bytes.to_vec();
    let mut depth = 0;
    while b.first() == Some(&msg::RELAY_REPL) {
        depth += 1;
        let opts = Options::parse(&b[34..]).expect("relay reply options");
        b = opts.get(code::RELAY_MSG).expect("relay message").to_vec();
    }
    (b, depth)
}

/// (IAID, address, valid lifetime) of every IA address in a client message.
fn ia_addrs(m: &[u8]) -> Vec<(u32, Ipv6Addr, u32)> {
    let opts = Options::parse(&m[4..]).expect("reply options");
    let mut out = Vec::new();
    for ia in opts.all(code::IA_NA) {
        let iaid = u32::from_be_bytes(ia[0..4].try_into().expect("iaid"));
        let inner = Options::parse(&ia[12..]).expect("ia options");
        for a in inner.all(code::IAADDR) {
            let addr = Ipv6Addr::from(<[u8; 16]>::try_from(&a[..16]).expect("addr"));
            out.push((iaid, addr, u32::from_be_bytes(a[20..24].try_into().expect("valid"))));
        }
    }
    out
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn run(mode: Mode6, data: &[u8]) {
    let mut engine = Engine6::new(config(mode), BootSettings::default(), vec![0, 4, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
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
        // Patch a known DUID over a leading 10-byte Client Identifier.
        if ctl & 0x4 == 0 && pkt.len() >= 18 && pkt[4..8] == [0, 1, 0, 10] {
            pkt[8..18].copy_from_slice(&DUIDS[usize::from(ctl & 3)]);
        }
        let relayed = ctl & 0x8 != 0;
        let src = if relayed {
            SocketAddrV6::new("2001:db8:1::fe".parse().expect("relay"), 547, 0, 0)
        } else {
            SocketAddrV6::new("fe80::5054:ff:fe00:101".parse().expect("ll"), 546, 0, 3)
        };
        let ingress = Ingress6 {
            ifindex: 3,
            iface: "veth0".into(),
            local: vec!["2001:db8:1::1".parse().expect("local")],
            dst: if relayed { "2001:db8:1::1".parse().expect("dst") } else { "ff02::1:2".parse().expect("mc") },
            local_port: 547,
            src,
        };
        let before: HashMap<Ipv6Addr, _> = engine.leases().into_iter().map(|l| (l.ip, l)).collect();
        let h = engine.handle(now, &ingress, &pkt);
        let request_relayed = pkt.first() == Some(&msg::RELAY_FORW);
        for out in &h.outgoing {
            assert_eq!(out.dest, src, "reply not to the sender");
            let (m, depth) = unwrap(&out.bytes);
            assert_eq!(depth > 0, request_relayed, "relay wrapping does not match the request");
            assert!(matches!(m[0], msg::ADVERTISE | msg::REPLY), "sent type {}", m[0]);
            let client_duid = chainboot_dhcp6::wire::parse(&pkt, usize::MAX)
                .map(|r| r.client_id().to_vec())
                .unwrap_or_default();
            for (iaid, addr, valid) in ia_addrs(&m) {
                if valid == 0 {
                    continue;
                }
                assert!(mode == Mode6::Server, "boot-info mode gave {addr}");
                assert!(in_pool(addr), "gave {addr} outside the pool");
                let id = [&client_duid[..], &iaid.to_be_bytes()].concat();
                if let Some(prev) = before.get(&addr) {
                    let live = prev.status != LeaseStatus::Released && prev.expires > unix(now);
                    assert!(
                        !live || prev.client_id.as_deref() == Some(&id[..]),
                        "{addr} held by another IA until {} was given away",
                        prev.expires
                    );
                }
                if m[0] == msg::REPLY {
                    assert!(h.lease_writes.iter().any(|w| w.ip == addr), "Reply binding {addr} without a lease write");
                }
            }
        }
        let leases = engine.leases();
        for l in &leases {
            assert!(in_pool(l.ip), "table holds {} outside the pool", l.ip);
        }
        // Guard: share 0.5 of 4 addresses.
        let unproven = leases
            .iter()
            .filter(|l| !l.proven && l.status != LeaseStatus::Released && l.expires > unix(now))
            .count();
        assert!(unproven <= 2, "unproven clients hold {unproven} of 4");
        if mode == Mode6::BootInfo {
            assert!(leases.is_empty() && h.lease_writes.is_empty(), "boot-info mode keeps leases");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else { return };
    run(if m & 1 == 0 { Mode6::Server } else { Mode6::BootInfo }, rest);
});
