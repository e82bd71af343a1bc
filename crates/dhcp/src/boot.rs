//! The boot decision: which file or URL a DHCP client is told to load. This is the one place
//! that decides it; the engine, `chainboot explain` and the TFTP/HTTP servers (via
//! [`first_stage_name`]) all ask here.
//!
//! Rules:
//! - firmware PXE, not iPXE → the first-stage iPXE binary for its architecture, over TFTP;
//! - UEFI HTTP Boot ("HTTPClient") → `http://<server>:<port>/ipxe-bin/<binary>`, vendor class
//!   "HTTPClient" echoed;
//! - iPXE with the HTTP feature (175.19) → `http://<server>:<port>/boot.ipxe`; with the HTTPS
//!   feature (175.20) too, and a TLS listener, `https://<server>:<tls port>/boot.ipxe` (never
//!   https:// to a client that did not say it can fetch it, and never a redirect);
//! - UEFI HTTP Boot gets https:// only when `[http] https_for_http_boot` says its firmware
//!   trusts chainboot's certificate;
//! - iPXE without it → the TFTP path `boot.ipxe` (never the first stage again: a BIOS iPXE ROM
//!   would chainload undionly.kpxe forever);
//! - unknown architecture → no answer (the caller logs the value once per MAC);
//! - an x86-64 UEFI firmware client whose loader ([`LoaderChoice`]) is a signed chain gets
//!   that chain's first stage instead of iPXE: `secureboot/shimx64.efi` (then GRUB) or
//!   `secureboot/ipxe-shimx64.efi` (then iPXE's signed build). The GRUB chain needs TFTP
//!   (the distribution's signed GRUB has no HTTP client), so a UEFI HTTP Boot client whose
//!   loader is `grub` gets iPXE, and the answer's `why` says so.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use chainboot_machine::{Arch, BootTransport, ClientArch, Loader, Mac};
use serde::{Deserialize, Serialize};

use crate::wire::{code, Request};

/// Which x86-64 UEFI first stage to hand out (`[ipxe] efi_x64`).
///
/// `snponly.efi` (the default) drives the NIC through the firmware's own network driver (SNP),
/// the one that has just downloaded it, so it works on every NIC the firmware can PXE boot
/// from, as `undionly.kpxe` does for BIOS; and it starts at once. `ipxe.efi` carries iPXE's own
/// NIC drivers: it first disconnects the firmware's driver and probes and resets the NIC with its
/// own, which took 4-5 s more from start to `Configuring` under OVMF with virtio-net (and it is
/// five times the size over TFTP). It stays for firmware whose SNP driver is broken or slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum EfiX64Binary {
    #[serde(rename = "ipxe.efi")]
    IpxeEfi,
    #[default]
    #[serde(rename = "snponly.efi")]
    SnponlyEfi,
}

/// The TFTP path (and `/ipxe-bin/` name) of the first-stage iPXE binary for `arch`.
///
/// | arch | name |
/// |---|---|
/// | bios | `undionly.kpxe` (uses the ROM's UNDI driver, ipxe#145) |
/// | efi-ia32 | `ipxe-i386.efi` |
/// | efi-x64 | `snponly.efi` (default) or `ipxe.efi` |
/// | efi-arm32 | `ipxe-arm32.efi` |
/// | efi-arm64 | `ipxe-arm64.efi` |
/// | efi-riscv64 | `ipxe-riscv64.efi` |
pub fn first_stage_name(arch: Arch, efi_x64: EfiX64Binary) -> &'static str {
    match arch {
        Arch::Bios => "undionly.kpxe",
        Arch::EfiIa32 => "ipxe-i386.efi",
        Arch::EfiX64 => match efi_x64 {
            EfiX64Binary::IpxeEfi => "ipxe.efi",
            EfiX64Binary::SnponlyEfi => "snponly.efi",
        },
        Arch::EfiArm32 => "ipxe-arm32.efi",
        Arch::EfiArm64 => "ipxe-arm64.efi",
        Arch::EfiRiscv64 => "ipxe-riscv64.efi",
    }
}

/// Every name [`first_stage_name`] can return, for servers that publish them.
pub fn first_stage_names() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = Arch::ALL
        .iter()
        .map(|a| first_stage_name(*a, EfiX64Binary::IpxeEfi))
        .collect();
    v.push("snponly.efi");
    v
}

