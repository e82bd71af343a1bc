//! TLS for `serve`: the lab CA when a listener asks for `tls = "lab"`, one reloadable
//! certificate per TLS listener (boot side `[http] tls_listen`, management side `[api]`), and
//! their reloads (SIGHUP, and the files changing on disk).

use std::sync::Arc;

use anyhow::Context;
use chainboot_http::lab::{self, Lab};
use chainboot_http::tls::WATCH_INTERVAL;
use chainboot_http::{TlsFiles, TlsServer, TlsSource};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{config, interfaces};

/// The TLS of every listener that has it.
pub struct Tls {
    pub lab: Option<Lab>,
    pub http: Option<Arc<TlsServer>>,
    pub api: Option<Arc<TlsServer>>,
}

impl Tls {
    /// Loads (or, in lab mode, makes) the certificates; a bad pair stops the start with the
    /// reason.
    pub fn start(cfg: &config::Config, ifaces: &[interfaces::Interface]) -> anyhow::Result<Tls> {
        let http_tls = cfg
            .http
            .tls
            .as_ref()
            .filter(|_| !cfg.http.tls_listen.as_list().is_empty());
        let api_tls = cfg.api.tls.as_ref().filter(|_| !cfg.api.listen.is_empty());
        let wants_lab = [http_tls, api_tls]
            .iter()
            .any(|t| matches!(t, Some(TlsSource::Lab)));
        let lab = if wants_lab {
            let names = lab_names(cfg, ifaces);
            let dir = cfg.server.state_dir.join("tls");
            let lab =
                lab::ensure(&dir, &names, &crl_url(cfg, ifaces)).map_err(anyhow::Error::msg)?;
            info!(
                ca_sha256 = %lab.ca_sha256,
                ca = %lab.ca_file.display(),
                names = ?names,
                "lab TLS: enrol this CA in firmware or build it into iPXE (served at /ca.crt and /ca.der)"
            );
            Some(lab)
        } else {
            None
        };
        let files = |source: Option<&TlsSource>| -> Option<TlsFiles> {
            match source? {
                TlsSource::Lab => lab.as_ref().map(|l| l.server.clone()),
                TlsSource::Files(f) => Some(f.clone()),
            }
        };
        let http = match files(http_tls) {
            Some(f) => Some(TlsServer::new("http", &f, None).context("[http] tls")?),
            None => None,
        };
        let api = match files(api_tls) {
            Some(f) => {
                Some(TlsServer::new("api", &f, cfg.api.client_ca.as_deref()).context("[api] tls")?)
            }
            None => None,
        };
        let tls = Tls { lab, http, api };
        for (name, server) in tls.servers() {
            let c = server.current();
            info!(
                listener = name,
                subject = %c.subject,
                serial = %c.serial,
                sha256 = %c.sha256,
                not_after = %c.not_after,
                "TLS certificate"
            );
        }
        Ok(tls)
    }

    fn servers(&self) -> impl Iterator<Item = (&'static str, &Arc<TlsServer>)> {
        [("http", &self.http), ("api", &self.api)]
            .into_iter()
            .filter_map(|(n, s)| s.as_ref().map(|s| (n, s)))
    }

    /// Reloads a listener's pair whenever its files change, until `shutdown`.
    pub fn watch(&self, shutdown: &CancellationToken) {
        for (_, server) in self.servers() {
            tokio::spawn(server.clone().watch(WATCH_INTERVAL, shutdown.clone()));
        }
    }

    /// SIGHUP: every pair read again (off the async threads); a bad one leaves the running
    /// certificate in place.
    pub fn reload(&self) {
        for (_, server) in self.servers() {
            let server = server.clone();
            tokio::task::spawn_blocking(move || server.reload_logged("SIGHUP"));
        }
    }
}

/// Where the lab CA's revocation list is: the plain boot listener, at the address clients are
/// sent to.
fn crl_url(cfg: &config::Config, ifaces: &[interfaces::Interface]) -> String {
    let ip = cfg
        .server
        .advertise_addr()
        .or_else(|| ifaces.iter().find_map(|i| i.ipv4.first().map(|a| a.0)))
        .unwrap_or(std::net::Ipv4Addr::LOCALHOST);
    match cfg.http_port() {
        80 => format!("http://{ip}/ca.crl"),
        port => format!("http://{ip}:{port}/ca.crl"),
    }
}

/// What the lab server certificate is for: loopback (the CLI), the host name, the advertised
/// address, every served interface's addresses and every specific listen address.
fn lab_names(cfg: &config::Config, ifaces: &[interfaces::Interface]) -> Vec<String> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        let dns_name = |h: &str| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        };
        if dns_name(host) {
            names.push(host.to_string());
        }
    }
    if let Some(a) = cfg.server.advertise_addr() {
        names.push(a.to_string());
    }
    for iface in ifaces {
        names.extend(iface.ipv4.iter().map(|(a, _)| a.to_string()));
    }
    let listens = cfg
        .http
        .listen_addrs()
        .unwrap_or_default()
        .into_iter()
        .chain(cfg.http.tls_listen_addrs().unwrap_or_default())
        .chain(cfg.api.listen.iter().copied());
    for addr in listens {
        if !addr.ip().is_unspecified() {
            names.push(addr.ip().to_string());
        }
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}
