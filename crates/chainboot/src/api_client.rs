//! `chainboot machines ...`: talks to a running server's API (docs/api.md). The address and
//! token come from flags, or from the same config the server uses (`[api] listen`, `[api]
//! token_file` / `state_dir/api.token`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use reqwest::Method;
use serde_json::Value;

use crate::config;

#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// Base URL of the server's API (default: from the config's `[api] listen`, loopback when
    /// it listens on every address).
    #[arg(long, global = true)]
    pub server: Option<String>,
    /// API token (default: the token file of the config).
    #[arg(long, global = true, env = "CHAINBOOT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Config file to take the server address and token file from.
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Trust the API's certificate when it chains to a CA in this PEM file (default with
    /// `[api] tls = "lab"`: the lab CA in state_dir).
    #[arg(long, global = true, value_name = "FILE", conflicts_with = "pin")]
    pub ca: Option<PathBuf>,
    /// Trust exactly the API certificate with this SHA-256 (hex; default with `[api] tls =
    /// { cert, key }`: the configured certificate's).
    #[arg(long, global = true, value_name = "SHA256")]
    pub pin: Option<String>,
    /// Client certificate (PEM chain) for an API with `[api] client_ca`.
    #[arg(long, global = true, value_name = "FILE", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, global = true, value_name = "FILE", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum MachinesCommand {
    /// Every machine chainboot has seen.
    List,
    /// One machine: facts, state, labels.
    Show { mac: String },
    /// Pin a machine to a profile (`--unpin` to let its groups decide again).
    SetProfile {
        mac: String,
        profile: Option<String>,
        #[arg(long, conflicts_with = "profile")]
        unpin: bool,
    },
    /// Boot-once: let a machine that finished its install boot its group's profile again.
    Rearm { mac: String },
    /// Replace a machine's labels (`key=value` ...).
    Label { mac: String, labels: Vec<String> },
    /// Forget a machine (its facts, pin, labels and boot-once state).
    Forget { mac: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum LeasesCommand {
    /// Every address the DHCP server holds (bound, offered, released, declined).
    List,
}

#[derive(Debug, clap::Subcommand)]
pub enum EventsCommand {
    /// Recent events, newest first.
    List {
        /// Only this machine's.
        #[arg(long)]
        mac: Option<String>,
        /// Only this kind (dhcp, tftp, http, api, chainload-loop).
        #[arg(long)]
        kind: Option<String>,
        /// Only since then: Unix milliseconds, or e.g. 10m, 2h.
        #[arg(long)]
        since: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Follow events live (Server-Sent Events) until interrupted.
    Follow {
        #[arg(long)]
        mac: Option<String>,
        #[arg(long)]
        kind: Option<String>,
    },
    /// One machine's boots as timelines.
    Timeline { mac: String },
}

pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
    /// How the API's certificate is verified when it speaks HTTPS (None: plain HTTP, or the
    /// system's web roots for an explicit https:// server).
    tls: Option<chainboot_http::tls_client::ClientConfig>,
}

impl Client {
    pub fn from_args(args: &ApiArgs) -> anyhow::Result<Client> {
        let (cfg, _) = config::load(args.config.as_deref()).map_err(anyhow::Error::msg)?;
        let base = match &args.server {
            Some(s) => s.trim_end_matches('/').to_string(),
            None => {
                // The management listener; the boot listener only when the API shares it.
                let addr = match cfg.api.listen.first() {
                    Some(a) => Some(*a),
                    None => cfg
                        .http
                        .listen_addrs()
                        .ok()
                        .and_then(|a| a.first().copied())
                        .filter(|_| cfg.api.on_boot_listener),
                }
                .context("no [api] listen address in the config; pass --server")?;
                let host = match addr.ip() {
                    ip if ip.is_unspecified() && ip.is_ipv6() => "[::1]".to_string(),
                    ip if ip.is_unspecified() => "127.0.0.1".to_string(),
                    std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                    ip => ip.to_string(),
                };
                let scheme = if cfg.api.tls.is_some() && !cfg.api.listen.is_empty() {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://{host}:{}", addr.port())
            }
        };
        let token = match &args.token {
            Some(t) => Some(t.clone()),
            None => {
                let file = cfg.api.token_path(&cfg.server.state_dir);
                std::fs::read_to_string(&file)
                    .ok()
                    .map(|t| t.trim().to_string())
            }
        };
        let tls = tls_config(args, &cfg, &base)?;
        let http = with_tls(reqwest::Client::builder(), &tls)
            .timeout(std::time::Duration::from_secs(15))
            .build()?;
        Ok(Client {
            base,
            token,
            http,
            tls,
        })
    }

    /// A streaming GET (Server-Sent Events); no overall timeout.
    pub async fn stream(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}{path}", self.base);
        let client = with_tls(reqwest::Client::builder(), &self.tls).build()?;
        let mut req = client.get(&url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.with_context(|| format!("GET {url}"))?;
        if !resp.status().is_success() {
            anyhow::bail!("GET {url}: {}", resp.status());
        }
        Ok(resp)
    }

    /// Every item of a paged list (`path` with its query, without the cursor), following the
    /// cursor `cursor_param` (taken from the last item by `cursor_of`) until a page comes back
    /// empty or `want` items are in.
    pub async fn pages(
        &self,
        path: &str,
        cursor_param: &str,
        cursor_of: impl Fn(&Value) -> Option<String>,
        want: Option<usize>,
    ) -> anyhow::Result<Vec<Value>> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        let sep = if path.contains('?') { '&' } else { '?' };
        loop {
            let mut url = path.to_string();
            if let Some(c) = &cursor {
                url.push_str(&format!("{sep}{cursor_param}={c}"));
            }
            let page = match self.call(Method::GET, &url, None).await? {
                Value::Array(items) => items,
                other => anyhow::bail!("GET {url}: expected a JSON array, got {other}"),
            };
            let Some(next) = page.last().and_then(&cursor_of) else {
                break;
            };
            if cursor.as_deref() == Some(next.as_str()) {
                anyhow::bail!("GET {url}: the server repeated a page");
            }
            all.extend(page);
            cursor = Some(next);
            if want.is_some_and(|w| all.len() >= w) {
                all.truncate(want.unwrap_or(usize::MAX));
                break;
            }
        }
        Ok(all)
    }

    /// Every item of a list paged forward with `after=`, the cursor being the last item's
    /// `key` (machines by MAC, leases by address).
    pub async fn pages_after(&self, path: &str, key: &str) -> anyhow::Result<Vec<Value>> {
        let cursor = |v: &Value| v.get(key).and_then(Value::as_str).map(str::to_string);
        self.pages(path, "after", cursor, None).await
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let msg = value
                .get("error")
                .and_then(|e| e.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            anyhow::bail!("{method} {url}: {status}: {msg}");
        }
        Ok(value)
    }
}

/// The TLS settings for `base`: `--pin`, `--ca`, else from the config (`[api] tls = "lab"`:
/// the lab CA; a certificate file: that certificate, pinned), plus `--client-cert`.
fn tls_config(
    args: &ApiArgs,
    cfg: &config::Config,
    base: &str,
) -> anyhow::Result<Option<chainboot_http::tls_client::ClientConfig>> {
    use chainboot_http::tls_client::{client_config, file_fingerprint, parse_pin, ServerTrust};
    let https = base.starts_with("https://");
    let trust = if let Some(pin) = &args.pin {
        Some(ServerTrust::Pin(parse_pin(pin)?))
    } else if let Some(ca) = &args.ca {
        Some(ServerTrust::CaFile(ca.clone()))
    } else if https {
        match &cfg.api.tls {
            Some(chainboot_http::TlsSource::Lab) => Some(ServerTrust::CaFile(
                cfg.server.state_dir.join("tls").join("ca.crt"),
            )),
            Some(chainboot_http::TlsSource::Files(f)) => Some(ServerTrust::Pin(
                file_fingerprint(&f.cert)
                    .context("the API certificate to pin ([api] tls); pass --ca or --pin")?,
            )),
            None => None,
        }
    } else {
        None
    };
    let identity = args.client_cert.as_deref().zip(args.client_key.as_deref());
    if !https {
        if trust.is_some() || identity.is_some() {
            anyhow::bail!("--ca, --pin and --client-cert need an https:// server ({base})");
        }
        return Ok(None);
    }
    match trust {
        Some(t) => Ok(Some(client_config(&t, identity)?)),
        None if identity.is_some() => {
            anyhow::bail!("--client-cert needs --ca or --pin to verify the server with")
        }
        None => Ok(None),
    }
}

fn with_tls(
    builder: reqwest::ClientBuilder,
    tls: &Option<chainboot_http::tls_client::ClientConfig>,
) -> reqwest::ClientBuilder {
    match tls {
        Some(c) => builder.use_preconfigured_tls(c.clone()),
        None => builder,
    }
}

/// Runs one API command to completion on a small runtime.
pub fn run<F: std::future::Future<Output = anyhow::Result<()>>>(what: &str, f: F) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(f));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chainboot {what}: {e:#}");
            ExitCode::from(1)
        }
    }
}

