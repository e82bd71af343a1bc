//! `[http]` of the config file.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chainboot_config::Issue;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::tls::TlsSource;

/// `[http]`: where to listen, what to serve under `/files/`, and the limits that keep slow or
/// hostile clients from exhausting the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// One address (`"0.0.0.0:80"`) or a list of them.
    pub listen: Listen,
    /// HTTPS addresses, beside the plain ones (most iPXE builds cannot fetch https://, so
    /// the plain listener stays). Needs `tls`.
    pub tls_listen: Listen,
    /// The certificate for `tls_listen`: `"lab"` or `{ cert = "FILE", key = "FILE" }`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSource>,
    /// UEFI HTTP Boot clients are sent https:// URLs (only when their firmware was given the
    /// CA: a firmware that does not trust the certificate refuses to boot).
    pub https_for_http_boot: bool,
    /// Directory served under `/files/` (profiles' relative asset paths point here).
    pub root: Option<PathBuf>,
    /// Directory indexes under `/files/` (off by default: a boot server should not publish
    /// its tree). `/iso/NAME/` indexes are always on.
    pub listing: bool,
    /// Connections served at once, over all listeners and serving threads; further clients
    /// wait in the kernel's accept queue (and one per listener and thread, accepted, for a slot).
    pub max_connections: usize,
    /// Connections one client address may hold at once; more are closed as they arrive
    /// (queueing them would hold up everyone behind in the accept queue). iPXE uses one or
    /// two at a time; the cap keeps one host from holding every slot of `max_connections`.
    pub max_connections_per_client: usize,
    /// Time allowed to send a request's headers (slowloris defence). hyper starts this clock
    /// whenever it waits for a request head, so it also bounds how long a keep-alive
    /// connection may sit idle between requests.
    #[serde(with = "chainboot_config::duration")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no traffic for this long is closed (the
    /// keep-alive wait is in practice bounded by the shorter of this and
    /// `header_read_timeout`).
    #[serde(with = "chainboot_config::duration")]
    pub idle_timeout: Duration,
    /// Largest request head (request line and headers) accepted; larger gets 431.
    pub max_header_bytes: usize,
    /// Largest request body accepted (API writes, events); larger gets 413.
    pub request_body_limit: usize,
    /// Time allowed to send a whole request body once the head is in (slowloris on the body:
    /// a client trickling bytes would otherwise hold its connection forever); later gets 408.
    #[serde(with = "chainboot_config::duration")]
    pub body_read_timeout: Duration,
    /// Total time for one request, from its first byte to the response head being ready
    /// (head and body received, handler done). Later gets 408 when the request body was still
    /// arriving, 503 when the handler had it all and did not answer; either way the connection
    /// is closed. The response body is not included: a 700 MB ISO over a slow link may take
    /// hours, bounded instead by `send_timeout`.
    #[serde(with = "chainboot_config::duration")]
    pub request_timeout: Duration,
    /// While a response is being written, the client accepting no byte for this long closes
    /// the connection (reset, so its socket buffers go too). Every byte accepted restarts the
    /// clock, so slow links are fine; a reader that stopped reading is not. `idle_timeout`
    /// does not cover this: a connection with a response in flight is never idle.
    #[serde(with = "chainboot_config::duration")]
    pub send_timeout: Duration,
    /// Which responses get an access-log line at `info` (the others are logged at `debug`).
    pub access_log: AccessLog,
}

/// `[http] access_log`: which responses are logged at `info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccessLog {
    /// Steps of a boot (first stages, scripts, kernels, initrds, loaders, configs, machines'
    /// reports) and every response of status 400 or more. Plain files and the API are
    /// logged at `debug`: a line per small file cost a fifth of the throughput.
    #[default]
    Boot,
    /// Every response.
    All,
    /// None at `info` (all at `debug`).
    Off,
}

/// `listen = "addr"` or `listen = ["addr", ...]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Listen {
    One(String),
    Many(Vec<String>),
}

