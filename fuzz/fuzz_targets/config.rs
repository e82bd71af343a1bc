//! The config loader over every section type of the binary's config (the `Config` struct
//! itself lives in the bin crate; this one has the same fields and the same validation).
//!
//! Invariants: never panics; a text that fails yields at least one problem, and every problem
//! points at a line (and column) inside the text and names the file.
#![no_main]

use std::path::Path;

use chainboot_config::{under, Issue, ServerConfig, Validate};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Config {
    server: ServerConfig,
    ipv6: chainboot_ra::Ipv6Config,
    tftp: chainboot_tftp::TftpConfig,
    http: chainboot_http::HttpConfig,
    iso: Vec<chainboot_iso::IsoConfig>,
    dhcp: chainboot_dhcp::DhcpConfig,
    profile: Vec<chainboot_policy::ProfileConfig>,
    group: Vec<chainboot_policy::GroupConfig>,
    boot: chainboot_policy::BootConfig,
    api: chainboot_policy::ApiConfig,
    events: chainboot_events::EventSettings,
}

impl Validate for Config {
    fn validate(&self) -> Vec<Issue> {
        let mut out = under(&["server"], self.server.validate());
        out.extend(under(&["ipv6"], self.ipv6.validate()));
        out.extend(under(&["tftp"], self.tftp.validate()));
        out.extend(under(&["dhcp"], self.dhcp.validate()));
        out.extend(under(&["events"], self.events.validate()));
        out.extend(chainboot_policy::validate(
            &self.profile,
            &self.group,
            &self.boot,
        ));
        if let Err(e) = self.http.validate() {
            out.push((vec!["http".into(), e.key.into()], e.message));
        }
        for (i, iso) in self.iso.iter().enumerate() {
            if let Err(e) = iso.validate() {
                out.push((vec!["iso".into(), i.to_string(), e.key.into()], e.message));
            }
        }
        if self.iso.iter().all(|i| i.validate().is_ok()) {
            if let Err(e) = chainboot_iso::IsoConfig::validate_all(&self.iso) {
                out.push((vec!["iso".into()], e.message));
            }
        }
        out
    }
}

fuzz_target!(|data: &[u8]| {
    // Config files are read as UTF-8 text (load_file uses read_to_string).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.len() > 16 * 1024 {
        return;
    }
    let file = Path::new("fuzz.toml");
    let lines = text.split('\n').count();
    if let Err(problems) = chainboot_config::load_str::<Config>(file, text) {
        assert!(!problems.0.is_empty(), "an error without problems");
        for p in &problems.0 {
            assert_eq!(p.file, file);
            assert!(
                p.line >= 1 && p.line <= lines,
                "problem line {} outside the text ({lines} lines): {p}\n--- text:\n{text}",
                p.line
            );
            assert!(p.column >= 1, "problem without a column: {p}");
            assert!(!p.message.is_empty());
            let _ = p.to_string();
        }
    }
});
