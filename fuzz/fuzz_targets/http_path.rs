//! Request path normalisation (`CleanPath::parse`), as TFTP gives it (raw text) and as HTTP gives
//! it (percent-decoded once, as chainboot_http's routes do).
//!
//! Invariants: a clean path has no empty, `.`, `..`, NUL/control, separator-containing or drive
//! components; it is idempotent; joined under a root it stays under that root.
#![no_main]

use std::path::{Component, Path};

use chainboot_content::{CleanPath, MAX_COMPONENTS, MAX_PATH_LEN};
use libfuzzer_sys::fuzz_target;
use percent_encoding::percent_decode_str;

fn check(raw: &str) {
    let Ok(p) = CleanPath::parse(raw) else {
        return;
    };
    assert!(raw.len() <= MAX_PATH_LEN);
    let parts = p.parts();
    assert!(!parts.is_empty() && parts.len() <= MAX_COMPONENTS);
    for part in parts {
        assert!(!part.is_empty(), "empty component in {raw:?}");
        assert!(
            part != "." && part != "..",
            "dot component {part:?} in {raw:?}"
        );
        assert!(!part.contains(['/', '\\']), "separator inside {part:?}");
        assert!(
            !part
                .chars()
                .any(|c| c == '\0' || (c as u32) < 0x20 || c == '\x7f'),
            "control byte in {part:?}"
        );
    }
    assert!(
        !(parts[0].len() == 2 && parts[0].ends_with(':')),
        "drive {:?}",
        parts[0]
    );
    // Idempotent.
    let again = CleanPath::parse(&p.as_string()).expect("a clean path parses again");
    assert_eq!(again, p);
    assert_eq!(p.first(), parts[0]);
    // Under a root it stays under the root, component for component.
    let root = Path::new("/srv/chainboot-root");
    let mut joined = root.to_path_buf();
    for part in parts {
        joined.push(part);
    }
    assert!(joined.starts_with(root), "{joined:?} escapes {root:?}");
    let extra: Vec<Component> = joined
        .strip_prefix(root)
        .expect("under root")
        .components()
        .collect();
    assert_eq!(
        extra.len(),
        parts.len(),
        "components merged or split: {joined:?}"
    );
    assert!(
        extra.iter().all(|c| matches!(c, Component::Normal(_))),
        "non-normal component in {joined:?}"
    );
    for n in 0..parts.len() {
        if let Some(s) = p.strip_prefix(n) {
            assert_eq!(s.parts(), &parts[n..]);
        }
    }
}

fn has_percent_escape(s: &str) -> bool {
    let b = s.as_bytes();
    b.windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

fuzz_target!(|data: &[u8]| {
    // TFTP: the file name as sent (the TFTP parser only accepts UTF-8).
    if let Ok(s) = std::str::from_utf8(data) {
        check(s);
        // HTTP: the raw URL path, decoded once; double encoding is refused by the routes.
        if let Ok(decoded) = percent_decode_str(s).decode_utf8() {
            if !has_percent_escape(&decoded) {
                check(&decoded);
            }
        }
    }
    // Raw bytes decoded lossily, as a hostile name might look after a lossy conversion.
    check(&String::from_utf8_lossy(data));
});
