//! Turning a chosen profile into the bytes a machine gets: iPXE scripts, kernel command lines,
//! PXELINUX configs. Pure functions of (profile, machine, base URL): no I/O, no clock.
//!
//! Templates (minijinja) see `machine` (mac, mac_hyphen, uuid, arch, ip, hostname, serial,
//! manufacturer, product, labels, secret, events_url), `profile` (name, description),
//! `http` (base URL, e.g. `http://198.18.0.1:8080`), `https` (the same host on the boot
//! listener's TLS port, e.g. `https://198.18.0.1:8443`; only on a server with a TLS listener:
//! a template that refers to it is refused otherwise, see [`NO_TLS_FOR_HTTPS`]) and `server`
//! (host, http, api).
//! Unknown facts are empty strings. Facts were sanitised on the way in (see `facts`), so no
//! value can carry iPXE, kernel-argument or template syntax; the output of a template is
//! never rendered again.

use std::collections::BTreeMap;
use std::sync::Arc;

use minijinja::{Environment, UndefinedBehavior};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Serialize;

use crate::config::{AssetRef, ProfileAction};
use crate::facts::ClientFacts;

/// Characters left alone in a URL path segment (RFC 3986 unreserved).
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes one URL path segment or query value.
pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, PATH_SEGMENT).to_string()
}

/// The HTTP base URL machines reach chainboot at, without a trailing slash
/// (`http://198.18.0.1:8080`), and the boot listener's TLS port when it has one (templates get
/// `{{ https }}` from it: the same host on that port).
///
/// In a fleet it also carries the live peers' bases in its own scheme ([`HttpBase::with_peers`]):
/// every fetch a generated script makes from this server is followed by the same fetch from
/// each peer (`kernel http://A/k || kernel http://B/k || goto failed`), so a machine whose
/// server dies mid-boot goes on with a live one. Alone it has none, and scripts are as they
/// were.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpBase {
    url: String,
    https_port: Option<u16>,
    peers: Arc<[String]>,
}

/// Peers named as alternatives at most: each is one more attempt (a connection timeout, when
/// its server died without a word) before a machine gives up and retries.
pub const MAX_ALTERNATIVES: usize = 8;

impl HttpBase {
    /// From `http://host[:port]`; refuses anything with a path, query, or odd characters,
    /// because it is pasted into scripts.
    pub fn new(url: &str) -> Result<HttpBase, String> {
        let trimmed = url.trim().trim_end_matches('/');
        let rest = trimmed
            .strip_prefix("http://")
            .or_else(|| trimmed.strip_prefix("https://"))
            .ok_or_else(|| format!("`{url}`: base URL must start with http:// or https://"))?;
        if rest.is_empty()
            || !rest
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        {
            return Err(format!("`{url}`: base URL must be scheme://host[:port]"));
        }
        Ok(HttpBase {
            url: trimmed.to_string(),
            https_port: None,
            peers: Arc::new([]),
        })
    }

    /// From an HTTP request's Host header (untrusted: validated like [`HttpBase::new`]).
    pub fn from_host_header(host: &str) -> Option<HttpBase> {
        HttpBase::new(&format!("http://{host}")).ok()
    }

