//! The `[tftp]` section of the config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chainboot_config::Issue;

use serde::{Deserialize, Serialize};

use crate::transfer::{TransferSettings, MAX_BLKSIZE, MAX_WINDOWSIZE, MIN_BLKSIZE};

/// `[tftp]`: where the TFTP server listens, what it serves besides the iPXE binaries, and its
/// limits. Durations are written like `"1s"` or `"500ms"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TftpConfig {
    /// Address and port of the request socket (RFC 1350: port 69).
    pub listen: SocketAddr,
    /// Extra files to serve; the iPXE binaries are always served.
    pub root: Option<PathBuf>,
    /// Transfers running at once, all clients together; over it a client gets an ERROR.
    pub max_transfers: usize,
    /// Transfers running at once from one IP address. A booting machine fetches one file at a
    /// time; a relay or NAT can put many machines behind one address, hence not 1.
    pub max_per_client: usize,
    /// Transfers not yet acknowledged by their client, at once, from one network prefix (IPv4
    /// /24, IPv6 /64): one host can forge many addresses of its prefix, and forged sources
    /// never acknowledge; real clients acknowledge within a round trip, so a rack booting
    /// together is never held to it. Never less than `max_per_client`.
    pub max_per_prefix: usize,
    /// Percentage of `max_transfers` that transfers whose client has not acknowledged
    /// anything yet may hold: a forged source never will, so a flood of them cannot take
    /// every slot.
    pub unproven_percent: u8,
    /// Retransmissions of the first datagram before a client that never acknowledged
    /// anything is given up (`retries` applies once it has; never more than `retries`).
    pub unproven_retries: u32,
    /// Longest a transfer may go without progress, whatever timeout x retries the client
    /// negotiated (RFC 2349 lets it ask for 255 s); never less than `timeout`.
    #[serde(with = "chainboot_config::duration")]
    pub max_silence: Duration,
    /// Retransmission timeout when the client does not negotiate one (RFC 2349: 1s..255s).
    #[serde(with = "chainboot_config::duration")]
    pub timeout: Duration,
    /// Retransmissions of one window before a silent client's transfer is dropped.
    pub retries: u32,
    /// Largest block size granted (RFC 2348: 8..65464).
    pub max_blksize: u16,
    /// Largest window granted (RFC 7440; chainboot caps it at 64).
    pub max_windowsize: u16,
    /// On shutdown, how long in-flight transfers may run before they are ended.
    #[serde(with = "chainboot_config::duration")]
    pub shutdown_grace: Duration,
    /// Lock-step transfers (windowsize 1) that may run at once on a thread of their own,
    /// which turns each block around faster than a task does; the rest run as tasks. Unset:
    /// 64. 0: every transfer runs as a task.
    pub lockstep_threads: Option<usize>,
    /// How long a lock-step transfer's thread polls for the client's next ACK before it
    /// sleeps, when the client has been answering that fast, no other task waits for a CPU,
    /// polling shortens the client's turnaround, and at most one transfer runs per two CPUs
    /// (see `busy_poll.rs`). "0s" never polls.
    #[serde(with = "chainboot_config::duration")]
    pub busy_poll: Duration,
}

impl Default for TftpConfig {
    fn default() -> Self {
        TftpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 69)),
            root: None,
            max_transfers: 1000,
            max_per_client: 16,
            max_per_prefix: 128,
            unproven_percent: 50,
            unproven_retries: 2,
            max_silence: Duration::from_secs(30),
            timeout: Duration::from_secs(1),
            retries: 5,
            max_blksize: MAX_BLKSIZE,
            max_windowsize: MAX_WINDOWSIZE,
            shutdown_grace: Duration::from_secs(5),
            lockstep_threads: None,
            busy_poll: Duration::from_micros(50),
        }
    }
}

