//! A standalone DHCP server process over chainboot-dhcp, for the integration tests (kill -9
//! and restart need a process) and bench/dhcp. Not the product binary: `chainboot serve` wires
//! the same `DhcpServer` together with TFTP and HTTP.
//!
//! Usage: chainboot-dhcp-testd CONFIG.toml STATE_DIR
//! CONFIG.toml holds `[dhcp]` plus optional top-level `advertise`, `http_port`, `efi_x64`,
//! `interfaces`. Prints "ready" on stdout once the sockets are bound; stops on SIGTERM/SIGINT
//! and prints the counters on stderr.

use std::net::Ipv4Addr;
use std::sync::Arc;

use chainboot_dhcp::{BootSettings, DhcpConfig, DhcpServer, EfiX64Binary, ServerOptions};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestConfig {
    #[serde(default)]
    advertise: Option<Ipv4Addr>,
    #[serde(default = "default_http_port")]
    http_port: u16,
    #[serde(default)]
    efi_x64: EfiX64Binary,
    #[serde(default)]
    interfaces: Vec<String>,
    #[serde(default)]
    dhcp: DhcpConfig,
}

fn default_http_port() -> u16 {
    80
}

fn main() {
    if let Err(e) = run() {
        eprintln!("chainboot-dhcp-testd: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let [_, config, state] = args.as_slice() else {
        return Err("usage: chainboot-dhcp-testd CONFIG.toml STATE_DIR".into());
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let text = std::fs::read_to_string(config).map_err(|e| format!("{config}: {e}"))?;
    let cfg: TestConfig = toml::from_str(&text).map_err(|e| format!("{config}: {e}"))?;
    let store =
        chainboot_store::Store::open(std::path::Path::new(state)).map_err(|e| e.to_string())?;
    let boot = BootSettings {
        advertise: cfg.advertise,
        http_port: cfg.http_port,
        tftp_port: 69,
        efi_x64: cfg.efi_x64,
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let server = DhcpServer::bind(
            cfg.dhcp,
            boot,
            Arc::new(store),
            ServerOptions {
                interfaces: cfg.interfaces,
                ..Default::default()
            },
        )
        .map_err(|e| e.to_string())?;
        let counters = server.counters();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            stop.cancel();
        });
        println!("ready");
        server.run(shutdown).await.map_err(|e| e.to_string())?;
        for (name, v) in counters.snapshot() {
            eprintln!("counter {name} {v}");
        }
        Ok(())
    })
}
