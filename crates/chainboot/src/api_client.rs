//! `chainboot machines ...`: talks to a running server's API (PRODUCT.md §5). The address and
//! token come from flags, or from the same config the server uses (`[http] listen`, `[api]
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
    /// Base URL of the server (default: from the config's `[http] listen`, loopback when it
    /// listens on every address).
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

pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn from_args(args: &ApiArgs) -> anyhow::Result<Client> {
        let (cfg, _) = config::load(args.config.as_deref()).map_err(anyhow::Error::msg)?;
        let base = match &args.server {
            Some(s) => s.trim_end_matches('/').to_string(),
            None => {
                let addr = cfg
                    .http
                    .listen_addrs()
                    .ok()
                    .and_then(|a| a.first().copied())
                    .context("no [http] listen address in the config; pass --server")?;
                let host = if addr.ip().is_unspecified() {
                    "127.0.0.1".to_string()
                } else {
                    addr.ip().to_string()
                };
                format!("http://{host}:{}", addr.port())
            }
        };
        let token = match &args.token {
            Some(t) => Some(t.clone()),
            None => {
                let file = cfg
                    .api
                    .token_file
                    .clone()
                    .unwrap_or_else(|| cfg.server.state_dir.join("api.token"));
                std::fs::read_to_string(&file)
                    .ok()
                    .map(|t| t.trim().to_string())
            }
        };
        Ok(Client {
            base,
            token,
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(15))
                .build()?,
        })
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

pub fn run_machines(args: &ApiArgs, cmd: &MachinesCommand) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(machines(args, cmd)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chainboot machines: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn machines(args: &ApiArgs, cmd: &MachinesCommand) -> anyhow::Result<()> {
    let c = Client::from_args(args)?;
    let value = match cmd {
        MachinesCommand::List => c.call(Method::GET, "/api/v1/machines", None).await?,
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

/// A plain table (MAC, ARCH, IP, HOSTNAME, PROFILE, STATE, LAST SEEN).
pub fn print_machine_table(list: &Value) {
    let rows: Vec<[String; 7]> = list
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
            let state = if m.get("installed_ms").is_some_and(|v| !v.is_null()) {
                "installed".to_string()
            } else {
                "-".to_string()
            };
            [
                s(m.get("mac")),
                s(facts.and_then(|f| f.get("arch"))),
                s(facts.and_then(|f| f.get("ip"))),
                s(facts.and_then(|f| f.get("hostname"))),
                profile,
                state,
                ms_ago(m.get("last_seen_ms").and_then(|v| v.as_i64())),
            ]
        })
        .collect();
    let header = [
        "MAC",
        "ARCH",
        "IP",
        "HOSTNAME",
        "PROFILE",
        "STATE",
        "LAST SEEN",
    ];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
}
