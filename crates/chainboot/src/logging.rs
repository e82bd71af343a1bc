//! Logging: readable lines on a terminal, JSON for log collectors (`--log-format json`).
//! `RUST_LOG` (or `--log-level`) filters as usual for tracing.

use clap::ValueEnum;
use tracing_subscriber::{fmt, EnvFilter};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable, coloured when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Libraries whose warnings describe what a peer sent, not what chainboot did: any host on the
/// boot network can trigger them at will (rustls warns on every handshake that names an IP
/// address in SNI, as wrk and some firmware do), so at the default level they would be a log
/// flood anyone can start. Handshake failures are counted in `/metrics`; `RUST_LOG` (e.g.
/// `RUST_LOG=info,rustls=debug`) still shows them.
const PEER_NOISE: &str = "rustls=error";

pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},{PEER_NOISE}")));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second init (tests) is harmless.
    let _ = result;
}
