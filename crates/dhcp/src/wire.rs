//! DHCP messages on the wire, on top of dhcproto.
//!
//! dhcproto decodes the fixed BOOTP header well, but its option decoder turns options into
//! typed values and silently stops at the first one it cannot type (a 3-byte option 93, say),
//! does not read options overloaded into `file`/`sname` (option 52, RFC 2132 §9.3) and does
//! not join split long options (RFC 3396). Requests therefore keep their options as raw bytes,
//! read here. Replies are built with dhcproto and finished here: padded to the BOOTP minimum of
//! 300 bytes (RFC 1542 §2.1, firmware drops shorter ones) and kept within the client's option
//! 57 (maximum message size).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use dhcproto::v4::{Flags, Message, Opcode};
use dhcproto::{Decodable, Decoder};

/// Option codes used by the engine.
pub mod code {
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS: u8 = 6;
    pub const HOSTNAME: u8 = 12;
    pub const DOMAIN: u8 = 15;
    pub const MTU: u8 = 26;
    pub const BROADCAST: u8 = 28;
    pub const NTP: u8 = 42;
    pub const VENDOR_SPECIFIC: u8 = 43;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const OVERLOAD: u8 = 52;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAMETER_LIST: u8 = 55;
    pub const MESSAGE: u8 = 56;
    pub const MAX_SIZE: u8 = 57;
    pub const RENEWAL_T1: u8 = 58;
    pub const REBINDING_T2: u8 = 59;
    pub const VENDOR_CLASS: u8 = 60;
    pub const CLIENT_ID: u8 = 61;
    pub const TFTP_SERVER: u8 = 66;
    pub const BOOTFILE: u8 = 67;
    pub const USER_CLASS: u8 = 77;
    pub const RELAY_AGENT: u8 = 82;
    pub const CLIENT_ARCH: u8 = 93;
    pub const CLIENT_NDI: u8 = 94;
    pub const CLIENT_UUID: u8 = 97;
    pub const IPXE: u8 = 175;
}

/// DHCP message types (RFC 2132 §9.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    Discover,
    Offer,
    Request,
    Decline,
    Ack,
    Nak,
    Release,
    Inform,
}

impl MessageType {
    pub fn from_u8(v: u8) -> Option<MessageType> {
        Some(match v {
            1 => MessageType::Discover,
            2 => MessageType::Offer,
            3 => MessageType::Request,
            4 => MessageType::Decline,
            5 => MessageType::Ack,
            6 => MessageType::Nak,
            7 => MessageType::Release,
            8 => MessageType::Inform,
            _ => return None,
        })
    }

    pub fn as_u8(self) -> u8 {
        match self {
            MessageType::Discover => 1,
            MessageType::Offer => 2,
            MessageType::Request => 3,
            MessageType::Decline => 4,
            MessageType::Ack => 5,
            MessageType::Nak => 6,
            MessageType::Release => 7,
            MessageType::Inform => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MessageType::Discover => "DISCOVER",
            MessageType::Offer => "OFFER",
            MessageType::Request => "REQUEST",
            MessageType::Decline => "DECLINE",
            MessageType::Ack => "ACK",
            MessageType::Nak => "NAK",
            MessageType::Release => "RELEASE",
            MessageType::Inform => "INFORM",
        }
    }
}

/// Why a packet was not a usable DHCP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParseError {
    /// Shorter than the 236-byte header plus the magic cookie.
    Truncated,
    /// Longer than `limits.max_request_bytes`.
    Oversized,
    /// No DHCP magic cookie (a plain BOOTP request; chainboot does not serve BOOTP).
    NotDhcp,
    /// op is not BOOTREQUEST.
    NotRequest,
    /// hlen larger than chaddr.
    BadHardwareLength,
    /// An option runs past the end of its area.
    BadOption,
    /// No option 53, or a value that is not a client message.
    NoMessageType,
}

impl ParseError {
    pub fn name(self) -> &'static str {
        match self {
            ParseError::Truncated => "truncated",
            ParseError::Oversized => "oversized",
            ParseError::NotDhcp => "not-dhcp",
            ParseError::NotRequest => "not-request",
            ParseError::BadHardwareLength => "bad-hlen",
            ParseError::BadOption => "bad-option",
            ParseError::NoMessageType => "no-message-type",
        }
    }
}

