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

pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
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
