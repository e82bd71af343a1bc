//! chainboot's event log (issue 7): every interaction of a machine becomes an event, written to
//! the store in batches (one transaction per batch, never one fsync per packet), streamed live
//! to subscribers (the API's Server-Sent Events), and turned into boot timelines
//! ([`timeline::boots`]). TFTP and HTTP requests only know a client's IP: the log keeps an
//! IP → MAC map fed by DHCP (leases, observed addresses) and by iPXE's URL facts.
//!
//! Recording never blocks a server: events go through a bounded queue and are dropped (and
//! counted) when the writer falls behind.

pub mod detail;
pub mod timeline;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chainboot_machine::Mac;
use chainboot_store::events::{self, EventRecord, NewEvent};
use chainboot_store::Store;
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::broadcast;
use tracing::{debug, warn};

pub use detail::{Detail, DhcpDetail, HttpDetail, Outcome, TftpDetail};
pub use timeline::{boots, stage_of, Boot, LoopAlert, LoopDetector, Stage, StageSpan};

/// The event kind of a detected chainload loop (PRODUCT.md §5).
pub const CHAINLOAD_LOOP: &str = "chainload-loop";

/// `[events]`: retention and loop-detection settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventSettings {
    /// Events kept at most (oldest pruned first).
    pub max_events: usize,
    /// Events older than this are pruned.
    #[serde(deserialize_with = "chainboot_config::deserialize_duration")]
    pub max_age: Duration,
    /// First-stage fetches without reaching HTTP that make a chainload loop.
    pub loop_threshold: usize,
    /// ... within this window.
    #[serde(deserialize_with = "chainboot_config::deserialize_duration")]
    pub loop_window: Duration,
}

impl chainboot_config::Validate for EventSettings {
    fn validate(&self) -> Vec<chainboot_config::Issue> {
        let mut out = Vec::new();
        if self.max_events < 100 {
            out.push((vec!["max_events".into()], "must be at least 100".into()));
        }
        if self.loop_threshold < 2 {
            out.push((
                vec!["loop_threshold".into()],
                "must be at least 2 (one fetch is a normal boot)".into(),
            ));
        }
        if self.loop_window < Duration::from_secs(10) {
            out.push((vec!["loop_window".into()], "must be at least 10s".into()));
        }
        out
    }
}

impl Default for EventSettings {
    fn default() -> Self {
        EventSettings {
            max_events: 100_000,
            max_age: Duration::from_secs(30 * 24 * 3600),
            loop_threshold: 3,
            loop_window: Duration::from_secs(120),
        }
    }
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct EventStats {
    pub recorded: AtomicU64,
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub write_errors: AtomicU64,
    pub chainload_loops: AtomicU64,
    /// Sum and count of batch write latencies, for the store latency metric.
    pub write_micros_total: AtomicU64,
    pub write_batches: AtomicU64,
}

enum Msg {
    Event(NewEvent),
    Flush(mpsc::Sender<()>),
}

/// How many events may wait for the writer.
const QUEUE: usize = 65_536;
/// IP → MAC entries kept.
const MAX_IPS: usize = 65_536;

/// The event log. Cheap to share (`Arc`).
pub struct EventLog {
    tx: SyncSender<Msg>,
    live: broadcast::Sender<EventRecord>,
    ips: Mutex<HashMap<IpAddr, Mac>>,
    loops: Mutex<LoopDetector>,
    stats: Arc<EventStats>,
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl EventLog {
    /// Starts the writer thread.
    pub fn start(store: Arc<Store>, settings: EventSettings) -> Arc<EventLog> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let (live, _) = broadcast::channel(4096);
        let stats = Arc::new(EventStats::default());
        let log = Arc::new(EventLog {
            tx,
            live: live.clone(),
            ips: Mutex::new(HashMap::new()),
            loops: Mutex::new(LoopDetector::new(
                settings.loop_threshold,
                settings.loop_window.as_millis() as i64,
            )),
            stats: stats.clone(),
        });
        let spawned = std::thread::Builder::new()
            .name("chainboot-events".into())
            .spawn(move || writer(store, rx, live, stats, settings));
        if let Err(e) = spawned {
            warn!("event log writer not started, events will be dropped: {e}");
        }
        log
    }