    /// The same base with the boot listener's TLS port (`None`: this server has no TLS
    /// listener). Port 0 (a listener whose port the system picks) is no port a client can be
    /// sent to, and counts as none.
    pub fn with_https_port(mut self, port: Option<u16>) -> HttpBase {
        self.https_port = port.filter(|p| *p != 0);
        self
    }

    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The same base naming `peers` (the live fleet peers' bases, in the order given) as
    /// alternatives: each peer's base in this one's scheme (an `https://` base gets the peers'
    /// TLS listeners, and none of a peer without one), never this base itself, each once, at
    /// most [`MAX_ALTERNATIVES`].
    pub fn with_peers(mut self, peers: &[HttpBase]) -> HttpBase {
        let tls = self.url.starts_with("https://");
        let mut alternatives: Vec<String> = Vec::new();
        for p in peers {
            let same_scheme = if tls {
                p.https()
            } else {
                Some(p.url.clone()).filter(|u| u.starts_with("http://"))
            };
            if let Some(u) = same_scheme {
                if u != self.url && !alternatives.contains(&u) {
                    alternatives.push(u);
                }
            }
            if alternatives.len() >= MAX_ALTERNATIVES {
                break;
            }
        }
        self.peers = alternatives.into();
        self
    }

    /// The peers' bases [`HttpBase::with_peers`] kept.
    pub fn peers(&self) -> &[String] {
        &self.peers
    }

    /// `command(url)` for a fetch of `url`, followed, when `url` is one of this server's
    /// (under this base), by the same command for each peer's equivalent (the same path and
    /// query under its base), joined with `||`: iPXE runs the next only when one fails. A URL
    /// elsewhere (an operator's absolute URL to another host) has no alternative.
    pub fn or_peers(&self, url: &str, command: impl Fn(&str) -> String) -> String {
        let mut out = command(url);
        let own_path = url
            .strip_prefix(self.url.as_str())
            .filter(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'));
        if let Some(rest) = own_path {
            for p in self.peers.iter() {
                out.push_str(" || ");
                out.push_str(&command(&format!("{p}{rest}")));
            }
        }
        out
    }

    /// The host[:port] part.
    pub fn host(&self) -> &str {
        self.url
            .split_once("://")
            .map(|(_, h)| h)
            .unwrap_or(&self.url)
    }

    /// The host without its port (an IPv6 literal keeps its brackets).
    pub fn host_name(&self) -> &str {
        let host = self.host();
        if host.starts_with('[') {
            return host.find(']').map_or(host, |i| &host[..=i]);
        }
        host.split(':').next().unwrap_or(host)
    }

    /// `https://host[:port]` for `{{ https }}`: this base itself when the client came over
    /// TLS, else the same host name on the TLS listener's port. `None` without a TLS listener:
    /// a template that asks for it is refused, never given an http:// URL instead.
    pub fn https(&self) -> Option<String> {
        if self.url.starts_with("https://") {
            return Some(self.url.clone());
        }
        let name = self.host_name();
        self.https_port.map(|port| match port {
            443 => format!("https://{name}"),
            port => format!("https://{name}:{port}"),
        })
    }
}

impl std::fmt::Display for HttpBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

/// Checks that a template compiles (used by `validate`).
pub fn check_template(src: &str) -> Result<(), String> {
    let env = new_env();
    env.template_from_str(src)
        .map(|_| ())
        .map_err(|e| format!("template error: {e:#}"))
}

/// The environment every chainboot template renders in: undefined variables are errors (a
/// typo must not silently render as nothing), no auto-escaping (outputs are not HTML), and the
/// final newline kept (a `while read` loop over a file drops a last line without one).
pub fn new_env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_keep_trailing_newline(true);
    env
}

/// A file in `[boot] templates` served untouched, byte for byte: `preseed.cfg.raw` answers
/// `/config/MAC/preseed.cfg`.
pub const RAW_SUFFIX: &str = ".raw";
/// A file in `[boot] templates` where only marked parts are template: `{{@ machine.mac @}}`,
/// `{%@ if ... @%}`, `{#@ comment @#}`; `{{`, `{%`, `{#` and `${#x}` are plain text there.
pub const MARKED_SUFFIX: &str = ".marked";

/// How a file of the templates folder is served, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// The whole file is a minijinja template.
    Template,
    /// Only `{{@ @}}`, `{%@ @%}`, `{#@ @#}` are template syntax.
    Marked,
    /// Served as it is.
    Raw,
}

impl FileKind {
    /// The kind of a file by its name, and the name it answers to.
    pub fn of(file_name: &str) -> (FileKind, &str) {
        if let Some(n) = file_name.strip_suffix(RAW_SUFFIX) {
            (FileKind::Raw, n)
        } else if let Some(n) = file_name.strip_suffix(MARKED_SUFFIX) {
            (FileKind::Marked, n)
        } else {
            (FileKind::Template, file_name)
        }
    }

    /// The file names that answer to `name`, in the order they are looked for.
    pub fn candidates(name: &str) -> [(FileKind, String); 3] {
        [
            (FileKind::Template, name.to_string()),
            (FileKind::Marked, format!("{name}{MARKED_SUFFIX}")),
            (FileKind::Raw, format!("{name}{RAW_SUFFIX}")),
        ]
    }

    /// The environment to compile a file of this kind in (`None` for raw files).
    pub fn env(self) -> Option<Environment<'static>> {
        match self {
            FileKind::Template => Some(new_env()),
            FileKind::Marked => Some(marked_env()),
            FileKind::Raw => None,
        }
    }
}

/// [`new_env`] with the marked-only delimiters.
pub fn marked_env() -> Environment<'static> {
    let mut env = new_env();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .block_delimiters("{%@", "@%}")
        .variable_delimiters("{{@", "@}}")
        .comment_delimiters("{#@", "@#}")
        .build()
        .expect("constant delimiters are valid (covered by a test)");
    env.set_syntax(syntax);
    env
}

/// A template file's error as `FILE:LINE: what` (what `check` prints and `/config` logs). An
/// unterminated comment, block or expression is reported by minijinja at the end of the file;
/// the line that opened it is the one to fix (`${#x}` in a shell line opens a comment).
pub fn file_error(
    path: &std::path::Path,
    kind: FileKind,
    src: &str,
    e: &minijinja::Error,
) -> String {
    let opened = e
        .detail()
        .filter(|d| d.contains("unexpected end of"))
        .and_then(|_| {
            let delims: &[(&str, &str)] = match kind {
                FileKind::Marked => &[("{#@", "@#}"), ("{%@", "@%}"), ("{{@", "@}}")],
                _ => &[("{#", "#}"), ("{%", "%}"), ("{{", "}}")],
            };
            delims
                .iter()
                .filter_map(|(open, close)| unclosed(src, open, close))
                .min()
        });
    let line = opened
        .or(e.line())
        .map(|l| format!(":{l}"))
        .unwrap_or_default();
    let what = e
        .detail()
        .map(|d| format!("{}: {d}", e.kind()))
        .unwrap_or_else(|| e.kind().to_string());
    let hint = if kind == FileKind::Template {
        format!(
            " (to serve it untouched name it `{0}{RAW_SUFFIX}`; to template only marked parts \
             `{0}{MARKED_SUFFIX}`; or wrap literal text in {{% raw %}}...{{% endraw %}})",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        )
    } else {
        String::new()
    };
    format!("{}{line}: template error: {what}{hint}", path.display())
}

