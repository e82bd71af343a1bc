//! The policy's part of the config file: `[[profile]]`, `[[group]]`, `[boot]`,
//! `[api]`, and [`validate`], which finds every problem at once and names each by its key path
//! from the document root (array indices 0-based, as TOML editors count them), so that the
//! loader can point at file and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chainboot_content::CleanPath;
use chainboot_machine::{Arch, Loader};
use serde::{Deserialize, Deserializer, Serialize};

use crate::glob::Glob;

/// A `[[profile]]`: what a machine boots. Exactly one kind: `kernel` (+ `initrd`, `cmdline`),
/// `script` (a raw iPXE script template), `action`, or `pxelinux` (iPXE loads the PXELINUX
/// loader over HTTP, which reads a per-machine `pxelinux.cfg` rendered by chainboot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Asset reference: `path/under/http/root`, `iso:NAME/path`, `http(s)://...`, or
    /// `file:///absolute/path` (a local file served by chainboot itself; quick mode uses it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub initrd: Vec<String>,
    /// Kernel command line template (minijinja).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// A raw iPXE script template (minijinja); must start with `#!ipxe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<ProfileAction>,
    /// Asset reference of the PXELINUX loader (normally `lpxelinux.0`, which can fetch over
    /// HTTP). Makes this a PXELINUX profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pxelinux: Option<String>,
    /// Template of the machine's `pxelinux.cfg`; when absent it is generated from `kernel`,
    /// `initrd` and `cmdline` (one LABEL, booted by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pxelinux_config: Option<String>,
    /// The chain x86-64 UEFI machines booting this profile start with (`ipxe`, `grub`,
    /// `ipxe-shim`); a group's own `loader` comes first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loader: Option<Loader>,
}

/// The built-in profile kinds that need no assets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProfileAction {
    /// iPXE exits, so the firmware goes on to the next boot device.
    LocalDisk,
    /// An iPXE menu of every other profile.
    Menu,
    /// The iPXE shell.
    Shell,
}

impl ProfileAction {
    pub fn name(self) -> &'static str {
        match self {
            ProfileAction::LocalDisk => "local-disk",
            ProfileAction::Menu => "menu",
            ProfileAction::Shell => "shell",
        }
    }
}

/// A `[[group]]`: machines matching `match` boot `profile`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub name: String,
    pub profile: String,
    /// Boot-once: after the machine fetched its kernel or reported `installed`, it boots the
    /// local disk until re-armed.
    #[serde(default)]
    pub once: bool,
    #[serde(default, rename = "match")]
    pub selectors: MatchConfig,
    /// The chain its x86-64 UEFI machines start with; before the profile's `loader`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loader: Option<Loader>,
    /// Whether its UEFI HTTP Boot machines get an `https://` first stage (their firmware was
    /// given chainboot's CA); unset: `[http] https_for_http_boot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_boot: Option<bool>,
}

/// Selectors; every one given must match. A value may be one string or a list (any of).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// MAC globs (`52:54:00:*`); `-` and `:` are the same, case does not matter.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub mac: Vec<String>,
    /// SMBIOS UUIDs, exactly (case does not matter).
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub uuid: Vec<String>,
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub arch: Vec<Arch>,
    /// Hostname globs.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub hostname: Vec<String>,
    /// Serial number globs.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub serial: Vec<String>,
    /// Labels set through the API; every one listed must be equal.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl MatchConfig {
    /// How specific the group is: the number of selectors given (each label counts once).
    /// The most specific matching group wins.
    pub fn specificity(&self) -> usize {
        [
            !self.mac.is_empty(),
            !self.uuid.is_empty(),
            !self.arch.is_empty(),
            !self.hostname.is_empty(),
            !self.serial.is_empty(),
        ]
        .into_iter()
        .filter(|b| *b)
        .count()
            + self.labels.len()
    }
}

fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        One(T),
        Many(Vec<T>),
    }
    match OneOrMany::<T>::deserialize(d) {
        Ok(OneOrMany::One(v)) => Ok(vec![v]),
        Ok(OneOrMany::Many(v)) => Ok(v),
        Err(_) => Err(serde::de::Error::custom(
            "expected a value or a list of values (e.g. \"52:54:00:*\" or [\"a\", \"b\"]); architectures are bios, efi-ia32, efi-x64, efi-arm32, efi-arm64, efi-riscv64",
        )),
    }
}

