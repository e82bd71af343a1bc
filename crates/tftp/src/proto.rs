//! TFTP wire format: RFC 1350 packets plus RFC 2347 option extension (OACK).
//!
//! [`parse`] is strict and total: every byte string yields either a packet or a [`ParseError`],
//! never a panic, so it can be fed raw network input (and a fuzzer). Encoders write into a
//! caller's buffer so the data path needs no allocation per block.

use thiserror::Error;

/// Opcodes (RFC 1350 section 5, RFC 2347 for OACK).
pub const OP_RRQ: u16 = 1;
pub const OP_WRQ: u16 = 2;
pub const OP_DATA: u16 = 3;
pub const OP_ACK: u16 = 4;
pub const OP_ERROR: u16 = 5;
pub const OP_OACK: u16 = 6;

/// Longest option name or value we accept. RFC 2347 puts no limit on them, but every
/// option we know is a short name and a decimal number; bounding them keeps a hostile
/// request from costing more than a packet's worth of work.
pub const MAX_OPTION_LEN: usize = 64;
/// Most options accepted in one request (real clients send at most five).
pub const MAX_OPTIONS: usize = 16;

/// TFTP error codes (RFC 1350 appendix, RFC 2347 for 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NotDefined,
    FileNotFound,
    AccessViolation,
    DiskFull,
    IllegalOperation,
    UnknownTid,
    FileExists,
    NoSuchUser,
    OptionRefused,
    /// A code outside the RFCs, as received.
    Other(u16),
}

impl ErrorCode {
    pub fn from_u16(code: u16) -> ErrorCode {
        match code {
            0 => ErrorCode::NotDefined,
            1 => ErrorCode::FileNotFound,
            2 => ErrorCode::AccessViolation,
            3 => ErrorCode::DiskFull,
            4 => ErrorCode::IllegalOperation,
            5 => ErrorCode::UnknownTid,
            6 => ErrorCode::FileExists,
            7 => ErrorCode::NoSuchUser,
            8 => ErrorCode::OptionRefused,
            n => ErrorCode::Other(n),
        }
    }

    pub fn as_u16(self) -> u16 {
        match self {
            ErrorCode::NotDefined => 0,
            ErrorCode::FileNotFound => 1,
            ErrorCode::AccessViolation => 2,
            ErrorCode::DiskFull => 3,
            ErrorCode::IllegalOperation => 4,
            ErrorCode::UnknownTid => 5,
            ErrorCode::FileExists => 6,
            ErrorCode::NoSuchUser => 7,
            ErrorCode::OptionRefused => 8,
            ErrorCode::Other(n) => n,
        }
    }
}

/// Transfer mode of a request (RFC 1350 section 5; mode names are case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Netascii,
    Octet,
    /// Obsolete (RFC 1350 says it "should not be used"); parsed so it can be refused clearly.
    Mail,
}

/// A read or write request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The file name exactly as sent (not yet normalised; see `chainboot_content::CleanPath`).
    pub filename: String,
    pub mode: Mode,
    /// Options in the order sent; names lowercased (RFC 2347: case-insensitive), values as sent.
    pub options: Vec<(String, String)>,
}

/// One TFTP packet. DATA borrows its payload from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    Rrq(Request),
    Wrq(Request),
    Data { block: u16, data: &'a [u8] },
    Ack { block: u16 },
    Error { code: ErrorCode, message: String },
    Oack { options: Vec<(String, String)> },
}

/// Why bytes are not a valid TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("packet shorter than its header")]
    Truncated,
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    #[error("string field not terminated by NUL")]
    Unterminated,
    #[error("string field is not valid UTF-8")]
    NotUtf8,
    #[error("unknown transfer mode {0:?}")]
    UnknownMode(String),
    #[error("option without a value")]
    OptionWithoutValue,
    #[error("option name or value longer than {MAX_OPTION_LEN} bytes")]
    OptionTooLong,
    #[error("more than {MAX_OPTIONS} options")]
    TooManyOptions,
    #[error("empty file name")]
    EmptyFilename,
    #[error("{0} trailing bytes after the packet")]
    Trailing(usize),
}