impl Listen {
    /// The addresses as written.
    pub fn as_list(&self) -> Vec<&str> {
        match self {
            Listen::One(s) => vec![s.as_str()],
            Listen::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            listen: Listen::One("0.0.0.0:80".into()),
            tls_listen: Listen::Many(Vec::new()),
            tls: None,
            https_for_http_boot: false,
            root: None,
            listing: false,
            max_connections: 4096,
            max_connections_per_client: 64,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 16 * 1024,
            request_body_limit: 1024 * 1024,
            body_read_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            access_log: AccessLog::default(),
        }
    }
}

/// A config value that cannot work, with the key it came from.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("http.{key}: {message}")]
pub struct HttpConfigError {
    pub key: &'static str,
    pub message: String,
}

fn err(key: &'static str, message: String) -> HttpConfigError {
    HttpConfigError { key, message }
}

impl HttpConfig {
    /// The plain listen addresses, parsed.
    pub fn listen_addrs(&self) -> Result<Vec<SocketAddr>, HttpConfigError> {
        parse_addrs("listen", &self.listen)
    }

    /// The TLS listen addresses, parsed.
    pub fn tls_listen_addrs(&self) -> Result<Vec<SocketAddr>, HttpConfigError> {
        parse_addrs("tls_listen", &self.tls_listen)
    }

    /// Checks every value; every problem at once, each naming its key inside `[http]`.
    pub fn validate(&self) -> Vec<Issue> {
        let mut out = Vec::new();
        let plain = self.listen_addrs().unwrap_or_else(|e| {
            out.push(Issue::at(&[e.key], e.message));
            Vec::new()
        });
        let tls = self.tls_listen_addrs().unwrap_or_else(|e| {
            out.push(Issue::at(&[e.key], e.message));
            Vec::new()
        });
        if self.listen.as_list().is_empty() && self.tls_listen.as_list().is_empty() {
            out.push(Issue::at(&["listen"], "needs at least one address"));
        }
        // Port 0 (tests) gets a fresh port each time, so it cannot collide.
        if let Some(a) = tls.iter().find(|a| a.port() != 0 && plain.contains(a)) {
            out.push(Issue::at(
                &["tls_listen"],
                format!("{a} is also in listen; one port speaks one protocol"),
            ));
        }
        match (&self.tls, self.tls_listen.as_list().is_empty()) {
            (None, false) => out.push(Issue::at(
                &["tls"],
                "tls_listen needs a certificate: tls = \"lab\" or { cert = \"FILE\", key = \"FILE\" }",
            )),
            (None, true) if self.https_for_http_boot => out.push(Issue::at(
                &["https_for_http_boot"],
                "needs tls_listen and tls: there is no https:// to send clients to",
            )),
            (Some(_), true) => out.push(Issue::at(
                &["tls_listen"],
                "tls is set but there is no address to serve it on",
            )),
            (Some(TlsSource::Files(files)), false) => {
                if let Err(e) = crate::tls::load_pair(files) {
                    out.push(Issue::at(&["tls"], e.0));
                }
            }
            _ => {}
        }
        if let Some(root) = &self.root {
            if !root.is_dir() {
                out.push(Issue::at(
                    &["root"],
                    format!("{} is not a directory", root.display()),
                ));
            }
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            out.push(Issue::at(
                &["max_connections"],
                format!("{} is outside 1..=1000000", self.max_connections),
            ));
        }
        // Above max_connections it is simply never reached.
        if self.max_connections_per_client == 0 {
            out.push(Issue::at(
                &["max_connections_per_client"],
                "must be at least 1",
            ));
        }
        for (key, d) in [
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
            ("body_read_timeout", self.body_read_timeout),
            ("request_timeout", self.request_timeout),
            ("send_timeout", self.send_timeout),
        ] {
            if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
                out.push(Issue::at(
                    &[key],
                    format!("{} is outside 100ms..1h", humantime::format_duration(d)),
                ));
            }
        }
        // hyper's read buffer cannot be smaller than 8 KiB; 1 MiB of headers is an attack.
        if !(8192..=1024 * 1024).contains(&self.max_header_bytes) {
            out.push(Issue::at(
                &["max_header_bytes"],
                format!("{} is outside 8192..=1048576", self.max_header_bytes),
            ));
        }
        if self.request_body_limit > 1024 * 1024 * 1024 {
            out.push(Issue::at(
                &["request_body_limit"],
                format!("{} is over 1 GiB", self.request_body_limit),
            ));
        }
        out
    }
}