/// `[boot]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    /// Profile for machines no group matches, or `menu` (an iPXE menu of the profiles).
    #[serde(default = "default_profile")]
    pub default: String,
    /// Base URL of a pixiecore-compatible boot API, asked before `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// How long to wait for the API (`"2s"`, `"500ms"`).
    #[serde(default = "default_api_timeout", with = "chainboot_config::duration")]
    pub api_timeout: Duration,
    /// Folder of templates for `/config/MAC/NAME` and static `pxelinux.cfg/` files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<PathBuf>,
    /// How long a machine that cannot boot waits before asking again.
    #[serde(default = "default_retry_delay", with = "chainboot_config::duration")]
    pub retry_delay: Duration,
    /// Networks whose requests may act for any MAC they name without proving it (routed labs
    /// in proxy mode, where neither a lease nor the neighbour table can tell who is asking).
    /// Loopback is always trusted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_networks: Vec<ipnet::IpNet>,
    /// How long the boot capabilities in a machine's script URLs stay valid (an installer
    /// fetches its config with one up to this long after the script).
    #[serde(
        default = "default_capability_lifetime",
        with = "chainboot_config::duration"
    )]
    pub capability_lifetime: Duration,
    /// The chain each architecture's firmware starts with when neither its group nor its
    /// profile says: `{ efi-x64 = "grub" }`. Unset: iPXE.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub loader: BTreeMap<Arch, Loader>,
    /// The signed chain a machine gets once its firmware was seen refusing the unsigned first
    /// stage (back at DHCP within seconds without running it). Unset: such machines are
    /// reported (event, metric, log) but keep their loader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot_fallback: Option<Loader>,
}

fn default_profile() -> String {
    "menu".into()
}
fn default_api_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_retry_delay() -> Duration {
    Duration::from_secs(10)
}
fn default_capability_lifetime() -> Duration {
    Duration::from_secs(6 * 3600)
}

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            default: default_profile(),
            api: None,
            api_timeout: default_api_timeout(),
            templates: None,
            retry_delay: default_retry_delay(),
            trusted_networks: Vec::new(),
            capability_lifetime: default_capability_lifetime(),
            loader: BTreeMap::new(),
            secure_boot_fallback: None,
        }
    }
}

/// `[api]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Bearer token file; default `<state_dir>/api.token`, created 0600 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Whether GETs need the token too.
    #[serde(default = "yes")]
    pub read_requires_token: bool,
    /// The management listener (API, dashboard, event stream, metrics): off the boot network
    /// by default. Empty = no listener of its own.
    #[serde(default = "default_api_listen", deserialize_with = "one_or_many_addrs")]
    pub listen: Vec<std::net::SocketAddr>,
    /// Also serve the operator's API on the boot listener(s); every request there then needs
    /// the token, reads included.
    #[serde(default)]
    pub on_boot_listener: bool,
    /// HTTPS for the management listener: `"lab"` or `{ cert = "FILE", key = "FILE" }`.
    /// With it, every `listen` address speaks TLS only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<chainboot_http::TlsSource>,
    /// PEM file of CAs: clients of the management listener must present a certificate signed
    /// by one of them (the token is still checked). Needs `tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

/// The management listener's default address: loopback only.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:8079";

fn default_api_listen() -> Vec<std::net::SocketAddr> {
    DEFAULT_API_LISTEN.parse().into_iter().collect()
}

fn one_or_many_addrs<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<std::net::SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(std::net::SocketAddr),
        Many(Vec<std::net::SocketAddr>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(a) => vec![a],
        OneOrMany::Many(v) => v,
    })
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            token_file: None,
            read_requires_token: true,
            listen: default_api_listen(),
            on_boot_listener: false,
            tls: None,
            client_ca: None,
        }
    }
}

impl ApiConfig {
    /// Where the API token is: `token_file`, or `api.token` in `state_dir`.
    pub fn token_path(&self, state_dir: &Path) -> PathBuf {
        self.token_file
            .clone()
            .unwrap_or_else(|| state_dir.join("api.token"))
    }