impl ParseError {
    /// True when the packet was a read/write request we could not understand: worth an
    /// ERROR reply (the client is waiting for an answer), unlike garbage of unknown kind.
    pub fn was_request(bytes: &[u8]) -> bool {
        matches!(opcode(bytes), Some(OP_RRQ) | Some(OP_WRQ))
    }
}

fn opcode(bytes: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]))
}

/// Parses one datagram.
pub fn parse(bytes: &[u8]) -> Result<Packet<'_>, ParseError> {
    let op = opcode(bytes).ok_or(ParseError::Truncated)?;
    let body = &bytes[2..];
    match op {
        OP_RRQ | OP_WRQ => {
            let req = parse_request(body)?;
            Ok(if op == OP_RRQ {
                Packet::Rrq(req)
            } else {
                Packet::Wrq(req)
            })
        }
        OP_DATA => {
            let block = block_number(body)?;
            Ok(Packet::Data {
                block,
                data: &body[2..],
            })
        }
        OP_ACK => {
            let block = block_number(body)?;
            // An ACK is exactly four bytes; some clients pad, which RFC 1350 does not allow,
            // but a padded ACK is unambiguous, so accept it (tftp-hpa does too).
            Ok(Packet::Ack { block })
        }
        OP_ERROR => {
            let code = block_number(body)?;
            let rest = &body[2..];
            // Some clients omit the final NUL of the message; the code is what matters.
            let msg = match rest.iter().position(|&b| b == 0) {
                Some(end) => &rest[..end],
                None => rest,
            };
            Ok(Packet::Error {
                code: ErrorCode::from_u16(code),
                message: String::from_utf8_lossy(msg).into_owned(),
            })
        }
        OP_OACK => Ok(Packet::Oack {
            options: parse_options(body)?,
        }),
        other => Err(ParseError::UnknownOpcode(other)),
    }
}

fn block_number(body: &[u8]) -> Result<u16, ParseError> {
    if body.len() < 2 {
        return Err(ParseError::Truncated);
    }
    Ok(u16::from_be_bytes([body[0], body[1]]))
}

/// Splits off one NUL-terminated string.
fn take_str(body: &[u8]) -> Result<(&str, &[u8]), ParseError> {
    let end = body
        .iter()
        .position(|&b| b == 0)
        .ok_or(ParseError::Unterminated)?;
    let s = std::str::from_utf8(&body[..end]).map_err(|_| ParseError::NotUtf8)?;
    Ok((s, &body[end + 1..]))
}