/// The line (1-based) of the first `open` that no `close` follows.
fn unclosed(src: &str, open: &str, close: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = src[from..].find(open).map(|i| i + from) {
        let after = i + open.len();
        match src[after..].find(close) {
            Some(j) => from = after + j + close.len(),
            None => return Some(src[..i].matches('\n').count() + 1),
        }
    }
    None
}

/// Compiles a file of the templates folder: `Err` is [`file_error`]'s text, or, when the server
/// has no TLS listener (`https` false), [`NO_TLS_FOR_HTTPS`] for a file that refers to it.
pub fn check_file(
    path: &std::path::Path,
    kind: FileKind,
    src: &str,
    https: bool,
) -> Result<(), String> {
    let Some(env) = kind.env() else {
        return Ok(());
    };
    let t = env
        .template_from_str(src)
        .map_err(|e| file_error(path, kind, src, &e))?;
    if !https && asks_for_https(&t) {
        return Err(format!("{}: {NO_TLS_FOR_HTTPS}", path.display()));
    }
    Ok(())
}

/// The template variable that holds the TLS base URL.
pub const HTTPS_VAR: &str = "https";

/// Why a template that refers to `{{ https }}` is not rendered on a server without a TLS
/// listener: the installer asked for TLS, and an http:// URL in its place would send its
/// config (credentials included) in the clear without anyone noticing.
pub const NO_TLS_FOR_HTTPS: &str = "the template asks for {{ https }}, but this server has no \
     TLS listener ([http] tls_listen and tls): refused rather than given an http:// URL";

/// Whether a compiled template refers to `https` (anywhere, whatever the control flow).
pub fn asks_for_https(t: &minijinja::Template<'_, '_>) -> bool {
    t.undeclared_variables(false).contains(HTTPS_VAR)
}

/// Whether the source of a file of `kind` refers to `https`; false for raw files and for
/// sources that do not compile (those fail on their own).
pub fn file_asks_for_https(kind: FileKind, src: &str) -> bool {
    let Some(env) = kind.env() else {
        return false;
    };
    let asks = env.template_from_str(src).is_ok_and(|t| asks_for_https(&t));
    asks
}

/// The `machine` template variable.
#[derive(Debug, Clone, Serialize)]
pub struct MachineVars {
    pub mac: String,
    pub mac_hyphen: String,
    pub uuid: String,
    pub arch: String,
    pub ip: String,
    pub hostname: String,
    pub serial: String,
    pub manufacturer: String,
    pub product: String,
    pub labels: BTreeMap<String, String>,
    pub secret: String,
    /// Where an installer POSTs `{"event": "installed"}`, secret included.
    pub events_url: String,
    /// This boot's capability (empty outside a verified boot): append `?cap={{ machine.cap }}`
    /// to `/config/MAC/NAME` URLs an installer fetches from an address that cannot otherwise
    /// be tied to the machine.
    pub cap: String,
}

