//! DHCPv6 for the load generator: Solicit-Advertise-Request-Reply (RFC 8415 §18), each client
//! message inside a Relay-Forw (§9) from the generator's address, which is also the
//! link-address the server picks the prefix by, so one socket stands for any number of clients
//! on one relayed link. Each exchange has its own DUID-LL (the exchange's MAC) and its
//! transaction id is the exchange's index.

use std::net::Ipv6Addr;
use std::ops::Range;

use crate::{mac_of, Kind, Protocol, Reply};

const SOLICIT: u8 = 1;
const ADVERTISE: u8 = 2;
const REQUEST: u8 = 3;
const REPLY: u8 = 7;
const RELAY_FORW: u8 = 12;
const RELAY_REPL: u8 = 13;

const CLIENTID: u16 = 1;
const SERVERID: u16 = 2;
const IA_NA: u16 = 3;
const IAADDR: u16 = 5;
const ORO: u16 = 6;
const ELAPSED_TIME: u16 = 8;
const RELAY_MSG: u16 = 9;
const STATUS_CODE: u16 = 13;
const DNS_SERVERS: u16 = 23;

/// Relay-Forw/Relay-Repl header: type, hop count, link-address, peer-address.
const RELAY_HEADER: usize = 34;
/// Every exchange asks for one address in IA 1.
const IAID: u32 = 1;

pub struct V6 {
    relay: Ipv6Addr,
    mac_prefix: [u8; 2],
}

impl V6 {
    pub fn new(relay: Ipv6Addr, mac_prefix: [u8; 2]) -> V6 {
        V6 { relay, mac_prefix }
    }

    /// A client message of exchange `index` inside a Relay-Forw; `body` adds the options
    /// after the Client Identifier.
    fn relayed(
        &self,
        out: &mut Vec<u8>,
        msg_type: u8,
        index: u32,
        body: impl FnOnce(&mut Vec<u8>),
    ) {
        let mac = mac_of(self.mac_prefix, index);
        out.clear();
        out.push(RELAY_FORW);
        out.push(0); // hop count: the first relay
        out.extend_from_slice(&self.relay.octets());
        out.extend_from_slice(&link_local(mac).octets());
        // The Relay Message option; its length is filled in below.
        out.extend_from_slice(&RELAY_MSG.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        let inner = out.len();
        out.push(msg_type);
        out.extend_from_slice(&index.to_be_bytes()[1..]);
        // DUID-LL (type 3, hardware type 1 = Ethernet) of the exchange's MAC.
        let mut duid = [0u8; 10];
        duid[..4].copy_from_slice(&[0, 3, 0, 1]);
        duid[4..].copy_from_slice(&mac);
        opt(out, CLIENTID, &duid);
        body(out);
        opt(out, ELAPSED_TIME, &[0, 0]);
        opt(out, ORO, &DNS_SERVERS.to_be_bytes());
        let len = (out.len() - inner) as u16;
        out[inner - 2..inner].copy_from_slice(&len.to_be_bytes());
    }
}

fn opt(out: &mut Vec<u8>, code: u16, value: &[u8]) {
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

/// fe80::/64 with the modified EUI-64 of `mac` (the client's source address a relay names as
/// the peer-address).
fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o[0] = 0xfe;
    o[1] = 0x80;
    o[8..].copy_from_slice(&[
        mac[0] ^ 2,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ]);
    Ipv6Addr::from(o)
}

/// Where the first option `code` in `b` has its value, as a range of the datagram (`base`:
/// where `b` starts in it); None when absent or when an option runs past the end first.
fn find(b: &[u8], base: usize, code: u16) -> Option<Range<usize>> {
    let mut i = 0;
    while i + 4 <= b.len() {
        let c = u16::from_be_bytes([b[i], b[i + 1]]);
        let len = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
        if i + 4 + len > b.len() {
            return None;
        }
        if c == code {
            return Some(base + i + 4..base + i + 4 + len);
        }
        i += 4 + len;
    }
    None
}

/// The first address in an IA_NA's value, unless its status says otherwise.
fn ia_address(p: &[u8], ia: Range<usize>) -> Option<[u8; 16]> {
    // IAID, T1, T2, then sub-options.
    let start = ia.start + 12;
    let sub = p.get(start..ia.end)?;
    if let Some(s) = find(sub, start, STATUS_CODE) {
        if p.get(s.start..s.start + 2)? != [0, 0] {
            return None;
        }
    }
    let a = find(sub, start, IAADDR)?;
    p.get(a.start..a.start + 16)?.try_into().ok()
}

/// 2^24: the transaction id is 24 bits.
pub const MAX_EXCHANGES: usize = 1 << 24;

impl Protocol for V6 {
    const PORT: u16 = 547;
    const MAX_EXCHANGES: usize = MAX_EXCHANGES;

    fn first(&self, out: &mut Vec<u8>, index: u32) {
        self.relayed(out, SOLICIT, index, |o| {
            // IAID, T1 0, T2 0: the server's choice.
            let mut ia = [0u8; 12];
            ia[..4].copy_from_slice(&IAID.to_be_bytes());
            opt(o, IA_NA, &ia);
        });
    }

    fn second(&self, out: &mut Vec<u8>, reply: &Reply, datagram: &[u8]) {
        let server_id = reply
            .server_id
            .clone()
            .and_then(|r| datagram.get(r))
            .unwrap_or_default();
        self.relayed(out, REQUEST, reply.index, |o| {
            opt(o, SERVERID, server_id);
            // IA_NA (IAID, T1 0, T2 0) holding the advertised address, lifetimes 0 (the
            // server's choice).
            o.extend_from_slice(&IA_NA.to_be_bytes());
            o.extend_from_slice(&(12u16 + 4 + 24).to_be_bytes());
            o.extend_from_slice(&IAID.to_be_bytes());
            o.extend_from_slice(&[0; 8]);
            o.extend_from_slice(&IAADDR.to_be_bytes());
            o.extend_from_slice(&24u16.to_be_bytes());
            o.extend_from_slice(&reply.addr);
            o.extend_from_slice(&[0; 8]);
        });
    }

    fn parse(&self, p: &[u8]) -> Option<Reply> {
        if p.len() < RELAY_HEADER || p[0] != RELAY_REPL {
            return None;
        }
        let m = find(&p[RELAY_HEADER..], RELAY_HEADER, RELAY_MSG)?;
        let inner = p.get(m.clone())?;
        if inner.len() < 4 {
            return None;
        }
        let index = u32::from_be_bytes([0, inner[1], inner[2], inner[3]]);
        let get = |code| find(&inner[4..], m.start + 4, code);
        let addr = get(IA_NA).and_then(|ia| ia_address(p, ia));
        let kind = match (inner[0], addr) {
            (ADVERTISE, Some(_)) => Kind::Offer,
            (REPLY, Some(_)) => Kind::Ack,
            (ADVERTISE | REPLY, None) => Kind::Nak,
            _ => Kind::Other,
        };
        Some(Reply {
            index,
            kind,
            addr: addr.unwrap_or_default(),
            server_id: get(SERVERID),
        })
    }
}