/// A decoded client message: dhcproto's header plus raw options.
#[derive(Debug, Clone)]
pub struct Request {
    pub header: Message,
    pub msg_type: MessageType,
    /// Options by code; a code that appeared several times is concatenated (RFC 3396).
    pub options: BTreeMap<u8, Vec<u8>>,
}

const HEADER_LEN: usize = 236;
const MAGIC: [u8; 4] = [99, 130, 83, 99];

/// Decodes a client message of at most `max_len` bytes.
pub fn parse_request(bytes: &[u8], max_len: usize) -> Result<Request, ParseError> {
    if bytes.len() > max_len {
        return Err(ParseError::Oversized);
    }
    if bytes.len() < HEADER_LEN + 4 {
        return Err(ParseError::Truncated);
    }
    if bytes[HEADER_LEN..HEADER_LEN + 4] != MAGIC {
        return Err(ParseError::NotDhcp);
    }
    if bytes[0] != 1 {
        return Err(ParseError::NotRequest);
    }
    if bytes[2] > 16 {
        return Err(ParseError::BadHardwareLength);
    }
    // Only the fixed header goes through dhcproto's decoder: options are read below.
    let mut header_only = bytes[..HEADER_LEN + 4].to_vec();
    header_only.push(255);
    let mut header =
        Message::decode(&mut Decoder::new(&header_only)).map_err(|_| ParseError::Truncated)?;
    let mut options = BTreeMap::new();
    scan_options(&bytes[HEADER_LEN + 4..], &mut options)?;
    // Option 52: 1 = options continue in `file`, 2 = in `sname`, 3 = both (file first).
    if let Some(&[overload]) = options.get(&code::OVERLOAD).map(Vec::as_slice) {
        if overload & 1 != 0 {
            scan_options(&bytes[108..236], &mut options)?;
            header.clear_fname();
        }
        if overload & 2 != 0 {
            scan_options(&bytes[44..108], &mut options)?;
            header.clear_sname();
        }
    }
    let msg_type = match options.get(&code::MESSAGE_TYPE).map(Vec::as_slice) {
        Some(&[t]) => MessageType::from_u8(t).ok_or(ParseError::NoMessageType)?,
        _ => return Err(ParseError::NoMessageType),
    };
    Ok(Request {
        header,
        msg_type,
        options,
    })
}

fn scan_options(area: &[u8], out: &mut BTreeMap<u8, Vec<u8>>) -> Result<(), ParseError> {
    let mut i = 0;
    while i < area.len() {
        match area[i] {
            0 => i += 1,
            255 => return Ok(()),
            c => {
                let len = *area.get(i + 1).ok_or(ParseError::BadOption)? as usize;
                let data = area.get(i + 2..i + 2 + len).ok_or(ParseError::BadOption)?;
                out.entry(c).or_default().extend_from_slice(data);
                i += 2 + len;
            }
        }
    }
    // Many clients end the area without 255; that is tolerated.
    Ok(())
}

impl Request {
    pub fn opt(&self, c: u8) -> Option<&[u8]> {
        self.options.get(&c).map(Vec::as_slice)
    }

    pub fn opt_ip(&self, c: u8) -> Option<Ipv4Addr> {
        let b: [u8; 4] = self.opt(c)?.try_into().ok()?;
        Some(Ipv4Addr::from(b))
    }

    /// The reply size limit from option 57 (RFC 2132 §9.10: counts the IP and UDP headers;
    /// never below 576), as a DHCP payload length, capped to one Ethernet frame.
    pub fn max_reply_len(&self) -> usize {
        let declared = match self.opt(code::MAX_SIZE) {
            Some(&[a, b]) => u16::from_be_bytes([a, b]) as usize,
            _ => 576,
        };
        declared.clamp(576, 1500) - 28
    }

    /// Whether the client listed `c` in option 55.
    pub fn requested(&self, c: u8) -> bool {
        self.opt(code::PARAMETER_LIST)
            .is_some_and(|l| l.contains(&c))
    }
}

/// A reply under construction.
#[derive(Debug, Clone)]
pub struct Reply {
    pub msg: Message,
    /// Options in priority order: when the client's size limit is hit, the last ones go first.
    options: Vec<(u8, Vec<u8>)>,
    /// Option codes that must never be dropped for size.
    essential: usize,
}

