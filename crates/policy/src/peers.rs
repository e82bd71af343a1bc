//! The live fleet peers' boot listeners, as the fleet loop last saw them: the script routes
//! name them as alternatives to this server's own URLs ([`HttpBase::with_peers`]), so that a
//! machine whose server dies in the middle of its boot fetches the rest from a live peer.
//!
//! The bases come from the live-servers table, which other servers write: each is parsed as
//! a base URL ([`HttpBase::new`]) and a row whose base does not parse is left out.

use std::sync::Arc;

use arc_swap::ArcSwap;
use chainboot_store::servers::ServerRecord;

use crate::render::{HttpBase, MAX_ALTERNATIVES};

/// A handle shared by the fleet loop (which publishes) and the script routes (which read on
/// every script request: a lock-free load). Empty outside a fleet and while no peer is live.
#[derive(Clone, Default)]
pub struct PeerBases(Arc<ArcSwap<Vec<HttpBase>>>);

impl PeerBases {
    pub fn new() -> PeerBases {
        PeerBases::default()
    }

    /// Publishes the boot bases of the `live` servers but `me`, by server name (so that every
    /// script lists them in the same order), at most [`MAX_ALTERNATIVES`]. A row without a
    /// base, or with one that is no base URL, is left out. Returns whether what scripts name
    /// changed.
    pub fn set_live(&self, me: &str, live: &[&ServerRecord]) -> bool {
        let mut rows: Vec<&ServerRecord> = live.iter().copied().filter(|s| s.name != me).collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        let mut bases = Vec::new();
        for row in rows {
            let Some(boot) = &row.boot else { continue };
            match HttpBase::new(&boot.http) {
                // A server that found no address of its own says loopback: a machine would
                // only reach itself there.
                Ok(b) if !reachable(&b) => {
                    tracing::debug!(server = %row.name, base = %b, "fleet: a peer's boot base is not reachable from machines; left out");
                }
                Ok(b) => bases.push(b.with_https_port(boot.https_port)),
                Err(e) => {
                    tracing::debug!(server = %row.name, error = %e, "fleet: a peer's boot base is no URL; left out");
                }
            }
            if bases.len() >= MAX_ALTERNATIVES {
                break;
            }
        }
        if **self.0.load() == bases {
            return false;
        }
        self.0.store(Arc::new(bases));
        true
    }

    /// The bases last published (the same `Arc` until they change).
    pub fn current(&self) -> Arc<Vec<HttpBase>> {
        self.0.load_full()
    }
}

/// Whether machines could reach `base`: not a loopback or unspecified address.
fn reachable(base: &HttpBase) -> bool {
    let host = base
        .host_name()
        .trim_start_matches('[')
        .trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => !ip.is_loopback() && !ip.is_unspecified(),
        Err(_) => !host.eq_ignore_ascii_case("localhost"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainboot_store::servers::BootBase;

    fn row(name: &str, http: Option<&str>, https_port: Option<u16>) -> ServerRecord {
        ServerRecord {
            name: name.into(),
            started_ms: 0,
            heartbeat_ms: 0,
            version: "x".into(),
            age_ms: 0,
            addresses: Vec::new(),
            boot: http.map(|h| BootBase {
                http: h.into(),
                https_port,
            }),
            connected: true,
        }
    }

    #[test]
    fn live_peers_are_published_by_name_without_this_server_or_bad_bases() {
        let p = PeerBases::new();
        let rows = [
            row("pxe-c", Some("http://198.18.0.3"), Some(8443)),
            row("pxe-a", Some("http://198.18.0.1:8080"), None),
            row("me", Some("http://198.18.0.9"), None),
            row("pxe-b", Some("http://198.18.0.2/path"), None),
            row("pxe-d", None, None),
            row("pxe-e", Some("http://127.0.0.1:8080"), None),
            row("pxe-f", Some("http://[::1]"), None),
            row("pxe-g", Some("http://0.0.0.0"), None),
            row("pxe-h", Some("http://localhost"), None),
        ];
        let refs: Vec<&ServerRecord> = rows.iter().collect();
        assert!(p.set_live("me", &refs));
        let got: Vec<String> = p.current().iter().map(|b| b.to_string()).collect();
        assert_eq!(got, ["http://198.18.0.1:8080", "http://198.18.0.3"]);
        assert_eq!(
            p.current()[1].https().as_deref(),
            Some("https://198.18.0.3:8443")
        );
        let before = p.current();
        assert!(!p.set_live("me", &refs), "the same peers change nothing");
        assert!(Arc::ptr_eq(&before, &p.current()));
        assert!(p.set_live("me", &[]));
        assert!(p.current().is_empty());
    }

    #[test]
    fn at_most_eight_peers_are_published() {
        let rows: Vec<ServerRecord> = (0..20)
            .map(|i| {
                row(
                    &format!("pxe-{i:02}"),
                    Some(&format!("http://198.18.1.{i}")),
                    None,
                )
            })
            .collect();
        let refs: Vec<&ServerRecord> = rows.iter().collect();
        let p = PeerBases::new();
        p.set_live("me", &refs);
        assert_eq!(p.current().len(), MAX_ALTERNATIVES);
        assert_eq!(p.current()[0].to_string(), "http://198.18.1.0");
    }
}