/// The folder (TFTP, and `/ipxe-bin/` over HTTP) of the signed chains' binaries. A folder of
/// their own because shim loads its second stage from beside itself by a fixed name
/// (`grubx64.efi`), and iPXE's shim loads `ipxe.efi` from beside itself: the signed `ipxe.efi`
/// must not be the unsigned one served at the top.
pub const SIGNED_DIR: &str = "secureboot";

/// The file names in [`SIGNED_DIR`] a signed chain is made of.
pub const SIGNED_NAMES: [&str; 6] = [
    "shimx64.efi",
    "grubx64.efi",
    "ipxe-shimx64.efi",
    "ipxe.efi",
    "snponly-shimx64.efi",
    "snponly.efi",
];

/// The path (in [`SIGNED_DIR`]) of a signed chain's first stage for x86-64 UEFI; `None` for
/// plain iPXE.
pub fn signed_first_stage(loader: Loader, efi_x64: EfiX64Binary) -> Option<&'static str> {
    match (loader, efi_x64) {
        (Loader::Ipxe, _) => None,
        (Loader::Grub, _) => Some("secureboot/shimx64.efi"),
        (Loader::IpxeShim, EfiX64Binary::IpxeEfi) => Some("secureboot/ipxe-shimx64.efi"),
        (Loader::IpxeShim, EfiX64Binary::SnponlyEfi) => Some("secureboot/snponly-shimx64.efi"),
    }
}

/// Picks the loader of one firmware client from what its DHCP packet says (the boot policy's
/// groups and profiles, and what was learned about the machine before). Answers without I/O:
/// it runs inside the DHCP engine.
pub trait ChooseLoader: Send + Sync {
    /// The loader and why, or `None` to leave it to `[boot] loader`.
    fn loader(&self, facts: &PacketFacts, arch: Arch) -> Option<(Loader, String)>;

    /// Whether a UEFI HTTP Boot client gets an `https://` first stage, and why (its group's
    /// `https_boot`), or `None` to leave it to `[http] https_for_http_boot`.
    fn https_boot(&self, _facts: &PacketFacts, _arch: Arch) -> Option<(bool, String)> {
        None
    }
}

/// Which loader each firmware client gets: the chooser's answer, else the architecture's
/// default (`[boot] loader`), else iPXE.
#[derive(Clone, Default)]
pub struct LoaderChoice {
    pub by_arch: BTreeMap<Arch, Loader>,
    pub chooser: Option<Arc<dyn ChooseLoader>>,
}

impl std::fmt::Debug for LoaderChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoaderChoice")
            .field("by_arch", &self.by_arch)
            .field("chooser", &self.chooser.is_some())
            .finish()
    }
}

impl PartialEq for LoaderChoice {
    fn eq(&self, other: &Self) -> bool {
        self.by_arch == other.by_arch
            && match (&self.chooser, &other.chooser) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

impl Eq for LoaderChoice {}

impl LoaderChoice {
    /// Whether a UEFI HTTP Boot client of `arch` gets `https://`: the chooser's answer, else
    /// `default` (`[http] https_for_http_boot`). The boot listener must have a TLS address
    /// for either to matter.
    pub fn https_boot(&self, facts: &PacketFacts, arch: Arch, default: bool) -> (bool, String) {
        self.chooser
            .as_ref()
            .and_then(|c| c.https_boot(facts, arch))
            .unwrap_or_else(|| (default, format!("[http] https_for_http_boot = {default}")))
    }

    /// The loader for a firmware client of `arch`, and why.
    pub fn pick(&self, facts: &PacketFacts, arch: Arch) -> (Loader, String) {
        let (loader, why) = self
            .chooser
            .as_ref()
            .and_then(|c| c.loader(facts, arch))
            .or_else(|| {
                self.by_arch
                    .get(&arch)
                    .map(|l| (*l, format!("[boot] loader for {arch}")))
            })
            .unwrap_or((Loader::Ipxe, "the default loader".to_string()));
        if loader.available_for(arch) {
            (loader, why)
        } else {
            (
                Loader::Ipxe,
                format!("{why} is {loader}, which has no {arch} build: iPXE"),
            )
        }
    }
}

/// The iPXE script path: served over HTTP at `/boot.ipxe` and over TFTP as `boot.ipxe`.
pub const SCRIPT_NAME: &str = "boot.ipxe";

/// What the boot decision needs to know about where chainboot serves files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSettings {
    /// Address given to clients for TFTP (siaddr) and HTTP URLs; `None` = the address of the
    /// interface the request came in on (`[server] advertise = "auto"`).
    pub advertise: Option<Ipv4Addr>,
    pub http_port: u16,
    /// Informational: DHCP cannot tell a client another TFTP port than 69.
    pub tftp_port: u16,
    pub efi_x64: EfiX64Binary,
    /// The boot listener's HTTPS port, when it has one (`[http] tls_listen`).
    pub https_port: Option<u16>,
    /// UEFI HTTP Boot clients get https:// URLs (their firmware was given the CA).
    pub https_for_http_boot: bool,
    /// Which chain firmware clients start (iPXE or a signed one).
    pub loaders: LoaderChoice,
}

impl Default for BootSettings {
    fn default() -> Self {
        BootSettings {
            advertise: None,
            http_port: 80,
            tftp_port: 69,
            efi_x64: EfiX64Binary::default(),
            https_port: None,
            https_for_http_boot: false,
            loaders: LoaderChoice::default(),
        }
    }
}

impl BootSettings {
    /// The address to advertise to a client whose request arrived on `ingress`.
    pub fn server_for(&self, ingress: Ipv4Addr) -> Ipv4Addr {
        self.advertise.unwrap_or(ingress)
    }