impl Reply {
    /// A BOOTREPLY answering `req` with `msg_type`, addresses empty.
    pub fn to(req: &Request, msg_type: MessageType) -> Reply {
        let h = &req.header;
        let mut msg = Message::new_with_id(
            h.xid(),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            h.giaddr(),
            h.chaddr(),
        );
        msg.set_opcode(Opcode::BootReply)
            .set_htype(h.htype())
            .set_flags(Flags::new(h.flags().into()));
        let mut r = Reply {
            msg,
            options: Vec::new(),
            essential: 0,
        };
        r.push(code::MESSAGE_TYPE, vec![msg_type.as_u8()]);
        r
    }

    /// Adds an option.
    pub fn push(&mut self, c: u8, data: Vec<u8>) {
        self.options.retain(|(k, _)| *k != c);
        self.options.push((c, data));
    }

    /// Marks everything pushed so far as essential (kept even when the size limit bites).
    pub fn mark_essential(&mut self) {
        self.essential = self.options.len();
    }

    pub fn get(&self, c: u8) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|(k, _)| *k == c)
            .map(|(_, v)| v.as_slice())
    }

    /// Encodes the reply, padded to 300 bytes; drops trailing non-essential options while the
    /// result exceeds `max_len`. `None` when even the essential part does not fit.
    pub fn encode(mut self, max_len: usize) -> Option<Vec<u8>> {
        loop {
            let mut buf = encode_message(&mut self.msg, &self.options)?;
            if buf.len() <= max_len {
                if buf.len() < 300 {
                    buf.resize(300, 0);
                }
                return Some(buf);
            }
            if self.options.len() <= self.essential {
                return None;
            }
            self.options.pop();
        }
    }
}

/// Encodes `msg`'s header with raw `options`, as dhcproto's encoder lays them out (options by
/// code, a code given twice keeps its last value, an option without data left out, long ones
/// split per RFC 3396), except that option 82 goes last (RFC 3046 section 2.1). By hand: through
/// dhcproto, which builds an option map of owned values first, encoding was half of the
/// engine's instructions per exchange.
pub fn encode_message(msg: &mut Message, options: &[(u8, Vec<u8>)]) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(548);
    buf.push(u8::from(msg.opcode()));
    buf.push(u8::from(msg.htype()));
    buf.push(msg.hlen());
    buf.push(msg.hops());
    buf.extend_from_slice(&msg.xid().to_be_bytes());
    buf.extend_from_slice(&msg.secs().to_be_bytes());
    buf.extend_from_slice(&u16::from(msg.flags()).to_be_bytes());
    for a in [msg.ciaddr(), msg.yiaddr(), msg.siaddr(), msg.giaddr()] {
        buf.extend_from_slice(&a.octets());
    }
    let chaddr = msg.chaddr();
    let mut field = [0u8; 16];
    field[..chaddr.len().min(16)].copy_from_slice(&chaddr[..chaddr.len().min(16)]);
    buf.extend_from_slice(&field);
    fill(&mut buf, msg.sname(), 64)?;
    fill(&mut buf, msg.fname(), 128)?;
    buf.extend_from_slice(&MAGIC);
    // The last value of each code, in code order; 82 after the rest.
    let mut order: Vec<usize> = (0..options.len())
        .filter(|&i| options[(i + 1)..].iter().all(|(c, _)| *c != options[i].0))
        .collect();
    order.sort_by_key(|&i| (options[i].0 == code::RELAY_AGENT, options[i].0));
    for i in order {
        let (c, data) = &options[i];
        if *c == code::RELAY_AGENT {
            buf.push(*c);
            buf.push(u8::try_from(data.len()).ok()?);
            buf.extend_from_slice(data);
            continue;
        }
        for chunk in data.chunks(usize::from(u8::MAX)) {
            buf.push(*c);
            buf.push(chunk.len() as u8);
            buf.extend_from_slice(chunk);
        }
    }
    buf.push(255);
    Some(buf)
}