fn parse_addrs(key: &'static str, listen: &Listen) -> Result<Vec<SocketAddr>, HttpConfigError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for s in listen.as_list() {
        let a: SocketAddr = s.parse().map_err(|_| {
            err(
                key,
                format!("{s:?} is not an address with a port (\"0.0.0.0:80\", \"[::]:80\")"),
            )
        })?;
        if !seen.insert(a) {
            return Err(err(key, format!("{s:?} is listed twice")));
        }
        out.push(a);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_an_empty_table_gives_them() {
        let c: HttpConfig = toml::from_str("").unwrap();
        assert_eq!(c, HttpConfig::default());
        assert_eq!(c.validate(), vec![]);
        assert_eq!(
            c.listen_addrs().unwrap(),
            vec!["0.0.0.0:80".parse().unwrap()]
        );
    }

    #[test]
    fn listen_takes_one_address_or_a_list() {
        let c: HttpConfig =
            toml::from_str("listen = [\"127.0.0.1:8080\", \"[::1]:8080\"]\nidle_timeout = \"90s\"")
                .unwrap();
        assert_eq!(c.listen_addrs().unwrap().len(), 2);
        assert_eq!(c.idle_timeout, Duration::from_secs(90));
        let c: HttpConfig =
            toml::from_str("request_timeout = \"2m\"\nsend_timeout = \"500ms\"").unwrap();
        assert_eq!(c.request_timeout, Duration::from_secs(120));
        assert_eq!(c.send_timeout, Duration::from_millis(500));
        assert_eq!(c.validate(), vec![]);
    }

    #[test]
    fn bad_values_name_their_key() {
        assert!(toml::from_str::<HttpConfig>("lisen = \"x\"").is_err());
        assert!(toml::from_str::<HttpConfig>("idle_timeout = \"soon\"").is_err());
        let cases: Vec<(&str, HttpConfig)> = vec![
            (
                "listen",
                HttpConfig {
                    listen: Listen::One("localhost".into()),
                    ..Default::default()
                },
            ),
            (
                "listen",
                HttpConfig {
                    listen: Listen::Many(vec![]),
                    ..Default::default()
                },
            ),
            (
                "max_connections_per_client",
                HttpConfig {
                    max_connections_per_client: 0,
                    ..Default::default()
                },
            ),
            (
                "listen",
                HttpConfig {
                    listen: Listen::Many(vec!["127.0.0.1:1".into(), "127.0.0.1:1".into()]),
                    ..Default::default()
                },
            ),
            (
                "root",
                HttpConfig {
                    root: Some("/nonexistent/dir".into()),
                    ..Default::default()
                },
            ),
            (
                "max_connections",
                HttpConfig {
                    max_connections: 0,
                    ..Default::default()
                },
            ),
            (
                "idle_timeout",
                HttpConfig {
                    idle_timeout: Duration::ZERO,
                    ..Default::default()
                },
            ),
            (
                "request_timeout",
                HttpConfig {
                    request_timeout: Duration::ZERO,
                    ..Default::default()
                },
            ),
            (
                "send_timeout",
                HttpConfig {
                    send_timeout: Duration::ZERO,
                    ..Default::default()
                },
            ),
            (
                "send_timeout",
                HttpConfig {
                    send_timeout: Duration::from_secs(7200),
                    ..Default::default()
                },
            ),
            (
                "max_header_bytes",
                HttpConfig {
                    max_header_bytes: 10,
                    ..Default::default()
                },
            ),
        ];
        for (key, c) in cases {
            let e = c.validate();
            assert_eq!(e.len(), 1, "{key}: {e:?}");
            assert_eq!(e[0].path, vec![key.to_string()], "{}", e[0]);
        }
        // Every problem at once, not the first one only.
        let all_bad = HttpConfig {
            max_connections: 0,
            max_header_bytes: 10,
            idle_timeout: Duration::from_millis(1),
            ..Default::default()
        };
        assert_eq!(all_bad.validate().len(), 3, "{:?}", all_bad.validate());
    }
}
