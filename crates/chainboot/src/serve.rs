//! `chainboot serve`: builds every enabled server from the config and runs them until SIGINT or
//! SIGTERM; in-flight transfers then get a few seconds to finish.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use std::sync::Arc;

use chainboot_ra::{RaMode, RaServer, RaStats};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use anyhow::Context;
use chainboot_content::Root;
use chainboot_dhcp::{DhcpServer, ServerOptions};
use chainboot_http::{static_routes, HttpServer, StaticContent};
use chainboot_iso::IsoLibrary;
use chainboot_policy::{routes as policy_routes, HttpBase, Policy, PolicyState, TftpResolver};
use chainboot_store::Store;
use chainboot_tftp::TftpServer;

use crate::ipxe::IpxeBinaries;
use crate::resolver::TftpNamespace;
use crate::{config, interfaces};

/// How long in-flight transfers may run after a stop signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// `chainboot boot`: one kernel for every machine, instead of the config's profiles.
#[derive(Debug, Clone)]
pub struct QuickBoot {
    pub kernel: std::path::PathBuf,
    pub initrd: Vec<std::path::PathBuf>,
    pub cmdline: String,
}

pub fn run(path: Option<&Path>, quick: Option<QuickBoot>) -> ExitCode {
    let (cfg, source) = match config::load(path) {
        Ok(c) => c,
        Err(problems) => {
            for p in &problems.0 {
                error!("{p}");
            }
            eprintln!("{problems}");
            return ExitCode::from(1);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(serve(cfg, source, quick)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("chainboot: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn serve(
    cfg: config::Config,
    source: config::Source,
    quick: Option<QuickBoot>,
) -> anyhow::Result<()> {
    info!(config = %source, "chainboot starting");
    let shutdown = CancellationToken::new();
    let mut tasks: JoinSet<(&'static str, std::io::Result<()>)> = JoinSet::new();
    let ifaces = interfaces::select(&cfg.server.interfaces)?;

    if cfg.ipv6.router_advertisements != RaMode::Off {
        let stats = Arc::new(RaStats::default());
        for iface in &ifaces {
            match RaServer::bind(&iface.name, &cfg.ipv6, stats.clone()) {
                Ok(server) => {
                    let token = shutdown.clone();
                    tasks.spawn(async move { ("ipv6-ra", server.run(token).await) });
                }
                Err(e) => {
                    warn!(interface = %iface.name, "not answering IPv6 router solicitations: {e}")
                }
            }
        }
    }

    let store = Arc::new(
        Store::open(&cfg.server.state_dir)
            .with_context(|| format!("[server] state_dir {}", cfg.server.state_dir.display()))?,
    );
    let ipxe = Arc::new(IpxeBinaries::locate(&cfg.ipxe));
    for (name, path) in ipxe.found() {
        info!(binary = name, path = %path.display(), "iPXE first stage available");
    }
    let tftp_root = match &cfg.tftp.root {
        Some(dir) => Some(Arc::new(
            Root::new(dir).with_context(|| format!("[tftp] root {}", dir.display()))?,
        )),
        None => None,
    };
    let isos = Arc::new(
        IsoLibrary::open(&cfg.iso).map_err(|e| anyhow::anyhow!("a required ISO image: {e}"))?,
    );
    for st in isos.status() {
        match &st.result {
            Ok((scheme, entries)) => {
                info!(iso = %st.name, path = %st.path.display(), ?scheme, entries, "ISO image indexed")
            }
            Err(e) => warn!(iso = %st.name, "ISO image not available: {e}"),
        }
    }
    // URLs in scripts rendered for TFTP clients (no Host header to go by): the advertised
    // address, or the first served interface's.
    let http_port = cfg.http_port();
    let base_ip = cfg
        .server
        .advertise_addr()
        .or_else(|| ifaces.iter().find_map(|i| i.ipv4.first().map(|a| a.0)))
        .unwrap_or(std::net::Ipv4Addr::LOCALHOST);
    let base = HttpBase::new(&if http_port == 80 {
        format!("http://{base_ip}")
    } else {
        format!("http://{base_ip}:{http_port}")
    })
    .map_err(anyhow::Error::msg)?;
    let policy = match &quick {
        Some(q) => {
            info!(kernel = %q.kernel.display(), "quick mode: every machine boots this kernel");
            Policy::quick(&q.kernel, &q.initrd, &q.cmdline, store.clone())
        }
        None => Policy::new(cfg.policy(), store.clone()),
    };
    let policy = Arc::new(policy.map_err(|problems| {
        let text: Vec<String> = problems
            .iter()
            .map(|(path, msg)| format!("{}: {msg}", chainboot_config::dotted(path)))
            .collect();
        anyhow::anyhow!("boot policy: {}", text.join("; "))
    })?);
    let token = cfg
        .api
        .load_or_create_token(&cfg.server.state_dir)
        .context("API token")?;
    let policy_tftp: Arc<dyn chainboot_content::Resolver> =
        Arc::new(TftpResolver::new(policy.clone(), base.clone())?);
    // The TFTP resolver owns a small runtime of its own, which must not be dropped inside an
    // async context: this clone is the last reference and is dropped on a blocking thread.
    let keep_policy_tftp = policy_tftp.clone();
    let tftp_namespace = Arc::new(TftpNamespace {
        generated: vec![policy_tftp],
        ipxe: ipxe.clone(),
        isos: Some(isos.clone()),
        root: tftp_root,
    });
    let tftp_namespace_keep = tftp_namespace.clone();
    let tftp = TftpServer::bind(&cfg.tftp, tftp_namespace)
        .with_context(|| format!("TFTP cannot listen on {}", cfg.tftp.listen))?;
    info!(listen = %tftp.local_addr(), "TFTP listening");
    {
        let token = shutdown.clone();
        tasks.spawn(async move { ("tftp", tftp.run(token).await) });
    }

    let files = match &cfg.http.root {
        Some(dir) => Some(Arc::new(
            Root::new(dir).with_context(|| format!("[http] root {}", dir.display()))?,
        )),
        None => None,
    };
    let router = static_routes(StaticContent {
        files,
        ipxe_bin: ipxe.clone(),
        isos: isos.clone(),
        listing: cfg.http.listing,
    })
    .merge(policy_routes(PolicyState::new(
        policy.clone(),
        token,
        &cfg.api,
        base.clone(),
    )));
    let http = HttpServer::bind(&cfg.http).context("HTTP cannot listen")?;
    for addr in http.local_addrs() {
        info!(listen = %addr, "HTTP listening");
    }
    {
        let token = shutdown.clone();
        tasks.spawn(async move { ("http", http.run(router, token).await) });
    }

    let boot = cfg.boot_settings();
    let dhcp = DhcpServer::bind(
        cfg.dhcp.clone(),
        boot,
        store.clone(),
        ServerOptions {
            interfaces: cfg.server.interfaces.clone(),
            ..ServerOptions::default()
        },
    )?;
    info!(mode = ?cfg.dhcp.mode, "DHCP ready");
    {
        let token = shutdown.clone();
        tasks.spawn(async move { ("dhcp", dhcp.run(token).await.map_err(std::io::Error::other)) });
    }

    let result = tokio::select! {
        r = wait_for_signal() => r,
        Some(done) = tasks.join_next() => match done {
            Ok((name, Ok(()))) => Err(anyhow::anyhow!("{name} server stopped unexpectedly")),
            Ok((name, Err(e))) => Err(anyhow::anyhow!("{name} server failed: {e}")),
            Err(e) => Err(anyhow::anyhow!("a server task panicked: {e}")),
        },
    };
    shutdown.cancel();
    // In-flight transfers get a grace period, then everything is dropped.
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        warn!("some transfers did not finish within {SHUTDOWN_GRACE:?}; stopping anyway");
    }
    drop(tftp_namespace_keep);
    let _ = tokio::task::spawn_blocking(move || drop(keep_policy_tftp)).await;
    info!("chainboot stopped");
    result
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
    Ok(())
}