    /// `http://server[:port]` (an IPv6 server in brackets, as URLs need it).
    pub fn http_base(&self, server: impl Into<IpAddr>) -> String {
        let host = url_host(server.into());
        if self.http_port == 80 {
            format!("http://{host}")
        } else {
            format!("http://{host}:{}", self.http_port)
        }
    }

    /// `https://server[:port]`, when there is a TLS listener.
    pub fn https_base(&self, server: impl Into<IpAddr>) -> Option<String> {
        let host = url_host(server.into());
        self.https_port.map(|port| match port {
            443 => format!("https://{host}"),
            port => format!("https://{host}:{port}"),
        })
    }
}

/// An address as a URL's host: IPv6 literals in brackets (RFC 3986 §3.2.2; edk2's URL
/// parser refuses a `tftp://` or `http://` URL with a bare IPv6 address).
pub fn url_host(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// `tftp://server/path`: how DHCPv6 names a TFTP file (option 59 is always a URL).
pub fn tftp_url(server: IpAddr, path: &str) -> String {
    format!(
        "tftp://{}/{}",
        url_host(server),
        path.trim_start_matches('/')
    )
}

impl BootAnswer {
    /// The answer as one URL, the way DHCPv6 gives it (option 59): a TFTP path becomes
    /// `tftp://next_server/path`, HTTP answers already are URLs.
    pub fn url(&self) -> String {
        match self.stage {
            BootStage::FirstStage | BootStage::ScriptTftp => tftp_url(self.next_server, &self.file),
            BootStage::FirstStageHttp | BootStage::ScriptHttp => self.file.clone(),
        }
    }
}

/// What a DHCP or DHCPv6 packet tells about its client (the context that travels from packet
/// to reply and event log). The policy's own view of a machine, merged with what the store
/// knows, is `policy::ClientFacts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketFacts {
    pub mac: Option<Mac>,
    /// Option 60 as text.
    pub vendor_class: Option<String>,
    /// Option 93 (first value when several are listed).
    pub arch_code: Option<u16>,
    /// Option 175 present, or user-class "iPXE".
    pub is_ipxe: bool,
    /// Option 175 sub-option 19 (HTTP) present and non-zero.
    pub ipxe_http: bool,
    /// Option 175 sub-option 20 (HTTPS) present and non-zero.
    pub ipxe_https: bool,
    /// Option 97 as sent (type byte + 16-byte UUID).
    pub uuid: Option<Vec<u8>>,
    pub giaddr: Ipv4Addr,
    /// Option 82 as sent.
    pub relay_info: Option<Vec<u8>>,
    /// Option 77 as sent.
    pub user_class: Option<Vec<u8>>,
    /// Option 12.
    pub hostname: Option<String>,
}

impl Default for PacketFacts {
    fn default() -> Self {
        PacketFacts {
            mac: None,
            vendor_class: None,
            arch_code: None,
            is_ipxe: false,
            ipxe_http: false,
            ipxe_https: false,
            uuid: None,
            giaddr: Ipv4Addr::UNSPECIFIED,
            relay_info: None,
            user_class: None,
            hostname: None,
        }
    }
}

impl PacketFacts {
    pub fn from_request(req: &Request) -> PacketFacts {
        let h = &req.header;
        let mac = if h.hlen() == 6 {
            Mac::from_slice(h.chaddr())
        } else {
            None
        };
        let text = |c| req.opt(c).map(|b| String::from_utf8_lossy(b).into_owned());
        let arch_code = req
            .opt(code::CLIENT_ARCH)
            .and_then(|b| b.get(..2))
            .map(|b| u16::from_be_bytes([b[0], b[1]]));
        let ipxe = req.opt(code::IPXE);
        let user_class = req.opt(code::USER_CLASS).map(<[u8]>::to_vec);
        let ipxe_user_class = user_class.as_deref().is_some_and(user_class_is_ipxe);
        PacketFacts {
            mac,
            vendor_class: text(code::VENDOR_CLASS),
            arch_code,
            is_ipxe: ipxe.is_some() || ipxe_user_class,
            ipxe_http: ipxe.is_some_and(|e| ipxe_feature(e, 19)),
            ipxe_https: ipxe.is_some_and(|e| ipxe_feature(e, 20)),
            uuid: req.opt(code::CLIENT_UUID).map(<[u8]>::to_vec),
            giaddr: h.giaddr(),
            relay_info: req.opt(code::RELAY_AGENT).map(<[u8]>::to_vec),
            user_class,
            hostname: text(code::HOSTNAME),
        }
    }