    /// Counters.
    pub fn stats(&self) -> &Arc<EventStats> {
        &self.stats
    }

    /// Records an event now. `mac` may be `None` when not known.
    pub fn record(&self, mac: Option<Mac>, kind: &str, detail: serde_json::Value) {
        let at_ms = now_ms();
        let alert = match (mac, stage_of(kind, &detail)) {
            (Some(mac), Some(stage)) => self.loops.lock().observe(at_ms, mac, stage),
            _ => None,
        };
        self.enqueue(NewEvent {
            at_ms,
            mac,
            kind: kind.to_string(),
            detail,
        });
        if let Some(alert) = alert {
            self.raise_loop(at_ms, alert);
        }
    }

    fn raise_loop(&self, at_ms: i64, alert: LoopAlert) {
        self.stats.chainload_loops.fetch_add(1, Ordering::Relaxed);
        let cause = "the machine keeps loading the first-stage iPXE binary without reaching HTTP: \
                     probably another DHCP server on this network also hands out a boot file \
                     (so iPXE is told to load iPXE again), or its iPXE lacks HTTP support";
        warn!(mac = %alert.mac, fetches = alert.fetches, window_s = alert.window_ms / 1000,
            "chainload loop detected: {cause}");
        self.enqueue(NewEvent {
            at_ms,
            mac: Some(alert.mac),
            kind: CHAINLOAD_LOOP.to_string(),
            detail: json!({
                "fetches": alert.fetches,
                "window_s": alert.window_ms / 1000,
                "probable_cause": cause,
            }),
        });
    }

    fn enqueue(&self, e: NewEvent) {
        self.stats.recorded.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(Msg::Event(e)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Remembers that `ip` belongs to `mac` (from a lease, a DHCP packet or a URL).
    pub fn learn_ip(&self, ip: IpAddr, mac: Mac) {
        let mut ips = self.ips.lock();
        if ips.len() >= MAX_IPS && !ips.contains_key(&ip) {
            ips.clear();
        }
        ips.insert(ip, mac);
    }

    /// The MAC last seen with `ip`; failing that, the kernel's neighbour table. A client that
    /// just exchanged packets with us on the same link is in it, which covers what DHCP cannot
    /// tell in proxy mode (the address comes from another server) and plain TFTP clients.
    pub fn mac_for_ip(&self, ip: IpAddr) -> Option<Mac> {
        if let Some(mac) = self.ips.lock().get(&ip).copied() {
            return Some(mac);
        }
        let IpAddr::V4(v4) = ip else { return None };
        let table = std::fs::read_to_string("/proc/net/arp").ok()?;
        let mac = neighbour_mac(&table, v4)?;
        self.learn_ip(ip, mac);
        Some(mac)
    }

    /// Live events, as they are written.
    pub fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.live.subscribe()
    }

    /// Waits until everything recorded so far is written (tests, shutdown).
    pub fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Msg::Flush(tx)).is_err() {
            return false;
        }
        rx.recv_timeout(timeout).is_ok()
    }
}

/// Finds `ip` in the text of /proc/net/arp (complete entries only: flag 0x2).
fn neighbour_mac(table: &str, ip: std::net::Ipv4Addr) -> Option<Mac> {
    let want = ip.to_string();
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (addr, flags, hw) = (cols.first()?, cols.get(2)?, cols.get(3)?);
        let complete = u32::from_str_radix(flags.trim_start_matches("0x"), 16).ok()? & 0x2 != 0;
        (*addr == want && complete)
            .then(|| hw.parse().ok())
            .flatten()
    })
}