pub fn run_machines(args: &ApiArgs, cmd: &MachinesCommand) -> ExitCode {
    run("machines", machines(args, cmd))
}

pub fn run_leases(args: &ApiArgs, _cmd: &LeasesCommand) -> ExitCode {
    run("leases", async {
        let c = Client::from_args(args)?;
        // Pages of up to 1000, IPv4 then IPv6; the cursor is the last address of a page.
        let v = Value::Array(c.pages_after("/api/v1/leases", "ip").await?);
        if args.json {
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        let rows: Vec<Vec<String>> = v
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or_default()
            .iter()
            .map(lease_row)
            .collect();
        print_table(
            &["IP", "MAC", "CLIENT", "STATE", "EXPIRES", "SERVER"],
            &rows,
        );
        Ok(())
    })
}

/// One lease as a table row. CLIENT is what names the client besides its MAC: the host name
/// it sent (DHCPv4), or its DUID and IAID (DHCPv6).
fn lease_row(l: &serde_json::Value) -> Vec<String> {
    let s = |k: &str| l.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_string();
    let expires = l.get("expires").and_then(|v| v.as_i64()).map(|e| e * 1000);
    let client = match l.get("iaid").and_then(|v| v.as_u64()) {
        Some(iaid) => format!("{} iaid {iaid}", s("duid")),
        None => s("hostname"),
    };
    vec![
        s("ip"),
        s("mac"),
        client,
        s("state"),
        ms_until(expires),
        s("server"),
    ]
}

pub fn run_events(args: &ApiArgs, cmd: &EventsCommand) -> ExitCode {
    run("events", events(args, cmd))
}

async fn events(args: &ApiArgs, cmd: &EventsCommand) -> anyhow::Result<()> {
    let c = Client::from_args(args)?;
    match cmd {
        EventsCommand::List {
            mac,
            kind,
            since,
            limit,
        } => events_list(&c, args, event_query(mac, kind), since, *limit).await,
        EventsCommand::Follow { mac, kind } => {
            events_follow(&c, args, event_query(mac, kind)).await
        }
        EventsCommand::Timeline { mac } => events_timeline(&c, args, mac).await,
    }
}

/// The query parameters that narrow events to one machine and/or one kind.
fn event_query(mac: &Option<String>, kind: &Option<String>) -> Vec<String> {
    let mut q = Vec::new();
    if let Some(m) = mac {
        q.push(format!("mac={m}"));
    }
    if let Some(k) = kind {
        q.push(format!("kind={k}"));
    }
    q
}

async fn events_list(
    c: &Client,
    args: &ApiArgs,
    mut q: Vec<String>,
    since: &Option<String>,
    limit: usize,
) -> anyhow::Result<()> {
    if let Some(s) = since {
        q.push(format!("since={s}"));
    }
    // One page holds at most 1000 events: ask for what is wanted, follow the rest.
    q.push(format!("limit={}", limit.min(1000)));
    let v = Value::Array(
        c.pages(
            &format!("/api/v1/events?{}", q.join("&")),
            "before",
            |e| e.get("id").and_then(Value::as_i64).map(|i| i.to_string()),
            Some(limit),
        )
        .await?,
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for e in v
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or_default()
            .iter()
            .rev()
        {
            println!("{}", event_line(e));
        }
    }
    Ok(())
}

/// Prints the live stream's events as they come (server-sent events: `data:` lines in
/// blocks ended by a blank line).
async fn events_follow(c: &Client, args: &ApiArgs, q: Vec<String>) -> anyhow::Result<()> {
    let mut resp = c
        .stream(&format!("/api/v1/events/stream?{}", q.join("&")))
        .await?;
    let mut buf = String::new();
    while let Some(chunk) = resp.chunk().await? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            for data in block.lines().filter_map(|l| l.strip_prefix("data:")) {
                let e: Value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
                if !e.is_object() {
                    continue;
                }
                if args.json {
                    println!("{e}");
                } else {
                    println!("{}", event_line(&e));
                }
            }
        }
    }
    Ok(())
}

