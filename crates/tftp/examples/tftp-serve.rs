//! Runs the TFTP server alone on a directory, for benchmarks and manual tests:
//! `tftp-serve DIR [LISTEN] [MAX_PER_CLIENT]` (LISTEN defaults to 127.0.0.1:6969). Stops on
//! SIGINT/SIGTERM. The real binary is `chainboot serve`.

use std::sync::Arc;

use chainboot_content::Root;
use chainboot_tftp::{TftpConfig, TftpServer};
use tokio_util::sync::CancellationToken;

fn main() -> std::io::Result<()> {
    // TFTP_SERVE_THREADS=1 runs everything on one thread (no cross-thread wake-ups per ACK).
    let threads: usize = std::env::var("TFTP_SERVE_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if threads > 1 {
            b.worker_threads(threads);
        }
        b.enable_all().build()?
    };
    rt.block_on(serve())
}

async fn serve() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| ".".into());
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:6969".into());
    let per_client = args
        .next()
        .map(|s| s.parse().unwrap_or(1000))
        .unwrap_or(1000);
    let config = TftpConfig {
        listen: listen
            .parse()
            .map_err(|e| std::io::Error::other(format!("listen address {listen}: {e}")))?,
        max_per_client: per_client,
        ..TftpConfig::default()
    };
    let resolver = Arc::new(Root::new(&dir)?);
    let server = TftpServer::bind(&config, resolver)?;
    eprintln!("tftp-serve: {} on {}", dir, server.local_addr());
    let token = CancellationToken::new();
    let stop = token.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        stop.cancel();
    });
    let stats = server.stats();
    server.run(token).await?;
    eprintln!("tftp-serve: {:?}", stats.snapshot());
    Ok(())
}
