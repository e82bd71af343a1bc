//! Runs the TFTP server alone on a directory, for benchmarks and manual tests:
//! `tftp-serve DIR [LISTEN] [MAX_PER_CLIENT]` (LISTEN defaults to 127.0.0.1:6969). Stops on
//! SIGINT/SIGTERM. The real binary is `chainboot serve`.

use std::sync::Arc;

use chainboot_content::Root;
use chainboot_tftp::{TftpConfig, TftpServer};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::io::Result<()> {
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
