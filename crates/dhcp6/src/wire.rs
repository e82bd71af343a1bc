//! DHCPv6 messages on the wire (RFC 8415 §8, §9, §21): options as code/length/value, client
//! messages inside any number of Relay-Forw envelopes (bounded), and the encoder for replies.
//!
//! Written here rather than on dhcproto's `v6` module: dhcproto 0.15 decodes the Relay
//! Message option (9) always as another relay message, so the client message at the bottom
//! of every relayed packet fails to parse, it reads a Relay-Forw at top level with the client
//! header (3-byte transaction id), and its recursion into nested relays has no depth bound.
//! The TLV format is small; what matters is that every length is checked and every count
//! bounded, which this module does in one place.

use std::net::Ipv6Addr;

/// Message types (RFC 8415 §7.3).
pub mod msg {
    pub const SOLICIT: u8 = 1;
    pub const ADVERTISE: u8 = 2;
    pub const REQUEST: u8 = 3;
    pub const CONFIRM: u8 = 4;
    pub const RENEW: u8 = 5;
    pub const REBIND: u8 = 6;
    pub const REPLY: u8 = 7;
    pub const RELEASE: u8 = 8;
    pub const DECLINE: u8 = 9;
    pub const INFORMATION_REQUEST: u8 = 11;
    pub const RELAY_FORW: u8 = 12;
    pub const RELAY_REPL: u8 = 13;
}

/// Option codes (RFC 8415 §21, RFC 5970, RFC 6939).
pub mod code {
    pub const CLIENTID: u16 = 1;
    pub const SERVERID: u16 = 2;
    pub const IA_NA: u16 = 3;
    pub const IA_TA: u16 = 4;
    pub const IAADDR: u16 = 5;
    pub const ORO: u16 = 6;
    pub const PREFERENCE: u16 = 7;
    pub const RELAY_MSG: u16 = 9;
    pub const STATUS_CODE: u16 = 13;
    pub const RAPID_COMMIT: u16 = 14;
    pub const USER_CLASS: u16 = 15;
    pub const VENDOR_CLASS: u16 = 16;
    pub const INTERFACE_ID: u16 = 18;
    pub const DNS_SERVERS: u16 = 23;
    pub const DOMAIN_LIST: u16 = 24;
    pub const BOOTFILE_URL: u16 = 59;
    pub const BOOTFILE_PARAM: u16 = 60;
    pub const CLIENT_ARCH: u16 = 61;
    pub const NII: u16 = 62;
    pub const CLIENT_LINKLAYER_ADDR: u16 = 79;
}

/// Status codes (RFC 8415 §21.13).
pub mod status {
    pub const SUCCESS: u16 = 0;
    pub const NO_ADDRS_AVAIL: u16 = 2;
    pub const NO_BINDING: u16 = 3;
    pub const NOT_ON_LINK: u16 = 4;
}

/// Relay agents a message may pass through: RFC 8415 §7.6 HOP_COUNT_LIMIT. A relay drops a
/// message whose hop count reached it, so deeper nesting never comes from a working network.
pub const MAX_RELAY_DEPTH: usize = 8;
/// Options per message (or per relay envelope, or inside one IA_NA) read at most. A real
/// client sends about a dozen; a packet with thousands of tiny options is refused before
/// anything walks them twice.
pub const MAX_OPTIONS: usize = 64;
/// IA_NA options of one message that get an answer; more are answered NoAddrsAvail. OVMF and
/// iPXE send one; the bound keeps one packet from claiming a pool's worth of addresses.
pub const MAX_IAS: usize = 4;
/// DUIDs are at most 128 bytes plus the 2-byte type (RFC 8415 §11.1); the shortest real one,
/// DUID-EN with a one-byte identifier, is 7. Below 4 bytes there is no type and value.
pub const DUID_LEN: std::ops::RangeInclusive<usize> = 4..=130;

/// Why a packet was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParseError {
    /// Longer than `[dhcp6.limits] max_request_bytes`.
    Oversized,
    /// Shorter than its header, or an option running past its end.
    Truncated,
    TooManyOptions,
    /// More Relay-Forw envelopes than [`MAX_RELAY_DEPTH`].
    RelayTooDeep,
    /// A Relay-Forw without a Relay Message option.
    NoRelayMessage,
    /// A server-to-client type (Advertise, Reply, Relay-Repl, Reconfigure) sent to a server.
    NotClientMessage,
    /// No Client Identifier, or one outside [`DUID_LEN`].
    BadClientId,
}

