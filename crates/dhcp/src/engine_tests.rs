//! Engine tests: the client matrix × modes, and the lease lifecycle with a fake clock. They
//! read like packet traces: a client message in, the reply's fields checked.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::*;
use crate::client::{ClientKind, ClientMessage, ReplyView};
use crate::config::{HostConfig, HumanDuration, SubnetConfig};

const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const RELAY: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 1);

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn ingress(port: u16) -> Ingress {
    Ingress {
        ifindex: 3,
        iface: "veth0".into(),
        local_addr: SERVER,
        local_port: port,
        src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
    }
}

fn subnet(cidr: &str, a: &str, b: &str) -> SubnetConfig {
    SubnetConfig {
        cidr: cidr.parse().unwrap(),
        pools: vec![[a.parse().unwrap(), b.parse().unwrap()]],
        router: None,
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

fn server_cfg() -> DhcpConfig {
    let mut s = subnet("198.18.0.0/24", "198.18.0.100", "198.18.0.199");
    s.router = Some(SERVER);
    DhcpConfig {
        mode: Mode::Server,
        lease_time: HumanDuration(Duration::from_secs(3600)),
        subnet: vec![s, subnet("198.18.7.0/24", "198.18.7.10", "198.18.7.20")],
        host: vec![HostConfig {
            mac: "52:54:00:00:00:50".parse().unwrap(),
            ip: "198.18.0.50".parse().unwrap(),
            hostname: Some("node50".into()),
        }],
        ..Default::default()
    }
}

fn engine(mode: Mode) -> Engine {
    let mut cfg = server_cfg();
    cfg.mode = mode;
    Engine::new(cfg, BootSettings::default())
}

fn mac(n: u8) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x00, 0x01, n]
}

/// Sends one message; returns the single reply (panics on more than one).
fn send(
    e: &mut Engine,
    now: SystemTime,
    ing: &Ingress,
    m: &ClientMessage,
) -> (Handled, Option<ReplyView>) {
    let h = e.handle(now, ing, &m.encode());
    assert!(h.outgoing.len() <= 1);
    let view = h
        .outgoing
        .first()
        .map(|o| ReplyView::parse(&o.bytes).expect("reply parses"));
    (h, view)
}

fn expected_file(kind: &ClientKind) -> &'static str {
    match kind {
        ClientKind::Firmware { arch: 0 } | ClientKind::IntelNoUuid => "undionly.kpxe",
        ClientKind::Firmware { arch: 6 } => "ipxe-i386.efi",
        ClientKind::Firmware { arch: 7 | 9 } => "ipxe.efi",
        ClientKind::Firmware { arch: 11 } => "ipxe-arm64.efi",
        ClientKind::HttpBoot { .. } => "http://198.18.0.1/ipxe-bin/ipxe.efi",
        ClientKind::Ipxe { http: true, .. } => "http://198.18.0.1/boot.ipxe",
        ClientKind::Ipxe { http: false, .. } => "boot.ipxe",
        other => panic!("no expectation for {other:?}"),
    }
}

fn check_boot_fields(name: &str, kind: &ClientKind, r: &ReplyView, sent_97: bool) {
    assert_eq!(r.file, expected_file(kind), "{name}: file");
    assert_eq!(r.siaddr, SERVER, "{name}: siaddr always set");
    assert_eq!(r.opt_ip(54), Some(SERVER), "{name}: server id");
    assert!(r.len >= 300, "{name}: padded to 300 bytes");
    let http = matches!(kind, ClientKind::HttpBoot { .. });
    assert_eq!(
        r.opt_str(60).as_deref(),
        Some(if http { "HTTPClient" } else { "PXEClient" }),
        "{name}: 60"
    );
    assert_eq!(
        r.opt(97).is_some(),
        sent_97,
        "{name}: 97 echoed exactly when sent"
    );
    let firmware_pxe = matches!(kind, ClientKind::Firmware { .. } | ClientKind::IntelNoUuid);
    assert_eq!(
        r.opt(43),
        firmware_pxe.then_some(&[6u8, 1, 8, 255][..]),
        "{name}: 43 = discovery control 8"
    );
}