impl TftpConfig {
    /// Semantic checks the types cannot express, every problem at once (key paths inside
    /// `[tftp]`). Empty when the section is usable.
    pub fn validate(&self) -> Vec<Issue> {
        let mut problems = Vec::new();
        let mut bad = |key: &str, msg: String| problems.push(Issue::at(&[key], msg));
        if self.max_transfers == 0 {
            bad("max_transfers", "must be at least 1".into());
        }
        if self.max_per_client == 0 {
            bad("max_per_client", "must be at least 1".into());
        } else if self.max_per_client > self.max_transfers {
            bad(
                "max_per_client",
                format!(
                    "{} is more than max_transfers ({})",
                    self.max_per_client, self.max_transfers
                ),
            );
        }
        if self.max_per_prefix == 0 {
            bad("max_per_prefix", "must be at least 1".into());
        }
        if !(1..=100).contains(&self.unproven_percent) {
            bad(
                "unproven_percent",
                "must be between 1 and 100 (a percentage of max_transfers)".into(),
            );
        }
        if self.unproven_retries > 100 {
            bad("unproven_retries", "must be at most 100".into());
        }
        if self.max_silence < Duration::from_millis(10)
            || self.max_silence > Duration::from_secs(3600)
        {
            bad("max_silence", "must be between 10ms and 1h".into());
        }
        if self.timeout < Duration::from_millis(10) || self.timeout > Duration::from_secs(255) {
            bad(
                "timeout",
                "must be between 10ms and 255s (RFC 2349 allows 1s..255s from clients)".into(),
            );
        }
        if self.retries == 0 || self.retries > 100 {
            bad("retries", "must be between 1 and 100".into());
        }
        if !(MIN_BLKSIZE..=MAX_BLKSIZE).contains(&self.max_blksize) {
            bad(
                "max_blksize",
                format!("must be between {MIN_BLKSIZE} and {MAX_BLKSIZE} (RFC 2348)"),
            );
        }
        if !(1..=MAX_WINDOWSIZE).contains(&self.max_windowsize) {
            bad(
                "max_windowsize",
                format!("must be between 1 and {MAX_WINDOWSIZE}"),
            );
        }
        if self.lockstep_threads.is_some_and(|n| n > 1024) {
            bad("lockstep_threads", "must be at most 1024".into());
        }
        if self.busy_poll > Duration::from_millis(1) {
            bad(
                "busy_poll",
                "must be at most 1ms (it is CPU spent per block; 50us is plenty)".into(),
            );
        }
        if self.shutdown_grace > Duration::from_secs(300) {
            bad("shutdown_grace", "must be at most 300s".into());
        }
        if let Some(root) = &self.root {
            match std::fs::metadata(root) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => bad("root", format!("{} is not a directory", root.display())),
                Err(e) => bad("root", format!("{}: {e}", root.display())),
            }
        }
        problems
    }

    /// Transfers whose client has not acknowledged anything yet that may run at once: the
    /// Transfers at once per prefix: `max_per_prefix`, but never less than `max_per_client`
    /// (behind a NAT a whole prefix is one address).
    pub fn effective_max_per_prefix(&self) -> usize {
        self.max_per_prefix.max(self.max_per_client).max(1)
    }

    /// `unproven_percent` of `max_transfers` (rounded up), at least one.
    pub fn max_unproven(&self) -> usize {
        let percent = usize::from(self.unproven_percent.clamp(1, 100));
        self.max_transfers
            .max(1)
            .saturating_mul(percent)
            .div_ceil(100)
    }

    /// The per-transfer part of the config.
    pub fn transfer_settings(&self) -> TransferSettings {
        TransferSettings {
            timeout: self.timeout,
            retries: self.retries,
            // `Transfer::new` keeps unproven_retries <= retries and max_silence >= timeout.
            unproven_retries: self.unproven_retries,
            max_silence: self.max_silence,
            max_blksize: self.max_blksize,
            max_windowsize: self.max_windowsize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_section_is_the_default_and_valid() {
        let c: TftpConfig = toml::from_str("").unwrap();
        assert_eq!(c, TftpConfig::default());
        assert!(c.validate().is_empty());
    }

    #[test]
    fn every_key_parses_and_round_trips() {
        let text = r#"
            listen = "127.0.0.1:6969"
            root = "/tmp"
            max_transfers = 10
            max_per_client = 2
            max_per_prefix = 4
            unproven_percent = 25
            unproven_retries = 1
            max_silence = "10s"
            timeout = "500ms"
            retries = 3
            max_blksize = 1468
            max_windowsize = 16
            shutdown_grace = "2s"
            lockstep_threads = 3
            busy_poll = "20us"
        "#;
        let c: TftpConfig = toml::from_str(text).unwrap();
        assert_eq!(c.listen, "127.0.0.1:6969".parse().unwrap());
        assert_eq!(c.timeout, Duration::from_millis(500));
        assert_eq!(c.busy_poll, Duration::from_micros(20));
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        let back: TftpConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_errors() {
        let e = toml::from_str::<TftpConfig>("max_transfer = 3").unwrap_err();
        assert!(e.to_string().contains("max_transfer"), "{e}");
        let e = toml::from_str::<TftpConfig>("timeout = \"soon\"").unwrap_err();
        assert!(e.to_string().contains("duration"), "{e}");
    }

    #[test]
    fn semantic_problems_name_their_key() {
        let c = TftpConfig {
            max_transfers: 4,
            max_per_client: 8,
            max_per_prefix: 0,
            unproven_percent: 0,
            unproven_retries: 101,
            max_silence: Duration::from_secs(7200),
            max_blksize: 7,
            max_windowsize: 65,
            retries: 0,
            timeout: Duration::from_secs(300),
            busy_poll: Duration::from_millis(5),
            root: Some("/nonexistent/chainboot-test".into()),
            ..TftpConfig::default()
        };
        let keys: Vec<String> = c.validate().into_iter().map(|i| i.path.join(".")).collect();
        assert_eq!(
            keys,
            [
                "max_per_client",
                "max_per_prefix",
                "unproven_percent",
                "unproven_retries",
                "max_silence",
                "timeout",
                "retries",
                "max_blksize",
                "max_windowsize",
                "busy_poll",
                "root"
            ]
        );
    }
}
