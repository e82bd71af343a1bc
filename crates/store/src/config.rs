//! `[store]`: which backend holds the state. The embedded SQLite file is the default (one
//! server, nothing to set up); a PostgreSQL database makes every server that points at it one
//! fleet.

use std::path::PathBuf;
use std::time::Duration;

use chainboot_config::{Issue, Validate};
use serde::Deserialize;

/// The backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// `<state_dir>/chainboot.sqlite3`.
    #[default]
    Sqlite,
    /// The database at `url`.
    Postgres,
}

/// `[store]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    /// `postgres://USER@HOST:PORT/DATABASE` (or a `key=value` connection string). Never holds
    /// the password: see `password_file`.
    pub url: Option<String>,
    /// A file whose first line is the database password (kept out of the config file, which
    /// is often world-readable).
    pub password_file: Option<PathBuf>,
    /// PEM file of the CAs that sign the database server's certificate: when set, connections
    /// use TLS (rustls) and refuse a server whose certificate does not verify.
    pub tls_ca: Option<PathBuf>,
    /// Connections to the database at most, per server.
    pub pool_size: usize,
    /// How long to wait for a connection (new or from the pool) before the operation fails.
    #[serde(deserialize_with = "chainboot_config::duration::deserialize")]
    pub connect_timeout: Duration,
    /// This server's name in the fleet (events, leases, the live-servers table). Default: the
    /// host name.
    pub server_name: Option<String>,
    /// How often a server writes its heartbeat into the live-servers table (PostgreSQL).
    #[serde(deserialize_with = "chainboot_config::duration::deserialize")]
    pub heartbeat: Duration,
    /// A server whose last heartbeat is older than this is not live: its peers take its DHCP
    /// clients.
    #[serde(deserialize_with = "chainboot_config::duration::deserialize")]
    pub peer_timeout: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Sqlite,
            url: None,
            password_file: None,
            tls_ca: None,
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
            server_name: None,
            heartbeat: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(5),
        }
    }
}

/// Longest server name (a DNS label's length: names are host names in practice).
const MAX_SERVER_NAME: usize = 63;
/// Most connections one server may hold: PostgreSQL's default `max_connections` is 100, shared
/// by every server of the fleet.
const MAX_POOL: usize = 64;

/// The host name, or `chainboot` when it cannot be read.
pub(crate) fn default_server_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| valid_server_name(s))
        .unwrap_or_else(|| "chainboot".to_string())
}

fn valid_server_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SERVER_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl StoreConfig {
    /// This server's name: `server_name`, else the host name.
    pub fn server_name(&self) -> String {
        self.server_name.clone().unwrap_or_else(default_server_name)
    }

    /// The parsed connection settings (the password is not read here).
    pub(crate) fn pg_config(&self) -> Result<tokio_postgres::Config, String> {
        let url = self
            .url
            .as_deref()
            .ok_or("backend = \"postgres\" needs `url`")?;
        let cfg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| format!("not a PostgreSQL connection URL: {e}"))?;
        if cfg.get_password().is_some() {
            return Err(
                "holds a password: put it in a file and name it in `password_file`".to_string(),
            );
        }
        Ok(cfg)
    }
}

impl Validate for StoreConfig {
    fn validate(&self) -> Vec<Issue> {
        let mut out = Vec::new();
        match self.backend {
            StoreBackend::Sqlite => {
                for (key, set) in [
                    ("url", self.url.is_some()),
                    ("password_file", self.password_file.is_some()),
                    ("tls_ca", self.tls_ca.is_some()),
                ] {
                    if set {
                        out.push(Issue::at(
                            &[key],
                            "only used with backend = \"postgres\" (the backend is sqlite)",
                        ));
                    }
                }
            }
            StoreBackend::Postgres => {
                if let Err(e) = self.pg_config() {
                    out.push(Issue::at(&["url"], e));
                }
            }
        }
        if !(1..=MAX_POOL).contains(&self.pool_size) {
            out.push(Issue::at(
                &["pool_size"],
                format!("must be between 1 and {MAX_POOL}"),
            ));
        }
        if self.connect_timeout < Duration::from_millis(100) {
            out.push(Issue::at(&["connect_timeout"], "must be at least 100ms"));
        }
        if self.heartbeat < Duration::from_millis(100) {
            out.push(Issue::at(&["heartbeat"], "must be at least 100ms"));
        }
        if self.peer_timeout < self.heartbeat * 3 {
            out.push(Issue::at(
                &["peer_timeout"],
                "must be at least three heartbeats (one late heartbeat must not look like a dead server)",
            ));
        }
        if let Some(name) = &self.server_name {
            if !valid_server_name(name) {
                out.push(Issue::at(
                    &["server_name"],
                    format!("`{name}`: 1 to {MAX_SERVER_NAME} letters, digits, `-`, `_` or `.`"),
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(c: &StoreConfig) -> Vec<String> {
        c.validate().iter().map(|i| i.path.join(".")).collect()
    }

    #[test]
    fn the_default_is_sqlite_and_valid() {
        assert!(StoreConfig::default().validate().is_empty());
    }

    #[test]
    fn postgres_needs_a_url_without_a_password() {
        let mut c = StoreConfig {
            backend: StoreBackend::Postgres,
            ..Default::default()
        };
        assert_eq!(paths(&c), ["url"]);
        c.url = Some("postgres://fleet:secret@db.example/chainboot".into());
        let issues = c.validate();
        assert!(issues[0].message.contains("password_file"), "{issues:?}");
        c.url = Some("postgres://fleet@db.example:5433/chainboot".into());
        assert!(c.validate().is_empty());
        c.url = Some("postgres://[not a url".into());
        assert_eq!(paths(&c), ["url"]);
    }

    #[test]
    fn postgres_settings_under_sqlite_and_bad_bounds_are_named() {
        let c = StoreConfig {
            url: Some("postgres://x@h/db".into()),
            pool_size: 0,
            server_name: Some("has space".into()),
            ..Default::default()
        };
        assert_eq!(paths(&c), ["url", "pool_size", "server_name"]);
    }
}