/// Everything a template sees.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateVars {
    pub machine: MachineVars,
    pub profile: ProfileVars,
    pub http: String,
    /// Absent without a TLS listener: a template using it then fails instead of rendering.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub https: Option<String>,
    pub server: ServerVars,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProfileVars {
    pub name: String,
    pub description: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerVars {
    pub host: String,
    pub http: String,
    pub api: String,
}

impl TemplateVars {
    pub fn new(
        facts: &ClientFacts,
        labels: &BTreeMap<String, String>,
        secret: &str,
        profile: ProfileVars,
        base: &HttpBase,
    ) -> TemplateVars {
        let s = |o: &Option<String>| o.clone().unwrap_or_default();
        let mac = facts.mac.to_string();
        TemplateVars {
            machine: MachineVars {
                events_url: format!(
                    "{base}/api/v1/machines/{mac}/events?secret={}",
                    encode(secret)
                ),
                mac_hyphen: facts.mac.hyphenated(),
                mac,
                uuid: s(&facts.uuid),
                arch: facts.arch.map(|a| a.name().to_string()).unwrap_or_default(),
                ip: facts.ip.map(|i| i.to_string()).unwrap_or_default(),
                hostname: s(&facts.hostname),
                serial: s(&facts.serial),
                manufacturer: s(&facts.manufacturer),
                product: s(&facts.product),
                labels: labels.clone(),
                secret: secret.to_string(),
                cap: String::new(),
            },
            profile,
            http: base.to_string(),
            https: base.https(),
            server: ServerVars {
                host: base.host().to_string(),
                http: base.to_string(),
                api: format!("{base}/api/v1"),
            },
        }
    }
}

/// Renders a template source once with `vars`.
pub fn render_str(env: &Environment<'_>, src: &str, vars: &TemplateVars) -> Result<String, String> {
    env.render_str(src, vars)
        .map_err(|e| format!("template error: {e:#}"))
}

/// A kernel command line as it goes on iPXE's `kernel` line or PXELINUX's `APPEND`: one line,
/// whitespace runs collapsed (a newline would start a new iPXE command), no control bytes.
pub fn one_line(s: &str) -> String {
    s.split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Text for iPXE's `echo`: iPXE expands `${...}` and splits on `||`/`&&` even there, so only
/// plain characters survive; everything else becomes `?`. Capped in length.
pub fn echo_text(s: &str) -> String {
    s.chars()
        .take(300)
        .map(|c| {
            if c.is_ascii_alphanumeric() || " .,:;_-+=/()@'<>!?*[]~^".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// The URL iPXE should fetch for an asset of `mac`'s profile. Assets chainboot must serve or
/// relay itself, or whose fetch must be recorded (boot-once kernels), go through the policy
/// route `slot_path` (`/boot/MAC/kernel`, `/boot/MAC/initrd/N`).
pub fn asset_url(asset: &AssetRef, base: &HttpBase, slot_path: &str, via_policy: bool) -> String {
    if via_policy {
        return format!("{base}{slot_path}");
    }
    match asset {
        AssetRef::Files(p) => {
            let parts: Vec<String> = p.parts().iter().map(|s| encode(s)).collect();
            format!("{base}/files/{}", parts.join("/"))
        }
        AssetRef::Iso { name, path } => {
            let parts: Vec<String> = path.parts().iter().map(|s| encode(s)).collect();
            format!("{base}/iso/{}/{}", encode(name), parts.join("/"))
        }
        AssetRef::Url(u) => u.clone(),
        AssetRef::Local(_) | AssetRef::Proxy(_) => format!("{base}{slot_path}"),
    }
}

/// The iPXE script lines that retry after a failure: print why, wait, start over from
/// `/boot.ipxe` (which re-reads the machine's facts).
fn retry_tail(out: &mut String, base: &HttpBase, retry_secs: u64) {
    let chain = base.or_peers(&format!("{base}/boot.ipxe"), |u| {
        format!("chain --replace --autofree {u}")
    });
    out.push_str(&format!(
        "echo chainboot: retrying in {retry_secs} seconds\nsleep {retry_secs}\n{chain}\n"
    ));
}

/// The script for a machine that cannot boot right now: still a valid iPXE script, which
/// prints the reason on the console and retries after a delay.
pub fn error_script(mac: Option<&str>, reason: &str, base: &HttpBase, retry_secs: u64) -> String {
    let mut out = String::from("#!ipxe\n");
    out.push_str(&format!(
        "echo chainboot: cannot boot {}: {}\n",
        echo_text(mac.unwrap_or("this machine")),
        echo_text(reason)
    ));
    retry_tail(&mut out, base, retry_secs);
    out
}

/// `/boot.ipxe`: the stub that sends iPXE's facts to `/ipxe`. String settings are expanded as
/// `:uristring` so iPXE percent-encodes them (an SMBIOS product name may hold spaces or `&`).
pub fn stub_script(base: &HttpBase) -> String {
    let url = format!(
        "{base}/ipxe?mac=${{mac:hexhyp}}&uuid=${{uuid}}&buildarch=${{buildarch:uristring}}&platform=${{platform:uristring}}&serial=${{serial:uristring}}&manufacturer=${{manufacturer:uristring}}&product=${{product:uristring}}&hostname=${{hostname:uristring}}&ip=${{ip}}"
    );
    let chain = base.or_peers(&url, |u| format!("chain --replace --autofree {u}"));
    format!("#!ipxe\n{chain}\n")
}

/// A kernel boot.
pub struct KernelBoot<'a> {
    pub mac: &'a str,
    pub profile: &'a str,
    pub header: &'a str,
    pub message: Option<&'a str>,
    pub kernel_url: &'a str,
    pub initrd_urls: &'a [String],
    /// The name iPXE gives each initrd ([`initrd_names`]), as many as `initrd_urls`.
    pub initrd_names: &'a [String],
    pub cmdline: &'a str,
}

/// The names initrds get in iPXE (and so in the kernel's `initrd=` arguments): each one's file
/// name (`initrd.gz`), so that a command line copied from an existing iPXE script, with its
/// `initrd=initrd.gz`, still names a loaded file. A name iPXE or the kernel command line cannot
/// carry, or one already taken, becomes `initrdN`.
pub fn initrd_names(file_names: &[Option<String>]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(file_names.len());
    for (i, f) in file_names.iter().enumerate() {
        let usable = f.as_deref().filter(|n| {
            !n.is_empty()
                && n.len() <= 64
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
        });
        let name = match usable {
            Some(n) if !out.iter().any(|o| o == n) => n.to_string(),
            _ => format!("initrd{i}"),
        };
        out.push(name);
    }
    out
}

/// The `initrd=NAME` arguments of a kernel command line.
pub fn cmdline_initrds(cmdline: &str) -> impl Iterator<Item = &str> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("initrd="))
}

/// iPXE script for a kernel + initrds + cmdline. Every fetch is `|| goto failed` so that a
/// missing asset ends in a readable message and a retry, not a dead prompt. Each initrd is
/// named ([`initrd_names`]) and passed as an `initrd=` argument, unless the command line names
/// it already: the EFI stub loader of Linux reads them from there (pixiecore does the same).
pub fn kernel_script(k: &KernelBoot<'_>, base: &HttpBase, retry_secs: u64) -> String {
    let mut out = String::from("#!ipxe\n");
    out.push_str(&format!("echo chainboot: {}\n", echo_text(k.header)));
    if let Some(m) = k.message {
        out.push_str(&format!("echo {}\n", echo_text(m)));
    }
    let cmdline = one_line(k.cmdline);
    let given: Vec<&str> = cmdline_initrds(&cmdline).collect();
    let name = |i: usize| {
        k.initrd_names
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("initrd{i}"))
    };
    let mut args: Vec<String> = (0..k.initrd_urls.len())
        .map(name)
        .filter(|n| !given.contains(&n.as_str()))
        .map(|n| format!("initrd={n}"))
        .collect();
    if !cmdline.is_empty() {
        args.push(cmdline.clone());
    }
    let args = if args.is_empty() {
        String::new()
    } else {
        format!(" {}", args.join(" "))
    };
    let kernel = base.or_peers(k.kernel_url, |u| format!("kernel --name kernel {u}{args}"));
    out.push_str(&format!("{kernel} || goto failed\n"));
    for (i, u) in k.initrd_urls.iter().enumerate() {
        let initrd = base.or_peers(u, |u| format!("initrd --name {} {u}", name(i)));
        out.push_str(&format!("{initrd} || goto failed\n"));
    }
    out.push_str("boot || goto failed\n:failed\n");
    out.push_str(&format!(
        "echo chainboot: booting profile {} failed for {} (see the server log)\n",
        echo_text(k.profile),
        echo_text(k.mac)
    ));
    retry_tail(&mut out, base, retry_secs);
    out
}

/// iPXE script for an action profile other than the menu.
pub fn action_script(action: ProfileAction, header: &str) -> String {
    match action {
        // `exit` hands control back to the firmware, which tries the next boot device.
        ProfileAction::LocalDisk => format!(
            "#!ipxe\necho chainboot: {}\necho chainboot: booting from local disk\nexit\n",
            echo_text(header)
        ),
        ProfileAction::Shell => format!("#!ipxe\necho chainboot: {}\nshell\n", echo_text(header)),
        ProfileAction::Menu => unreachable_menu(),
    }
}

fn unreachable_menu() -> String {
    // Menus need the profile list; callers use `menu_script`. Kept total instead of panicking.
    "#!ipxe\necho chainboot: internal error: menu rendered without profiles\nexit\n".into()
}

/// iPXE menu of `profiles` (name, description). Choosing one chains to `/ipxe` with
/// `profile=NAME`. Labels are indices, not names, so no name can collide with iPXE syntax.
pub fn menu_script(mac: &str, profiles: &[(String, String)], base: &HttpBase) -> String {
    let mut out = String::from("#!ipxe\n");
    out.push_str(&format!(
        "menu chainboot: choose what {} boots\n",
        echo_text(mac)
    ));
    for (i, (name, desc)) in profiles.iter().enumerate() {
        let text = if desc.is_empty() {
            name.clone()
        } else {
            format!("{name} - {desc}")
        };
        out.push_str(&format!("item p{i} {}\n", echo_text(&text)));
    }
    out.push_str("item --gap\nitem shell iPXE shell\nitem exit Boot from local disk\n");
    out.push_str("choose target || goto exit\ngoto ${target}\n");
    for (i, (name, _)) in profiles.iter().enumerate() {
        let url = format!("{base}/ipxe?mac={}&profile={}", encode(mac), encode(name));
        let chain = base.or_peers(&url, |u| format!("chain --replace --autofree {u}"));
        out.push_str(&format!(":p{i}\n{chain}\n"));
    }
    out.push_str(":shell\nshell\n:exit\nexit\n");
    out
}

/// iPXE script for the PXELINUX flow. iPXE hands its DHCP packet to the loader, so settings
/// made here reach PXELINUX as DHCP options (RFC 5071): 210, the path prefix, is the loader's
/// own directory, because PXELINUX loads `ldlinux.c32` and its other modules relative to it;
/// 209, the config file, is an absolute URL (syslinux's `__pxe_searchdir` only prefixes
/// relative names), so the per-machine config comes from chainboot's `/pxelinux.cfg/` wherever
/// the loader lives. lpxelinux.0 understands http:// in both.
pub fn pxelinux_script(
    mac_pxelinux_name: &str,
    header: &str,
    loader_url: &str,
    base: &HttpBase,
    retry_secs: u64,
) -> String {
    let loader_dir = match loader_url.rfind('/') {
        Some(i) => &loader_url[..=i],
        None => loader_url,
    };
    let mut out = String::from("#!ipxe\n");
    out.push_str(&format!("echo chainboot: {}\n", echo_text(header)));
    out.push_str(&format!("set 210:string {loader_dir}\n"));
    out.push_str(&format!(
        "set 209:string {base}/pxelinux.cfg/{mac_pxelinux_name}\n"
    ));
    let chain = base.or_peers(loader_url, |u| format!("chain {u}"));
    out.push_str(&format!("{chain} || goto failed\n:failed\n"));
    out.push_str("echo chainboot: loading PXELINUX failed\n");
    retry_tail(&mut out, base, retry_secs);
    out
}

/// A generated `pxelinux.cfg`: one label, booted at once.
pub fn pxelinux_cfg(kernel_url: &str, initrd_urls: &[String], cmdline: &str) -> String {
    let mut out = String::from("DEFAULT chainboot\nPROMPT 0\nTIMEOUT 0\nLABEL chainboot\n");
    out.push_str(&format!("  KERNEL {kernel_url}\n"));
    if !initrd_urls.is_empty() {
        out.push_str(&format!("  INITRD {}\n", initrd_urls.join(",")));
    }
    let cmdline = one_line(cmdline);
    if !cmdline.is_empty() {
        out.push_str(&format!("  APPEND {cmdline}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_template_marked_or_raw_by_suffix_and_errors_name_file_and_line() {
        assert_eq!(
            FileKind::of("preseed.cfg"),
            (FileKind::Template, "preseed.cfg")
        );
        assert_eq!(
            FileKind::of("preseed.cfg.raw"),
            (FileKind::Raw, "preseed.cfg")
        );
        assert_eq!(
            FileKind::of("user-data.marked"),
            (FileKind::Marked, "user-data")
        );
        let vars = serde_json::json!({"machine": {"mac": "52:54:00:00:00:01"}});
        let marked = marked_env()
            .render_str(
                "echo ${#x} {{ y }} {% z %} {# c #} {{@ machine.mac @}}{#@ gone @#}\n",
                &vars,
            )
            .unwrap();
        assert_eq!(
            marked,
            "echo ${#x} {{ y }} {% z %} {# c #} 52:54:00:00:00:01\n"
        );
        assert_eq!(new_env().render_str("a\nb\n", &vars).unwrap(), "a\nb\n");
        let path = std::path::Path::new("/etc/chainboot/templates/preseed.cfg");
        let err = check_file(
            path,
            FileKind::Template,
            "line one\nsh -c 'echo ${#x}'\n",
            false,
        )
        .unwrap_err();
        assert!(
            err.starts_with("/etc/chainboot/templates/preseed.cfg:2: template error"),
            "{err}"
        );
        assert!(err.contains("preseed.cfg.raw"), "{err}");
        assert_eq!(check_file(path, FileKind::Raw, "{{ ${#x}", false), Ok(()));
        let err = check_file(path, FileKind::Marked, "ok\n{{@ x + @}}\n", false).unwrap_err();
        assert!(err.contains("preseed.cfg:2: template error"), "{err}");
    }

    #[test]
    fn base_urls_are_checked() {
        assert!(HttpBase::new("http://198.18.0.1:8080/").is_ok());
        assert_eq!(
            HttpBase::new("http://198.18.0.1:8080/").unwrap().host(),
            "198.18.0.1:8080"
        );
        assert!(HttpBase::new("http://x/ y").is_err());
        assert!(HttpBase::new("ftp://x").is_err());
        assert!(HttpBase::from_host_header("a\nb").is_none());
        assert!(HttpBase::from_host_header("[::1]:80").is_some());
    }

    #[test]
    fn https_base_is_the_same_host_name_on_the_tls_port_and_absent_without_one() {
        let b = HttpBase::new("http://198.18.0.1:8080").unwrap();
        assert_eq!(b.https(), None);
        let on = |b: &HttpBase, port| b.clone().with_https_port(Some(port)).https();
        assert_eq!(on(&b, 8443).as_deref(), Some("https://198.18.0.1:8443"));
        assert_eq!(on(&b, 443).as_deref(), Some("https://198.18.0.1"));
        assert_eq!(on(&b, 0), None);
        let v6 = HttpBase::from_host_header("[2001:db8::1]:80").unwrap();
        assert_eq!(on(&v6, 8443).as_deref(), Some("https://[2001:db8::1]:8443"));
        let named = HttpBase::from_host_header("boot.example").unwrap();
        assert_eq!(on(&named, 443).as_deref(), Some("https://boot.example"));
        // A client that came over TLS keeps the address it used.
        let tls = HttpBase::new("https://198.18.0.1:9443").unwrap();
        assert_eq!(tls.https().as_deref(), Some("https://198.18.0.1:9443"));
        assert_eq!(on(&tls, 8443).as_deref(), Some("https://198.18.0.1:9443"));
    }

    #[test]
    fn check_refuses_a_file_asking_for_https_on_a_server_without_tls() {
        let path = std::path::Path::new("/t/preseed.cfg");
        let src = "d-i preseed/late_command string wget {{ https }}/config/{{ machine.mac }}/x\n";
        assert_eq!(check_file(path, FileKind::Template, src, true), Ok(()));
        let err = check_file(path, FileKind::Template, src, false).unwrap_err();
        assert!(
            err.starts_with("/t/preseed.cfg: ") && err.contains("no TLS listener"),
            "{err}"
        );
        assert_eq!(
            check_file(path, FileKind::Template, "{{ http }}", false),
            Ok(())
        );
        // In a marked file only the marked parts are template.
        let marked = "{{ https }} is text\n";
        assert_eq!(check_file(path, FileKind::Marked, marked, false), Ok(()));
        assert!(check_file(path, FileKind::Marked, "{{@ https @}}\n", false).is_err());
        // Asked for under a condition is asked for; a variable of the template's own is not.
        assert!(file_asks_for_https(
            FileKind::Template,
            "{% if machine.ip %}{{ https }}{% endif %}"
        ));
        assert!(!file_asks_for_https(
            FileKind::Template,
            "{% set https = http %}{{ https }}"
        ));
        assert!(!file_asks_for_https(FileKind::Raw, "{{ https }}"));
    }

    #[test]
    fn echo_text_has_no_expansions_or_operators() {
        let t = echo_text("a ${x} && b || c\nshell #");
        assert!(
            !t.contains('$')
                && !t.contains('&')
                && !t.contains('|')
                && !t.contains('\n')
                && !t.contains('#'),
            "{t}"
        );
    }

    fn two_peers(base: &str) -> HttpBase {
        let peer = |u: &str, tls| HttpBase::new(u).unwrap().with_https_port(tls);
        HttpBase::new(base)
            .unwrap()
            .with_https_port(Some(8443))
            .with_peers(&[
                peer("http://198.18.0.2:8080", Some(8443)),
                peer("http://198.18.0.3", None),
            ])
    }

    fn kernel_boot<'a>(kernel_url: &'a str, initrd_urls: &'a [String]) -> KernelBoot<'a> {
        KernelBoot {
            mac: "52:54:00:00:00:01",
            profile: "install",
            header: "52:54:00:00:00:01 boots profile install (group lab)",
            message: None,
            kernel_url,
            initrd_urls,
            initrd_names: &[],
            cmdline: "auto=true",
        }
    }

    #[test]
    fn in_a_fleet_every_fetch_from_this_server_is_followed_by_the_same_fetch_from_each_peer() {
        let base = two_peers("http://198.18.0.1:8080");
        let initrds = [
            "http://198.18.0.1:8080/iso/debian/initrd.gz".to_string(),
            "http://mirror.example/extra.gz".to_string(),
        ];
        let k = kernel_boot(
            "http://198.18.0.1:8080/boot/52-54-00-00-00-01/kernel?cap=abc",
            &initrds,
        );
        assert_eq!(
            kernel_script(&k, &base, 5),
            "#!ipxe\n\
             echo chainboot: 52:54:00:00:00:01 boots profile install (group lab)\n\
             kernel --name kernel http://198.18.0.1:8080/boot/52-54-00-00-00-01/kernel?cap=abc initrd=initrd0 initrd=initrd1 auto=true \
             || kernel --name kernel http://198.18.0.2:8080/boot/52-54-00-00-00-01/kernel?cap=abc initrd=initrd0 initrd=initrd1 auto=true \
             || kernel --name kernel http://198.18.0.3/boot/52-54-00-00-00-01/kernel?cap=abc initrd=initrd0 initrd=initrd1 auto=true \
             || goto failed\n\
             initrd --name initrd0 http://198.18.0.1:8080/iso/debian/initrd.gz \
             || initrd --name initrd0 http://198.18.0.2:8080/iso/debian/initrd.gz \
             || initrd --name initrd0 http://198.18.0.3/iso/debian/initrd.gz || goto failed\n\
             initrd --name initrd1 http://mirror.example/extra.gz || goto failed\n\
             boot || goto failed\n\
             :failed\n\
             echo chainboot: booting profile install failed for 52:54:00:00:00:01 (see the server log)\n\
             echo chainboot: retrying in 5 seconds\n\
             sleep 5\n\
             chain --replace --autofree http://198.18.0.1:8080/boot.ipxe \
             || chain --replace --autofree http://198.18.0.2:8080/boot.ipxe \
             || chain --replace --autofree http://198.18.0.3/boot.ipxe\n"
        );
        let stub = stub_script(&base);
        let chains: Vec<&str> = stub.lines().nth(1).unwrap().split(" || ").collect();
        assert_eq!(chains.len(), 3, "{stub}");
        assert!(chains[0].starts_with(
            "chain --replace --autofree http://198.18.0.1:8080/ipxe?mac=${mac:hexhyp}&"
        ));
        assert_eq!(
            chains[1],
            chains[0].replace("198.18.0.1:8080", "198.18.0.2:8080")
        );
        assert_eq!(
            chains[2],
            chains[0].replace("198.18.0.1:8080", "198.18.0.3")
        );
        let menu = menu_script(
            "52:54:00:00:00:01",
            &[("install".into(), String::new())],
            &base,
        );
        assert!(menu.contains(
            ":p0\nchain --replace --autofree http://198.18.0.1:8080/ipxe?mac=52%3A54%3A00%3A00%3A00%3A01&profile=install \
             || chain --replace --autofree http://198.18.0.2:8080/ipxe?mac=52%3A54%3A00%3A00%3A00%3A01&profile=install \
             || chain --replace --autofree http://198.18.0.3/ipxe?mac=52%3A54%3A00%3A00%3A00%3A01&profile=install\n"
        ), "{menu}");
        let own = pxelinux_script(
            "01-52-54-00-00-00-01",
            "h",
            "http://198.18.0.1:8080/files/lpxelinux.0",
            &base,
            5,
        );
        assert!(own.contains(
            "chain http://198.18.0.1:8080/files/lpxelinux.0 || chain http://198.18.0.2:8080/files/lpxelinux.0 \
             || chain http://198.18.0.3/files/lpxelinux.0 || goto failed\n"
        ), "{own}");
        let elsewhere = pxelinux_script(
            "01-52-54-00-00-00-01",
            "h",
            "http://198.18.0.10/lpxelinux.0",
            &base,
            5,
        );
        assert!(
            elsewhere.contains("chain http://198.18.0.10/lpxelinux.0 || goto failed\n"),
            "{elsewhere}"
        );
        // Not a URL of this server: a host whose name starts like this one's.
        let k = kernel_boot("http://198.18.0.1:80800/k", &[]);
        assert!(kernel_script(&k, &base, 5)
            .contains("kernel --name kernel http://198.18.0.1:80800/k auto=true || goto failed\n"));
    }

    #[test]
    fn alone_scripts_name_no_alternative() {
        let alone = HttpBase::new("http://198.18.0.1:8080").unwrap();
        let no_peers = alone.clone().with_peers(&[]);
        assert_eq!(alone, no_peers);
        let initrds = ["http://198.18.0.1:8080/files/initrd.gz".to_string()];
        let k = kernel_boot("http://198.18.0.1:8080/files/vmlinuz", &initrds);
        let script = kernel_script(&k, &alone, 5);
        assert!(
            !script.contains("||  ") && script.matches(" || ").count() == 3,
            "{script}"
        );
        assert!(script.contains("kernel --name kernel http://198.18.0.1:8080/files/vmlinuz initrd=initrd0 auto=true || goto failed\n"));
        assert!(
            script.ends_with(
                "sleep 5\nchain --replace --autofree http://198.18.0.1:8080/boot.ipxe\n"
            ),
            "{script}"
        );
        assert_eq!(
            error_script(None, "x", &alone, 5),
            "#!ipxe\necho chainboot: cannot boot this machine: x\necho chainboot: retrying in 5 seconds\nsleep 5\nchain --replace --autofree http://198.18.0.1:8080/boot.ipxe\n"
        );
        // A peer that is this very server is none.
        let me = HttpBase::new("http://198.18.0.1:8080").unwrap();
        assert!(alone.clone().with_peers(&[me]).peers().is_empty());
    }

    #[test]
    fn an_https_url_gets_the_peers_tls_listeners_and_a_peer_without_one_is_no_alternative() {
        let base = two_peers("https://198.18.0.1:8443");
        assert_eq!(base.peers(), ["https://198.18.0.2:8443"]);
        let k = kernel_boot("https://198.18.0.1:8443/files/vmlinuz", &[]);
        assert!(kernel_script(&k, &base, 5).contains(
            "kernel --name kernel https://198.18.0.1:8443/files/vmlinuz auto=true \
             || kernel --name kernel https://198.18.0.2:8443/files/vmlinuz auto=true || goto failed\n"
        ));
        // An http:// URL in a script fetched over TLS (an operator's) is not this base's.
        let k = kernel_boot("http://198.18.0.1:8080/files/vmlinuz", &[]);
        assert!(kernel_script(&k, &base, 5).contains(
            "kernel --name kernel http://198.18.0.1:8080/files/vmlinuz auto=true || goto failed\n"
        ));
        // Over plain HTTP the peers' http:// bases, whatever TLS they have.
        let plain = two_peers("http://198.18.0.1:8080");
        assert_eq!(
            plain.peers(),
            ["http://198.18.0.2:8080", "http://198.18.0.3"]
        );
    }

    #[test]
    fn at_most_eight_peers_are_alternatives() {
        let peers: Vec<HttpBase> = (2..30)
            .map(|i| HttpBase::new(&format!("http://198.18.0.{i}")).unwrap())
            .collect();
        let base = HttpBase::new("http://198.18.0.1")
            .unwrap()
            .with_peers(&peers);
        assert_eq!(base.peers().len(), MAX_ALTERNATIVES);
        assert_eq!(
            base.or_peers("http://198.18.0.1/x", |u| u.to_string())
                .matches(" || ")
                .count(),
            8
        );
    }

    #[test]
    fn stub_sends_every_fact_uri_encoded() {
        let s = stub_script(&HttpBase::new("http://198.18.0.1").unwrap());
        assert!(s.starts_with("#!ipxe\n"));
        for want in [
            "mac=${mac:hexhyp}",
            "serial=${serial:uristring}",
            "product=${product:uristring}",
            "hostname=${hostname:uristring}",
            "platform=${platform:uristring}",
            "buildarch=${buildarch:uristring}",
        ] {
            assert!(s.contains(want), "{want} missing in {s}");
        }
    }
}