impl ParseError {
    pub fn as_str(self) -> &'static str {
        match self {
            ParseError::Oversized => "oversized",
            ParseError::Truncated => "truncated",
            ParseError::TooManyOptions => "too-many-options",
            ParseError::RelayTooDeep => "relay-too-deep",
            ParseError::NoRelayMessage => "no-relay-message",
            ParseError::NotClientMessage => "not-client-message",
            ParseError::BadClientId => "bad-client-id",
        }
    }
}

/// A list of options in packet order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options(Vec<(u16, Vec<u8>)>);

impl Options {
    /// Reads `b` as options to its end.
    pub fn parse(mut b: &[u8]) -> Result<Options, ParseError> {
        let mut out = Vec::new();
        while !b.is_empty() {
            if out.len() == MAX_OPTIONS {
                return Err(ParseError::TooManyOptions);
            }
            let (Some(c), Some(l)) = (b.get(0..2), b.get(2..4)) else {
                return Err(ParseError::Truncated);
            };
            let code = u16::from_be_bytes([c[0], c[1]]);
            let len = usize::from(u16::from_be_bytes([l[0], l[1]]));
            let data = b.get(4..4 + len).ok_or(ParseError::Truncated)?;
            out.push((code, data.to_vec()));
            b = &b[4 + len..];
        }
        Ok(Options(out))
    }

    /// The first option `code`.
    pub fn get(&self, code: u16) -> Option<&[u8]> {
        self.0.iter().find(|(c, _)| *c == code).map(|(_, d)| &d[..])
    }

    pub fn all(&self, code: u16) -> impl Iterator<Item = &[u8]> {
        self.0
            .iter()
            .filter(move |(c, _)| *c == code)
            .map(|(_, d)| &d[..])
    }

    pub fn has(&self, code: u16) -> bool {
        self.get(code).is_some()
    }
}

/// A client message (RFC 8415 §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub msg_type: u8,
    pub xid: [u8; 3],
    pub options: Options,
}

/// One Relay-Forw envelope (RFC 8415 §9.1), outermost first in [`Received::relays`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayHop {
    pub hop_count: u8,
    /// An address on the client's link (unspecified when the relay identifies the link by
    /// Interface-Id alone).
    pub link: Ipv6Addr,
    /// The address of the client or of the next relay towards it.
    pub peer: Ipv6Addr,
    /// Option 18, echoed in the Relay-Repl.
    pub interface_id: Option<Vec<u8>>,
    /// Option 79 (RFC 6939): link-layer type and address of the client, from the first relay.
    pub client_link_layer: Option<Vec<u8>>,
}

/// A received packet: the client message and the relays it came through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub relays: Vec<RelayHop>,
    pub msg: Message,
}

impl Received {
    /// The relay closest to the client (it knows the client's link).
    pub fn first_relay(&self) -> Option<&RelayHop> {
        self.relays.last()
    }

    /// The client's DUID (checked by [`parse`]).
    pub fn client_id(&self) -> &[u8] {
        self.msg.options.get(code::CLIENTID).unwrap_or_default()
    }
}

/// Parses a packet that arrived on the server port.
pub fn parse(bytes: &[u8], max_bytes: usize) -> Result<Received, ParseError> {
    if bytes.len() > max_bytes {
        return Err(ParseError::Oversized);
    }
    let mut relays = Vec::new();
    // The message being read: the packet, then each envelope's Relay Message (a copy, at
    // most MAX_RELAY_DEPTH of them, each smaller than the packet).
    let mut cur = bytes.to_vec();
    loop {
        let b = &cur[..];
        let t = *b.first().ok_or(ParseError::Truncated)?;
        match t {
            msg::RELAY_FORW => {
                if relays.len() == MAX_RELAY_DEPTH {
                    return Err(ParseError::RelayTooDeep);
                }
                if b.len() < 34 {
                    return Err(ParseError::Truncated);
                }
                let addr = |at: usize| {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(&b[at..at + 16]);
                    Ipv6Addr::from(o)
                };
                let (link, peer) = (addr(2), addr(18));
                let options = Options::parse(&b[34..])?;
                let inner = options
                    .get(code::RELAY_MSG)
                    .ok_or(ParseError::NoRelayMessage)?
                    .to_vec();
                relays.push(RelayHop {
                    hop_count: b[1],
                    link,
                    peer,
                    interface_id: options.get(code::INTERFACE_ID).map(<[u8]>::to_vec),
                    client_link_layer: options.get(code::CLIENT_LINKLAYER_ADDR).map(<[u8]>::to_vec),
                });
                cur = inner;
            }
            msg::SOLICIT
            | msg::REQUEST
            | msg::CONFIRM
            | msg::RENEW
            | msg::REBIND
            | msg::RELEASE
            | msg::DECLINE
            | msg::INFORMATION_REQUEST => {
                if b.len() < 4 {
                    return Err(ParseError::Truncated);
                }
                let options = Options::parse(&b[4..])?;
                if !options
                    .get(code::CLIENTID)
                    .is_some_and(|d| DUID_LEN.contains(&d.len()))
                    && t != msg::INFORMATION_REQUEST
                {
                    return Err(ParseError::BadClientId);
                }
                let msg = Message {
                    msg_type: t,
                    xid: [b[1], b[2], b[3]],
                    options,
                };
                return Ok(Received { relays, msg });
            }
            _ => return Err(ParseError::NotClientMessage),
        }
    }
}

