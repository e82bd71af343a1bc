//! TFTP packet parsing: total (never panics) and consistent with the encoders: a parsed
//! request re-encodes to a packet that parses to the same request, DATA/ACK/ERROR headers
//! round-trip, and limits (option count and length) hold for whatever parses.
#![no_main]

use chainboot_tftp::proto::{
    self, encode_request, put_ack, put_error, put_oack, Mode, Packet, MAX_OPTIONS, MAX_OPTION_LEN,
};
use libfuzzer_sys::fuzz_target;

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Octet => "octet",
        Mode::Netascii => "netascii",
        Mode::Mail => "mail",
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = proto::ParseError::was_request(data);
    let Ok(packet) = proto::parse(data) else {
        return;
    };
    match packet {
        Packet::Rrq(ref r) | Packet::Wrq(ref r) => {
            assert!(!r.filename.is_empty());
            assert!(!r.filename.contains('\0'));
            assert!(r.options.len() <= MAX_OPTIONS);
            for (n, v) in &r.options {
                assert!(n.len() <= MAX_OPTION_LEN && v.len() <= MAX_OPTION_LEN);
                assert_eq!(n, &n.to_ascii_lowercase(), "option names are lowercased");
            }
            let op = if matches!(packet, Packet::Rrq(_)) {
                proto::OP_RRQ
            } else {
                proto::OP_WRQ
            };
            let opts: Vec<(&str, &str)> = r
                .options
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let again = encode_request(op, &r.filename, mode_name(r.mode), &opts);
            let reparsed = proto::parse(&again).expect("re-encoded request parses");
            assert_eq!(reparsed, packet, "request round trip");
        }
        Packet::Data {
            block,
            data: payload,
        } => {
            assert_eq!(payload.len() + 4, data.len());
            let mut buf = vec![0u8; 4 + payload.len()];
            proto::put_data_header(&mut buf, block);
            buf[4..].copy_from_slice(payload);
            assert_eq!(buf, data, "DATA round trip");
        }
        Packet::Ack { block } => {
            let mut buf = [0u8; 4];
            put_ack(&mut buf, block);
            assert_eq!(proto::parse(&buf).expect("ack"), Packet::Ack { block });
        }
        Packet::Error { code, ref message } => {
            let mut buf = vec![0u8; 600];
            let n = put_error(&mut buf, code, message);
            assert!(n <= 512, "ERROR longer than 512 bytes");
            match proto::parse(&buf[..n]).expect("error parses") {
                Packet::Error {
                    code: c2,
                    message: m2,
                } => {
                    assert_eq!(c2.as_u16(), code.as_u16());
                    // NULs are dropped and the text may be cut at 507 bytes.
                    let cleaned: String = message.chars().filter(|&c| c != '\0').collect();
                    let m2 = m2.trim_end_matches('\u{fffd}');
                    assert!(
                        cleaned.starts_with(m2),
                        "ERROR text {message:?} came back as {m2:?}"
                    );
                }
                other => panic!("ERROR re-parsed as {other:?}"),
            }
        }
        Packet::Oack { ref options } => {
            assert!(options.len() <= MAX_OPTIONS);
            let pairs: Vec<(&str, String)> = options
                .iter()
                .map(|(n, v)| (n.as_str(), v.clone()))
                .collect();
            let mut buf = vec![0u8; 4096];
            let n = put_oack(&mut buf, &pairs).expect("OACK fits 4 KiB");
            // Trailing empty pairs are indistinguishable from NUL padding; others round-trip.
            if options.iter().all(|(n, v)| !n.is_empty() || !v.is_empty()) {
                match proto::parse(&buf[..n]).expect("OACK parses") {
                    Packet::Oack { options: o2 } => assert_eq!(&o2, options, "OACK round trip"),
                    other => panic!("OACK re-parsed as {other:?}"),
                }
            }
        }
    }
});
