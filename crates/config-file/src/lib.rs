//! The whole config file: one field per section, each section typed and validated by the crate
//! that uses it. Adding a section is one field here and one line in `validate`.
//!
//! A crate of its own (not a module of the binary) so that the fuzz target of the config
//! loader (fuzz/fuzz_targets/config.rs) loads exactly this `Config`, `[ipxe]` included.

use std::path::{Path, PathBuf};

use chainboot_config::{under, Issue, Problems, ServerConfig, Validate};
use serde::Deserialize;

use crate::ipxe::IpxeConfig;

pub mod ipxe;
pub mod preflight;
pub mod signed;

/// The config used when `serve` gets no `--config`: proxyDHCP beside the network's own DHCP
/// server, TFTP and HTTP on every interface, and an iPXE menu.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub ipxe: IpxeConfig,
    pub secure_boot: signed::SecureBootConfig,
    pub ipv6: chainboot_ra::Ipv6Config,
    pub tftp: chainboot_tftp::TftpConfig,
    pub http: chainboot_http::HttpConfig,
    pub iso: Vec<chainboot_iso::IsoConfig>,
    pub dhcp: chainboot_dhcp::DhcpConfig,
    pub dhcp6: chainboot_dhcp6::Dhcp6Config,
    pub profile: Vec<chainboot_policy::ProfileConfig>,
    pub group: Vec<chainboot_policy::GroupConfig>,
    pub boot: chainboot_policy::BootConfig,
    pub api: chainboot_policy::ApiConfig,
    pub events: chainboot_events::EventSettings,
    pub machines: chainboot_store::limit::MachineLimits,
    pub store: chainboot_store::StoreConfig,
}

impl Config {
    /// The HTTP port clients are sent to (the first `[http] listen` address's).
    pub fn http_port(&self) -> u16 {
        self.http
            .listen_addrs()
            .ok()
            .and_then(|a| a.first().map(|a| a.port()))
            .unwrap_or(80)
    }

    /// What the DHCP boot decision needs to know about the other servers.
    pub fn boot_settings(&self) -> chainboot_dhcp::BootSettings {
        chainboot_dhcp::BootSettings {
            advertise: self.server.advertise_addr(),
            http_port: self.http_port(),
            tftp_port: self.tftp.listen.port(),
            efi_x64: self.ipxe.efi_x64,
            https_port: self
                .http
                .tls_listen_addrs()
                .ok()
                .and_then(|a| a.first().map(|a| a.port()))
                .filter(|_| self.http.tls.is_some()),
            https_for_http_boot: self.http.https_for_http_boot,
            loaders: chainboot_dhcp::LoaderChoice {
                by_arch: self.boot.loader.clone(),
                chooser: None,
            },
        }
    }

    /// The boot policy's part of the config.
    pub fn policy(&self) -> chainboot_policy::PolicyConfig {
        chainboot_policy::PolicyConfig {
            profiles: self.profile.clone(),
            groups: self.group.clone(),
            boot: self.boot.clone(),
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Vec<Issue> {
        let mut out = under(&["server"], self.server.validate());
        out.extend(under(&["ipxe"], self.ipxe.validate()));
        out.extend(under(&["secure_boot"], self.secure_boot.validate()));
        out.extend(under(&["ipv6"], self.ipv6.validate()));
        out.extend(under(&["tftp"], self.tftp.validate()));
        out.extend(under(&["dhcp"], self.dhcp.validate()));
        out.extend(under(&["dhcp6"], self.dhcp6.validate()));
        out.extend(under(&["events"], self.events.validate()));
        out.extend(under(&["machines"], self.machines.validate()));
        out.extend(under(&["store"], self.store.validate()));
        out.extend(chainboot_policy::validate(
            &self.profile,
            &self.group,
            &self.boot,
        ));
        out.extend(under(&["http"], self.http.validate()));
        out.extend(under(
            &["iso"],
            chainboot_iso::IsoConfig::validate_all(&self.iso),
        ));
        if self.http.listen.as_list().is_empty() {
            out.push(Issue::at(
                &["http", "listen"],
                "the boot listener needs a plain HTTP address: most iPXE builds cannot fetch https://",
            ));
        }
        out.extend(under(&["api"], api_tls_issues(&self.api)));
        if self.http.tls_listen.as_list().is_empty() {
            for (i, g) in self.group.iter().enumerate() {
                if g.https_boot == Some(true) {
                    out.push(Issue::at(
                        &["group", &i.to_string(), "https_boot"],
                        format!(
                            "group {} asks for https:// but [http] has no tls_listen and tls",
                            g.name
                        ),
                    ));
                }
            }
        }
        out
    }
}

/// `[api] tls` and `client_ca`: files that load, and a CA only together with TLS.
fn api_tls_issues(api: &chainboot_policy::ApiConfig) -> Vec<Issue> {
    let mut out: Vec<Issue> = Vec::new();
    if let Some(chainboot_http::TlsSource::Files(files)) = &api.tls {
        if let Err(e) = chainboot_http::tls::load_pair(files) {
            out.push(Issue::at(&["tls"], e.0));
        }
    }
    if let Some(ca) = &api.client_ca {
        if api.tls.is_none() {
            out.push(Issue::at(
                &["client_ca"],
                "client certificates need TLS: set [api] tls too",
            ));
        } else if let Err(e) = chainboot_http::tls::load_roots(ca) {
            out.push(Issue::at(&["client_ca"], e.0));
        }
    }
    if api.tls.is_some() && api.listen.is_empty() {
        out.push(Issue::at(
            &["tls"],
            "[api] listen is empty: there is no management listener to serve TLS on",
        ));
    }
    out
}

/// The sections whose values differ between two configs (compared by their debug form, which
/// covers every field).
pub fn changed_sections(a: &Config, b: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    macro_rules! check {
        ($($section:ident),*) => {
            $(if format!("{:?}", a.$section) != format!("{:?}", b.$section) {
                out.push(stringify!($section));
            })*
        };
    }
    check!(
        server,
        ipxe,
        secure_boot,
        ipv6,
        tftp,
        http,
        iso,
        dhcp,
        dhcp6,
        profile,
        group,
        boot,
        api,
        events,
        machines
    );
    out
}

/// Where a config came from, for messages.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Embedded,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Embedded => f.write_str("(embedded default)"),
        }
    }
}

/// Loads the given file, or the embedded default.
pub fn load(path: Option<&Path>) -> Result<(Config, Source), Problems> {
    match path {
        Some(p) => Ok((
            chainboot_config::load_file(p)?,
            Source::File(p.to_path_buf()),
        )),
        None => Ok((
            chainboot_config::load_str(Path::new("(embedded default)"), EMBEDDED_DEFAULT)?,
            Source::Embedded,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_is_valid() {
        let (cfg, _) = load(None).unwrap();
        assert_eq!(cfg.server.advertise, "auto");
    }
}