fn parse_request(body: &[u8]) -> Result<Request, ParseError> {
    let (filename, rest) = take_str(body)?;
    if filename.is_empty() {
        return Err(ParseError::EmptyFilename);
    }
    let (mode, rest) = take_str(rest)?;
    let mode = if mode.eq_ignore_ascii_case("octet") {
        Mode::Octet
    } else if mode.eq_ignore_ascii_case("netascii") {
        Mode::Netascii
    } else if mode.eq_ignore_ascii_case("mail") {
        Mode::Mail
    } else {
        return Err(ParseError::UnknownMode(truncate(mode)));
    };
    Ok(Request {
        filename: filename.to_string(),
        mode,
        options: parse_options(rest)?,
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(MAX_OPTION_LEN).collect()
}

fn parse_options(mut rest: &[u8]) -> Result<Vec<(String, String)>, ParseError> {
    let mut options = Vec::new();
    while !rest.is_empty() {
        // Some clients (old PXE ROMs) pad requests with NULs after the last field.
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let (name, after) = take_str(rest)?;
        if after.is_empty() {
            return Err(ParseError::OptionWithoutValue);
        }
        let (value, after) = take_str(after).map_err(|e| match e {
            ParseError::Unterminated => ParseError::OptionWithoutValue,
            e => e,
        })?;
        if name.len() > MAX_OPTION_LEN || value.len() > MAX_OPTION_LEN {
            return Err(ParseError::OptionTooLong);
        }
        if options.len() == MAX_OPTIONS {
            return Err(ParseError::TooManyOptions);
        }
        options.push((name.to_ascii_lowercase(), value.to_string()));
        rest = after;
    }
    Ok(options)
}

/// Length of a DATA header; the payload goes right after it.
pub const DATA_HEADER: usize = 4;

/// Writes a DATA header for `block` into `buf[..4]`. The caller puts the payload at `buf[4..]`.
pub fn put_data_header(buf: &mut [u8], block: u16) {
    buf[0..2].copy_from_slice(&OP_DATA.to_be_bytes());
    buf[2..4].copy_from_slice(&block.to_be_bytes());
}

/// Writes an ACK into `buf`, returning its length (4).
pub fn put_ack(buf: &mut [u8], block: u16) -> usize {
    buf[0..2].copy_from_slice(&OP_ACK.to_be_bytes());
    buf[2..4].copy_from_slice(&block.to_be_bytes());
    4
}

/// Writes an ERROR packet, truncating the message to fit `buf` (at most 512 bytes are ever
/// used, the RFC 1350 packet size every client can receive). Returns the length.
pub fn put_error(buf: &mut [u8], code: ErrorCode, message: &str) -> usize {
    let cap = buf.len().min(512);
    buf[0..2].copy_from_slice(&OP_ERROR.to_be_bytes());
    buf[2..4].copy_from_slice(&code.as_u16().to_be_bytes());
    // NULs inside the message would end it early on the client; drop them.
    let mut n = 4;
    for &b in message.as_bytes() {
        if n + 1 >= cap {
            break;
        }
        if b != 0 {
            buf[n] = b;
            n += 1;
        }
    }
    buf[n] = 0;
    n + 1
}

/// Writes an OACK; returns its length, or `None` if it does not fit `buf`.
pub fn put_oack(buf: &mut [u8], options: &[(&str, String)]) -> Option<usize> {
    let mut n = 2;
    *buf.get_mut(0)? = 0;
    *buf.get_mut(1)? = OP_OACK as u8;
    for (name, value) in options {
        for field in [name.as_bytes(), value.as_bytes()] {
            let end = n + field.len();
            buf.get_mut(n..end)?.copy_from_slice(field);
            *buf.get_mut(end)? = 0;
            n = end + 1;
        }
    }
    Some(n)
}

/// Encodes a request (used by tests and the benchmark client).
pub fn encode_request(op: u16, filename: &str, mode: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut v = op.to_be_bytes().to_vec();
    for field in [filename, mode]
        .into_iter()
        .chain(options.iter().flat_map(|(n, v)| [*n, *v]))
    {
        v.extend_from_slice(field.as_bytes());
        v.push(0);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rrq_with_options_parses_case_insensitively() {
        let b = encode_request(
            OP_RRQ,
            "pxelinux.0",
            "OCTET",
            &[("BlkSize", "1468"), ("tsize", "0")],
        );
        let Packet::Rrq(r) = parse(&b).unwrap() else {
            panic!("not an RRQ")
        };
        assert_eq!(r.filename, "pxelinux.0");
        assert_eq!(r.mode, Mode::Octet);
        assert_eq!(
            r.options,
            vec![
                ("blksize".into(), "1468".into()),
                ("tsize".into(), "0".into())
            ]
        );
    }

    #[test]
    fn trailing_nul_padding_after_request_is_tolerated() {
        let mut b = encode_request(OP_RRQ, "a", "netascii", &[]);
        b.extend_from_slice(&[0, 0, 0]);
        assert!(matches!(parse(&b), Ok(Packet::Rrq(r)) if r.mode == Mode::Netascii));
    }

    #[test]
    fn malformed_requests_are_errors() {
        assert_eq!(parse(b""), Err(ParseError::Truncated));
        assert_eq!(parse(b"\x00"), Err(ParseError::Truncated));
        assert_eq!(parse(b"\x00\x09"), Err(ParseError::UnknownOpcode(9)));
        assert_eq!(parse(b"\x00\x01file"), Err(ParseError::Unterminated));
        assert_eq!(
            parse(b"\x00\x01file\x00octet"),
            Err(ParseError::Unterminated)
        );
        assert_eq!(
            parse(b"\x00\x01\x00octet\x00"),
            Err(ParseError::EmptyFilename)
        );
        assert_eq!(
            parse(b"\x00\x01f\x00binary\x00"),
            Err(ParseError::UnknownMode("binary".into()))
        );
        assert_eq!(
            parse(b"\x00\x01f\x00octet\x00blksize\x00"),
            Err(ParseError::OptionWithoutValue)
        );
        assert_eq!(
            parse(b"\x00\x01f\x00octet\x00blksize\x00512"),
            Err(ParseError::OptionWithoutValue)
        );
        assert_eq!(
            parse(b"\x00\x01\xff\x00octet\x00"),
            Err(ParseError::NotUtf8)
        );
        assert_eq!(parse(b"\x00\x04\x01"), Err(ParseError::Truncated));
        let long = "x".repeat(MAX_OPTION_LEN + 1);
        let b = encode_request(OP_RRQ, "f", "octet", &[(&long, "1")]);
        assert_eq!(parse(&b), Err(ParseError::OptionTooLong));
        let many: Vec<(&str, &str)> = (0..=MAX_OPTIONS).map(|_| ("a", "b")).collect();
        let b = encode_request(OP_RRQ, "f", "octet", &many);
        assert_eq!(parse(&b), Err(ParseError::TooManyOptions));
    }

    #[test]
    fn data_ack_error_oack_round_trip() {
        let mut buf = [0u8; 600];
        put_data_header(&mut buf, 0xfffe);
        buf[4..7].copy_from_slice(b"abc");
        assert_eq!(
            parse(&buf[..7]),
            Ok(Packet::Data {
                block: 0xfffe,
                data: b"abc"
            })
        );
        let n = put_ack(&mut buf, 7);
        assert_eq!(parse(&buf[..n]), Ok(Packet::Ack { block: 7 }));
        let n = put_error(&mut buf, ErrorCode::FileNotFound, "no\0pe");
        assert_eq!(
            parse(&buf[..n]),
            Ok(Packet::Error {
                code: ErrorCode::FileNotFound,
                message: "nope".into()
            })
        );
        let n = put_error(&mut buf, ErrorCode::NotDefined, &"m".repeat(2000));
        assert_eq!(n, 512);
        let n = put_oack(
            &mut buf,
            &[("blksize", "1468".into()), ("tsize", "10".into())],
        )
        .unwrap();
        assert_eq!(&buf[..n], b"\x00\x06blksize\x001468\x00tsize\x0010\x00");
        assert!(put_oack(&mut buf[..10], &[("blksize", "1468".into())]).is_none());
    }

    #[test]
    fn every_short_prefix_of_a_valid_packet_parses_or_errors_without_panic() {
        let b = encode_request(OP_RRQ, "dir/file", "octet", &[("windowsize", "16")]);
        for i in 0..b.len() {
            let _ = parse(&b[..i]);
        }
        // A cheap deterministic byte soup; the real fuzzer comes later.
        let mut x: u32 = 0x1234_5678;
        for _ in 0..20_000 {
            let len = (x % 40) as usize;
            let mut v = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                v.push(if x.is_multiple_of(3) {
                    0
                } else {
                    (x >> 8) as u8 % 8
                });
            }
            let _ = parse(&v);
        }
    }
}
