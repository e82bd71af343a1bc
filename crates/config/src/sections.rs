//! The section that belongs to no single subsystem: `[server]`.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::{Issue, Validate};

/// The value of `advertise` that means "the address of the interface the request came in on".
pub const ADVERTISE_AUTO: &str = "auto";

/// `[server]`: where chainboot listens and keeps its state.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Interfaces to serve; empty = every non-loopback interface with an IPv4 address.
    pub interfaces: Vec<String>,
    /// Address given to clients in URLs and next-server: "auto" or an IPv4 address.
    pub advertise: String,
    /// Where the embedded store and the API token live.
    pub state_dir: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            interfaces: Vec::new(),
            advertise: ADVERTISE_AUTO.to_string(),
            state_dir: PathBuf::from("/var/lib/chainboot"),
        }
    }
}

impl ServerConfig {
    /// The fixed advertised address, or `None` for "auto".
    pub fn advertise_addr(&self) -> Option<Ipv4Addr> {
        self.advertise.parse().ok()
    }
}

impl Validate for ServerConfig {
    fn validate(&self) -> Vec<Issue> {
        let mut out = Vec::new();
        if self.advertise != ADVERTISE_AUTO && self.advertise.parse::<Ipv4Addr>().is_err() {
            out.push(Issue::new(
                vec!["advertise".into()],
                format!(
                    "`{}` is neither \"auto\" nor an IPv4 address",
                    self.advertise
                ),
            ));
        }
        for (i, name) in self.interfaces.iter().enumerate() {
            if name.is_empty() || name.len() > 15 || name.contains('/') {
                out.push(Issue::new(
                    vec!["interfaces".into(), i.to_string()],
                    format!("`{name}` is not a valid interface name"),
                ));
            }
        }
        if self.state_dir.as_os_str().is_empty() {
            out.push(Issue::new(
                vec!["state_dir".into()],
                "must not be empty".into(),
            ));
        }
        out
    }
}