async fn events_timeline(c: &Client, args: &ApiArgs, mac: &str) -> anyhow::Result<()> {
    let v = c
        .call(
            Method::GET,
            &format!("/api/v1/machines/{mac}/timeline"),
            None,
        )
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let list = |v: Option<&Value>| -> Vec<Value> {
        v.and_then(|b| b.as_array()).cloned().unwrap_or_default()
    };
    for boot in list(v.get("boots")) {
        let start = boot.get("start_ms").and_then(|v| v.as_i64()).unwrap_or(0);
        println!(
            "boot {} ({}), reached {}, {} error(s)",
            ms_ago(Some(start)),
            start,
            boot.get("reached").and_then(|v| v.as_str()).unwrap_or("-"),
            boot.get("errors").and_then(|v| v.as_u64()).unwrap_or(0)
        );
        for st in list(boot.get("stages")) {
            let off = st.get("start_ms").and_then(|v| v.as_i64()).unwrap_or(start) - start;
            println!(
                "  +{:>7} ms  {:<14} {:>7} ms{}",
                off,
                st.get("stage").and_then(|v| v.as_str()).unwrap_or("-"),
                st.get("duration_ms").and_then(|v| v.as_i64()).unwrap_or(0),
                if st.get("error").and_then(|v| v.as_bool()) == Some(true) {
                    "  ERROR"
                } else {
                    ""
                }
            );
        }
    }
    // What operators changed, apart from the boots (which server took it, from which client).
    for e in list(v.get("operator")) {
        let d = e.get("detail");
        let s = |k: &str| d.and_then(|d| d.get(k));
        let value = |k: &str| s(k).map(|v| v.to_string()).unwrap_or_else(|| "null".into());
        println!(
            "operator {} by {}: {} {} -> {}{}",
            ms_ago(e.get("at_ms").and_then(|v| v.as_i64())),
            e.get("server").and_then(|v| v.as_str()).unwrap_or("-"),
            s("action").and_then(|v| v.as_str()).unwrap_or("-"),
            value("old"),
            value("new"),
            s("client")
                .and_then(|v| v.as_str())
                .map(|c| format!(" (client {c})"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

fn event_line(e: &Value) -> String {
    let at = e.get("at_ms").and_then(|v| v.as_i64());
    let mac = e.get("mac").and_then(|v| v.as_str()).unwrap_or("-");
    let kind = e.get("kind").and_then(|v| v.as_str()).unwrap_or("-");
    let detail = e.get("detail").map(|d| d.to_string()).unwrap_or_default();
    // Which server of a fleet recorded it (one server's events say its name too).
    let server = e.get("server").and_then(|v| v.as_str()).unwrap_or("-");
    format!(
        "{:>8}  {server:<12} {mac:<17}  {kind:<14} {detail}",
        ms_ago(at)
    )
}

fn ms_until(ms: Option<i64>) -> String {
    let Some(ms) = ms else { return "-".into() };
    let s = (ms - chainboot_events::now_ms()) / 1000;
    if s < 0 {
        return "expired".into();
    }
    match s {
        0..=59 => format!("in {s}s"),
        60..=3599 => format!("in {}m", s / 60),
        3600..=86_399 => format!("in {}h", s / 3600),
        _ => format!("in {}d", s / 86_400),
    }
}

async fn machines(args: &ApiArgs, cmd: &MachinesCommand) -> anyhow::Result<()> {
    let c = Client::from_args(args)?;
    let value = match cmd {
        MachinesCommand::List => {
            let mut all = c.pages_after("/api/v1/machines", "mac").await?;
            // Pages come in MAC order; the table shows the most recently seen first.
            all.sort_by_key(|m| std::cmp::Reverse(m.get("last_seen_ms").and_then(Value::as_i64)));
            Value::Array(all)
        }
        MachinesCommand::Show { mac } => {
            c.call(Method::GET, &format!("/api/v1/machines/{mac}"), None)
                .await?
        }
        MachinesCommand::SetProfile {
            mac,
            profile,
            unpin,
        } => {
            if profile.is_none() && !unpin {
                anyhow::bail!("name a profile, or pass --unpin");
            }
            c.call(
                Method::PUT,
                &format!("/api/v1/machines/{mac}/profile"),
                Some(serde_json::json!({ "profile": profile })),
            )
            .await?
        }
        MachinesCommand::Rearm { mac } => {
            c.call(Method::POST, &format!("/api/v1/machines/{mac}/rearm"), None)
                .await?
        }
        MachinesCommand::Label { mac, labels } => {
            let mut map = serde_json::Map::new();
            for l in labels {
                let (k, v) = l
                    .split_once('=')
                    .with_context(|| format!("`{l}` is not key=value"))?;
                map.insert(k.to_string(), Value::String(v.to_string()));
            }
            c.call(
                Method::PUT,
                &format!("/api/v1/machines/{mac}/labels"),
                Some(Value::Object(map)),
            )
            .await?
        }
        MachinesCommand::Forget { mac } => {
            c.call(Method::DELETE, &format!("/api/v1/machines/{mac}"), None)
                .await?
        }
    };
    if args.json || !std::io::stdout().is_terminal() && matches!(cmd, MachinesCommand::Show { .. })
    {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    match cmd {
        MachinesCommand::List => print_machine_table(&value),
        MachinesCommand::Show { .. } => println!("{}", serde_json::to_string_pretty(&value)?),
        _ => println!("ok"),
    }
    Ok(())
}

fn ms_ago(ms: Option<i64>) -> String {
    let Some(ms) = ms else { return "-".into() };
    let now = chainboot_events::now_ms();
    let s = (now - ms).max(0) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// A plain table (MAC, ARCH, IP, HOSTNAME, PROFILE, STATE, LAST SEEN, SERVER: the one that
/// last answered it).
pub fn print_machine_table(list: &Value) {
    let rows: Vec<[String; 8]> = list
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|m| {
            let s = |v: Option<&Value>| v.and_then(|v| v.as_str()).unwrap_or("-").to_string();
            let facts = m.get("facts");
            let profile = match (
                m.get("pinned_profile").and_then(|v| v.as_str()),
                m.get("last_profile").and_then(|v| v.as_str()),
            ) {
                (Some(p), _) => format!("{p} (pinned)"),
                (None, Some(p)) => p.to_string(),
                (None, None) => "-".into(),
            };
            let fw = m.get("firmware");
            let refused = fw
                .and_then(|f| f.get("secure_boot"))
                .and_then(|sb| sb.get("proven"))
                .and_then(|p| p.as_bool());
            let state = if m.get("installed_ms").is_some_and(|v| !v.is_null()) {
                "installed".to_string()
            } else if refused == Some(true) {
                "secure-boot-refused".to_string()
            } else {
                // How far its last boot got (a machine that never reached its script too).
                s(fw.and_then(|f| f.get("stage")))
            };
            let arch = facts
                .and_then(|f| f.get("arch"))
                .filter(|a| !a.is_null())
                .or_else(|| fw.and_then(|f| f.get("arch")));
            [
                s(m.get("mac")),
                s(arch),
                s(facts.and_then(|f| f.get("ip"))),
                s(facts.and_then(|f| f.get("hostname"))),
                profile,
                state,
                ms_ago(m.get("last_seen_ms").and_then(|v| v.as_i64())),
                s(m.get("last_server")),
            ]
        })
        .collect();
    let rows: Vec<Vec<String>> = rows.into_iter().map(|r| r.to_vec()).collect();
    print_table(
        &[
            "MAC",
            "ARCH",
            "IP",
            "HOSTNAME",
            "PROFILE",
            "STATE",
            "LAST SEEN",
            "SERVER",
        ],
        &rows,
    );
}

/// Columns padded to their widest cell.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.len());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}