    /// Vendor class starts with "PXEClient".
    pub fn is_pxe_client(&self) -> bool {
        self.vendor_class
            .as_deref()
            .is_some_and(|v| v.starts_with("PXEClient"))
    }

    /// Vendor class starts with "HTTPClient" (UEFI HTTP Boot).
    pub fn is_http_client(&self) -> bool {
        self.vendor_class
            .as_deref()
            .is_some_and(|v| v.starts_with("HTTPClient"))
    }

    /// A client chainboot has boot information for (answered in proxy mode).
    pub fn is_boot_client(&self) -> bool {
        self.is_pxe_client() || self.is_http_client() || self.is_ipxe
    }
}

/// iPXE sends "iPXE" raw; RFC 3004 clients length-prefix each class.
fn user_class_is_ipxe(b: &[u8]) -> bool {
    b == b"iPXE" || (b.first() == Some(&4) && b.get(1..5) == Some(b"iPXE"))
}

/// Whether iPXE's encapsulated option 175 carries feature `sub` with a non-zero value.
fn ipxe_feature(encap: &[u8], sub: u8) -> bool {
    let mut i = 0;
    while i + 1 < encap.len() {
        let (c, len) = (encap[i], encap[i + 1] as usize);
        if c == 0 {
            i += 1;
            continue;
        }
        if c == 255 {
            break;
        }
        let Some(val) = encap.get(i + 2..i + 2 + len) else {
            return false;
        };
        if c == sub {
            return val.iter().any(|&b| b != 0) || len == 0;
        }
        i += 2 + len;
    }
    false
}

/// What stage of the chain a client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootStage {
    /// The first-stage iPXE binary over TFTP.
    FirstStage,
    /// The first-stage iPXE binary over HTTP (UEFI HTTP Boot).
    FirstStageHttp,
    /// iPXE with HTTP: the script URL.
    ScriptHttp,
    /// iPXE without HTTP: the script over TFTP.
    ScriptTftp,
}

/// The answer for a boot client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootAnswer {
    pub stage: BootStage,
    /// Goes into the BOOTP `file` field (and option 67 when asked for): a TFTP path or URL.
    pub file: String,
    /// siaddr: the TFTP server (set in every answer; iPXE ignores proxy replies without it).
    /// An IPv6 address for DHCPv6 clients, which get TFTP as a `tftp://` URL instead.
    pub next_server: IpAddr,
    /// Option 60 to send: "PXEClient" or "HTTPClient".
    pub vendor_class: &'static str,
    pub arch: Option<Arch>,
    /// Why this transport (TFTP, http://, https://), for `explain` and the event log.
    pub why: Cow<'static, str>,
    /// The chain a firmware client starts (iPXE for clients already running iPXE).
    pub loader: Loader,
    /// Why that chain (the group, profile or `[boot] loader` that chose it).
    pub loader_why: String,
}