    /// Reads the API token, creating the file (mode 0600, 32 random bytes as hex) when it does
    /// not exist. An empty or unreadable file is an error, never an open API.
    pub fn load_or_create_token(&self, state_dir: &Path) -> std::io::Result<String> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.token_path(state_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let token = text.trim().to_string();
                if token.is_empty() {
                    return Err(std::io::Error::other(format!(
                        "API token file {} is empty",
                        path.display()
                    )));
                }
                Ok(token)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let token = crate::random_hex(32);
                // create_new: if two starts race, one fails instead of both writing.
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                f.write_all(format!("{token}\n").as_bytes())?;
                f.sync_all()?;
                Ok(token)
            }
            Err(e) => Err(std::io::Error::new(
                e.kind(),
                format!("API token file {}: {e}", path.display()),
            )),
        }
    }
}

/// Where a profile's file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssetRef {
    /// Under `[http] root`, served at `/files/PATH`.
    Files(CleanPath),
    /// Inside a configured ISO image, served at `/iso/NAME/PATH`.
    Iso { name: String, path: CleanPath },
    /// An http(s) URL given to iPXE unchanged.
    Url(String),
    /// A local file served by the policy's own route (quick mode, pixiecore `file://`).
    Local(PathBuf),
    /// An http(s) URL chainboot fetches and relays (pixiecore API answers: the machine may not
    /// be able to reach the API host, and pixiecore proxies them too).
    Proxy(String),
}

impl AssetRef {
    /// Parses a config asset reference.
    pub fn parse(s: &str) -> Result<AssetRef, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty asset reference".into());
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("asset reference contains whitespace or control characters".into());
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            let url = reqwest::Url::parse(s).map_err(|e| format!("bad URL `{s}`: {e}"))?;
            if url.host_str().is_none() {
                return Err(format!("URL `{s}` has no host"));
            }
            return Ok(AssetRef::Url(s.to_string()));
        }
        if let Some(path) = s.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "`{s}`: file:// URLs name absolute paths (file:///srv/vmlinuz)"
                ));
            }
            return Ok(AssetRef::Local(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("iso:") {
            let (name, path) = rest
                .split_once('/')
                .ok_or_else(|| format!("`{s}`: expected iso:NAME/path/inside/the/image"))?;
            if name.is_empty() {
                return Err(format!("`{s}`: missing ISO name"));
            }
            let path = CleanPath::parse(path).map_err(|e| format!("`{s}`: {e}"))?;
            return Ok(AssetRef::Iso {
                name: name.to_string(),
                path,
            });
        }
        if s.contains("://") {
            return Err(format!(
                "`{s}`: only http://, https:// and file:// URLs are supported"
            ));
        }
        if s.starts_with('/') {
            return Err(format!(
                "`{s}`: paths are relative to [http] root; for a file elsewhere write file://{s}"
            ));
        }
        Ok(AssetRef::Files(
            CleanPath::parse(s).map_err(|e| format!("`{s}`: {e}"))?,
        ))
    }

    /// The file name the reference ends in (`initrd.gz` for `iso:debian/install.amd/initrd.gz`
    /// or `http://host/x/initrd.gz?v=2`).
    pub fn file_name(&self) -> Option<String> {
        match self {
            AssetRef::Files(p) | AssetRef::Iso { path: p, .. } => p.parts().last().cloned(),
            AssetRef::Url(u) | AssetRef::Proxy(u) => {
                let path = u.split(['?', '#']).next().unwrap_or("");
                let path = path.split_once("://").map_or(path, |(_, rest)| rest);
                let (_, path) = path.split_once('/')?;
                path.rsplit('/').next().map(str::to_string)
            }
            AssetRef::Local(p) => p.file_name().map(|n| n.to_string_lossy().into_owned()),
        }
    }
}

/// A config problem: key path from the document root and message.
pub use chainboot_config::Issue;

pub(crate) fn key(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// Characters allowed in profile and group names (and config template names): they appear in
/// URLs, file names, iPXE labels and logs. No leading dot, so never `.` or `..`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// MAC glob: hex digits, separators, wildcards. Normalised to lower-case with colons.
pub(crate) fn mac_glob(s: &str) -> Result<Glob, String> {
    let norm = s.trim().replace('-', ":").to_ascii_lowercase();
    Glob::new(&norm, |c| c.is_ascii_hexdigit() || c == ':')
}

/// Hostname / serial glob: the characters a sanitised fact may contain.
pub(crate) fn fact_glob(s: &str) -> Result<Glob, String> {
    Glob::new(s.trim(), crate::facts::fact_char_allowed)
}