/// Events written per transaction at most.
const BATCH: usize = 1000;
/// How long the writer waits for more events before writing a partial batch.
const LINGER: Duration = Duration::from_millis(20);
const PRUNE_EVERY: Duration = Duration::from_secs(60);

fn writer(
    store: Arc<Store>,
    rx: Receiver<Msg>,
    live: broadcast::Sender<EventRecord>,
    stats: Arc<EventStats>,
    settings: EventSettings,
) {
    let mut last_prune = Instant::now();
    loop {
        let first = match rx.recv_timeout(PRUNE_EVERY) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        let mut push = |m: Msg, batch: &mut Vec<NewEvent>| match m {
            Msg::Event(e) => batch.push(e),
            Msg::Flush(done) => flushes.push(done),
        };
        if let Some(m) = first {
            push(m, &mut batch);
            let deadline = Instant::now() + LINGER;
            while batch.len() < BATCH {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(m) => push(m, &mut batch),
                    Err(_) => break,
                }
            }
        }
        if !batch.is_empty() {
            let started = Instant::now();
            match events::append_batch(&store, &batch) {
                Ok(ids) => {
                    stats.written.fetch_add(ids.len() as u64, Ordering::Relaxed);
                    stats
                        .write_micros_total
                        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                    stats.write_batches.fetch_add(1, Ordering::Relaxed);
                    for (id, e) in ids.into_iter().zip(batch) {
                        let _ = live.send(EventRecord {
                            id,
                            at_ms: e.at_ms,
                            mac: e.mac,
                            kind: e.kind,
                            detail: e.detail,
                        });
                    }
                }
                Err(err) => {
                    stats
                        .write_errors
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    warn!("events not written: {err}");
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = Instant::now();
            let min_at = now_ms() - settings.max_age.as_millis() as i64;
            match events::prune(&store, settings.max_events, min_at) {
                Ok(n) if n > 0 => debug!(deleted = n, "old events pruned"),
                Ok(_) => {}
                Err(e) => warn!("pruning events failed: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainboot_store::events::EventFilter;

    #[test]
    fn the_neighbour_table_maps_addresses_of_complete_entries() {
        let table =
            "IP address       HW type     Flags       HW address            Mask     Device\n\
                     198.18.0.10      0x1         0x2         52:54:00:00:00:0a     *        br0\n\
                     198.18.0.11      0x1         0x0         00:00:00:00:00:00     *        br0\n";
        assert_eq!(
            neighbour_mac(table, "198.18.0.10".parse().unwrap()),
            Some("52:54:00:00:00:0a".parse().unwrap())
        );
        assert_eq!(neighbour_mac(table, "198.18.0.11".parse().unwrap()), None);
        assert_eq!(neighbour_mac(table, "198.18.0.12".parse().unwrap()), None);
    }

    #[test]
    fn recorded_events_are_written_streamed_and_loops_raised() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log = EventLog::start(store.clone(), EventSettings::default());
        let mut live = log.subscribe();
        let mac: Mac = "52:54:00:aa:bb:cc".parse().unwrap();
        log.learn_ip("198.18.0.9".parse().unwrap(), mac);
        assert_eq!(log.mac_for_ip("198.18.0.9".parse().unwrap()), Some(mac));
        for _ in 0..3 {
            log.record(
                Some(mac),
                "tftp",
                json!({"first_stage": true, "path": "undionly.kpxe"}),
            );
        }
        assert!(log.flush(Duration::from_secs(5)));
        let all = events::list(&store, &EventFilter::default()).unwrap();
        assert_eq!(all.len(), 4, "{all:?}");
        assert_eq!(all[0].kind, CHAINLOAD_LOOP);
        assert_eq!(log.stats().chainload_loops.load(Ordering::Relaxed), 1);
        let first = live.try_recv().unwrap();
        assert_eq!(first.kind, "tftp");
    }
}
