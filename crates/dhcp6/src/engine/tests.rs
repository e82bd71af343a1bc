//! The DHCPv6 engine as packet traces with a fake clock: what OVMF, iPXE and relays send,
//! what comes back.

use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::{Duration, SystemTime};

use chainboot_dhcp::BootSettings;
use chainboot_machine::Mac;
use chainboot_store::leases::LeaseState;

use super::*;
use crate::client::Client6;
use crate::config::Subnet6Config;
use crate::duid::MacSource;
use crate::wire::{code, msg, relay_forward, status, Options, RelayHop};

const SERVER_DUID: &[u8] = &[
    0, 4, 0xc0, 0xff, 0xee, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
];
const MAC: Mac = Mac([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

fn local() -> Ipv6Addr {
    "2001:db8:1::1".parse().unwrap()
}

fn cfg(mode: Mode6, pool: [&str; 2]) -> Dhcp6Config {
    Dhcp6Config {
        mode,
        subnet: vec![Subnet6Config {
            prefix: "2001:db8:1::/64".parse().unwrap(),
            pools: vec![[pool[0].parse().unwrap(), pool[1].parse().unwrap()]],
            dns: vec!["2001:db8:1::53".parse().unwrap()],
            valid_lifetime: None,
        }],
        ..Default::default()
    }
}

fn engine(mode: Mode6) -> Engine6 {
    Engine6::new(
        cfg(mode, ["2001:db8:1::100", "2001:db8:1::1ff"]),
        BootSettings::default(),
        SERVER_DUID.to_vec(),
    )
}

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn direct() -> Ingress6 {
    Ingress6 {
        ifindex: 3,
        iface: "boot0".into(),
        local: vec![local()],
        dst: "ff02::1:2".parse().unwrap(),
        local_port: 547,
        src: SocketAddrV6::new("fe80::5054:ff:fe12:3456".parse().unwrap(), 546, 0, 3),
    }
}

/// DUID-UUID as iPXE and OVMF send it when the VM has an SMBIOS UUID.
fn duid_uuid(n: u8) -> Vec<u8> {
    let mut d = vec![0, 4];
    d.extend_from_slice(&[n; 16]);
    d
}

type Client = Client6;

/// The test clients: OVMF's PXEv6 and HTTPv6, iPXE, ordinary ones.
trait Clients {
    fn ovmf_pxe() -> Client6 {
        Client6::firmware(duid_uuid(7), 7, false)
    }
    fn ovmf_http() -> Client6 {
        Client6::firmware(duid_uuid(7), 16, true)
    }
    fn ipxe() -> Client6 {
        Client6 {
            duid: duid_uuid(9),
            user_class: Some("iPXE".into()),
            ..Client6::firmware(duid_uuid(9), 7, false)
        }
    }
    fn plain(n: u8) -> Client6 {
        Client6 {
            duid: duid_uuid(n),
            iaid: 1,
            vendor: None,
            arch: None,
            user_class: None,
        }
    }
}

impl Clients for Client6 {}

/// A reply as the client reads it.
#[derive(Debug)]
struct Seen {
    msg_type: u8,
    xid: [u8; 3],
    opts: Options,
}

impl Seen {
    fn of(out: &Outgoing6) -> Seen {
        let mut b = out.bytes.clone();
        while b[0] == msg::RELAY_REPL {
            b = Options::parse(&b[34..])
                .unwrap()
                .get(code::RELAY_MSG)
                .unwrap()
                .to_vec();
        }
        Seen {
            msg_type: b[0],
            xid: [b[1], b[2], b[3]],
            opts: Options::parse(&b[4..]).unwrap(),
        }
    }

    fn url(&self) -> Option<String> {
        self.opts
            .get(code::BOOTFILE_URL)
            .map(|u| String::from_utf8(u.to_vec()).unwrap())
    }

    /// The first IA_NA's address and valid lifetime, or its status code.
    fn ia(&self) -> Result<(Ipv6Addr, u32), u16> {
        let ia = self.opts.get(code::IA_NA).expect("an IA_NA");
        let inner = Options::parse(&ia[12..]).unwrap();
        if let Some(a) = inner.get(code::IAADDR) {
            let addr = Ipv6Addr::from(<[u8; 16]>::try_from(&a[..16]).unwrap());
            return Ok((addr, u32::from_be_bytes(a[20..24].try_into().unwrap())));
        }
        let st = inner.get(code::STATUS_CODE).expect("a status");
        Err(u16::from_be_bytes([st[0], st[1]]))
    }

    fn status(&self) -> Option<u16> {
        self.opts
            .get(code::STATUS_CODE)
            .map(|s| u16::from_be_bytes([s[0], s[1]]))
    }
}

fn one(h: &Handled6) -> Seen {
    assert_eq!(h.outgoing.len(), 1, "{:?}", h.outcome);
    Seen::of(&h.outgoing[0])
}

/// The address a direct Solicit from `c` is advertised at time 0.
fn advertised(e: &mut Engine6, c: &Client6) -> Ipv6Addr {
    one(&e.handle(t(0), &direct(), &c.solicit()))
        .ia()
        .unwrap()
        .0
}

#[test]
fn ovmf_pxe_gets_an_address_and_a_bracketed_tftp_url_then_binds_it_durably() {
    let mut e = engine(Mode6::Server);
    let c = Client::ovmf_pxe();
    let adv = e.handle(t(0), &direct(), &c.solicit());
    assert_eq!(adv.outcome, Outcome6::Replied(msg::ADVERTISE));
    assert!(adv.lease_writes.is_empty(), "an Advertise is not persisted");
    let seen = one(&adv);
    assert_eq!(
        (seen.msg_type, seen.xid),
        (msg::ADVERTISE, [0xab, 0xcd, 0xef])
    );
    assert_eq!(
        seen.url().as_deref(),
        Some("tftp://[2001:db8:1::1]/snponly.efi")
    );
    assert_eq!(seen.opts.get(code::SERVERID), Some(SERVER_DUID));
    assert_eq!(seen.opts.get(code::PREFERENCE), Some(&[255u8][..]));
    assert_eq!(
        seen.opts.get(code::VENDOR_CLASS),
        None,
        "no PXEClient: OVMF would take it for a BINL offer and ask UDP 4011 for the file"
    );
    let (addr, valid) = seen.ia().unwrap();
    assert!(
        cfg(Mode6::Server, ["2001:db8:1::100", "2001:db8:1::1ff"]).subnet[0].pools[0][0] <= addr
    );
    assert_eq!(valid, 12 * 3600);
    assert_eq!(
        adv.outgoing[0].dest,
        direct().src,
        "to the client's link-local address"
    );

    let rep = e.handle(
        t(1),
        &direct(),
        &c.with_server(msg::REQUEST, SERVER_DUID, addr),
    );
    assert_eq!(rep.outcome, Outcome6::Replied(msg::REPLY));
    assert_eq!(one(&rep).ia(), Ok((addr, 12 * 3600)));
    assert_eq!(one(&rep).opts.get(code::VENDOR_CLASS), None);
    assert_eq!(rep.lease_writes.len(), 1, "durable before the Reply");
    let w = &rep.lease_writes[0];
    assert_eq!((w.ip, w.iaid, w.state), (addr, 1, LeaseState::Bound));
    assert_eq!(
        w.mac.as_deref(),
        Some("52:54:00:12:34:56"),
        "learned from the EUI-64 link-local source"
    );
    assert_eq!(e.bound_to(addr, 1_700_000_010), Some(MAC));
}

#[test]
fn http_boot_gets_an_http_url_and_an_httpclient_vendor_class_edk2_accepts() {
    let mut e = engine(Mode6::Server);
    let seen = one(&e.handle(t(0), &direct(), &Client::ovmf_http().solicit()));
    assert_eq!(
        seen.url().as_deref(),
        Some("http://[2001:db8:1::1]/ipxe-bin/snponly.efi")
    );
    let v = seen.opts.get(code::VENDOR_CLASS).unwrap();
    assert!(v.len() >= 16, "edk2 wants at least 16 bytes");
    assert_eq!(&v[..4], &343u32.to_be_bytes());
    assert_eq!(&v[6..16], b"HTTPClient");
}

#[test]
fn ipxe_user_class_gets_the_script_url_never_the_first_stage() {
    let mut e = engine(Mode6::Server);
    let seen = one(&e.handle(t(0), &direct(), &Client::ipxe().solicit()));
    assert_eq!(
        seen.url().as_deref(),
        Some("http://[2001:db8:1::1]/boot.ipxe")
    );
    let plain = one(&e.handle(t(0), &direct(), &Client::plain(3).solicit()));
    assert!(
        plain.url().is_none(),
        "an ordinary client gets an address only"
    );
    assert!(plain.ia().is_ok());
}

#[test]
fn rapid_commit_binds_at_once() {
    let mut e = engine(Mode6::Server);
    let c = Client::ovmf_pxe();
    let h = e.handle(
        t(0),
        &direct(),
        &c.msg(
            msg::SOLICIT,
            |w| {
                w.opt(code::RAPID_COMMIT, &[]);
            },
            None,
        ),
    );
    assert_eq!(h.outcome, Outcome6::Replied(msg::REPLY));
    let seen = one(&h);
    assert!(seen.opts.has(code::RAPID_COMMIT));
    assert_eq!(h.lease_writes.len(), 1);
    let mut off = engine(Mode6::Server);
    off.cfg.rapid_commit = false;
    let h = off.handle(
        t(0),
        &direct(),
        &c.msg(
            msg::SOLICIT,
            |w| {
                w.opt(code::RAPID_COMMIT, &[]);
            },
            None,
        ),
    );
    assert_eq!(h.outcome, Outcome6::Replied(msg::ADVERTISE));
}

#[test]
fn the_same_ia_keeps_its_address_and_other_ias_get_others() {
    let mut e = engine(Mode6::Server);
    let c = Client::ovmf_pxe();
    let a1 = advertised(&mut e, &c);
    let a2 = one(&e.handle(t(1), &direct(), &c.solicit()))
        .ia()
        .unwrap()
        .0;
    assert_eq!(a1, a2);
    let other_ia = Client {
        iaid: 2,
        ..Client::ovmf_pxe()
    };
    let b = one(&e.handle(t(2), &direct(), &other_ia.solicit()))
        .ia()
        .unwrap()
        .0;
    assert_ne!(
        a1, b,
        "OVMF takes a new IAID per boot option: each gets its own address"
    );
}

#[test]
fn renew_extends_rebind_of_a_foreign_address_is_not_answered_and_unknown_ia_has_no_binding() {
    let mut e = engine(Mode6::Server);
    let c = Client::ovmf_pxe();
    let addr = advertised(&mut e, &c);
    e.handle(
        t(1),
        &direct(),
        &c.with_server(msg::REQUEST, SERVER_DUID, addr),
    );
    let renew = e.handle(
        t(100),
        &direct(),
        &c.with_server(msg::RENEW, SERVER_DUID, addr),
    );
    assert_eq!(one(&renew).ia(), Ok((addr, 12 * 3600)));
    assert_eq!(renew.lease_writes[0].expires, 1_700_000_100 + 12 * 3600);
    assert!(
        e.lease(addr).unwrap().proven,
        "a renewing client has come back"
    );

    let foreign: Ipv6Addr = "2001:db8:99::5".parse().unwrap();
    let rebind = e.handle(
        t(101),
        &direct(),
        &c.msg(msg::REBIND, |_| {}, Some(foreign)),
    );
    assert_eq!(rebind.outcome, Outcome6::Ignored(Ignored6::NoReply));

    let stranger = Client {
        iaid: 77,
        ..Client::ovmf_pxe()
    };
    let other_addr: Ipv6Addr = "2001:db8:1::abcd:1".parse().unwrap();
    let renew = e.handle(
        t(102),
        &direct(),
        &stranger.with_server(msg::RENEW, SERVER_DUID, other_addr),
    );
    assert_eq!(
        one(&renew).ia(),
        Err(status::NO_BINDING),
        "on the link but outside the pool"
    );
}

#[test]
fn a_rebind_after_the_server_lost_its_state_binds_the_address_again() {
    let mut e = engine(Mode6::Server);
    let c = Client::ovmf_pxe();
    let addr: Ipv6Addr = "2001:db8:1::150".parse().unwrap();
    let h = e.handle(t(0), &direct(), &c.msg(msg::REBIND, |_| {}, Some(addr)));
    assert_eq!(one(&h).ia(), Ok((addr, 12 * 3600)));
    assert_eq!(h.lease_writes.len(), 1);
}

#[test]
fn release_and_decline_are_answered_and_persisted() {
    let mut e = engine(Mode6::Server);
    let c = Client::ovmf_pxe();
    let addr = advertised(&mut e, &c);
    e.handle(
        t(1),
        &direct(),
        &c.with_server(msg::REQUEST, SERVER_DUID, addr),
    );
    let rel = e.handle(
        t(2),
        &direct(),
        &c.with_server(msg::RELEASE, SERVER_DUID, addr),
    );
    assert_eq!(one(&rel).status(), Some(status::SUCCESS));
    assert_eq!(rel.lease_writes[0].state, LeaseState::Released);
    // The same IA comes back to the same address.
    assert_eq!(
        one(&e.handle(t(3), &direct(), &c.solicit()))
            .ia()
            .unwrap()
            .0,
        addr
    );
    e.handle(
        t(4),
        &direct(),
        &c.with_server(msg::REQUEST, SERVER_DUID, addr),
    );
    let dec = e.handle(
        t(5),
        &direct(),
        &c.with_server(msg::DECLINE, SERVER_DUID, addr),
    );
    assert_eq!(dec.lease_writes[0].state, LeaseState::Declined);
    let again = one(&e.handle(t(6), &direct(), &c.solicit()))
        .ia()
        .unwrap()
        .0;
    assert_ne!(again, addr, "a declined address stays out of the pool");
}

#[test]
fn confirm_says_whether_the_addresses_are_on_link() {
    let mut e = engine(Mode6::Server);
    let c = Client::ovmf_pxe();
    let on = e.handle(
        t(0),
        &direct(),
        &c.msg(
            msg::CONFIRM,
            |_| {},
            Some("2001:db8:1::150".parse().unwrap()),
        ),
    );
    assert_eq!(one(&on).status(), Some(status::SUCCESS));
    let off = e.handle(
        t(1),
        &direct(),
        &c.msg(msg::CONFIRM, |_| {}, Some("2001:db8:2::1".parse().unwrap())),
    );
    assert_eq!(one(&off).status(), Some(status::NOT_ON_LINK));
    let none = e.handle(t(2), &direct(), &c.msg(msg::CONFIRM, |_| {}, None));
    assert_eq!(none.outcome, Outcome6::Ignored(Ignored6::NoReply));
}

#[test]
fn information_request_gets_the_boot_url_and_dns_without_an_address() {
    let mut e = engine(Mode6::Server);
    let seen = one(&e.handle(
        t(0),
        &direct(),
        &Client::ipxe().msg(msg::INFORMATION_REQUEST, |_| {}, None),
    ));
    assert_eq!(seen.msg_type, msg::REPLY);
    assert_eq!(
        seen.url().as_deref(),
        Some("http://[2001:db8:1::1]/boot.ipxe")
    );
    assert!(seen.opts.get(code::IA_NA).is_none());
    assert_eq!(seen.opts.get(code::DNS_SERVERS).map(<[u8]>::len), Some(16));
}

#[test]
fn messages_naming_another_server_or_none_are_not_answered() {
    let mut e = engine(Mode6::Server);
    let c = Client::ovmf_pxe();
    let addr: Ipv6Addr = "2001:db8:1::150".parse().unwrap();
    let other = c.msg(
        msg::REQUEST,
        |w| {
            w.opt(code::SERVERID, &[0, 3, 0, 1, 1, 2, 3, 4, 5, 6]);
        },
        Some(addr),
    );
    assert_eq!(
        e.handle(t(0), &direct(), &other).outcome,
        Outcome6::Ignored(Ignored6::NotForUs)
    );
    let anonymous = c.msg(msg::REQUEST, |_| {}, Some(addr));
    assert_eq!(
        e.handle(t(0), &direct(), &anonymous).outcome,
        Outcome6::Ignored(Ignored6::NotForUs)
    );
    let solicit_with_id = c.msg(
        msg::SOLICIT,
        |w| {
            w.opt(code::SERVERID, SERVER_DUID);
        },
        None,
    );
    assert_eq!(
        e.handle(t(0), &direct(), &solicit_with_id).outcome,
        Outcome6::Ignored(Ignored6::NotForUs)
    );
}

#[test]
fn a_relayed_solicit_is_served_from_the_relays_prefix_and_answered_through_it() {
    let mut e = engine(Mode6::Server);
    let relay: SocketAddrV6 = "[2001:db8:1::fe]:547".parse().unwrap();
    let ingress = Ingress6 {
        local: vec!["2001:db8:ffff::1".parse().unwrap()],
        dst: "2001:db8:ffff::1".parse().unwrap(),
        src: relay,
        ..direct()
    };
    let hop = RelayHop {
        hop_count: 0,
        link: "2001:db8:1::fe".parse().unwrap(),
        peer: "fe80::1".parse().unwrap(),
        interface_id: Some(b"port7".to_vec()),
        client_link_layer: Some(vec![0, 1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
    };
    let packet = relay_forward(std::slice::from_ref(&hop), Client::ovmf_pxe().solicit());
    let h = e.handle(t(0), &ingress, &packet);
    assert_eq!(h.outcome, Outcome6::Replied(msg::ADVERTISE));
    let out = &h.outgoing[0];
    assert_eq!(out.dest, relay, "back to the relay");
    assert_eq!(out.bytes[0], msg::RELAY_REPL);
    let env = Options::parse(&out.bytes[34..]).unwrap();
    assert_eq!(
        env.get(code::INTERFACE_ID),
        Some(&b"port7"[..]),
        "interface-id echoed"
    );
    let seen = one(&h);
    assert_eq!(
        seen.url().as_deref(),
        Some("tftp://[2001:db8:ffff::1]/snponly.efi"),
        "the address the relay sent to"
    );
    assert!(seen.ia().is_ok());
    let (_, facts) = h.request.unwrap();
    assert_eq!(facts.mac, Some((MAC, MacSource::RelayOption79)));
    // A relay's link outside every prefix: no address.
    let lost = RelayHop {
        link: "2001:db8:77::1".parse().unwrap(),
        ..hop
    };
    let h = e.handle(
        t(1),
        &ingress,
        &relay_forward(&[lost], Client::plain(4).solicit()),
    );
    assert_eq!(h.outcome, Outcome6::Ignored(Ignored6::NoSubnet));
}

#[test]
fn one_duid_flooding_is_rate_limited_and_others_are_not() {
    let mut e = engine(Mode6::Server);
    let c = Client::plain(1);
    let answered = (0..100)
        .filter(|_| {
            matches!(
                e.handle(t(0), &direct(), &c.solicit()).outcome,
                Outcome6::Replied(_)
            )
        })
        .count();
    assert_eq!(answered, 20, "the burst");
    assert!(matches!(
        e.handle(t(0), &direct(), &Client::plain(2).solicit())
            .outcome,
        Outcome6::Replied(_)
    ));
    assert_eq!(e.counters().drop_rate_limited.load(Ordering::Relaxed), 80);
}

#[test]
fn the_starvation_guard_caps_unproven_clients_and_serves_returning_ones() {
    let mut e = Engine6::new(
        cfg(Mode6::Server, ["2001:db8:1::100", "2001:db8:1::103"]),
        BootSettings::default(),
        SERVER_DUID.to_vec(),
    );
    let bind = |e: &mut Engine6, n: u8, at: u64| {
        let c = Client::plain(n);
        let h = e.handle(t(at), &direct(), &c.solicit());
        if h.outcome != Outcome6::Replied(msg::ADVERTISE) {
            return Err(h.outcome);
        }
        let addr = one(&h).ia().unwrap().0;
        e.handle(
            t(at),
            &direct(),
            &c.with_server(msg::REQUEST, SERVER_DUID, addr),
        );
        Ok(addr)
    };
    let first = bind(&mut e, 1, 0).unwrap();
    bind(&mut e, 2, 0).unwrap();
    assert_eq!(
        bind(&mut e, 3, 0),
        Err(Outcome6::Ignored(Ignored6::NewClientLimit))
    );
    // Client 1 renews: proven, its address no longer counts, so a new client fits.
    e.handle(
        t(10),
        &direct(),
        &Client::plain(1).with_server(msg::RENEW, SERVER_DUID, first),
    );
    bind(&mut e, 3, 11).unwrap();
    assert_eq!(e.counters().refused_new_client.load(Ordering::Relaxed), 1);
}

#[test]
fn a_full_pool_advertises_nothing_to_ordinary_clients() {
    let mut e = Engine6::new(
        cfg(Mode6::Server, ["2001:db8:1::100", "2001:db8:1::100"]),
        BootSettings::default(),
        SERVER_DUID.to_vec(),
    );
    e.cfg.limits.new_client_share = 1.0;
    assert!(one(&e.handle(t(0), &direct(), &Client::plain(1).solicit()))
        .ia()
        .is_ok());
    let h = e.handle(t(0), &direct(), &Client::plain(2).solicit());
    assert_eq!(h.outcome, Outcome6::Ignored(Ignored6::PoolExhausted));
    // A boot client still gets its boot answer, with NoAddrsAvail for its IA.
    let boot = one(&e.handle(t(0), &direct(), &Client::ovmf_pxe().solicit()));
    assert_eq!(boot.ia(), Err(status::NO_ADDRS_AVAIL));
    assert!(boot.url().is_some());
}

#[test]
fn boot_info_mode_answers_boot_clients_without_addresses() {
    let mut e = engine(Mode6::BootInfo);
    let h = e.handle(t(0), &direct(), &Client::ovmf_pxe().solicit());
    let seen = one(&h);
    assert_eq!(seen.msg_type, msg::ADVERTISE);
    assert!(seen.opts.get(code::IA_NA).is_none());
    assert!(
        seen.opts.get(code::PREFERENCE).is_none(),
        "no 255 that would make clients skip the site server's offer"
    );
    assert_eq!(
        seen.url().as_deref(),
        Some("tftp://[2001:db8:1::1]/snponly.efi")
    );
    let v = seen
        .opts
        .get(code::VENDOR_CLASS)
        .expect("PXEClient marks a proxy offer");
    assert_eq!(&v[6..15], b"PXEClient");
    assert!(h.lease_writes.is_empty());
    let plain = e.handle(t(0), &direct(), &Client::plain(5).solicit());
    assert_eq!(plain.outcome, Outcome6::Ignored(Ignored6::NotBootClient));
    let off = engine(Mode6::Off).handle(t(0), &direct(), &Client::ovmf_pxe().solicit());
    assert_eq!(off.outcome, Outcome6::Ignored(Ignored6::ModeOff));
}

#[test]
fn a_boot_client_on_an_interface_without_a_routable_address_gets_no_url() {
    let mut e = engine(Mode6::BootInfo);
    let no_addr = Ingress6 {
        local: vec![],
        ..direct()
    };
    let h = e.handle(t(0), &no_addr, &Client::ovmf_pxe().solicit());
    assert_eq!(h.outcome, Outcome6::Ignored(Ignored6::NoServerAddress));
}

#[test]
fn leases_survive_a_restart_as_proven_with_their_mac() {
    let mut e = engine(Mode6::Server);
    let c = Client::ovmf_pxe();
    let addr = advertised(&mut e, &c);
    let writes = e
        .handle(
            t(1),
            &direct(),
            &c.with_server(msg::REQUEST, SERVER_DUID, addr),
        )
        .lease_writes;
    let mut after = engine(Mode6::Server);
    after.load_leases(&writes);
    assert_eq!(after.bound_to(addr, 1_700_000_002), Some(MAC));
    assert!(after.lease(addr).unwrap().proven);
    let renew = after.handle(
        t(2),
        &direct(),
        &c.with_server(msg::RENEW, SERVER_DUID, addr),
    );
    assert_eq!(one(&renew).ia(), Ok((addr, 12 * 3600)));
}

#[test]
fn malformed_and_oversized_packets_are_counted_and_change_nothing() {
    let mut e = engine(Mode6::Server);
    let mut s = Client::ovmf_pxe().solicit();
    s.truncate(s.len() - 3);
    assert!(matches!(
        e.handle(t(0), &direct(), &s).outcome,
        Outcome6::Dropped(_)
    ));
    let big = vec![msg::SOLICIT; 4096];
    assert!(matches!(
        e.handle(t(0), &direct(), &big).outcome,
        Outcome6::Dropped(DropReason6::Malformed(ParseError::Oversized))
    ));
    let c = e.counters();
    assert_eq!(
        (
            c.drop_malformed.load(Ordering::Relaxed),
            c.drop_oversized.load(Ordering::Relaxed)
        ),
        (1, 1)
    );
    assert!(e.leases().is_empty());
}

// ---- A fleet: one server answers each client; the database's holders are respected.

const PEER_DUID: &[u8] = &[0, 4, 0xbe, 0xef, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// Two servers' engines, "pxe-a" (SERVER_DUID) and "pxe-b" (PEER_DUID), each knowing the other
/// live.
fn pair() -> (Engine6, Engine6) {
    let names = || ["pxe-a", "pxe-b"].map(String::from);
    let mut a = engine(Mode6::Server);
    a.set_fleet(Some(Fleet::new("pxe-a", names())), vec![PEER_DUID.to_vec()]);
    let mut b = Engine6::new(
        cfg(Mode6::Server, ["2001:db8:1::100", "2001:db8:1::1ff"]),
        BootSettings::default(),
        PEER_DUID.to_vec(),
    );
    b.set_fleet(
        Some(Fleet::new("pxe-b", names())),
        vec![SERVER_DUID.to_vec()],
    );
    (a, b)
}

/// A client on the link whose MAC is `n`-th, sending from its EUI-64 link-local address.
fn from_mac(n: u16) -> (Mac, Ingress6) {
    let [hi, lo] = n.to_be_bytes();
    let mac = Mac([0x52, 0x54, 0x00, 0x00, hi, lo]);
    let mut ingress = direct();
    ingress.src = SocketAddrV6::new(crate::duid::eui64_link_local(mac), 546, 0, 3);
    (mac, ingress)
}

#[test]
fn in_a_fleet_each_client_is_answered_by_one_server_keyed_by_its_mac() {
    let (mut a, mut b) = pair();
    let mut answered = [0u32; 2];
    for n in 0..64u16 {
        let (mac, ingress) = from_mac(n);
        // Firmware and iPXE of one machine: two DUIDs, one MAC, one server.
        for duid in [duid_uuid(n as u8), [&[0u8, 3, 0, 1][..], &mac.0].concat()] {
            let c = Client6::firmware(duid, 7, false);
            let outcomes = [&mut a, &mut b].map(|e| e.handle(t(0), &ingress, &c.solicit()));
            let replied: Vec<usize> = (0..2)
                .filter(|&i| outcomes[i].outcome == Outcome6::Replied(msg::ADVERTISE))
                .collect();
            assert_eq!(replied.len(), 1, "{mac}: {outcomes:?}");
            let i = replied[0];
            let owner = a
                .fleet()
                .unwrap()
                .owner(chainboot_dhcp::engine::fleet::bucket(&mac.0));
            assert_eq!(owner, ["pxe-a", "pxe-b"][i], "{mac}");
            assert_eq!(
                outcomes[1 - i].outcome,
                Outcome6::Ignored(Ignored6::PeerClient)
            );
            assert!(
                outcomes[1 - i].request.is_none(),
                "no event for a peer's client"
            );
            // Each takes addresses from its own share of the pool first.
            let (addr, _) = one(&outcomes[i]).ia().unwrap();
            let e = if i == 0 { &a } else { &b };
            assert!(e.fleet().unwrap().serves(&addr.octets()), "{addr}");
            answered[i] += 1;
        }
    }
    assert!(answered.iter().all(|&n| n >= 32), "shared: {answered:?}");
    let c = |e: &Engine6| e.counters().ignored_peer_client.load(Ordering::Relaxed);
    assert_eq!(c(&a) + c(&b), 128);
}

#[test]
fn a_request_naming_a_live_peer_is_that_peers_and_counted_apart_from_an_unknown_server() {
    let (mut a, _) = pair();
    let c = Client::ovmf_pxe();
    let addr: Ipv6Addr = "2001:db8:1::150".parse().unwrap();
    let peers = a.handle(
        t(0),
        &direct(),
        &c.with_server(msg::REQUEST, PEER_DUID, addr),
    );
    assert_eq!(peers.outcome, Outcome6::Ignored(Ignored6::PeerServer));
    let unknown = [0, 3, 0, 1, 1, 2, 3, 4, 5, 6];
    let other = a.handle(t(0), &direct(), &c.with_server(msg::RENEW, &unknown, addr));
    assert_eq!(other.outcome, Outcome6::Ignored(Ignored6::NotForUs));
    let n = a.counters();
    assert_eq!(n.ignored_peer_server.load(Ordering::Relaxed), 1);
    assert_eq!(n.ignored_other_server.load(Ordering::Relaxed), 1);
}

#[test]
fn when_a_peer_stops_its_clients_rebind_to_the_survivor_and_keep_their_address() {
    let (mut a, mut b) = pair();
    // A client of pxe-b's buckets.
    let (mac, ingress) = (0..256u16)
        .map(from_mac)
        .find(|(m, _)| b.fleet().unwrap().serves(&m.0))
        .unwrap();
    let c = Client6::firmware([&[0u8, 3, 0, 1][..], &mac.0].concat(), 7, false);
    let addr = one(&b.handle(t(0), &ingress, &c.solicit())).ia().unwrap().0;
    let bound = b.handle(
        t(1),
        &ingress,
        &c.with_server(msg::REQUEST, PEER_DUID, addr),
    );
    assert_eq!(one(&bound).ia(), Ok((addr, 12 * 3600)));
    // pxe-a loads what pxe-b wrote (the fleet's heartbeat does).
    a.load_leases(&bound.lease_writes);
    let rebind = c.msg(msg::REBIND, |_| {}, Some(addr));
    assert_eq!(
        a.handle(t(2), &ingress, &rebind).outcome,
        Outcome6::Ignored(Ignored6::PeerClient),
        "while pxe-b lives, its client is its own"
    );
    // pxe-b stops heart-beating: pxe-a is alone.
    a.set_fleet(Some(Fleet::new("pxe-a", ["pxe-a".to_string()])), Vec::new());
    let renew = a.handle(t(3), &ingress, &c.with_server(msg::RENEW, PEER_DUID, addr));
    assert_eq!(renew.outcome, Outcome6::Ignored(Ignored6::NotForUs));
    let rebound = a.handle(t(4), &ingress, &rebind);
    assert_eq!(
        one(&rebound).ia(),
        Ok((addr, 12 * 3600)),
        "the same address"
    );
    assert_eq!(one(&rebound).opts.get(code::SERVERID), Some(SERVER_DUID));
    assert_eq!(rebound.lease_writes.len(), 1);
}

#[test]
fn an_address_the_database_gave_another_client_is_replaced_when_the_client_asks_again() {
    let mut e = engine(Mode6::Server);
    let c = Client::ovmf_pxe();
    let addr = advertised(&mut e, &c);
    let request = c.with_server(msg::REQUEST, SERVER_DUID, addr);
    let first = e.handle(t(1), &direct(), &request);
    // The database refused the write: another server's client holds the address.
    let mut holder = first.lease_writes[0].clone();
    holder.duid = duid_uuid(99);
    holder.mac = None;
    e.load_leases(&[holder]);
    let again = e.handle(t(2), &direct(), &request);
    let (other, valid) = one(&again).ia().unwrap();
    assert_ne!(other, addr, "re-picked");
    assert_eq!(valid, 12 * 3600);
    assert_eq!(again.lease_writes[0].ip, other);
    assert!(!e.held_by(addr, &c.duid, c.iaid));
}