/// One IA_NA of a request (RFC 8415 §21.4) and the addresses the client named in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IaNa {
    pub iaid: u32,
    pub addrs: Vec<Ipv6Addr>,
}

impl IaNa {
    /// Reads an IA_NA option's payload; `None` when it is too short or its options are bad.
    pub fn parse(b: &[u8]) -> Option<IaNa> {
        let iaid = u32::from_be_bytes(b.get(0..4)?.try_into().ok()?);
        let opts = Options::parse(b.get(12..)?).ok()?;
        let addrs = opts
            .all(code::IAADDR)
            .filter_map(|a| <[u8; 16]>::try_from(a.get(0..16)?).ok())
            .map(Ipv6Addr::from)
            .collect();
        Some(IaNa { iaid, addrs })
    }
}

/// A list of RFC 8415 §21.15/§21.16 opaque strings: each a 2-byte length and its bytes.
/// Stops at the first string that runs past the end.
pub fn opaque_list(mut b: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some(l) = b.get(0..2) {
        let len = usize::from(u16::from_be_bytes([l[0], l[1]]));
        let Some(s) = b.get(2..2 + len) else { break };
        out.push(s);
        b = &b[2 + len..];
        if out.len() == MAX_OPTIONS {
            break;
        }
    }
    out
}

/// Builds options for a reply.
#[derive(Debug, Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Writer {
        Writer::default()
    }

    /// Appends option `code` with `data` (callers keep `data` under 64 KiB: every value
    /// chainboot writes is bounded far below).
    pub fn opt(&mut self, code: u16, data: &[u8]) -> &mut Writer {
        let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&code.to_be_bytes());
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf
            .extend_from_slice(&data[..usize::from(len).min(data.len())]);
        self
    }

    /// A Status Code option (RFC 8415 §21.13).
    pub fn status(&mut self, code: u16, message: &str) -> &mut Writer {
        let mut d = code.to_be_bytes().to_vec();
        d.extend_from_slice(message.as_bytes());
        self.opt(code::STATUS_CODE, &d)
    }
}

/// The message header followed by `options`.
pub fn message(msg_type: u8, xid: [u8; 3], options: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + options.len());
    out.push(msg_type);
    out.extend_from_slice(&xid);
    out.extend_from_slice(options);
    out
}

/// Wraps `inner` in the Relay-Repl envelopes matching `relays` (outermost first), echoing
/// each relay's hop count, addresses and Interface-Id (RFC 8415 §19.3).
pub fn relay_reply(relays: &[RelayHop], inner: Vec<u8>) -> Vec<u8> {
    relays.iter().rev().fold(inner, |inner, hop| {
        let mut w = Writer::new();
        if let Some(id) = &hop.interface_id {
            w.opt(code::INTERFACE_ID, id);
        }
        w.opt(code::RELAY_MSG, &inner);
        let mut out = Vec::with_capacity(34 + w.buf.len());
        out.push(msg::RELAY_REPL);
        out.push(hop.hop_count);
        out.extend_from_slice(&hop.link.octets());
        out.extend_from_slice(&hop.peer.octets());
        out.extend_from_slice(&w.buf);
        out
    })
}