#[test]
fn proxy_mode_matrix_offers_boot_info_and_never_an_address() {
    for (name, kind) in ClientKind::matrix() {
        let mut e = engine(Mode::Proxy);
        let m = ClientMessage::new(kind.clone(), MessageType::Discover, mac(1));
        let (h, r) = send(&mut e, t0(), &ingress(67), &m);
        let r = r.unwrap_or_else(|| panic!("{name}: no offer ({:?})", h.outcome));
        assert_eq!(r.msg_type, Some(MessageType::Offer), "{name}");
        assert_eq!(
            r.yiaddr,
            Ipv4Addr::UNSPECIFIED,
            "{name}: proxy never gives yiaddr"
        );
        assert_eq!(r.opt(51), None, "{name}: no lease time in proxy");
        assert_eq!(
            r.opt(175),
            None,
            "{name}: no 175.176 when not handing out the address"
        );
        assert!(h.lease_writes.is_empty());
        assert_eq!(h.outgoing[0].dest, Destination::Broadcast { port: 68 });
        check_boot_fields(name, &kind, &r, kind != ClientKind::IntelNoUuid);

        // The same client on the boot server port (UEFI builds that insist on 4011).
        let mut ing = ingress(4011);
        ing.src = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 77), 68);
        let mut q = ClientMessage::new(kind.clone(), MessageType::Request, mac(1));
        q.ciaddr = Ipv4Addr::new(198, 18, 0, 77);
        q.broadcast = false;
        let (h, r) = send(&mut e, t0(), &ing, &q);
        let r = r.unwrap_or_else(|| panic!("{name}: no 4011 ack"));
        assert_eq!(r.msg_type, Some(MessageType::Ack), "{name}");
        assert_eq!(r.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            h.outgoing[0].dest,
            Destination::Unicast(ing.src),
            "{name}: 4011 answered to sender"
        );
        check_boot_fields(name, &kind, &r, kind != ClientKind::IntelNoUuid);
    }
}