/// Why a client gets no boot information.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "reason")]
pub enum NoBoot {
    /// Not PXE, not HTTP Boot, not iPXE: an ordinary DHCP client.
    NotBootClient,
    /// Option 93 names an architecture chainboot has no binary for.
    UnknownArch { value: u16 },
}

/// The boot decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum BootDecision {
    Boot(BootAnswer),
    NoBoot(NoBoot),
}

/// Decides what `facts` gets when its request reached chainboot at `server` (the address to
/// advertise: [`BootSettings::server_for`]).
pub fn decide(
    facts: &PacketFacts,
    settings: &BootSettings,
    server: impl Into<IpAddr>,
) -> BootDecision {
    let server: IpAddr = server.into();
    if !facts.is_boot_client() {
        return BootDecision::NoBoot(NoBoot::NotBootClient);
    }
    // PXE firmware must send 93 (PXE 2.1); the few old BIOS ROMs that do not are x86 BIOS.
    let code = facts.arch_code.unwrap_or(0);
    let arch = Arch::from_option93(code);
    let base = settings.http_base(server);
    let https = settings.https_base(server);
    if facts.is_ipxe {
        // iPXE already runs: give it the script, never the first stage (no chainload loop).
        return BootDecision::Boot(script_for_ipxe(
            facts,
            arch,
            server,
            &base,
            https.as_deref(),
        ));
    }
    let Some(ClientArch { arch, transport }) = arch else {
        return BootDecision::NoBoot(NoBoot::UnknownArch { value: code });
    };
    let http_boot = transport == BootTransport::HttpBoot || facts.is_http_client();
    let (mut loader, mut loader_why) = settings.loaders.pick(facts, arch);
    if http_boot && loader == Loader::Grub {
        loader = Loader::Ipxe;
        loader_why = format!(
            "{loader_why} is grub, but the signed GRUB fetches only over TFTP and this is a UEFI HTTP Boot client: iPXE"
        );
    }
    let name = signed_first_stage(loader, settings.efi_x64)
        .unwrap_or_else(|| first_stage_name(arch, settings.efi_x64));
    BootDecision::Boot(if http_boot {
        let (wants_https, https_why) =
            settings
                .loaders
                .https_boot(facts, arch, settings.https_for_http_boot);
        let (base, why) = match (https, wants_https) {
            (Some(https), true) => (
                https,
                format!("UEFI HTTP Boot, {https_why}: https:// (the firmware must trust chainboot's CA)"),
            ),
            (None, true) => (
                base,
                format!("UEFI HTTP Boot, {https_why}, but [http] has no tls_listen: http://"),
            ),
            (_, false) => (base, format!("UEFI HTTP Boot, {https_why}: http://")),
        };
        BootAnswer {
            stage: BootStage::FirstStageHttp,
            file: format!("{base}/ipxe-bin/{name}"),
            next_server: server,
            vendor_class: "HTTPClient",
            arch: Some(arch),
            why: why.into(),
            loader,
            loader_why,
        }
    } else {
        BootAnswer {
            stage: BootStage::FirstStage,
            file: name.to_string(),
            next_server: server,
            vendor_class: "PXEClient",
            arch: Some(arch),
            why: "PXE firmware: the first stage over TFTP".into(),
            loader,
            loader_why,
        }
    })
}