/// Wraps a client message in Relay-Forw envelopes as relays would (tests, `explain`, the
/// fuzz seeds): `relays` outermost first.
pub fn relay_forward(relays: &[RelayHop], inner: Vec<u8>) -> Vec<u8> {
    relays.iter().rev().fold(inner, |inner, hop| {
        let mut w = Writer::new();
        if let Some(id) = &hop.interface_id {
            w.opt(code::INTERFACE_ID, id);
        }
        if let Some(ll) = &hop.client_link_layer {
            w.opt(code::CLIENT_LINKLAYER_ADDR, ll);
        }
        w.opt(code::RELAY_MSG, &inner);
        let mut out = vec![msg::RELAY_FORW, hop.hop_count];
        out.extend_from_slice(&hop.link.octets());
        out.extend_from_slice(&hop.peer.octets());
        out.extend_from_slice(&w.buf);
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solicit() -> Vec<u8> {
        let mut w = Writer::new();
        w.opt(code::CLIENTID, &[0, 3, 0, 1, 0x52, 0x54, 0, 0, 0, 1]);
        message(msg::SOLICIT, [1, 2, 3], &w.buf)
    }

    fn hop(n: u8) -> RelayHop {
        RelayHop {
            hop_count: n,
            link: "2001:db8:1::1".parse().unwrap(),
            peer: "fe80::1".parse().unwrap(),
            interface_id: Some(vec![n]),
            client_link_layer: None,
        }
    }

    #[test]
    fn a_relayed_solicit_unwraps_and_its_reply_wraps_the_same_way() {
        let relays = vec![hop(1), hop(0)];
        let packet = relay_forward(&relays, solicit());
        let r = parse(&packet, 1500).unwrap();
        assert_eq!(r.relays, relays);
        assert_eq!(r.msg.msg_type, msg::SOLICIT);
        assert_eq!(r.msg.xid, [1, 2, 3]);
        let reply = relay_reply(&r.relays, vec![msg::REPLY, 1, 2, 3]);
        assert_eq!(reply[0], msg::RELAY_REPL);
        assert_eq!(reply[1], 1, "outermost hop count echoed");
    }

    #[test]
    fn relay_nesting_beyond_the_hop_limit_is_refused() {
        let ok: Vec<RelayHop> = (0..MAX_RELAY_DEPTH as u8).map(hop).collect();
        assert!(parse(&relay_forward(&ok, solicit()), 65535).is_ok());
        let deep: Vec<RelayHop> = (0..=MAX_RELAY_DEPTH as u8).map(hop).collect();
        assert_eq!(
            parse(&relay_forward(&deep, solicit()), 65535),
            Err(ParseError::RelayTooDeep)
        );
    }

    #[test]
    fn bad_lengths_counts_and_types_are_refused() {
        let s = solicit();
        assert_eq!(parse(&s, 10), Err(ParseError::Oversized));
        assert_eq!(parse(&s[..s.len() - 1], 1500), Err(ParseError::Truncated));
        assert_eq!(parse(&[], 1500), Err(ParseError::Truncated));
        let mut advertise = s.clone();
        advertise[0] = msg::ADVERTISE;
        assert_eq!(parse(&advertise, 1500), Err(ParseError::NotClientMessage));
        let mut w = Writer::new();
        w.opt(code::CLIENTID, &[0, 3, 0, 1, 1, 2, 3, 4, 5, 6]);
        for _ in 0..MAX_OPTIONS {
            w.opt(code::ORO, &[]);
        }
        assert_eq!(
            parse(&message(msg::SOLICIT, [0; 3], &w.buf), 65535),
            Err(ParseError::TooManyOptions)
        );
        let mut w = Writer::new();
        w.opt(code::CLIENTID, &[0, 3]);
        assert_eq!(
            parse(&message(msg::SOLICIT, [0; 3], &w.buf), 1500),
            Err(ParseError::BadClientId)
        );
        let empty_relay = relay_forward(&[hop(0)], Vec::new());
        assert_eq!(parse(&empty_relay, 1500), Err(ParseError::Truncated));
        let mut no_msg = empty_relay.clone();
        no_msg.truncate(34);
        assert_eq!(parse(&no_msg, 1500), Err(ParseError::NoRelayMessage));
    }

    #[test]
    fn opaque_lists_stop_at_the_first_overrun() {
        assert_eq!(
            opaque_list(&[0, 4, b'i', b'P', b'X', b'E', 0, 9, 1]),
            vec![&b"iPXE"[..]]
        );
        assert!(opaque_list(&[0]).is_empty());
    }
}