#[test]
fn server_mode_matrix_gives_address_and_boot_info() {
    for (name, kind) in ClientKind::matrix() {
        let mut e = engine(Mode::Server);
        let m = ClientMessage::new(kind.clone(), MessageType::Discover, mac(2));
        let (_, r) = send(&mut e, t0(), &ingress(67), &m);
        let r = r.unwrap_or_else(|| panic!("{name}: no offer"));
        assert_eq!(r.msg_type, Some(MessageType::Offer));
        assert_eq!(r.yiaddr, Ipv4Addr::new(198, 18, 0, 100), "{name}");
        assert_eq!(r.opt(51), Some(&3600u32.to_be_bytes()[..]));
        assert_eq!(r.opt_ip(1), Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(r.opt_ip(3), Some(SERVER));
        check_boot_fields(name, &kind, &r, kind != ClientKind::IntelNoUuid);
        let is_ipxe = matches!(kind, ClientKind::Ipxe { .. });
        assert_eq!(
            r.opt(175),
            is_ipxe.then_some(&[176u8, 1, 1][..]),
            "{name}: 175.176 no-pxedhcp for iPXE"
        );
    }
}

#[test]
fn off_mode_answers_nothing() {
    for (_, kind) in ClientKind::matrix() {
        let mut e = engine(Mode::Off);
        let m = ClientMessage::new(kind, MessageType::Discover, mac(3));
        let (h, r) = send(&mut e, t0(), &ingress(67), &m);
        assert!(r.is_none());
        assert_eq!(h.outcome, Outcome::Ignored(Ignored::ModeOff));
    }
}

#[test]
fn proxy_ignores_plain_clients_and_unknown_arch_server_still_leases() {
    let mut e = engine(Mode::Proxy);
    let plain = ClientMessage::new(ClientKind::Plain, MessageType::Discover, mac(4));
    assert_eq!(
        send(&mut e, t0(), &ingress(67), &plain).0.outcome,
        Outcome::Ignored(Ignored::NotBootClient)
    );
    let odd = ClientMessage::new(
        ClientKind::Firmware { arch: 1 },
        MessageType::Discover,
        mac(4),
    );
    assert_eq!(
        send(&mut e, t0(), &ingress(67), &odd).0.outcome,
        Outcome::Ignored(Ignored::UnknownArch)
    );
    assert_eq!(e.counters().ignored_unknown_arch.load(Ordering::Relaxed), 1);

    let mut e = engine(Mode::Server);
    let (_, r) = send(&mut e, t0(), &ingress(67), &odd);
    let r = r.unwrap();
    assert_eq!(r.yiaddr, Ipv4Addr::new(198, 18, 0, 100));
    assert_eq!(r.file, "", "no boot file for an unknown architecture");
    let (_, r) = send(&mut e, t0(), &ingress(67), &plain);
    let r = r.unwrap();
    assert_eq!((r.file.as_str(), r.opt(60)), ("", None));
}

/// DISCOVER → OFFER → REQUEST → ACK; returns the address.
fn dora(e: &mut Engine, now: SystemTime, m: [u8; 6]) -> Ipv4Addr {
    let d = ClientMessage::new(ClientKind::Plain, MessageType::Discover, m);
    let (_, offer) = send(e, now, &ingress(67), &d);
    let offer = offer.expect("offer");
    let mut q = ClientMessage::new(ClientKind::Plain, MessageType::Request, m);
    q.requested_ip = Some(offer.yiaddr);
    q.server_id = Some(SERVER);
    let (h, ack) = send(e, now, &ingress(67), &q);
    let ack = ack.expect("ack");
    assert_eq!(ack.msg_type, Some(MessageType::Ack));
    assert_eq!(
        h.lease_writes.len(),
        1,
        "ACK carries its durable lease write"
    );
    assert_eq!(h.lease_writes[0].state, LeaseState::Bound);
    ack.yiaddr
}

#[test]
fn dora_then_same_client_gets_same_address() {
    let mut e = engine(Mode::Server);
    let a = dora(&mut e, t0(), mac(10));
    let b = dora(&mut e, t0(), mac(11));
    assert_ne!(a, b);
    assert_eq!(dora(&mut e, t0() + Duration::from_secs(60), mac(10)), a);
    // Even after the lease expired, if nobody took it.
    assert_eq!(dora(&mut e, t0() + Duration::from_secs(7200), mac(10)), a);
}

#[test]
fn request_for_an_address_not_offered_is_naked() {
    let mut e = engine(Mode::Server);
    let a = dora(&mut e, t0(), mac(10));
    let mut q = ClientMessage::new(ClientKind::Plain, MessageType::Request, mac(12));
    q.requested_ip = Some(a);
    q.server_id = Some(SERVER);
    let (h, r) = send(&mut e, t0(), &ingress(67), &q);
    assert_eq!(r.unwrap().msg_type, Some(MessageType::Nak));
    assert_eq!(h.outgoing[0].dest, Destination::Broadcast { port: 68 });
    assert!(h.lease_writes.is_empty());
}

#[test]
fn selecting_another_server_frees_our_offer() {
    let mut e = engine(Mode::Server);
    let d = ClientMessage::new(ClientKind::Plain, MessageType::Discover, mac(20));
    let offered = send(&mut e, t0(), &ingress(67), &d).1.unwrap().yiaddr;
    let mut q = ClientMessage::new(ClientKind::Plain, MessageType::Request, mac(20));
    q.requested_ip = Some(Ipv4Addr::new(198, 18, 0, 250));
    q.server_id = Some(Ipv4Addr::new(198, 18, 0, 254));
    assert_eq!(
        send(&mut e, t0(), &ingress(67), &q).0.outcome,
        Outcome::Ignored(Ignored::OtherServer)
    );
    assert!(!e.leases().iter().any(|l| l.ip == offered));
}

#[test]
fn init_reboot_and_renew() {
    let mut e = engine(Mode::Server);
    let a = dora(&mut e, t0(), mac(30));
    // INIT-REBOOT: requested address, no server id.
    let mut q = ClientMessage::new(ClientKind::Plain, MessageType::Request, mac(30));
    q.requested_ip = Some(a);
    assert_eq!(
        send(&mut e, t0(), &ingress(67), &q).1.unwrap().msg_type,
        Some(MessageType::Ack)
    );
    // The wrong network: NAK.
    q.requested_ip = Some(Ipv4Addr::new(198, 19, 0, 5));
    assert_eq!(
        send(&mut e, t0(), &ingress(67), &q).1.unwrap().msg_type,
        Some(MessageType::Nak)
    );
    // Someone else's address: NAK.
    let b = dora(&mut e, t0(), mac(31));
    q.requested_ip = Some(b);
    assert_eq!(
        send(&mut e, t0(), &ingress(67), &q).1.unwrap().msg_type,
        Some(MessageType::Nak)
    );
    // RENEWING: ciaddr, unicast reply to it; lease extended from the new time.
    let mut r = ClientMessage::new(ClientKind::Plain, MessageType::Request, mac(30));
    r.ciaddr = a;
    r.broadcast = false;
    let later = t0() + Duration::from_secs(1800);
    let (h, ack) = send(&mut e, later, &ingress(67), &r);
    assert_eq!(ack.unwrap().msg_type, Some(MessageType::Ack));
    assert_eq!(
        h.outgoing[0].dest,
        Destination::Unicast(SocketAddrV4::new(a, 68))
    );
    assert_eq!(h.lease_writes[0].expires, unix(later) + 3600);
}

#[test]
fn release_frees_and_decline_quarantines() {
    let mut cfg = server_cfg();
    cfg.subnet[0].pools = vec![[
        "198.18.0.100".parse().unwrap(),
        "198.18.0.101".parse().unwrap(),
    ]];
    cfg.limits.new_client_share = 1.0;
    let mut e = Engine::new(cfg, BootSettings::default());
    let a = dora(&mut e, t0(), mac(40));
    let b = dora(&mut e, t0(), mac(41));
    // Pool full now.
    let d = ClientMessage::new(ClientKind::Plain, MessageType::Discover, mac(42));
    assert_eq!(
        send(&mut e, t0(), &ingress(67), &d).0.outcome,
        Outcome::Ignored(Ignored::PoolExhausted)
    );
    assert_eq!(e.counters().pool_exhausted.load(Ordering::Relaxed), 1);
    // RELEASE a: stored as released, and free for the next client.
    let mut rel = ClientMessage::new(ClientKind::Plain, MessageType::Release, mac(40));
    rel.ciaddr = a;
    rel.server_id = Some(SERVER);
    let (h, r) = send(&mut e, t0(), &ingress(67), &rel);
    assert!(r.is_none());
    assert_eq!(h.lease_writes[0].state, LeaseState::Released);
    assert_eq!(dora(&mut e, t0(), mac(42)), a);
    // DECLINE b: quarantined, nobody gets it until decline_time passed.
    let mut dec = ClientMessage::new(ClientKind::Plain, MessageType::Decline, mac(41));
    dec.requested_ip = Some(b);
    dec.server_id = Some(SERVER);
    let (h, _) = send(&mut e, t0(), &ingress(67), &dec);
    assert_eq!(h.lease_writes[0].state, LeaseState::Declined);
    let d = ClientMessage::new(ClientKind::Plain, MessageType::Discover, mac(43));
    assert_eq!(
        send(&mut e, t0() + Duration::from_secs(60), &ingress(67), &d)
            .0
            .outcome,
        Outcome::Ignored(Ignored::PoolExhausted)
    );
    assert_eq!(dora(&mut e, t0() + Duration::from_secs(601), mac(43)), b);
}

#[test]
fn offers_hold_briefly_and_expired_leases_are_reclaimed() {
    let mut cfg = server_cfg();
    cfg.subnet[0].pools = vec![[
        "198.18.0.100".parse().unwrap(),
        "198.18.0.100".parse().unwrap(),
    ]];
    let mut e = Engine::new(cfg, BootSettings::default());
    let d1 = ClientMessage::new(ClientKind::Plain, MessageType::Discover, mac(50));
    assert!(send(&mut e, t0(), &ingress(67), &d1).1.is_some());
    let d2 = ClientMessage::new(ClientKind::Plain, MessageType::Discover, mac(51));
    assert!(
        send(&mut e, t0() + Duration::from_secs(10), &ingress(67), &d2)
            .1
            .is_none(),
        "held for the first client"
    );
    assert_eq!(
        dora(&mut e, t0() + Duration::from_secs(31), mac(51)),
        Ipv4Addr::new(198, 18, 0, 100)
    );
    // Bound for an hour; a third client gets it only after expiry.
    let d3 = ClientMessage::new(ClientKind::Plain, MessageType::Discover, mac(52));
    assert!(
        send(&mut e, t0() + Duration::from_secs(3000), &ingress(67), &d3)
            .1
            .is_none()
    );
    assert_eq!(
        dora(&mut e, t0() + Duration::from_secs(3700), mac(52)),
        Ipv4Addr::new(198, 18, 0, 100)
    );
}

#[test]
fn static_host_gets_its_address_and_nobody_else_does() {
    let mut e = engine(Mode::Server);
    let host = [0x52, 0x54, 0, 0, 0, 0x50];
    assert_eq!(dora(&mut e, t0(), host), Ipv4Addr::new(198, 18, 0, 50));
    let d = ClientMessage::new(ClientKind::Plain, MessageType::Discover, host);
    assert_eq!(
        send(&mut e, t0(), &ingress(67), &d)
            .1
            .unwrap()
            .opt_str(12)
            .as_deref(),
        Some("node50")
    );
    let mut q = ClientMessage::new(ClientKind::Plain, MessageType::Request, mac(60));
    q.requested_ip = Some(Ipv4Addr::new(198, 18, 0, 50));
    assert_eq!(
        send(&mut e, t0(), &ingress(67), &q).1.unwrap().msg_type,
        Some(MessageType::Nak)
    );
}

#[test]
fn relayed_request_uses_giaddr_subnet_and_echoes_option_82() {
    let mut e = engine(Mode::Server);
    let mut d = ClientMessage::new(
        ClientKind::Firmware { arch: 7 },
        MessageType::Discover,
        mac(70),
    );
    d.giaddr = RELAY;
    d.relay_info = Some(vec![1, 4, b'p', b'o', b'r', b't']);
    let (h, r) = send(&mut e, t0(), &ingress(67), &d);
    let r = r.unwrap();
    assert_eq!(r.yiaddr, Ipv4Addr::new(198, 18, 7, 10));
    assert_eq!(r.opt(82), Some(&[1u8, 4, b'p', b'o', b'r', b't'][..]));
    assert_eq!(*r.codes().last().unwrap(), 82, "option 82 last (RFC 3046)");
    assert_eq!(
        h.outgoing[0].dest,
        Destination::Unicast(SocketAddrV4::new(RELAY, 67))
    );
    // A relay from a link we do not serve: ignored.
    d.giaddr = Ipv4Addr::new(198, 19, 1, 1);
    assert_eq!(
        send(&mut e, t0(), &ingress(67), &d).0.outcome,
        Outcome::Ignored(Ignored::NoSubnet)
    );
}

#[test]
fn inform_gets_options_but_no_lease() {
    let mut e = engine(Mode::Server);
    let mut m = ClientMessage::new(ClientKind::Plain, MessageType::Inform, mac(80));
    m.ciaddr = Ipv4Addr::new(198, 18, 0, 9);
    let (h, r) = send(&mut e, t0(), &ingress(67), &m);
    let r = r.unwrap();
    assert_eq!(
        (r.msg_type, r.yiaddr, r.opt(51)),
        (Some(MessageType::Ack), Ipv4Addr::UNSPECIFIED, None)
    );
    assert_eq!(r.opt_str(15).as_deref(), Some("lab.test"));
    assert_eq!(
        h.outgoing[0].dest,
        Destination::Unicast(SocketAddrV4::new(m.ciaddr, 68))
    );
    assert!(h.lease_writes.is_empty());
}

#[test]
fn restart_from_stored_leases_keeps_addresses() {
    let mut e = engine(Mode::Server);
    let mut writes = Vec::new();
    for n in 0..5 {
        let d = ClientMessage::new(ClientKind::Plain, MessageType::Discover, mac(n));
        let ip = send(&mut e, t0(), &ingress(67), &d).1.unwrap().yiaddr;
        let mut q = ClientMessage::new(ClientKind::Plain, MessageType::Request, mac(n));
        q.requested_ip = Some(ip);
        q.server_id = Some(SERVER);
        writes.extend(send(&mut e, t0(), &ingress(67), &q).0.lease_writes);
    }
    let mut fresh = engine(Mode::Server);
    fresh.load_leases(&writes);
    // A new client does not get any of them; the old ones get theirs back, in reverse order.
    let newcomer = dora(&mut fresh, t0(), mac(99));
    assert!(!writes.iter().any(|w| w.ip == newcomer));
    for n in (0..5).rev() {
        assert_eq!(dora(&mut fresh, t0(), mac(n)), writes[n as usize].ip);
    }
}

#[test]
fn client_identifier_wins_over_chaddr() {
    let mut e = engine(Mode::Server);
    let mut d = ClientMessage::new(ClientKind::Plain, MessageType::Discover, mac(90));
    d.client_id = Some(b"\x01machine-a".to_vec());
    let a = send(&mut e, t0(), &ingress(67), &d).1.unwrap().yiaddr;
    // Same client id, new NIC: same address.
    d.mac = mac(91);
    assert_eq!(send(&mut e, t0(), &ingress(67), &d).1.unwrap().yiaddr, a);
}

#[test]
fn firmware_without_client_id_and_ipxe_with_01_mac_are_one_client() {
    // OVMF sends no option 61; the iPXE it loads sends 01:<mac>. One machine, one address.
    let mut e = engine(Mode::Server);
    let firmware = dora(&mut e, t0(), mac(93));
    let mut d = ClientMessage::new(ClientKind::Plain, MessageType::Discover, mac(93));
    let mut id = vec![1u8];
    id.extend_from_slice(&mac(93));
    d.client_id = Some(id);
    assert_eq!(
        send(&mut e, t0(), &ingress(67), &d).1.unwrap().yiaddr,
        firmware
    );
    // A client id of another form stays a distinct client.
    d.client_id = Some(b"\x00other-id".to_vec());
    assert_ne!(
        send(&mut e, t0(), &ingress(67), &d).1.unwrap().yiaddr,
        firmware
    );
}

#[test]
fn unicast_reply_without_broadcast_flag_needs_arp() {
    let mut e = engine(Mode::Server);
    let mut d = ClientMessage::new(ClientKind::Plain, MessageType::Discover, mac(95));
    d.broadcast = false;
    let (h, r) = send(&mut e, t0(), &ingress(67), &d);
    let ip = r.unwrap().yiaddr;
    assert_eq!(
        h.outgoing[0].dest,
        Destination::UnicastNoArp {
            addr: SocketAddrV4::new(ip, 68),
            mac: Mac(mac(95))
        }
    );
}

#[test]
fn flood_from_one_mac_is_rate_limited() {
    let mut e = engine(Mode::Proxy);
    let m = ClientMessage::new(
        ClientKind::Firmware { arch: 0 },
        MessageType::Discover,
        mac(1),
    )
    .encode();
    let answered = (0..50)
        .filter(|_| !e.handle(t0(), &ingress(67), &m).outgoing.is_empty())
        .count();
    assert_eq!(answered, 20, "burst");
    assert_eq!(e.counters().drop_rate_limited.load(Ordering::Relaxed), 30);
    // One second later ten more (per_mac_rate = 10/s).
    let later = t0() + Duration::from_secs(1);
    let answered = (0..50)
        .filter(|_| !e.handle(later, &ingress(67), &m).outgoing.is_empty())
        .count();
    assert_eq!(answered, 10);
    // Other MACs are not affected.
    let other = ClientMessage::new(
        ClientKind::Firmware { arch: 0 },
        MessageType::Discover,
        mac(2),
    )
    .encode();
    assert!(!e.handle(later, &ingress(67), &other).outgoing.is_empty());
}

#[test]
fn garbage_is_dropped_and_counted_never_answered() {
    let mut e = engine(Mode::Server);
    let good = ClientMessage::new(
        ClientKind::Firmware { arch: 7 },
        MessageType::Discover,
        mac(1),
    )
    .encode();
    let mut seed = 0x1234_5678u32;
    let mut dropped = 0;
    for n in 0..2000 {
        // Truncations, bit flips and random bytes.
        let mut p = good.clone();
        match n % 3 {
            0 => p.truncate(n % good.len()),
            1 => {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let i = (seed as usize) % p.len();
                p[i] ^= (seed >> 16) as u8 | 1;
            }
            _ => {
                p = (0..(n % 600))
                    .map(|i| ((i as u32).wrapping_mul(seed) >> 7) as u8)
                    .collect();
            }
        }
        let h = e.handle(t0() + Duration::from_secs(n as u64), &ingress(67), &p);
        if matches!(h.outcome, Outcome::Dropped(DropReason::Malformed(_))) {
            dropped += 1;
            assert!(h.outgoing.is_empty());
        }
    }
    assert!(dropped > 1000, "{dropped}");
    assert_eq!(e.counters().drop_malformed.load(Ordering::Relaxed), dropped);
    let big = vec![0u8; 2000];
    assert_eq!(
        e.handle(t0(), &ingress(67), &big).outcome,
        Outcome::Dropped(DropReason::Malformed(ParseError::Oversized))
    );
    assert_eq!(e.counters().drop_oversized.load(Ordering::Relaxed), 1);
}

/// A MAC from a flood of made-up ones.
fn fake_mac(n: u32) -> [u8; 6] {
    let b = n.to_be_bytes();
    [0x02, 0xfa, b[0], b[1], b[2], b[3]]
}

/// Full DORA for one client; the ACKed address, or None when refused anywhere.
fn try_dora(e: &mut Engine, now: SystemTime, m: [u8; 6]) -> Option<Ipv4Addr> {
    let d = ClientMessage::new(ClientKind::Plain, MessageType::Discover, m);
    let offer = send(e, now, &ingress(67), &d).1?;
    let mut q = ClientMessage::new(ClientKind::Plain, MessageType::Request, m);
    q.requested_ip = Some(offer.yiaddr);
    q.server_id = Some(SERVER);
    let ack = send(e, now, &ingress(67), &q).1?;
    (ack.msg_type == Some(MessageType::Ack)).then_some(ack.yiaddr)
}

#[test]
fn fake_mac_flood_takes_at_most_the_new_client_share_and_known_clients_are_served() {
    // Pool of 100 (198.18.0.100-199), share 0.5 per 10 s window (the defaults).
    let mut e = engine(Mode::Server);
    assert_eq!(e.config().limits.new_client_share, 0.5);
    let window = e.config().limits.new_client_window.0;
    // A returning client: leased an hour before the flood (its lease has expired since).
    let early = t0() - Duration::from_secs(2 * 3600);
    let returning = dora(&mut e, early, mac(1));
    let mut granted = 0;
    let mut n = 0u32;
    let mut refusals = 0;
    let mut exhausted = 0;
    for w in 0..12u64 {
        let now = t0() + window * w as u32;
        let free_before = e.free_addresses(0, unix(now));
        let mut this_window = 0;
        for _ in 0..1000 {
            n += 1;
            let d = ClientMessage::new(ClientKind::Plain, MessageType::Discover, fake_mac(n));
            match send(&mut e, now, &ingress(67), &d) {
                (_, Some(_)) => {
                    this_window += 1;
                    // Taking it, as a starvation tool does.
                    assert!(try_dora(&mut e, now, fake_mac(n)).is_some());
                }
                (h, None) if h.outcome == Outcome::Ignored(Ignored::NewClientLimit) => {
                    refusals += 1
                }
                (h, None) => {
                    assert_eq!(h.outcome, Outcome::Ignored(Ignored::PoolExhausted));
                    exhausted += 1;
                }
            }
        }
        assert_eq!(
            this_window,
            free_before.div_ceil(2),
            "window {w}: at most half of the {free_before} free addresses"
        );
        granted += this_window;
        // Static hosts and returning clients are still served in the middle of the flood.
        assert_eq!(
            try_dora(&mut e, now, [0x52, 0x54, 0x00, 0x00, 0x00, 0x50]),
            Some(Ipv4Addr::new(198, 18, 0, 50))
        );
        assert_eq!(try_dora(&mut e, now, mac(1)), Some(returning));
    }
    // 100 addresses, the returning client keeps 1: the flood gets 50 + 25 + 12 + 6 + 3 + 2 + 1
    // over seven windows (70 s, warned and counted all along) instead of all 99 at once.
    assert_eq!(granted, 99);
    assert_eq!(e.free_addresses(0, unix(t0() + window * 12)), 0);
    let c = e.counters();
    assert_eq!(c.refused_new_client.load(Ordering::Relaxed), refusals);
    assert_eq!(c.pool_exhausted.load(Ordering::Relaxed), exhausted);
    assert_eq!(refusals + exhausted, 12_000 - 99);
    assert!(refusals > 5000, "{refusals}");
}

#[test]
fn new_clients_cannot_bypass_the_guard_with_init_reboot() {
    let mut e = engine(Mode::Server);
    // Use up this window's allowance (50 of 100 free).
    for n in 0..50 {
        assert!(try_dora(&mut e, t0(), fake_mac(n)).is_some());
    }
    assert!(try_dora(&mut e, t0(), fake_mac(50)).is_none());
    // A made-up client claiming a free address directly (INIT-REBOOT) is refused too ...
    let mut q = ClientMessage::new(ClientKind::Plain, MessageType::Request, fake_mac(51));
    q.requested_ip = Some(Ipv4Addr::new(198, 18, 0, 190));
    let (h, r) = send(&mut e, t0(), &ingress(67), &q);
    assert!(r.is_none());
    assert_eq!(h.outcome, Outcome::Ignored(Ignored::NewClientLimit));
    // ... and is served once a new window begins.
    let later = t0() + e.config().limits.new_client_window.0;
    let (_, r) = send(&mut e, later, &ingress(67), &q);
    let r = r.expect("ack in the next window");
    assert_eq!(
        (r.msg_type, r.yiaddr),
        (Some(MessageType::Ack), Ipv4Addr::new(198, 18, 0, 190))
    );
}

#[test]
fn share_one_turns_the_guard_off() {
    let mut cfg = server_cfg();
    cfg.limits.new_client_share = 1.0;
    let mut e = Engine::new(cfg, BootSettings::default());
    let got = (0..150)
        .filter(|n| try_dora(&mut e, t0(), fake_mac(*n)).is_some())
        .count();
    assert_eq!(got, 100, "the whole pool");
    assert_eq!(e.counters().pool_exhausted.load(Ordering::Relaxed), 50);
    assert_eq!(e.counters().refused_new_client.load(Ordering::Relaxed), 0);
}

#[test]
fn flood_through_one_relay_is_rate_limited_per_relay() {
    let mut cfg = server_cfg();
    cfg.limits.per_relay_rate = 100.0;
    cfg.limits.per_relay_burst = 200.0;
    cfg.limits.new_client_share = 1.0;
    let mut e = Engine::new(cfg, BootSettings::default());
    let relayed = |n: u32, giaddr: Ipv4Addr| {
        let mut d = ClientMessage::new(ClientKind::Plain, MessageType::Discover, fake_mac(n));
        d.giaddr = giaddr;
        d.encode()
    };
    // Every packet from a different MAC: the per-MAC limit never triggers, the relay's does.
    let passed = (0..500)
        .filter(|n| {
            let h = e.handle(t0(), &ingress(67), &relayed(*n, RELAY));
            h.outcome != Outcome::Dropped(DropReason::RelayRateLimited)
        })
        .count();
    assert_eq!(passed, 200, "burst");
    let c = e.counters();
    assert_eq!(c.drop_relay_rate_limited.load(Ordering::Relaxed), 300);
    assert_eq!(c.drop_rate_limited.load(Ordering::Relaxed), 0);
    // Another relay and directly attached clients are not affected.
    let other_relay = Ipv4Addr::new(198, 18, 0, 2);
    let h = e.handle(t0(), &ingress(67), &relayed(10_000, other_relay));
    assert_eq!(h.outcome, Outcome::Replied(MessageType::Offer));
    assert!(try_dora(&mut e, t0(), mac(3)).is_some());
    // One second later the relay may send 100 more.
    let later = t0() + Duration::from_secs(1);
    let passed = (1000..1500)
        .filter(|n| {
            let h = e.handle(later, &ingress(67), &relayed(*n, RELAY));
            h.outcome != Outcome::Dropped(DropReason::RelayRateLimited)
        })
        .count();
    assert_eq!(passed, 100);
}