/// What a client already running iPXE gets: the script, over https:// when both sides can,
/// else http:// when iPXE has HTTP, else TFTP.
fn script_for_ipxe(
    facts: &PacketFacts,
    arch: Option<ClientArch>,
    server: IpAddr,
    base: &str,
    https: Option<&str>,
) -> BootAnswer {
    let (stage, file, why) = match (https, facts.ipxe_https, facts.ipxe_http) {
        (Some(https), true, _) => (
            BootStage::ScriptHttp,
            format!("{https}/{SCRIPT_NAME}"),
            "iPXE advertises HTTPS (option 175.20) and [http] tls_listen is set: https://",
        ),
        (_, _, true) => (
            BootStage::ScriptHttp,
            format!("{base}/{SCRIPT_NAME}"),
            if https.is_some() {
                "iPXE with HTTP (175.19) but without HTTPS (no 175.20): plain http://"
            } else {
                "iPXE with HTTP (option 175.19): http:// (no [http] tls_listen for https://)"
            },
        ),
        _ => (
            BootStage::ScriptTftp,
            SCRIPT_NAME.to_string(),
            "iPXE without HTTP (no option 175.19): the script over TFTP",
        ),
    };
    BootAnswer {
        stage,
        file,
        next_server: server,
        vendor_class: "PXEClient",
        arch: arch.map(|a| a.arch),
        why: why.into(),
        loader: Loader::Ipxe,
        loader_why: "iPXE already runs".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

    fn pxe(arch: u16) -> PacketFacts {
        PacketFacts {
            vendor_class: Some(format!("PXEClient:Arch:{arch:05}:UNDI:003016")),
            arch_code: Some(arch),
            ..Default::default()
        }
    }

    fn answer(f: &PacketFacts, s: &BootSettings) -> BootAnswer {
        match decide(f, s, SERVER) {
            BootDecision::Boot(a) => a,
            other => panic!("no boot: {other:?}"),
        }
    }

    #[test]
    fn firmware_gets_first_stage_for_its_arch() {
        let s = BootSettings::default();
        for (code, file) in [
            (0, "undionly.kpxe"),
            (6, "ipxe-i386.efi"),
            (7, "snponly.efi"),
            (9, "snponly.efi"),
            (10, "ipxe-arm32.efi"),
            (11, "ipxe-arm64.efi"),
            (27, "ipxe-riscv64.efi"),
        ] {
            let a = answer(&pxe(code), &s);
            assert_eq!(
                (a.stage, a.file.as_str()),
                (BootStage::FirstStage, file),
                "arch {code}"
            );
            assert_eq!(a.next_server, IpAddr::from(SERVER));
            assert_eq!(a.vendor_class, "PXEClient");
        }
        let ipxe_efi = BootSettings {
            efi_x64: EfiX64Binary::IpxeEfi,
            ..Default::default()
        };
        assert_eq!(answer(&pxe(7), &ipxe_efi).file, "ipxe.efi");
    }

    #[test]
    fn http_boot_client_gets_url_of_binary_and_httpclient() {
        let s = BootSettings {
            http_port: 8080,
            ..Default::default()
        };
        let f = PacketFacts {
            vendor_class: Some("HTTPClient:Arch:00016:UNDI:003001".into()),
            arch_code: Some(16),
            ..Default::default()
        };
        let a = answer(&f, &s);
        assert_eq!(a.file, "http://198.18.0.1:8080/ipxe-bin/snponly.efi");
        assert_eq!(a.vendor_class, "HTTPClient");
        assert_eq!(a.stage, BootStage::FirstStageHttp);
    }

    #[test]
    fn ipxe_with_http_gets_script_url_and_without_gets_tftp_path() {
        let s = BootSettings {
            advertise: Some(Ipv4Addr::new(198, 18, 9, 9)),
            ..Default::default()
        };
        let mut f = pxe(0);
        f.is_ipxe = true;
        f.ipxe_http = true;
        let server = s.server_for(SERVER);
        let BootDecision::Boot(a) = decide(&f, &s, server) else {
            panic!()
        };
        assert_eq!(a.file, "http://198.18.9.9/boot.ipxe");
        assert_eq!(a.next_server, IpAddr::from(Ipv4Addr::new(198, 18, 9, 9)));
        f.ipxe_http = false;
        let a = answer(&f, &s);
        assert_eq!(
            (a.stage, a.file.as_str()),
            (BootStage::ScriptTftp, "boot.ipxe")
        );
    }

    #[test]
    fn https_only_for_clients_that_say_they_can_fetch_it() {
        let s = BootSettings {
            https_port: Some(8443),
            ..Default::default()
        };
        let mut f = pxe(7);
        f.is_ipxe = true;
        f.ipxe_http = true;
        // 175.19 alone: plain http, even with a TLS listener.
        assert_eq!(answer(&f, &s).file, "http://198.18.0.1/boot.ipxe");
        f.ipxe_https = true;
        let a = answer(&f, &s);
        assert_eq!(a.file, "https://198.18.0.1:8443/boot.ipxe");
        assert!(a.why.contains("175.20"), "{}", a.why);
        // 175.20 without a TLS listener: http.
        assert_eq!(
            answer(&f, &BootSettings::default()).file,
            "http://198.18.0.1/boot.ipxe"
        );
        // UEFI HTTP Boot: only when the site says its firmware trusts the CA.
        let hb = PacketFacts {
            vendor_class: Some("HTTPClient:Arch:00016:UNDI:003001".into()),
            arch_code: Some(16),
            ..Default::default()
        };
        assert_eq!(
            answer(&hb, &s).file,
            "http://198.18.0.1/ipxe-bin/snponly.efi"
        );
        let marked = BootSettings {
            https_port: Some(443),
            https_for_http_boot: true,
            ..Default::default()
        };
        assert_eq!(
            answer(&hb, &marked).file,
            "https://198.18.0.1/ipxe-bin/snponly.efi"
        );
    }

    #[test]
    fn ipv6_servers_appear_in_brackets_in_every_url() {
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let s = BootSettings {
            http_port: 8080,
            ..Default::default()
        };
        let BootDecision::Boot(a) = decide(&pxe(7), &s, v6) else {
            panic!()
        };
        assert_eq!(a.url(), "tftp://[2001:db8::1]/snponly.efi");
        let hb = PacketFacts {
            vendor_class: Some("HTTPClient:Arch:00016:UNDI:003000".into()),
            arch_code: Some(16),
            ..Default::default()
        };
        let BootDecision::Boot(a) = decide(&hb, &s, v6) else {
            panic!()
        };
        assert_eq!(a.url(), "http://[2001:db8::1]:8080/ipxe-bin/snponly.efi");
        // A v4 answer's URL form is the same TFTP path with the server in front.
        assert_eq!(answer(&pxe(0), &s).url(), "tftp://198.18.0.1/undionly.kpxe");
    }

    #[test]
    fn unknown_arch_and_plain_clients_get_nothing() {
        let s = BootSettings::default();
        assert_eq!(
            decide(&pxe(1), &s, SERVER),
            BootDecision::NoBoot(NoBoot::UnknownArch { value: 1 })
        );
        assert_eq!(
            decide(&PacketFacts::default(), &s, SERVER),
            BootDecision::NoBoot(NoBoot::NotBootClient)
        );
    }

    struct ByMac(Mac, Loader);
    impl ChooseLoader for ByMac {
        fn loader(&self, facts: &PacketFacts, _: Arch) -> Option<(Loader, String)> {
            (facts.mac == Some(self.0)).then(|| (self.1, "group signed".to_string()))
        }
    }

    #[test]
    fn signed_chain_machines_get_shim_from_their_own_folder_and_others_ipxe() {
        let mac = Mac([0x52, 0x54, 0, 0, 0, 1]);
        let s = BootSettings {
            loaders: LoaderChoice {
                by_arch: BTreeMap::new(),
                chooser: Some(Arc::new(ByMac(mac, Loader::Grub))),
            },
            ..Default::default()
        };
        let mut f = pxe(7);
        f.mac = Some(mac);
        let a = answer(&f, &s);
        assert_eq!(a.file, "secureboot/shimx64.efi");
        assert_eq!(
            (a.loader, a.loader_why.as_str()),
            (Loader::Grub, "group signed")
        );
        // Another machine, and the same one once iPXE runs, get iPXE's way.
        f.mac = Some(Mac([0x52, 0x54, 0, 0, 0, 2]));
        assert_eq!(answer(&f, &s).file, "snponly.efi");
        f.mac = Some(mac);
        f.is_ipxe = true;
        f.ipxe_http = true;
        assert_eq!(answer(&f, &s).file, "http://198.18.0.1/boot.ipxe");
    }

    /// A group that marks (or unmarks) its machines for https:// UEFI HTTP Boot.
    struct HttpsByMac(Mac, bool);
    impl ChooseLoader for HttpsByMac {
        fn loader(&self, _: &PacketFacts, _: Arch) -> Option<(Loader, String)> {
            None
        }
        fn https_boot(&self, facts: &PacketFacts, _: Arch) -> Option<(bool, String)> {
            (facts.mac == Some(self.0)).then(|| (self.1, "group lab".to_string()))
        }
    }

    #[test]
    fn a_group_marks_its_http_boot_machines_for_https_either_way() {
        let mac = Mac([0x52, 0x54, 0, 0, 0, 1]);
        let mut hb = PacketFacts {
            vendor_class: Some("HTTPClient:Arch:00016:UNDI:003001".into()),
            arch_code: Some(16),
            mac: Some(mac),
            ..Default::default()
        };
        let with = |on: bool, global: bool, port: Option<u16>| BootSettings {
            https_port: port,
            https_for_http_boot: global,
            loaders: LoaderChoice {
                by_arch: BTreeMap::new(),
                chooser: Some(Arc::new(HttpsByMac(mac, on))),
            },
            ..Default::default()
        };
        // Marked, global off: https for this machine, with the group named as the reason.
        let a = answer(&hb, &with(true, false, Some(443)));
        assert_eq!(a.file, "https://198.18.0.1/ipxe-bin/snponly.efi");
        assert!(a.why.contains("group lab"), "{}", a.why);
        // Unmarked, global on: the group keeps its machines on http.
        assert_eq!(
            answer(&hb, &with(false, true, Some(443))).file,
            "http://198.18.0.1/ipxe-bin/snponly.efi"
        );
        // Marked but no TLS listener: http, and the answer says why.
        let a = answer(&hb, &with(true, false, None));
        assert_eq!(a.file, "http://198.18.0.1/ipxe-bin/snponly.efi");
        assert!(a.why.contains("no tls_listen"), "{}", a.why);
        // Another machine: the global setting decides.
        hb.mac = Some(Mac([0x52, 0x54, 0, 0, 0, 2]));
        assert_eq!(
            answer(&hb, &with(true, true, Some(443))).file,
            "https://198.18.0.1/ipxe-bin/snponly.efi"
        );
        assert_eq!(
            answer(&hb, &with(true, false, Some(443))).file,
            "http://198.18.0.1/ipxe-bin/snponly.efi"
        );
    }

    #[test]
    fn arch_default_loader_applies_only_where_a_signed_build_exists() {
        let s = BootSettings {
            loaders: LoaderChoice {
                by_arch: [(Arch::EfiX64, Loader::IpxeShim), (Arch::Bios, Loader::Grub)]
                    .into_iter()
                    .collect(),
                chooser: None,
            },
            ..Default::default()
        };
        let a = answer(&pxe(7), &s);
        assert_eq!(a.file, "secureboot/snponly-shimx64.efi");
        assert_eq!(a.loader_why, "[boot] loader for efi-x64");
        let ipxe_efi = BootSettings {
            efi_x64: EfiX64Binary::IpxeEfi,
            ..s.clone()
        };
        assert_eq!(
            answer(&pxe(7), &ipxe_efi).file,
            "secureboot/ipxe-shimx64.efi"
        );
        let bios = answer(&pxe(0), &s);
        assert_eq!(
            (bios.file.as_str(), bios.loader),
            ("undionly.kpxe", Loader::Ipxe)
        );
        assert!(
            bios.loader_why.contains("no bios build"),
            "{}",
            bios.loader_why
        );
    }

    #[test]
    fn http_boot_gets_ipxe_shim_over_http_but_never_grub() {
        let hb = PacketFacts {
            vendor_class: Some("HTTPClient:Arch:00016:UNDI:003001".into()),
            arch_code: Some(16),
            ..Default::default()
        };
        let with = |l: Loader| BootSettings {
            loaders: LoaderChoice {
                by_arch: [(Arch::EfiX64, l)].into_iter().collect(),
                chooser: None,
            },
            ..Default::default()
        };
        assert_eq!(
            answer(&hb, &with(Loader::IpxeShim)).file,
            "http://198.18.0.1/ipxe-bin/secureboot/snponly-shimx64.efi"
        );
        let a = answer(&hb, &with(Loader::Grub));
        assert_eq!(a.file, "http://198.18.0.1/ipxe-bin/snponly.efi");
        assert!(a.loader_why.contains("only over TFTP"), "{}", a.loader_why);
    }

    #[test]
    fn ipxe_feature_parsing() {
        assert!(ipxe_feature(&[16, 1, 1, 19, 1, 1, 235, 4, 1, 0, 0, 0], 19));
        assert!(!ipxe_feature(&[16, 1, 1, 21, 1, 1], 19));
        assert!(!ipxe_feature(&[19, 5, 1], 19));
        assert!(ipxe_feature(&[19, 1, 1, 20, 1, 1], 20));
        assert!(user_class_is_ipxe(b"iPXE") && user_class_is_ipxe(b"\x04iPXE"));
        assert!(!user_class_is_ipxe(b"gPXE"));
        assert_eq!(first_stage_names().len(), 7);
    }
}
