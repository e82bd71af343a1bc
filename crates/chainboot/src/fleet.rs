//! A server's part in a fleet (`[store] backend = "postgres"`): its heartbeat in the
//! live-servers table, the live peers handed to the DHCP engine (which shares clients with
//! them by hash), and the leases other servers wrote loaded into the engine, so that a client
//! whose server stopped is renewed by the server that takes it over, and no server offers an
//! address another one holds.

use std::sync::Arc;
use std::time::Duration;

use chainboot_dhcp::engine::fleet::Fleet;
use chainboot_dhcp::Engine;
use chainboot_store::{leases, servers, Store, StoreConfig};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Leases written this long before the last poll are read again: writers' clocks differ a
/// little, and a batch committed just after a poll started carries a time before it.
const LEASE_OVERLAP_S: i64 = 10;

/// Runs until `shutdown`, then removes this server from the live-servers table.
pub async fn run(
    store: Arc<Store>,
    engine: Option<Arc<Mutex<Engine>>>,
    cfg: StoreConfig,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(cfg.heartbeat);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let within_ms = cfg.peer_timeout.as_millis() as i64;
    let mut first = true;
    let mut since = 0i64;
    let mut failing = false;
    let mut peers: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let s = store.clone();
        let poll_from = since;
        let started = chainboot_events::now_ms() / 1000;
        let polled = tokio::task::spawn_blocking(move || {
            servers::heartbeat(&s, env!("CARGO_PKG_VERSION"), first)?;
            let live = servers::live(&s, within_ms)?;
            let changed = leases::changed_since(&s, poll_from)?;
            Ok::<_, chainboot_store::StoreError>((live, changed))
        })
        .await;
        match polled {
            Ok(Ok((live, changed))) => {
                if failing {
                    info!("fleet: the database answers again");
                    failing = false;
                }
                first = false;
                since = started - LEASE_OVERLAP_S;
                let names: Vec<String> = live.into_iter().map(|s| s.name).collect();
                if names != peers {
                    info!(live = ?names, "fleet: live servers changed");
                    peers = names.clone();
                }
                if let Some(engine) = &engine {
                    let mut e = engine.lock();
                    e.set_fleet(Some(Fleet::new(store.server_name(), names)));
                    e.load_leases(&changed);
                }
            }
            Ok(Err(e)) => {
                if !failing {
                    warn!("fleet: heartbeat failed, keeping the last view of the fleet: {e}");
                    failing = true;
                }
            }
            Err(e) => warn!("fleet: heartbeat task failed: {e}"),
        }
    }
    let s = store.clone();
    let left = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::task::spawn_blocking(move || servers::leave(&s)),
    )
    .await;
    match left {
        Ok(Ok(Ok(()))) => info!("fleet: left the live-servers table"),
        _ => warn!("fleet: could not leave the live-servers table; peers take over when the heartbeat times out"),
    }
}