/// A fixed-length header field (sname, file): the bytes, then zeros; too long is an error.
fn fill(buf: &mut Vec<u8>, bytes: Option<&[u8]>, len: usize) -> Option<()> {
    let bytes = bytes.unwrap_or_default();
    if bytes.len() > len {
        return None;
    }
    buf.extend_from_slice(bytes);
    buf.resize(buf.len() + len - bytes.len(), 0);
    Some(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// What dhcproto's own encoder makes of `msg` and `options` (82 moved last by hand): the
    /// layout the hand encoder must reproduce.
    fn dhcproto_encoding(msg: &Message, options: &[(u8, Vec<u8>)]) -> Option<Vec<u8>> {
        use dhcproto::v4::{DhcpOption, DhcpOptions, OptionCode, UnknownOption};
        use dhcproto::{Encodable, Encoder};
        let mut msg = msg.clone();
        let mut opts = DhcpOptions::new();
        let mut relay = None;
        for (c, data) in options {
            if *c == code::RELAY_AGENT {
                relay = Some(data);
                continue;
            }
            opts.insert(DhcpOption::Unknown(UnknownOption::new(
                OptionCode::from(*c),
                data.clone(),
            )));
        }
        msg.set_opts(opts);
        let mut buf = Vec::new();
        msg.encode(&mut Encoder::new(&mut buf)).ok()?;
        if let Some(data) = relay {
            buf.pop();
            buf.push(code::RELAY_AGENT);
            buf.push(u8::try_from(data.len()).ok()?);
            buf.extend_from_slice(data);
            buf.push(255);
        }
        Some(buf)
    }

    #[test]
    fn hand_encoding_lays_out_a_reply_as_dhcproto_does() {
        let mut msg = Message::new_with_id(
            0x0102_0304,
            Ipv4Addr::new(198, 18, 0, 9),
            Ipv4Addr::new(198, 18, 0, 10),
            Ipv4Addr::new(198, 18, 0, 1),
            Ipv4Addr::new(198, 18, 0, 2),
            &[0x52, 0x54, 0, 1, 2, 3],
        );
        msg.set_opcode(Opcode::BootReply)
            .set_flags(Flags::new(0x8000))
            .set_secs(7)
            .set_hops(2)
            .set_sname_str("boot-server")
            .set_fname_str("http://198.18.0.1/boot.ipxe");
        let long: Vec<u8> = (0..600u16).map(|i| i as u8).collect();
        let options = vec![
            (code::MESSAGE_TYPE, vec![2]),
            (54, vec![198, 18, 0, 1]),
            (code::RELAY_AGENT, vec![1, 3, b'a', b'b', b'c']),
            (51, vec![0, 0, 14, 16]),
            (3, vec![198, 18, 0, 1]),
            // A code given twice: the last value counts.
            (51, vec![0, 0, 1, 44]),
            // Longer than one option can hold: split (RFC 3396).
            (43, long),
            // No data: dhcproto writes nothing for it.
            (80, vec![]),
            (1, vec![255, 254, 0, 0]),
        ];
        let hand = encode_message(&mut msg.clone(), &options).unwrap();
        assert_eq!(hand, dhcproto_encoding(&msg, &options).unwrap());
        // And it decodes to what went in.
        let back = Message::decode(&mut Decoder::new(&hand)).unwrap();
        assert_eq!((back.xid(), back.yiaddr()), (msg.xid(), msg.yiaddr()));
        // Without option 82, and with nothing but the message type.
        let plain: Vec<_> = options.iter().filter(|(c, _)| *c != 82).cloned().collect();
        assert_eq!(
            encode_message(&mut msg.clone(), &plain),
            dhcproto_encoding(&msg, &plain)
        );
        let bare = vec![(code::MESSAGE_TYPE, vec![5])];
        assert_eq!(
            encode_message(&mut msg.clone(), &bare),
            dhcproto_encoding(&msg, &bare)
        );
    }

    #[test]
    fn an_option_82_that_does_not_fit_one_option_is_an_error() {
        // (dhcproto's setters already refuse a too long sname or file.)
        let mut msg = Message::default();
        assert_eq!(encode_message(&mut msg, &[(82, vec![0; 256])]), None);
        assert!(encode_message(&mut msg, &[(82, vec![0; 255])]).is_some());
    }

    /// Builds a raw request: header fields zero except those given, then options.
    pub fn raw_request(msg_type: u8, mac: [u8; 6], opts: &[(u8, &[u8])]) -> Vec<u8> {
        let mut b = vec![0u8; 236];
        b[0] = 1;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        b[28..34].copy_from_slice(&mac);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&[53, 1, msg_type]);
        for (c, d) in opts {
            b.push(*c);
            b.push(d.len() as u8);
            b.extend_from_slice(d);
        }
        b.push(255);
        b
    }

    #[test]
    fn reads_header_and_raw_options() {
        let b = raw_request(
            1,
            [0x52, 0x54, 0, 1, 2, 3],
            &[(93, &[0, 7]), (60, b"PXEClient")],
        );
        let r = parse_request(&b, 1500).unwrap();
        assert_eq!(r.msg_type, MessageType::Discover);
        assert_eq!(r.header.xid(), 0x1234_5678);
        assert_eq!(&r.header.chaddr()[..6], &[0x52, 0x54, 0, 1, 2, 3]);
        assert_eq!(r.opt(93), Some(&[0u8, 7][..]));
    }

    #[test]
    fn malformed_typed_option_does_not_hide_later_ones() {
        // A 3-byte option 93 would stop dhcproto's option decoder; 60 after it must survive.
        let b = raw_request(1, [0; 6], &[(93, &[0, 7, 1]), (60, b"PXEClient")]);
        let r = parse_request(&b, 1500).unwrap();
        assert_eq!(r.opt(60), Some(&b"PXEClient"[..]));
    }

    #[test]
    fn overloaded_file_and_sname_are_read() {
        let mut b = raw_request(1, [0; 6], &[(52, &[3])]);
        b[108..112].copy_from_slice(&[93, 2, 0, 9]);
        b[112] = 255;
        b[44..48].copy_from_slice(&[12, 2, b'h', b'i']);
        b[48] = 255;
        let r = parse_request(&b, 1500).unwrap();
        assert_eq!(r.opt(93), Some(&[0u8, 9][..]));
        assert_eq!(r.opt(12), Some(&b"hi"[..]));
        assert!(r.header.fname().is_none());
    }

    #[test]
    fn split_options_are_joined() {
        let b = raw_request(1, [0; 6], &[(77, b"iP"), (77, b"XE")]);
        assert_eq!(parse_request(&b, 1500).unwrap().opt(77), Some(&b"iPXE"[..]));
    }

    #[test]
    fn bad_packets_are_named() {
        let good = raw_request(1, [0; 6], &[]);
        assert_eq!(
            parse_request(&good[..100], 1500).unwrap_err(),
            ParseError::Truncated
        );
        assert_eq!(
            parse_request(&[0u8; 2000], 1500).unwrap_err(),
            ParseError::Oversized
        );
        let mut b = good.clone();
        b[236] = 0;
        assert_eq!(parse_request(&b, 1500).unwrap_err(), ParseError::NotDhcp);
        let mut b = good.clone();
        b[0] = 2;
        assert_eq!(parse_request(&b, 1500).unwrap_err(), ParseError::NotRequest);
        let mut b = good.clone();
        b[2] = 17;
        assert_eq!(
            parse_request(&b, 1500).unwrap_err(),
            ParseError::BadHardwareLength
        );
        let mut b = good.clone();
        b.truncate(b.len() - 1);
        b.extend_from_slice(&[60, 40, 1]);
        assert_eq!(parse_request(&b, 1500).unwrap_err(), ParseError::BadOption);
        let b = raw_request(9, [0; 6], &[]);
        assert_eq!(
            parse_request(&b, 1500).unwrap_err(),
            ParseError::NoMessageType
        );
        // Every truncation of a valid packet is an error or a packet, never a panic.
        let full = raw_request(
            3,
            [1; 6],
            &[(93, &[0, 7]), (97, &[0; 17]), (175, &[19, 1, 1])],
        );
        for n in 0..full.len() {
            let _ = parse_request(&full[..n], 1500);
        }
    }

    #[test]
    fn replies_are_padded_and_respect_option_57() {
        let b = raw_request(1, [1; 6], &[(57, &[2, 64])]);
        let req = parse_request(&b, 1500).unwrap();
        assert_eq!(req.max_reply_len(), 576 - 28);
        let mut r = Reply::to(&req, MessageType::Offer);
        r.push(54, vec![198, 18, 0, 1]);
        r.mark_essential();
        let small = r.clone().encode(req.max_reply_len()).unwrap();
        assert_eq!(small.len(), 300);
        r.push(224, vec![7; 200]);
        r.push(225, vec![8; 200]);
        let trimmed = r.clone().encode(req.max_reply_len()).unwrap();
        assert!(trimmed.len() <= 548);
        let back = parse_request(
            &{
                let mut t = trimmed.clone();
                t[0] = 1;
                t
            },
            1500,
        )
        .unwrap();
        assert!(back.opt(224).is_some() && back.opt(225).is_none());
        assert_eq!(back.opt(54), Some(&[198u8, 18, 0, 1][..]));
        r.push(226, vec![9; 250]);
        assert!(r.encode(1472).is_some());
    }
}
