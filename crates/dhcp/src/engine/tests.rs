//! Engine tests: the client matrix × modes, and the lease lifecycle with a fake clock. They
//! read like packet traces: a client message in, the reply's fields checked.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::*;
use crate::client::{ClientKind, ClientMessage, ReplyView};
use crate::config::{HostConfig, SubnetConfig};
use chainboot_store::leases::LeaseState;

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
        lease_time: Duration::from_secs(3600),
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
        ClientKind::Firmware { arch: 7 | 9 } => "snponly.efi",
        ClientKind::Firmware { arch: 11 } => "ipxe-arm64.efi",
        ClientKind::HttpBoot { .. } => "http://198.18.0.1/ipxe-bin/snponly.efi",
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

/// The proxy scenario's two firmware beside a site DHCP server, message by message as captured
/// (docs/proxy-dhcp.md): every DISCOVER, the first and the one OVMF sends again when its offer
/// window ends without an address offer, gets everything the firmware needs to boot without
/// asking anyone again; the REQUESTs for the site server's address get nothing from the proxy.
#[test]
fn proxy_answers_every_firmware_discover_in_full_and_leaves_the_site_servers_requests_alone() {
    const SITE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    let mut e = engine(Mode::Proxy);
    let at = |s: u64| t0() + Duration::from_secs(s);
    let request_to_site = |kind: ClientKind, m: [u8; 6], ip: Ipv4Addr| {
        let mut q = ClientMessage::new(kind, MessageType::Request, m);
        q.server_id = Some(SITE);
        q.requested_ip = Some(ip);
        q
    };

    // OVMF: DISCOVER at 0 s and, the window over, the same DISCOVER at 4 s.
    let ovmf = ClientKind::Firmware { arch: 7 };
    let d = ClientMessage::new(ovmf.clone(), MessageType::Discover, mac(60));
    for s in [0, 4] {
        let (_, r) = send(&mut e, at(s), &ingress(67), &d);
        let r = r.unwrap_or_else(|| panic!("OVMF's DISCOVER at {s} s: no offer"));
        assert_eq!(r.yiaddr, Ipv4Addr::UNSPECIFIED, "{s} s: a proxy offer");
        // Discovery control bit 3 and a boot file: no prompt, no menu, no boot server
        // discovery on 4011; the TFTP server in siaddr.
        assert_eq!(r.opt(43), Some(&[6u8, 1, 8, 255][..]), "{s} s: 43");
        assert_eq!(
            (r.file.as_str(), r.siaddr),
            ("snponly.efi", SERVER),
            "{s} s"
        );
        assert_eq!(r.opt_str(60).as_deref(), Some("PXEClient"), "{s} s: 60");
    }
    let q = request_to_site(ovmf, mac(60), Ipv4Addr::new(198, 18, 0, 136));
    let (h, r) = send(&mut e, at(8), &ingress(67), &q);
    assert!(r.is_none(), "OVMF's REQUEST for the site's address");
    assert_eq!(h.outcome, Outcome::Ignored(Ignored::NoReply));

    // iPXE: siaddr and a file in the offer are its "PXE options", so it never sends a
    // ProxyDHCP REQUEST to 4011 (and never waits for an answer there).
    let ipxe = ClientKind::Ipxe {
        arch: 0,
        http: true,
        user_class: true,
    };
    let d = ClientMessage::new(ipxe.clone(), MessageType::Discover, mac(61));
    let (_, r) = send(&mut e, at(9), &ingress(67), &d);
    let r = r.expect("iPXE's DISCOVER: an offer");
    assert_eq!(r.yiaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(r.siaddr, SERVER);
    assert_eq!(r.file, "http://198.18.0.1/boot.ipxe");
    let q = request_to_site(ipxe, mac(61), Ipv4Addr::new(198, 18, 0, 135));
    let (h, r) = send(&mut e, at(12), &ingress(67), &q);
    assert!(r.is_none(), "iPXE's REQUEST for the site's address");
    assert_eq!(h.outcome, Outcome::Ignored(Ignored::NoReply));
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
fn a_message_for_a_live_peer_is_told_apart_from_one_for_an_unknown_server() {
    use super::fleet::Fleet;
    let peer = Ipv4Addr::new(198, 18, 0, 2);
    let rogue = Ipv4Addr::new(198, 18, 0, 254);
    let mut e = engine(Mode::Server);
    e.set_fleet(Some(
        Fleet::new("pxe-a", ["pxe-b".to_string()]).with_peer_addresses([peer]),
    ));
    let c = e.counters().clone();
    for (n, named, want) in [
        (21u8, peer, Ignored::PeerServer),
        (22, rogue, Ignored::OtherServer),
    ] {
        let mut q = ClientMessage::new(ClientKind::Plain, MessageType::Request, mac(n));
        q.requested_ip = Some(Ipv4Addr::new(198, 18, 0, 120));
        q.server_id = Some(named);
        let (h, reply) = send(&mut e, t0(), &ingress(67), &q);
        assert_eq!(h.outcome, Outcome::Ignored(want), "{named}");
        assert!(reply.is_none());
        for msg in [MessageType::Release, MessageType::Decline] {
            let mut m = ClientMessage::new(ClientKind::Plain, msg, mac(n));
            m.server_id = Some(named);
            assert_eq!(
                send(&mut e, t0(), &ingress(67), &m).0.outcome,
                Outcome::Ignored(want)
            );
        }
    }
    assert_eq!(c.ignored_peer_server.load(Ordering::Relaxed), 3);
    assert_eq!(c.ignored_other_server.load(Ordering::Relaxed), 3);
}

#[test]
fn a_request_choosing_a_stopped_fleet_server_is_told_to_start_over_by_the_new_owner_only() {
    use super::fleet::Fleet;
    let gone = Ipv4Addr::new(198, 18, 0, 3);
    // pxe-c stopped: its clients' buckets now belong to pxe-a or pxe-b.
    let fleets: Vec<(&str, Fleet)> = ["pxe-a", "pxe-b"]
        .into_iter()
        .map(|me| {
            let f = Fleet::new(me, ["pxe-a".to_string(), "pxe-b".to_string()])
                .with_departed_addresses([gone]);
            (me, f)
        })
        .collect();
    for n in 40u8..60 {
        let mut naks = 0;
        for (_, f) in &fleets {
            let mut e = engine(Mode::Server);
            e.set_fleet(Some(f.clone()));
            let mut q = ClientMessage::new(ClientKind::Plain, MessageType::Request, mac(n));
            q.requested_ip = Some(Ipv4Addr::new(198, 18, 0, 120));
            q.server_id = Some(gone);
            let (h, reply) = send(&mut e, t0(), &ingress(67), &q);
            match reply {
                Some(r) => {
                    assert_eq!(r.msg_type, Some(MessageType::Nak), "{h:?}");
                    assert_eq!(e.counters().nak_departed_server.load(Ordering::Relaxed), 1);
                    assert!(h.lease_writes.is_empty(), "a NAK binds nothing");
                    naks += 1;
                }
                // Counted as a fleet server's message, not recorded as a rogue server's.
                None => assert_eq!(h.outcome, Outcome::Ignored(Ignored::PeerServer), "{h:?}"),
            }
        }
        assert_eq!(
            naks, 1,
            "exactly one server of the fleet answers client {n}"
        );
    }
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

/// Pool addresses of subnet 0 held by unproven clients at `now`, counted the slow way (a scan
/// of the table): what the engine's O(1) counter must always equal.
fn unproven_by_scan(e: &Engine, now: SystemTime) -> u64 {
    let now = unix(now);
    let pool = 100..=199u8;
    e.leases()
        .iter()
        .filter(|l| {
            let o = l.ip.octets();
            o[..3] == [198, 18, 0]
                && pool.contains(&o[3])
                && !l.proven
                && l.status != LeaseStatus::Released
                && l.expires > now
        })
        .count() as u64
}

/// The guard's count for subnet 0, checked against the scan.
fn unproven(e: &mut Engine, now: SystemTime) -> u64 {
    let g = e.guard_state(now)[0];
    assert_eq!(g.unproven, unproven_by_scan(e, now), "counter == scan");
    assert!(g.unproven <= g.cap, "{g:?}");
    g.unproven
}

/// Current addresses (offered, bound, declined) held by made-up MACs at `now`.
fn held_by_fakes(e: &Engine, now: SystemTime) -> usize {
    let now = unix(now);
    e.leases()
        .iter()
        .filter(|l| l.mac.0[..2] == [0x02, 0xfa] && l.status != LeaseStatus::Released)
        .filter(|l| l.expires > now)
        .count()
}

#[test]
fn fake_mac_flood_holds_at_most_the_share_forever_and_known_clients_are_served() {
    // Pool of 100 (198.18.0.100-199), share 0.5 (the default): at most 50 for unproven clients.
    let mut e = engine(Mode::Server);
    assert_eq!(e.config().limits.new_client_share, 0.5);
    assert_eq!(e.guard_state(t0())[0].cap, 50);
    // A returning client: leased two hours before the flood (its lease has expired since).
    let early = t0() - Duration::from_secs(2 * 3600);
    let returning = dora(&mut e, early, mac(1));
    let step = Duration::from_secs(60);
    let (mut n, mut granted, mut refusals, mut peak) = (0u32, 0u64, 0u64, 0);
    // Three hours of flood, 200 made-up MACs a minute, one DORA each (dhcpstarv, perfdhcp):
    // three lease times, so leases taken by the flood expire and are taken again.
    for s in 0..180u32 {
        let now = t0() + step * s;
        for _ in 0..200 {
            n += 1;
            let d = ClientMessage::new(ClientKind::Plain, MessageType::Discover, fake_mac(n));
            match send(&mut e, now, &ingress(67), &d) {
                (_, Some(_)) => {
                    granted += 1;
                    assert!(try_dora(&mut e, now, fake_mac(n)).is_some());
                }
                (h, None) => {
                    assert_eq!(h.outcome, Outcome::Ignored(Ignored::NewClientLimit));
                    refusals += 1;
                }
            }
        }
        // (Checked by a scan only: the engine must expire the flood's leases on its own.)
        let held = held_by_fakes(&e, now);
        peak = peak.max(held);
        assert!(held <= 50, "minute {s}: the flood holds {held} of 100");
        // Static hosts and returning clients are served in the middle of the flood.
        assert_eq!(
            try_dora(&mut e, now, [0x52, 0x54, 0x00, 0x00, 0x00, 0x50]),
            Some(Ipv4Addr::new(198, 18, 0, 50))
        );
        assert_eq!(try_dora(&mut e, now, mac(1)), Some(returning));
    }
    assert_eq!(peak, 50);
    let end = t0() + step * 180;
    assert_eq!(unproven(&mut e, end) as usize, held_by_fakes(&e, end));
    // Expiry frees budget: each hour the flood's 50 leases lapse and 50 more are taken.
    assert_eq!(granted, 150, "50 per lease time");
    let c = e.counters();
    assert_eq!(c.refused_new_client.load(Ordering::Relaxed), refusals);
    assert_eq!(refusals, 180 * 200 - 150);
    assert_eq!(c.pool_exhausted.load(Ordering::Relaxed), 0);
}

/// Firmware DORA then iPXE DORA (same MAC, client id 01:<mac>); the two addresses.
fn firmware_then_ipxe(e: &mut Engine, now: SystemTime, m: [u8; 6]) -> Option<Ipv4Addr> {
    let fw = try_dora(e, now, m)?;
    let kind = ClientKind::Ipxe {
        arch: 7,
        http: true,
        user_class: true,
    };
    let mut id = vec![1];
    id.extend_from_slice(&m);
    let mut d = ClientMessage::new(kind.clone(), MessageType::Discover, m);
    d.client_id = Some(id.clone());
    let offer = send(e, now, &ingress(67), &d)
        .1
        .expect("iPXE is always offered");
    let mut q = ClientMessage::new(kind, MessageType::Request, m);
    q.client_id = Some(id);
    q.requested_ip = Some(offer.yiaddr);
    q.server_id = Some(SERVER);
    let ack = send(e, now, &ingress(67), &q).1.expect("iPXE is acked");
    assert_eq!((ack.msg_type, ack.yiaddr), (Some(MessageType::Ack), fw));
    Some(fw)
}

#[test]
fn a_boot_storm_is_limited_only_during_its_first_dora() {
    // 90 machines on a pool of 100 (cap 50), all at once: the first 50 firmware DORAs fill the
    // share, their iPXE DORA seconds later proves them, and the firmware retries of the other
    // 40 are served then. Every machine ends bound, none is left unproven.
    let mut e = engine(Mode::Server);
    let machines: Vec<[u8; 6]> = (0..90u32).map(|i| [0x52, 0x54, 0, 9, 0, i as u8]).collect();
    let mut done = std::collections::HashMap::new();
    for round in 0..3u32 {
        let now = t0() + Duration::from_secs(4 * u64::from(round));
        // Firmware DISCOVERs of everyone not done yet, then iPXE of those that got through.
        let through: Vec<_> = machines
            .iter()
            .filter(|m| !done.contains_key(*m))
            .filter_map(|m| try_dora(&mut e, now, *m).map(|_| *m))
            .collect();
        assert_eq!(through.len(), if round == 0 { 50 } else { 40 }, "{round}");
        for m in through {
            let ip = firmware_then_ipxe(&mut e, now + Duration::from_secs(3), m).unwrap();
            done.insert(m, ip);
        }
        if done.len() == machines.len() {
            break;
        }
    }
    assert_eq!(done.len(), 90);
    assert_eq!(unproven(&mut e, t0() + Duration::from_secs(20)), 0);
}

#[test]
fn returning_clients_are_proven_and_lapses_free_the_budget() {
    let mut cfg = server_cfg();
    // Pool of 10, share 0.3: cap 3.
    cfg.subnet[0].pools = vec![[
        "198.18.0.100".parse().unwrap(),
        "198.18.0.109".parse().unwrap(),
    ]];
    cfg.limits.new_client_share = 0.3;
    let mut e = Engine::new(cfg, BootSettings::default());
    assert_eq!(e.guard_state(t0())[0].cap, 3);
    let t = |s: u64| t0() + Duration::from_secs(s);
    let a = try_dora(&mut e, t(0), mac(1)).unwrap();
    let b = try_dora(&mut e, t(0), mac(2)).unwrap();
    let c = try_dora(&mut e, t(0), mac(3)).unwrap();
    assert_eq!(unproven(&mut e, t(0)), 3);
    assert_eq!(try_dora(&mut e, t(0), mac(4)), None, "at the cap");
    // A retransmitted REQUEST (lost ACK) is no return.
    let mut q = ClientMessage::new(ClientKind::Plain, MessageType::Request, mac(3));
    q.requested_ip = Some(c);
    q.server_id = Some(SERVER);
    assert!(send(&mut e, t(1), &ingress(67), &q).1.is_some());
    assert_eq!(unproven(&mut e, t(1)), 3);
    // RENEWING (ciaddr, unicast) proves a.
    let mut renew = ClientMessage::new(ClientKind::Plain, MessageType::Request, mac(1));
    renew.ciaddr = a;
    let ack = send(&mut e, t(1800), &ingress(67), &renew).1.unwrap();
    assert_eq!((ack.msg_type, ack.yiaddr), (Some(MessageType::Ack), a));
    assert_eq!(unproven(&mut e, t(1800)), 2);
    // INIT-REBOOT into its own lease proves b.
    let mut reboot = ClientMessage::new(ClientKind::Plain, MessageType::Request, mac(2));
    reboot.requested_ip = Some(b);
    assert!(send(&mut e, t(1800), &ingress(67), &reboot).1.is_some());
    assert_eq!(unproven(&mut e, t(1800)), 1);
    // Two new clients fit now; the third is refused, also when it claims an address directly.
    let offered = ClientMessage::new(ClientKind::Plain, MessageType::Discover, mac(5));
    let o = send(&mut e, t(1800), &ingress(67), &offered).1.unwrap();
    assert!(try_dora(&mut e, t(1800), mac(6)).is_some());
    assert_eq!(unproven(&mut e, t(1800)), 3);
    let mut claim = ClientMessage::new(ClientKind::Plain, MessageType::Request, mac(7));
    claim.requested_ip = Some(Ipv4Addr::new(198, 18, 0, 109));
    let (h, r) = send(&mut e, t(1800), &ingress(67), &claim);
    assert_eq!(
        (h.outcome, r),
        (Outcome::Ignored(Ignored::NewClientLimit), None)
    );
    // mac(5)'s offer lapses after offer_time: budget back at once.
    let lapse = 1800 + e.config().offer_time.as_secs();
    assert!(send(&mut e, t(lapse), &ingress(67), &claim).1.is_some());
    assert_eq!(unproven(&mut e, t(lapse)), 3);
    // Its REQUEST for the lapsed offer is not let past the cap.
    let mut late = ClientMessage::new(ClientKind::Plain, MessageType::Request, mac(5));
    late.requested_ip = Some(o.yiaddr);
    late.server_id = Some(SERVER);
    let (h, _) = send(&mut e, t(lapse + 1), &ingress(67), &late);
    assert_eq!(h.outcome, Outcome::Ignored(Ignored::NewClientLimit));
    // Nor can it quarantine the lapsed offer with a DECLINE (that would hold it past the cap).
    let mut dec5 = ClientMessage::new(ClientKind::Plain, MessageType::Decline, mac(5));
    dec5.requested_ip = Some(o.yiaddr);
    dec5.server_id = Some(SERVER);
    let (h, _) = send(&mut e, t(lapse + 1), &ingress(67), &dec5);
    assert!(h.lease_writes.is_empty());
    assert_eq!(unproven(&mut e, t(lapse + 1)), 3);
    // A RELEASE frees budget at once.
    let mut rel = ClientMessage::new(ClientKind::Plain, MessageType::Release, mac(7));
    rel.ciaddr = Ipv4Addr::new(198, 18, 0, 109);
    rel.server_id = Some(SERVER);
    send(&mut e, t(lapse + 2), &ingress(67), &rel);
    assert_eq!(unproven(&mut e, t(lapse + 2)), 2);
    // An unproven client's DECLINE keeps counting for the quarantine, then frees.
    let d = try_dora(&mut e, t(lapse + 3), mac(8)).unwrap();
    let mut dec = ClientMessage::new(ClientKind::Plain, MessageType::Decline, mac(8));
    dec.requested_ip = Some(d);
    dec.server_id = Some(SERVER);
    send(&mut e, t(lapse + 3), &ingress(67), &dec);
    assert_eq!(unproven(&mut e, t(lapse + 4)), 3);
    assert_eq!(try_dora(&mut e, t(lapse + 4), mac(9)), None);
    let quarantine_over = lapse + 3 + e.config().decline_time.as_secs();
    assert!(try_dora(&mut e, t(quarantine_over), mac(9)).is_some());
    assert_eq!(unproven(&mut e, t(quarantine_over)), 3);
    // c (never returned) expires with its lease, one lease time after its DORA: its lease
    // ran until 3601 (renewed by the retransmitted REQUEST at 1).
    assert_eq!(try_dora(&mut e, t(3600), mac(10)), None);
    assert_eq!(unproven(&mut e, t(3600)), 3);
    assert!(try_dora(&mut e, t(3601), mac(10)).is_some());
    // Proven clients are served whatever the count: fill it again, then a and b return.
    let mut k = 0;
    while k < 10 && try_dora(&mut e, t(3602), fake_mac(k)).is_some() {
        k += 1;
    }
    assert_eq!(unproven(&mut e, t(3602)), 3);
    assert_eq!(try_dora(&mut e, t(3603), mac(1)), Some(a));
    assert_eq!(try_dora(&mut e, t(3603), mac(2)), Some(b));
    assert!(e.counters().refused_new_client.load(Ordering::Relaxed) >= 5);
}

/// A stored lease of `ip` bound to `mac` from before `t0()`, for half an hour after it.
fn stored_bound(ip: Ipv4Addr, mac: [u8; 6]) -> LeaseRecord {
    LeaseRecord {
        ip,
        mac: Mac(mac).to_string(),
        client_id: None,
        hostname: None,
        state: LeaseState::Bound,
        expires: unix(t0()) + 1800,
        updated: unix(t0()) - 1800,
    }
}

#[test]
fn leases_loaded_at_start_are_proven() {
    // 80 of 100 addresses bound before a restart: none counts, their clients renew and
    // reboot freely, and new clients get the share of the pool (here all 20 left).
    let mut e = engine(Mode::Server);
    let records: Vec<LeaseRecord> = (0..80u8)
        .map(|i| stored_bound(Ipv4Addr::new(198, 18, 0, 100 + i), [0x52, 0x54, 0, 8, 0, i]))
        .collect();
    e.load_leases(&records);
    assert_eq!(unproven(&mut e, t0()), 0);
    for n in 0..30 {
        let _ = try_dora(&mut e, t0(), fake_mac(n));
    }
    assert_eq!(
        unproven(&mut e, t0()),
        20,
        "the pool's last 20 (below the cap of 50)"
    );
    for i in 0..80u8 {
        let mut q = ClientMessage::new(
            ClientKind::Plain,
            MessageType::Request,
            [0x52, 0x54, 0, 8, 0, i],
        );
        q.requested_ip = Some(Ipv4Addr::new(198, 18, 0, 100 + i));
        let r = send(&mut e, t0(), &ingress(67), &q)
            .1
            .expect("INIT-REBOOT acked");
        assert_eq!(r.msg_type, Some(MessageType::Ack));
    }
    assert_eq!(unproven(&mut e, t0()), 20);
}

#[test]
fn the_guard_count_equals_a_scan_under_random_traffic() {
    // 2000 random steps from 30 clients on a pool of 10 (cap 5): DISCOVER, SELECTING, renew,
    // INIT-REBOOT, RELEASE, DECLINE, time jumps. After every step the O(1) counter equals the
    // scan of the table and never exceeds the cap.
    let mut cfg = server_cfg();
    cfg.subnet[0].pools = vec![[
        "198.18.0.100".parse().unwrap(),
        "198.18.0.109".parse().unwrap(),
    ]];
    cfg.offer_time = Duration::from_secs(30);
    cfg.decline_time = Duration::from_secs(90);
    cfg.lease_time = Duration::from_secs(300);
    cfg.limits.per_mac_rate = 1000.0;
    cfg.limits.per_mac_burst = 1000.0;
    let mut e = Engine::new(cfg, BootSettings::default());
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = |m: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % m
    };
    let mut now = t0();
    let mut replies = 0;
    for _ in 0..2000 {
        now += Duration::from_secs(next(8));
        let m = mac(next(30) as u8);
        let ip = Ipv4Addr::new(198, 18, 0, 100 + next(11) as u8);
        let mut msg = match next(6) {
            0 | 1 => ClientMessage::new(ClientKind::Plain, MessageType::Discover, m),
            2 => {
                let mut q = ClientMessage::new(ClientKind::Plain, MessageType::Request, m);
                q.server_id = Some(SERVER);
                q.requested_ip = Some(ip);
                q
            }
            3 => {
                let mut q = ClientMessage::new(ClientKind::Plain, MessageType::Request, m);
                if next(2) == 0 {
                    q.ciaddr = ip;
                } else {
                    q.requested_ip = Some(ip);
                }
                q
            }
            4 => {
                let mut q = ClientMessage::new(ClientKind::Plain, MessageType::Release, m);
                q.ciaddr = ip;
                q
            }
            _ => {
                let mut q = ClientMessage::new(ClientKind::Plain, MessageType::Decline, m);
                q.requested_ip = Some(ip);
                q
            }
        };
        msg.xid = next(1 << 31) as u32;
        if send(&mut e, now, &ingress(67), &msg).1.is_some() {
            replies += 1;
        }
        unproven(&mut e, now);
    }
    assert!(replies > 300, "the traffic did something: {replies}");
    assert!(e.counters().refused_new_client.load(Ordering::Relaxed) > 10);
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

#[test]
fn reconfigure_keeps_leases_and_applies_new_pools_hosts_and_lease_time() {
    let mut e = engine(Mode::Server);
    let kept = dora(&mut e, t0(), mac(60));
    let moved = dora(&mut e, t0(), mac(61));
    assert_eq!(
        (kept, moved),
        (
            Ipv4Addr::new(198, 18, 0, 100),
            Ipv4Addr::new(198, 18, 0, 101)
        )
    );
    let before = e
        .counters()
        .ack_sent
        .load(std::sync::atomic::Ordering::Relaxed);
    // The new file: the pool starts at .101 (so .100 is out of it), .101 belongs to a new
    // static host, and leases last 10 minutes.
    let mut cfg = server_cfg();
    cfg.lease_time = Duration::from_secs(600);
    cfg.subnet[0].pools = vec![[
        "198.18.0.101".parse().unwrap(),
        "198.18.0.199".parse().unwrap(),
    ]];
    cfg.host.push(HostConfig {
        mac: "52:54:00:00:00:51".parse().unwrap(),
        ip: "198.18.0.101".parse().unwrap(),
        hostname: None,
    });
    e.reconfigure(cfg);
    // The table survived, the counters go on.
    assert!(e.leases().iter().any(|l| l.ip == kept));
    assert_eq!(
        e.counters()
            .ack_sent
            .load(std::sync::atomic::Ordering::Relaxed),
        before
    );
    // Renewing an address the new config no longer hands out: NAK, start over.
    for (m, ip) in [(mac(60), kept), (mac(61), moved)] {
        let mut r = ClientMessage::new(ClientKind::Plain, MessageType::Request, m);
        r.ciaddr = ip;
        r.broadcast = false;
        let later = t0() + Duration::from_secs(60);
        assert_eq!(
            send(&mut e, later, &ingress(67), &r).1.unwrap().msg_type,
            Some(MessageType::Nak),
            "{ip} renewed after reconfigure"
        );
    }
    // A new DORA gets an address of the new pool (not the static host's) with the new time.
    let later = t0() + Duration::from_secs(60);
    let d = ClientMessage::new(ClientKind::Plain, MessageType::Discover, mac(60));
    let offer = send(&mut e, later, &ingress(67), &d).1.unwrap();
    assert_eq!(offer.yiaddr, Ipv4Addr::new(198, 18, 0, 102));
    let mut q = ClientMessage::new(ClientKind::Plain, MessageType::Request, mac(60));
    q.requested_ip = Some(offer.yiaddr);
    q.server_id = Some(SERVER);
    let (h, ack) = send(&mut e, later, &ingress(67), &q);
    assert_eq!(ack.unwrap().msg_type, Some(MessageType::Ack));
    assert_eq!(h.lease_writes[0].expires, unix(later) + 600);
    // The new static host gets its address.
    let d = ClientMessage::new(
        ClientKind::Plain,
        MessageType::Discover,
        [0x52, 0x54, 0x00, 0x00, 0x00, 0x51],
    );
    assert_eq!(
        send(&mut e, later, &ingress(67), &d).1.unwrap().yiaddr,
        Ipv4Addr::new(198, 18, 0, 101)
    );
}

/// Option 51 of a reply, in seconds.
fn lease_secs(r: &ReplyView) -> u32 {
    u32::from_be_bytes(r.opt(51).expect("lease time").try_into().expect("4 bytes"))
}

#[test]
fn unproven_clients_get_the_short_lease_until_they_come_back() {
    let mut cfg = server_cfg();
    cfg.limits.new_client_lease_time = Some(Duration::from_secs(600));
    let mut e = Engine::new(cfg, BootSettings::default());
    let m = mac(70);
    // First DORA: the OFFER and the ACK say 600 s, and the lease lasts 600 s.
    let d = ClientMessage::new(ClientKind::Plain, MessageType::Discover, m);
    let offer = send(&mut e, t0(), &ingress(67), &d).1.expect("offer");
    assert_eq!(lease_secs(&offer), 600);
    assert_eq!(offer.opt(58), Some(&300u32.to_be_bytes()[..]), "T1");
    let mut q = ClientMessage::new(ClientKind::Plain, MessageType::Request, m);
    q.requested_ip = Some(offer.yiaddr);
    q.server_id = Some(SERVER);
    let (h, ack) = send(&mut e, t0(), &ingress(67), &q);
    assert_eq!(lease_secs(&ack.expect("ack")), 600);
    assert_eq!(h.lease_writes[0].expires, unix(t0()) + 600);
    // Renewing at T1 proves it: the full lease_time (3600 s) from then on.
    let mut r = ClientMessage::new(ClientKind::Plain, MessageType::Request, m);
    r.ciaddr = offer.yiaddr;
    r.broadcast = false;
    let at_t1 = t0() + Duration::from_secs(300);
    let (h, ack) = send(&mut e, at_t1, &ingress(67), &r);
    assert_eq!(lease_secs(&ack.expect("ack")), 3600);
    assert_eq!(h.lease_writes[0].expires, unix(at_t1) + 3600);
    // A static host is proven from the start; a PXE client by iPXE's second DORA.
    let d = ClientMessage::new(
        ClientKind::Plain,
        MessageType::Discover,
        [0x52, 0x54, 0, 0, 0, 0x50],
    );
    assert_eq!(
        lease_secs(&send(&mut e, t0(), &ingress(67), &d).1.unwrap()),
        3600
    );
    firmware_then_ipxe(&mut e, t0(), mac(71)).expect("served");
    let l = e.leases().into_iter().find(|l| l.mac.0 == mac(71)).unwrap();
    assert_eq!(l.expires, unix(t0()) + 3600);
    // Unset: everyone gets lease_time at once (the default).
    let mut e = engine(Mode::Server);
    let d = ClientMessage::new(ClientKind::Plain, MessageType::Discover, mac(72));
    assert_eq!(
        lease_secs(&send(&mut e, t0(), &ingress(67), &d).1.unwrap()),
        3600
    );
}

#[test]
fn a_short_unproven_lease_lets_new_clients_in_sooner_after_a_flood() {
    // Pool of 100, cap 50: a flood of one-DORA MACs fills the share at t0 and stops.
    let admitted_after = |short: Option<u64>| {
        let mut cfg = server_cfg();
        cfg.limits.new_client_lease_time = short.map(Duration::from_secs);
        let mut e = Engine::new(cfg, BootSettings::default());
        for n in 0..50 {
            assert!(try_dora(&mut e, t0(), fake_mac(n)).is_some());
        }
        assert!(
            try_dora(&mut e, t0(), fake_mac(50)).is_none(),
            "the share is full"
        );
        // A new real machine tries once a minute: how long until it gets an address?
        (1..=120u64)
            .find(|min| try_dora(&mut e, t0() + Duration::from_secs(60 * min), mac(80)).is_some())
            .map(|min| min * 60)
    };
    assert_eq!(
        admitted_after(None),
        Some(3600),
        "the flood's leases last lease_time"
    );
    assert_eq!(admitted_after(Some(600)), Some(600));
}

#[test]
fn pool_usage_counts_each_pools_bound_and_offered_addresses() {
    let mut e = engine(Mode::Server);
    let a = dora(&mut e, t0(), mac(20));
    let b = dora(&mut e, t0(), mac(21));
    // An offer holds its address too.
    let d = ClientMessage::new(ClientKind::Plain, MessageType::Discover, mac(22));
    let (_, offer) = send(&mut e, t0(), &ingress(67), &d);
    let offered = offer.expect("offer").yiaddr;
    let usage = e.pool_usage();
    let first = &usage[0];
    assert_eq!(
        (first.start, first.size),
        ("198.18.0.100".parse().unwrap(), 100)
    );
    for ip in [a, b, offered] {
        assert!(u32::from(ip) >= u32::from(first.start) && u32::from(ip) <= u32::from(first.end));
    }
    assert_eq!(first.in_use, 3);
    // The other subnet's pool is untouched; the count matches a full scan of the table.
    assert_eq!(usage[1].in_use, 0);
    assert_eq!(usage[1].size, 11);
    let scanned = e
        .leases()
        .iter()
        .filter(|l| {
            u32::from(l.ip) >= u32::from(first.start) && u32::from(l.ip) <= u32::from(first.end)
        })
        .count() as u64;
    assert_eq!(first.in_use, scanned);
}

/// Two servers of a fleet on one segment: each DISCOVER is answered by exactly one; a
/// client's REQUEST for the offer (it names the server) is answered by that one; when a peer
/// leaves the fleet, the remaining server answers its clients, renewals included.
#[test]
fn a_fleet_of_two_answers_each_client_once_and_takes_over_a_departed_peers_clients() {
    use super::fleet::Fleet;
    let both = ["pxe-a".to_string(), "pxe-b".to_string()];
    let mut a = engine(Mode::Server);
    a.set_fleet(Some(Fleet::new("pxe-a", both.clone())));
    let mut b = engine(Mode::Server);
    b.set_fleet(Some(Fleet::new("pxe-b", both.clone())));
    let mut b_clients = Vec::new();
    for n in 0..40u8 {
        let d = ClientMessage::new(ClientKind::Plain, MessageType::Discover, mac(n));
        let (ha, oa) = send(&mut a, t0(), &ingress(67), &d);
        let (hb, ob) = send(&mut b, t0(), &ingress(67), &d);
        assert!(
            oa.is_some() != ob.is_some(),
            "client {n}: exactly one server offers"
        );
        let ignored = Outcome::Ignored(Ignored::PeerClient);
        assert!(ha.outcome == ignored || hb.outcome == ignored);
        if ob.is_some() {
            b_clients.push(n);
        }
    }
    assert!(
        (5..35).contains(&b_clients.len()),
        "shared: b has {}",
        b_clients.len()
    );
    // pxe-b stops heart-beating: pxe-a serves its clients, from the first DISCOVER.
    a.set_fleet(Some(Fleet::new("pxe-a", Vec::new())));
    for n in b_clients {
        assert!(dora(&mut a, t0(), mac(n)) != Ipv4Addr::UNSPECIFIED);
    }
    assert!(a.counters().ignored_peer_client.load(Ordering::Relaxed) > 0);
}

/// Servers of a fleet offer from their own shares of the pool first: two servers answering
/// clients at the same moment, each knowing nothing of the other's offers, pick different
/// addresses.
#[test]
fn fleet_servers_offer_from_disjoint_shares_of_the_pool() {
    use super::fleet::Fleet;
    let both = ["pxe-a".to_string(), "pxe-b".to_string()];
    let mut a = engine(Mode::Server);
    a.set_fleet(Some(Fleet::new("pxe-a", both.clone())));
    let mut b = engine(Mode::Server);
    b.set_fleet(Some(Fleet::new("pxe-b", both.clone())));
    let mut offered = std::collections::HashSet::new();
    for n in 0..16u8 {
        let d = ClientMessage::new(ClientKind::Plain, MessageType::Discover, mac(n));
        for e in [&mut a, &mut b] {
            if let (_, Some(offer)) = send(e, t0(), &ingress(67), &d) {
                assert!(
                    offered.insert(offer.yiaddr),
                    "{} offered twice",
                    offer.yiaddr
                );
            }
        }
    }
    assert_eq!(offered.len(), 16);
}

#[test]
fn leases_are_listed_a_page_at_a_time_in_address_order() {
    let mut e = engine(Mode::Server);
    // Loaded out of order, and addresses whose text order differs from their numeric order.
    let ips: Vec<Ipv4Addr> = (0..60u8)
        .rev()
        .map(|i| Ipv4Addr::new(198, 18, 0, 2 + i * 4))
        .chain([Ipv4Addr::new(198, 18, 7, 10)])
        .collect();
    let records: Vec<LeaseRecord> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| stored_bound(*ip, [0x52, 0x54, 0, 9, 0, i as u8]))
        .collect();
    e.load_leases(&records);
    let mut walked = Vec::new();
    let mut after = None;
    loop {
        let page = e.leases_after(after, 7);
        assert!(page.len() <= 7);
        let Some(last) = page.last() else { break };
        after = Some(last.ip);
        walked.extend(page.iter().map(|l| l.ip));
    }
    let mut sorted = ips.clone();
    sorted.sort();
    assert_eq!(walked, sorted, "every lease once, in numeric order");
    assert_eq!(e.leases().len(), ips.len());
    // A cursor that is no lease's address still continues after it.
    let page = e.leases_after(Some(Ipv4Addr::new(198, 18, 0, 3)), 2);
    let got: Vec<Ipv4Addr> = page.iter().map(|l| l.ip).collect();
    assert_eq!(
        got,
        [Ipv4Addr::new(198, 18, 0, 6), Ipv4Addr::new(198, 18, 0, 10)]
    );
}
