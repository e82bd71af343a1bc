//! chainboot's event log: every interaction of a machine becomes an event, written to
//! the store in batches (one transaction per batch, never one fsync per packet), streamed live
//! to subscribers (the API's Server-Sent Events), and turned into boot timelines
//! ([`timeline::boots`]). TFTP and HTTP requests only know a client's IP: the log keeps an
//! IP → MAC map fed by DHCP (leases, observed addresses) and by iPXE's URL facts.
//!
//! Recording never blocks a server: events go through a bounded queue and are dropped (and
//! counted) when the writer falls behind.
//!
//! Everything here is bounded, because strangers on the boot network cause most events: a
//! detail is at most [`MAX_DETAIL_BYTES`] of JSON, events of refused requests carry no MAC and
//! pass a token bucket, the live channel holds [`LIVE_CAPACITY`] events serialised once (so at
//! most a few MiB whoever subscribes), and the store is pruned by count, age and bytes.

pub mod detail;
pub mod follow;
pub mod timeline;

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chainboot_machine::Mac;
use chainboot_store::events::{self, NewEvent, Retention};
use chainboot_store::firmware::{Observations, SecureBootMark, Sighting};
use chainboot_store::limit::{NewMachineLimiter, Rate, TokenBucket};
use chainboot_store::Store;
use hashlink::LruCache;
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::broadcast;
use tracing::{debug, info, warn};

pub use detail::{Detail, DhcpDetail, HttpDetail, Outcome, SourceProof, TftpDetail};
pub use timeline::{
    boots, secure_boot_signal, stage_of, Boot, LoopAlert, LoopDetector, RefusalNote,
    SecureBootAlert, SecureBootDetector, SecureBootSignal, Stage, StageSpan,
};

/// The event kind of a detected chainload loop.
pub const CHAINLOAD_LOOP: &str = "chainload-loop";
/// Machines remembered as refusing the unsigned first stage, at most.
const MAX_REFUSED: usize = 10_000;
/// How often the running server reads the refusals the store remembers (the fleet's other
/// servers add some).
const RELOAD_REFUSALS_EVERY: Duration = Duration::from_secs(60);

/// The event kind of a machine whose firmware probably refused the unsigned first stage.
pub const SECURE_BOOT_REFUSED: &str = "secure-boot-refused";

/// The event kind of an operator's change of a machine through the API (pin, labels, re-arm,
/// forget): part of the machine's history, never a stage of one of its boots.
pub const OPERATOR: &str = chainboot_store::events::OPERATOR;

/// `[events]`: retention and loop-detection settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventSettings {
    /// Events kept at most (oldest pruned first).
    pub max_events: usize,
    /// Events older than this are pruned.
    #[serde(deserialize_with = "chainboot_config::duration::deserialize")]
    pub max_age: Duration,
    /// First-stage fetches without reaching HTTP that make a chainload loop.
    pub loop_threshold: usize,
    /// ... within this window.
    #[serde(deserialize_with = "chainboot_config::duration::deserialize")]
    pub loop_window: Duration,
    /// Bytes the events may take in the database, table and indexes (oldest pruned first, the
    /// space given back to the filesystem).
    pub max_bytes: u64,
    /// Events without a machine (refused requests) kept at most, apart from the others: a
    /// flood of them pushes out older ones of its kind, never a machine's history.
    pub max_unattributed: usize,
    /// Events of refused requests (missing or refused paths) recorded per second at most, ten
    /// seconds' worth at once; the rest are counted and dropped.
    pub refused_per_second: u32,
    /// A live event stream (`/api/v1/events/stream`) is closed after this long; clients
    /// reconnect (with `after=` the last id they saw).
    #[serde(deserialize_with = "chainboot_config::duration::deserialize")]
    pub stream_max_lifetime: Duration,
    /// Live event streams one client address may hold at once.
    pub streams_per_ip: usize,
}

impl chainboot_config::Validate for EventSettings {
    fn validate(&self) -> Vec<chainboot_config::Issue> {
        let mut out = Vec::new();
        if self.max_events < 100 {
            out.push(chainboot_config::Issue::new(
                vec!["max_events".into()],
                "must be at least 100".into(),
            ));
        }
        if self.loop_threshold < 2 {
            out.push(chainboot_config::Issue::new(
                vec!["loop_threshold".into()],
                "must be at least 2 (one fetch is a normal boot)".into(),
            ));
        }
        if self.loop_window < Duration::from_secs(10) {
            out.push(chainboot_config::Issue::new(
                vec!["loop_window".into()],
                "must be at least 10s".into(),
            ));
        }
        if self.max_bytes < 1024 * 1024 {
            out.push(chainboot_config::Issue::new(
                vec!["max_bytes".into()],
                "must be at least 1048576 (1 MiB)".into(),
            ));
        }
        if self.max_unattributed < 100 {
            out.push(chainboot_config::Issue::new(
                vec!["max_unattributed".into()],
                "must be at least 100".into(),
            ));
        }
        if self.refused_per_second == 0 {
            out.push(chainboot_config::Issue::new(
                vec!["refused_per_second".into()],
                "must be at least 1".into(),
            ));
        }
        if self.stream_max_lifetime < Duration::from_secs(10) {
            out.push(chainboot_config::Issue::new(
                vec!["stream_max_lifetime".into()],
                "must be at least 10s".into(),
            ));
        }
        if self.streams_per_ip == 0 {
            out.push(chainboot_config::Issue::new(
                vec!["streams_per_ip".into()],
                "must be at least 1".into(),
            ));
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
            max_bytes: 64 * 1024 * 1024,
            max_unattributed: 10_000,
            refused_per_second: 10,
            stream_max_lifetime: Duration::from_secs(3600),
            streams_per_ip: 4,
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
    /// Machines whose firmware probably refused the unsigned first stage (Secure Boot),
    /// proven from their own address.
    pub secure_boot_refusals: AtomicU64,
    /// The same pattern where a fetch did not come from the machine's own address: recorded,
    /// never acted on.
    pub secure_boot_unproven: AtomicU64,
    /// Boot clients' DHCP requests turned away from making a machine record (the new-machine
    /// limiter); they are recorded when they reach their script.
    pub sightings_refused: AtomicU64,
    /// Machine updates (records, stages, refusals) the store failed to take.
    pub machine_write_errors: AtomicU64,
    /// Sum and count of the writer's transactions (a batch of events and what they tell about
    /// machines, one commit each) and their latencies, for the store latency metric.
    pub write_micros_total: AtomicU64,
    pub write_batches: AtomicU64,
    /// Events of refused requests dropped by the rate limit.
    pub refused_dropped: AtomicU64,
    /// Details replaced because they were larger than [`MAX_DETAIL_BYTES`].
    pub truncated: AtomicU64,
    /// Events deleted by retention (count, age, bytes).
    pub pruned: AtomicU64,
    /// Bytes of the events' pages in the store, as of the last pruning.
    pub stored_bytes: AtomicU64,
    /// Live streams closed because their reader fell behind.
    pub streams_lagged: AtomicU64,
    /// Live streams refused because their address already held `streams_per_ip`.
    pub streams_refused: AtomicU64,
    /// Events held by the writer while the store fails (a database outage), written when it
    /// answers again.
    pub held: AtomicU64,
    /// Events other servers of the fleet wrote, handed to this server's live streams.
    pub relayed: AtomicU64,
}

enum Msg {
    /// An event and the bytes of its detail's JSON.
    Event(NewEvent, usize),
    /// A boot client's DHCP request (makes its machine known).
    Sighted(Sighted, i64),
    Flush(mpsc::Sender<()>),
}

/// A boot client's DHCP request, as the DHCP observers report it: what its firmware said
/// (sanitised by the caller) and where the packet came from (the new-machine limiter's source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighted {
    pub mac: Mac,
    pub source: IpAddr,
    pub arch: Option<String>,
    pub vendor_class: Option<String>,
    pub uuid: Option<String>,
}

/// How many events may wait for the writer (each at most [`MAX_DETAIL_BYTES`] of detail).
const QUEUE: usize = 8192;
/// IP → MAC entries taught by machines (leases) kept, and neighbour-table answers kept apart:
/// requests from addresses nobody taught (any host can send them, from as many addresses as it
/// likes) only ever push out other such answers, never what machines proved. Past either cap the
/// entry taught (or answered) longest ago goes, one per insert: a flood of new addresses costs
/// the oldest entries only, never what machines taught since.
const MAX_IPS: usize = 65_536;
const MAX_NEIGHBOUR_ANSWERS: usize = 16_384;

/// What is known of client addresses, oldest first: inserting past the capacity drops the
/// oldest entry (O(1)); lookups (`peek`) leave the order alone. SipHash with a per-map key, as
/// the addresses are chosen by whoever sends.
type Recent = LruCache<IpAddr, Learned, RandomState>;

fn recent(cap: usize) -> Recent {
    LruCache::with_hasher(cap, RandomState::new())
}

/// How long an answer of the neighbour table (or its silence) is reused.
const NEIGHBOUR_TTL: Duration = Duration::from_secs(5);

/// The kernel's neighbour table, asked for one address at a time: a client that just
/// exchanged packets with this host on one of its links is in it. A lookup must cost the same
/// however many entries the table holds (a boot storm leaves thousands), since every request
/// of a client the log has not learned asks it.
pub trait Neighbours: Send + Sync {
    /// The hardware address of `ip`'s complete entry, if any.
    fn mac_of(&self, ip: IpAddr) -> Option<Mac>;
}

/// What is known about a client address.
#[derive(Debug, Clone, Copy)]
struct Learned {
    mac: Option<Mac>,
    /// The address itself was shown to be the machine's.
    by_address: bool,
    /// Until when a neighbour-table answer holds (`None`: learned from the machine itself).
    until: Option<Instant>,
}
/// Largest detail kept, as JSON text. Chainboot's own events are a few hundred bytes, and a
/// machine's own report at most its 4 KiB body; a larger detail is replaced by a note of its
/// size. With [`QUEUE`] this bounds the writer's backlog to about 36 MiB at worst.
pub const MAX_DETAIL_BYTES: usize = 4608;
/// Events the live channel holds for its slowest reader; a reader further behind is told it
/// lagged and its stream ends. With bounded details this is at most about 5 MiB.
pub const LIVE_CAPACITY: usize = 1024;
/// An event as live subscribers get it: serialised to JSON once, shared by every reader.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveEvent {
    pub id: i64,
    pub mac: Option<Mac>,
    pub kind: String,
    /// The event as the API lists it (`{"id":..,"at_ms":..,"mac":..,"kind":..,"detail":..}`).
    pub json: Arc<str>,
}

/// The event log. Cheap to share (`Arc`).
pub struct EventLog {
    tx: SyncSender<Msg>,
    live: broadcast::Sender<Arc<LiveEvent>>,
    /// In the order taught (re-teaching moves an address last); at most [`MAX_IPS`].
    ips: Mutex<Recent>,
    /// Neighbour-table answers (a miss too), each for [`NEIGHBOUR_TTL`]: in the order answered,
    /// which is the order they expire in; at most [`MAX_NEIGHBOUR_ANSWERS`].
    neighbour_answers: Mutex<Recent>,
    /// Asked when `ips` has no answer for an address (none until the server sets it).
    neighbours: OnceLock<Arc<dyn Neighbours>>,
    loops: Mutex<LoopDetector>,
    refusals: Mutex<SecureBootDetector>,
    /// Machines seen refusing the unsigned first stage (proven), and when: from the store at
    /// start, then as seen (bounded like the detectors).
    refused_by_firmware: Mutex<HashMap<Mac, i64>>,
    store: Arc<Store>,
    refused: Mutex<TokenBucket>,
    streams: Arc<Mutex<HashMap<IpAddr, usize>>>,
    settings: EventSettings,
    stats: Arc<EventStats>,
}

/// A live stream's hold on its address's share of `streams_per_ip`; released on drop.
pub struct StreamSlot {
    ip: IpAddr,
    streams: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = self.streams.lock();
        if let Some(n) = streams.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                streams.remove(&self.ip);
            }
        }
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl EventLog {
    /// Starts the writer thread. Machines are not recorded from DHCP (see
    /// [`EventLog::start_recording_machines`]).
    pub fn start(store: Arc<Store>, settings: EventSettings) -> Arc<EventLog> {
        EventLog::start_with(store, settings, None)
    }

    /// Starts the writer thread; boot clients' DHCP requests ([`EventLog::sighted`]) make
    /// machine records as far as `limiter` admits them.
    pub fn start_recording_machines(
        store: Arc<Store>,
        settings: EventSettings,
        limiter: Arc<NewMachineLimiter>,
    ) -> Arc<EventLog> {
        EventLog::start_with(store, settings, Some(limiter))
    }

    fn start_with(
        store: Arc<Store>,
        settings: EventSettings,
        limiter: Option<Arc<NewMachineLimiter>>,
    ) -> Arc<EventLog> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        let stats = Arc::new(EventStats::default());
        let refused_rate = Rate {
            per_second: f64::from(settings.refused_per_second),
            burst: f64::from(settings.refused_per_second) * 10.0,
        };
        let log = Arc::new(EventLog {
            tx,
            live: live.clone(),
            ips: Mutex::new(recent(MAX_IPS)),
            neighbour_answers: Mutex::new(recent(MAX_NEIGHBOUR_ANSWERS)),
            neighbours: OnceLock::new(),
            loops: Mutex::new(LoopDetector::new(
                settings.loop_threshold,
                settings.loop_window.as_millis() as i64,
            )),
            refusals: Mutex::new(SecureBootDetector::new(timeline::SECURE_BOOT_SILENCE_MS)),
            refused_by_firmware: Mutex::new(HashMap::new()),
            store: store.clone(),
            refused: Mutex::new(TokenBucket::new(refused_rate, Instant::now())),
            streams: Arc::new(Mutex::new(HashMap::new())),
            settings: settings.clone(),
            stats: stats.clone(),
        });
        let spawned = std::thread::Builder::new()
            .name("chainboot-events".into())
            .spawn(move || writer(store, rx, live, stats, settings, limiter));
        if let Err(e) = spawned {
            warn!("event log writer not started, events will be dropped: {e}");
        }
        log.load_refusals();
        // The Secure Boot detector concludes from silence too (a refused machine may not ask
        // anything for minutes): a tick for it, ending when the log is dropped. It also reads
        // the refusals the fleet's other servers stored, now and then.
        let weak = Arc::downgrade(&log);
        let ticker = std::thread::Builder::new()
            .name("chainboot-events-tick".into())
            .spawn(move || {
                let mut last_load = Instant::now();
                loop {
                    std::thread::sleep(Duration::from_secs(2));
                    let Some(log) = weak.upgrade() else { return };
                    log.expire_silent(now_ms());
                    if last_load.elapsed() >= RELOAD_REFUSALS_EVERY {
                        last_load = Instant::now();
                        log.load_refusals();
                    }
                }
            });
        if let Err(e) = ticker {
            warn!("Secure Boot refusals are only seen when the machine asks again: {e}");
        }
        log
    }

    /// Raises the refusals the silence of their machines concluded by `now`.
    pub fn expire_silent(&self, now: i64) {
        let alerts = self.refusals.lock().expire(now);
        for alert in alerts {
            self.raise_refusal(now, alert);
        }
    }

    /// Counters.
    pub fn stats(&self) -> &Arc<EventStats> {
        &self.stats
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &EventSettings {
        &self.settings
    }

    /// Records an event now. `mac` may be `None` when not known.
    pub fn record(&self, mac: Option<Mac>, kind: &str, detail: serde_json::Value) {
        let (detail, bytes) = self.bounded(detail);
        let at_ms = now_ms();
        let alert = match (mac, stage_of(kind, &detail)) {
            (Some(mac), Some(stage)) => self.loops.lock().observe(at_ms, mac, stage),
            _ => None,
        };
        let refusal = match (mac, secure_boot_signal(kind, &detail)) {
            (Some(mac), Some(signal)) => self.refusals.lock().observe(at_ms, mac, signal),
            _ => None,
        };
        let event = NewEvent {
            at_ms,
            mac,
            kind: kind.to_string(),
            detail,
        };
        self.enqueue(event, bytes);
        if let Some(alert) = alert {
            self.raise_loop(at_ms, alert);
        }
        if let Some(refusal) = refusal {
            self.raise_refusal(at_ms, refusal);
        }
    }

    /// Whether `mac`'s firmware was seen refusing the unsigned first stage, proven from its
    /// own address (since start, or stored by this or another server of the fleet).
    pub fn refused_by_secure_boot(&self, mac: Mac) -> bool {
        self.refused_by_firmware.lock().contains_key(&mac)
    }

    /// A boot client's DHCP request: its machine becomes known (within the new-machine
    /// limits) with what its firmware said. Only memory here: the writer records it with the
    /// next batch of events.
    pub fn sighted(&self, s: Sighted) {
        if self.tx.try_send(Msg::Sighted(s, now_ms())).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Makes the running memory the proven refusals the store remembers (this server's before
    /// a restart, the fleet's other servers'), keeping those raised in the last minutes that
    /// may not be written yet; a machine the operator forgot is forgotten here too.
    fn load_refusals(&self) {
        match self.store.machines_refusing_secure_boot(MAX_REFUSED) {
            Ok(list) => {
                let recent = now_ms() - 2 * RELOAD_REFUSALS_EVERY.as_millis() as i64;
                self.refused_by_firmware.lock().retain(|_, t| *t > recent);
                for (mac, at) in list {
                    self.remember_refusal(mac, at);
                }
            }
            Err(e) => debug!("reading remembered Secure Boot refusals: {e}"),
        }
    }

    fn remember_refusal(&self, mac: Mac, at_ms: i64) {
        let mut seen = self.refused_by_firmware.lock();
        if seen.len() >= MAX_REFUSED && !seen.contains_key(&mac) {
            // The oldest half goes: the table cannot grow without bound.
            let mut times: Vec<i64> = seen.values().copied().collect();
            times.sort_unstable();
            let cutoff = times[times.len() / 2];
            seen.retain(|_, t| *t > cutoff);
        }
        let at = seen.entry(mac).or_insert(at_ms);
        *at = (*at).max(at_ms);
    }

    fn raise_refusal(&self, at_ms: i64, alert: SecureBootAlert) {
        let cause = "the UEFI firmware took the unsigned first stage and never ran it (no iPXE \
                     DHCP request followed): probably Secure Boot refused it (\"Access Denied\"); give this \
                     machine a signed chain (loader = \"grub\" or \"ipxe-shim\", or \
                     [boot] secure_boot_fallback)";
        let unproven = "not acted on: a fetch did not come from the machine's own address \
                        (chainboot's lease for this MAC and the neighbour table must name it), or \
                        only a DHCP request, which anyone can send, followed it";
        if alert.proven {
            self.stats
                .secure_boot_refusals
                .fetch_add(1, Ordering::Relaxed);
            self.remember_refusal(alert.mac, at_ms);
            warn!(mac = %alert.mac, after_ms = alert.after_ms, evidence = alert.evidence,
                "first stage refused by the firmware: {cause}");
        } else {
            self.stats
                .secure_boot_unproven
                .fetch_add(1, Ordering::Relaxed);
            info!(mac = %alert.mac, after_ms = alert.after_ms, evidence = alert.evidence,
                "first stage possibly refused by the firmware, unproven ({unproven})");
        }
        let event = NewEvent {
            at_ms,
            mac: Some(alert.mac),
            kind: SECURE_BOOT_REFUSED.to_string(),
            detail: json!({
                "after_ms": alert.after_ms,
                "evidence": alert.evidence,
                "proven": alert.proven,
                "probable_cause": cause,
                "note": (!alert.proven).then_some(unproven),
            }),
        };
        self.enqueue(event, cause.len() + unproven.len() + 96);
    }

    /// Records the event of a refused request (a missing or refused path), at most
    /// `refused_per_second` of them; returns false when the rate limit dropped it. `mac` only
    /// when the client's address is one its machine proved is its own (an installer's 404 in
    /// its timeline); a stranger's request names no machine.
    pub fn record_refused(&self, mac: Option<Mac>, kind: &str, detail: serde_json::Value) -> bool {
        if !self.refused.lock().try_take(Instant::now()) {
            self.stats.refused_dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.record(mac, kind, detail);
        true
    }

    /// `detail`, or a note of its size when its JSON is larger than [`MAX_DETAIL_BYTES`]; and
    /// the size of what is kept.
    fn bounded(&self, detail: serde_json::Value) -> (serde_json::Value, usize) {
        let bytes = detail.to_string().len();
        if bytes <= MAX_DETAIL_BYTES {
            return (detail, bytes);
        }
        self.stats.truncated.fetch_add(1, Ordering::Relaxed);
        (json!({ "truncated": true, "bytes": bytes }), 48)
    }

    fn raise_loop(&self, at_ms: i64, alert: LoopAlert) {
        self.stats.chainload_loops.fetch_add(1, Ordering::Relaxed);
        let cause = "the machine keeps loading the first-stage iPXE binary without reaching HTTP: \
                     probably another DHCP server on this network also hands out a boot file \
                     (so iPXE is told to load iPXE again), or its iPXE lacks HTTP support";
        warn!(mac = %alert.mac, fetches = alert.fetches, window_s = alert.window_ms / 1000,
            "chainload loop detected: {cause}");
        let event = NewEvent {
            at_ms,
            mac: Some(alert.mac),
            kind: CHAINLOAD_LOOP.to_string(),
            detail: json!({
                "fetches": alert.fetches,
                "window_s": alert.window_ms / 1000,
                "probable_cause": cause,
            }),
        };
        self.enqueue(event, cause.len() + 64);
    }

    fn enqueue(&self, e: NewEvent, bytes: usize) {
        self.stats.recorded.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(Msg::Event(e, bytes)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Remembers that `ip` is `mac`'s, so its later TFTP and HTTP requests land on its
    /// timeline. `by_address` when the address itself was shown to be the machine's (a lease
    /// from this server, the neighbour table): only then are its failed requests filed under
    /// the machine too (a trusted or loopback address may be shared by many).
    pub fn learn_ip(&self, ip: IpAddr, mac: Mac, by_address: bool) {
        self.ips.lock().insert(
            ip,
            Learned {
                mac: Some(mac),
                by_address,
                until: None,
            },
        );
    }

    /// Where [`EventLog::mac_for_ip`] looks when no machine taught the log an address (set
    /// once, at start; later calls change nothing).
    pub fn use_neighbours(&self, neighbours: Arc<dyn Neighbours>) {
        let _ = self.neighbours.set(neighbours);
    }

    /// The MAC last seen with `ip`; failing that, the kernel's neighbour table. A client that
    /// just exchanged packets with us on the same link is in it, which covers what DHCP cannot
    /// tell in proxy mode (the address comes from another server) and plain TFTP clients.
    pub fn mac_for_ip(&self, ip: IpAddr) -> Option<Mac> {
        self.lookup_ip(ip).mac
    }

    /// [`EventLog::mac_for_ip`], but only when the address itself is known to be the machine's.
    pub fn mac_of_address(&self, ip: IpAddr) -> Option<Mac> {
        let l = self.lookup_ip(ip);
        l.mac.filter(|_| l.by_address)
    }

    fn lookup_ip(&self, ip: IpAddr) -> Learned {
        let now = Instant::now();
        if let Some(l) = self.ips.lock().peek(&ip) {
            return *l;
        }
        if let Some(l) = self.neighbour_answers.lock().peek(&ip) {
            if l.until.is_none_or(|t| t > now) {
                return *l;
            }
        }
        // One lookup of one address (never a read of the whole table), outside the lock; its
        // answer, a miss too, is kept for a few seconds, so a client the table does not know
        // (loopback, routed) costs one lookup per few seconds, not one per request.
        let mac = self.neighbours.get().and_then(|n| n.mac_of(ip));
        let l = Learned {
            mac,
            by_address: true,
            until: Some(now + NEIGHBOUR_TTL),
        };
        self.neighbour_answers.lock().insert(ip, l);
        l
    }

    /// Hands events other servers of the fleet wrote (read from the shared database) to live
    /// subscribers, as if this server had written them; returns how many.
    pub fn relay(&self, records: Vec<events::EventRecord>) -> usize {
        let n = records.len();
        for r in records {
            let server = r.server;
            let e = NewEvent {
                at_ms: r.at_ms,
                mac: r.mac,
                kind: r.kind,
                detail: r.detail,
            };
            send_live(&self.live, r.id, e, server.as_deref());
        }
        self.stats.relayed.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// An event the store wrote itself, in the transaction of the change it records (an
    /// operator's change of a machine): handed to live subscribers as this server's, like the
    /// events the writer writes.
    pub fn written(&self, id: i64, e: NewEvent) {
        self.stats.recorded.fetch_add(1, Ordering::Relaxed);
        self.stats.written.fetch_add(1, Ordering::Relaxed);
        send_live(&self.live, id, e, Some(self.store.server_name()));
    }

    /// Live events, as they are written.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.live.subscribe()
    }

    /// A place for one more live stream from `ip`, or `None` when it holds `streams_per_ip`
    /// already (counted).
    pub fn stream_slot(&self, ip: IpAddr) -> Option<StreamSlot> {
        let mut streams = self.streams.lock();
        let n = streams.entry(ip).or_insert(0);
        if *n >= self.settings.streams_per_ip {
            self.stats.streams_refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            ip,
            streams: self.streams.clone(),
        })
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

/// Messages (events and DHCP sightings) the writer takes into one transaction at most: a
/// quarter of the queue, so that a full queue is four commits. A storm is paid for in commits
/// (each an fsync, each queued behind the DHCP server's lease commits for the one SQLite
/// writer), not in rows: the larger the batch a backlog makes, the faster it drains...
const BATCH: usize = QUEUE / 4;
/// ... and bytes of their details: a transaction's pages go to the write-ahead log whole, so
/// this bounds how far one batch can grow it beyond its checkpoint size (4 MiB).
const BATCH_BYTES: usize = 1024 * 1024;
/// What an event's row takes besides its detail (time, MAC, kind, server, index entries), about:
/// the writer's count of bytes written, which paces pruning.
const ROW_BYTES: usize = 96;
/// How long the writer waits for more events before writing a partial batch.
const LINGER: Duration = Duration::from_millis(20);
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// While the store fails, events are held (oldest dropped and counted beyond these bounds:
/// with details of at most [`MAX_DETAIL_BYTES`], about 32 MiB) ...
const MAX_HELD: usize = 50_000;
const MAX_HELD_BYTES: usize = 32 << 20;
/// ... and the write is tried again this often.
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// Events the writer could not write yet, oldest first, bounded.
#[derive(Default)]
struct Held {
    events: std::collections::VecDeque<(NewEvent, usize)>,
    bytes: usize,
    retry_at: Option<Instant>,
}

impl Held {
    fn hold(&mut self, events: Vec<(NewEvent, usize)>, stats: &EventStats) {
        for (e, b) in events {
            self.bytes += b;
            self.events.push_back((e, b));
        }
        while self.events.len() > MAX_HELD || self.bytes > MAX_HELD_BYTES {
            let Some((_, b)) = self.events.pop_front() else {
                break;
            };
            self.bytes -= b;
            stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        stats
            .held
            .store(self.events.len() as u64, Ordering::Relaxed);
    }

    fn waiting(&self) -> bool {
        self.retry_at.is_some_and(|t| Instant::now() < t)
    }

    /// The oldest `n` events, no longer held.
    fn take(&mut self, n: usize) -> Vec<(NewEvent, usize)> {
        let taken: Vec<(NewEvent, usize)> = self.events.drain(..n.min(self.events.len())).collect();
        self.bytes -= taken.iter().map(|(_, b)| b).sum::<usize>();
        taken
    }

    /// `events` (taken by [`Held::take`] and not written) held again, before the rest.
    fn put_back(&mut self, events: Vec<(NewEvent, usize)>) {
        for (e, b) in events.into_iter().rev() {
            self.bytes += b;
            self.events.push_front((e, b));
        }
    }
}

fn writer(
    store: Arc<Store>,
    rx: Receiver<Msg>,
    live: broadcast::Sender<Arc<LiveEvent>>,
    stats: Arc<EventStats>,
    settings: EventSettings,
    limiter: Option<Arc<NewMachineLimiter>>,
) {
    // Prune at start (the budget may have shrunk, or an older chainboot kept more), then every
    // PRUNE_EVERY, and sooner when a sixteenth of the byte budget was written since (rows take
    // up to twice their text in pages: the events stay within about 1.1 times the budget).
    let mut last_prune = Instant::now();
    let mut written_since_prune = settings.max_bytes;
    let mut held = Held::default();
    loop {
        if written_since_prune >= settings.max_bytes / 16 || last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = Instant::now();
            written_since_prune = 0;
            prune(&store, &settings, &stats);
        }
        let wait = if held.events.is_empty() {
            PRUNE_EVERY
        } else {
            RETRY_EVERY
        };
        let first = match rx.recv_timeout(wait) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                if !held.events.is_empty() {
                    held.retry_at = None;
                    write_or_hold(
                        &store,
                        Vec::new(),
                        Observations::default(),
                        &mut held,
                        &live,
                        &stats,
                    );
                }
                return;
            }
        };
        let mut batch = Batch::default();
        if let Some(m) = first {
            batch.push(m);
            let deadline = Instant::now() + LINGER;
            while !batch.is_full() {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
        }
        // What the batch says about machines, written in the transaction of its events.
        let mut machines = machine_steps(&batch.events);
        if !batch.sightings.is_empty() {
            machines.sightings =
                admit_sightings(&store, batch.sightings, limiter.as_deref(), &stats);
        }
        // A flush (tests, shutdown) tries the store at once.
        if !batch.flushes.is_empty() {
            held.retry_at = None;
        }
        written_since_prune +=
            write_or_hold(&store, batch.events, machines, &mut held, &live, &stats);
        for done in batch.flushes {
            let _ = done.send(());
        }
    }
}

/// Writes what is held, then `events`, in batches of at most [`BATCH`], the machine
/// observations `obs` in the first one's transaction; while the store fails (a database
/// outage), keeps the events (bounded) to try again after [`RETRY_EVERY`]. Returns the bytes
/// written.
fn write_or_hold(
    store: &Store,
    events: Vec<(NewEvent, usize)>,
    obs: Observations,
    held: &mut Held,
    live: &broadcast::Sender<Arc<LiveEvent>>,
    stats: &EventStats,
) -> u64 {
    held.hold(events, stats);
    if held.waiting() {
        // The store failed moments ago: the events wait for the retry. What they tell about
        // machines (each one's newest stage, its sightings) is tried now, or lost and counted.
        if let Err(e) = store.machines_observe(&obs) {
            stats.machine_write_errors.fetch_add(1, Ordering::Relaxed);
            debug!("recording machines' stages failed: {e}");
        }
        return 0;
    }
    let mut obs = Some(obs).filter(|o| !o.is_empty());
    let mut written = 0;
    while !held.events.is_empty() || obs.is_some() {
        let batch = held.take(BATCH);
        let with = obs.take().unwrap_or_default();
        match write_batch(store, batch, &with, live, stats) {
            Ok(bytes) => {
                written += bytes;
                if held.retry_at.take().is_some() {
                    info!("event log: the store answers again; held events written");
                }
            }
            Err((err, batch)) => {
                if !with.is_empty() {
                    stats.machine_write_errors.fetch_add(1, Ordering::Relaxed);
                }
                held.put_back(batch);
                if held.retry_at.is_none() {
                    warn!(
                        held = held.events.len(),
                        "event log: the store fails, events are held (at most {MAX_HELD}) and written when it answers: {err}"
                    );
                }
                held.retry_at = Some(Instant::now() + RETRY_EVERY);
                break;
            }
        }
    }
    stats
        .held
        .store(held.events.len() as u64, Ordering::Relaxed);
    written
}

/// What the writer collected for one transaction.
#[derive(Default)]
struct Batch {
    events: Vec<(NewEvent, usize)>,
    sightings: Vec<(Sighted, i64)>,
    bytes: usize,
    flushes: Vec<mpsc::Sender<()>>,
}

impl Batch {
    fn push(&mut self, m: Msg) {
        match m {
            Msg::Event(e, bytes) => {
                self.events.push((e, bytes));
                self.bytes += bytes;
            }
            Msg::Sighted(s, at) => self.sightings.push((s, at)),
            Msg::Flush(done) => self.flushes.push(done),
        }
    }

    fn is_full(&self) -> bool {
        self.events.len() + self.sightings.len() >= BATCH || self.bytes >= BATCH_BYTES
    }
}

/// The stage each machine of the batch reached last, and its Secure Boot refusals.
fn machine_steps(batch: &[(NewEvent, usize)]) -> Observations {
    let mut latest: HashMap<Mac, (&'static str, i64)> = HashMap::new();
    let mut obs = Observations::default();
    for (e, _) in batch {
        let Some(mac) = e.mac else { continue };
        let stage = if e.kind == SECURE_BOOT_REFUSED {
            let proven = e.detail.get("proven").and_then(|v| v.as_bool()) == Some(true);
            let evidence = e
                .detail
                .get("evidence")
                .and_then(|v| v.as_str())
                .unwrap_or("");
            obs.secure_boot.push((
                mac,
                SecureBootMark {
                    proven,
                    at_ms: e.at_ms,
                    why: evidence.to_string(),
                },
            ));
            proven.then_some(SECURE_BOOT_REFUSED)
        } else {
            stage_of(&e.kind, &e.detail).map(Stage::name)
        };
        if let Some(stage) = stage {
            let slot = latest.entry(mac).or_insert((stage, e.at_ms));
            if e.at_ms >= slot.1 {
                *slot = (stage, e.at_ms);
            }
        }
    }
    obs.stages = latest
        .into_iter()
        .map(|(mac, (stage, at))| (mac, stage.to_string(), at))
        .collect();
    obs
}

/// The batch's DHCP sightings, one per machine (the latest, with what earlier ones said), and
/// for machines without a record whether the limiter lets this one make it.
fn admit_sightings(
    store: &Store,
    sightings: Vec<(Sighted, i64)>,
    limiter: Option<&NewMachineLimiter>,
    stats: &EventStats,
) -> Vec<Sighting> {
    let mut by_mac: HashMap<Mac, (Sighted, i64)> = HashMap::new();
    for (s, at) in sightings {
        match by_mac.get_mut(&s.mac) {
            Some((old, old_at)) => {
                *old = Sighted {
                    arch: s.arch.or(old.arch.take()),
                    vendor_class: s.vendor_class.or(old.vendor_class.take()),
                    uuid: s.uuid.or(old.uuid.take()),
                    ..s
                };
                *old_at = (*old_at).max(at);
            }
            None => {
                by_mac.insert(s.mac, (s, at));
            }
        }
    }
    let macs: Vec<Mac> = by_mac.keys().copied().collect();
    let known = match store.machines_known(&macs) {
        Ok(k) => k,
        // Unknown which are new: nothing is created, known ones are still updated.
        Err(e) => {
            debug!("reading which machines are known failed: {e}");
            macs.iter().copied().collect()
        }
    };
    let now = Instant::now();
    by_mac
        .into_values()
        .map(|(s, at)| {
            let create_with_secret = match limiter {
                Some(l) if !known.contains(&s.mac) => {
                    let n = l
                        .recorded(now, || store.machine_count())
                        .unwrap_or(u64::MAX);
                    match l.admit(s.source, now, n) {
                        Ok(()) => Some(new_secret()),
                        Err(_) => {
                            stats.sightings_refused.fetch_add(1, Ordering::Relaxed);
                            None
                        }
                    }
                }
                _ => None,
            };
            Sighting {
                mac: s.mac,
                at_ms: at,
                arch: s.arch,
                vendor_class: s.vendor_class,
                uuid: s.uuid,
                create_with_secret,
            }
        })
        .collect()
}

/// A new machine's secret (as the policy chooses one for a machine first seen on `/ipxe`: 16
/// random bytes in hex).
fn new_secret() -> String {
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes[..]);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A batch the store refused: why, and its events (with their sizes), to hold again.
type Unwritten = (chainboot_store::StoreError, Vec<(NewEvent, usize)>);

/// Writes a batch of events and the machine observations `obs` in one transaction and hands
/// the events to live subscribers (serialised only when there are any); returns the bytes
/// written (estimated), or the error with the events not written.
fn write_batch(
    store: &Store,
    batch: Vec<(NewEvent, usize)>,
    obs: &Observations,
    live: &broadcast::Sender<Arc<LiveEvent>>,
    stats: &EventStats,
) -> Result<u64, Unwritten> {
    let started = Instant::now();
    let (events, sizes): (Vec<NewEvent>, Vec<usize>) = batch.into_iter().unzip();
    let ids = match events::append_observed(store, &events, obs) {
        Ok(ids) => ids,
        Err(err) => {
            stats
                .write_errors
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            return Err((err, events.into_iter().zip(sizes).collect()));
        }
    };
    stats.written.fetch_add(ids.len() as u64, Ordering::Relaxed);
    stats
        .write_micros_total
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    stats.write_batches.fetch_add(1, Ordering::Relaxed);
    let bytes = sizes.iter().map(|b| (b + ROW_BYTES) as u64).sum();
    if live.receiver_count() > 0 {
        for (id, e) in ids.into_iter().zip(events) {
            send_live(live, id, e, Some(store.server_name()));
        }
    }
    Ok(bytes)
}

/// Hands one written event to live subscribers, serialised here, once (every subscriber shares
/// the text) in the shape the API lists it; returns the text's length.
fn send_live(
    live: &broadcast::Sender<Arc<LiveEvent>>,
    id: i64,
    e: NewEvent,
    server: Option<&str>,
) -> u64 {
    let json = json!({
        "id": id,
        "at_ms": e.at_ms,
        "mac": e.mac,
        "kind": e.kind,
        "detail": e.detail,
        "server": server,
    })
    .to_string();
    let bytes = json.len() as u64;
    let _ = live.send(Arc::new(LiveEvent {
        id,
        mac: e.mac,
        kind: e.kind,
        json: json.into(),
    }));
    bytes
}

fn prune(store: &Store, settings: &EventSettings, stats: &EventStats) {
    let keep = Retention {
        max_count: settings.max_events,
        min_at_ms: now_ms() - settings.max_age.as_millis() as i64,
        max_bytes: settings.max_bytes,
        max_unattributed: settings.max_unattributed,
    };
    match events::prune(store, &keep) {
        Ok(n) if n > 0 => {
            stats.pruned.fetch_add(n as u64, Ordering::Relaxed);
            debug!(deleted = n, "old events pruned");
        }
        Ok(_) => {}
        Err(e) => warn!("pruning events failed: {e}"),
    }
    if let Ok(b) = events::stored_bytes(store) {
        stats.stored_bytes.store(b, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainboot_store::events::EventFilter;

    /// A neighbour table that counts its lookups.
    struct Counting {
        known: HashMap<IpAddr, Mac>,
        asked: AtomicU64,
    }

    impl Neighbours for Counting {
        fn mac_of(&self, ip: IpAddr) -> Option<Mac> {
            self.asked.fetch_add(1, Ordering::Relaxed);
            self.known.get(&ip).copied()
        }
    }

    #[test]
    fn a_miss_asks_the_neighbour_table_for_one_address_once_and_remembers_the_answer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log = EventLog::start(store, EventSettings::default());
        let on_link: IpAddr = "198.18.0.77".parse().unwrap();
        let mac: Mac = "52:54:00:00:00:77".parse().unwrap();
        // Before the server gives it a table: nothing known, nothing asked.
        assert_eq!(log.mac_for_ip("198.18.0.5".parse().unwrap()), None);
        let table = Arc::new(Counting {
            known: HashMap::from([(on_link, mac)]),
            asked: AtomicU64::new(0),
        });
        log.use_neighbours(table.clone());
        // A storm of strangers, each asking three times: one lookup per address.
        let strangers: Vec<IpAddr> = (0..2000u32)
            .map(|i| IpAddr::V4(std::net::Ipv4Addr::from(0xc612_1000 + i)))
            .collect();
        for _ in 0..3 {
            for ip in &strangers {
                assert_eq!(log.mac_for_ip(*ip), None);
            }
        }
        assert_eq!(table.asked.load(Ordering::Relaxed), 2000);
        // The table's answer names the machine, as its own address.
        assert_eq!(log.mac_for_ip(on_link), Some(mac));
        assert_eq!(log.mac_of_address(on_link), Some(mac));
        assert_eq!(table.asked.load(Ordering::Relaxed), 2001);
        // What a machine taught the log is never asked of the table.
        let learned: IpAddr = "198.18.0.9".parse().unwrap();
        log.learn_ip(learned, mac, false);
        assert_eq!(log.mac_for_ip(learned), Some(mac));
        assert_eq!(
            log.mac_of_address(learned),
            None,
            "not shown to be its address"
        );
        assert_eq!(table.asked.load(Ordering::Relaxed), 2001);
    }

    #[test]
    fn strangers_from_more_addresses_than_the_answers_kept_never_push_out_what_machines_taught() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log = EventLog::start(store, EventSettings::default());
        let table = Arc::new(Counting {
            known: HashMap::new(),
            asked: AtomicU64::new(0),
        });
        log.use_neighbours(table.clone());
        let leased: IpAddr = "198.18.0.9".parse().unwrap();
        let mac: Mac = "52:54:00:00:00:09".parse().unwrap();
        log.learn_ip(leased, mac, true);
        let n = (MAX_IPS + MAX_NEIGHBOUR_ANSWERS) as u32;
        for i in 0..n {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0xc612_0000 + 0x100 + i));
            assert_eq!(log.mac_for_ip(ip), None);
        }
        assert_eq!(table.asked.load(Ordering::Relaxed), u64::from(n));
        assert_eq!(
            log.mac_of_address(leased),
            Some(mac),
            "the lease's mapping stays"
        );
        assert!(log.neighbour_answers.lock().len() <= MAX_NEIGHBOUR_ANSWERS);
        assert_eq!(
            table.asked.load(Ordering::Relaxed),
            u64::from(n),
            "and is not asked"
        );
    }

    #[test]
    fn a_flood_of_taught_addresses_past_the_cap_pushes_out_the_oldest_not_recent_machines() {
        let store = Arc::new(Store::in_memory().unwrap());
        let log = EventLog::start(store, EventSettings::default());
        let stranger = |i: u32| IpAddr::V4(std::net::Ipv4Addr::from(0xc612_0000 + i));
        let stranger_mac =
            |i: u32| Mac([0x52, 0x54, 0x01, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        let teach = |i: u32| {
            log.learn_ip(stranger(i), stranger_mac(i), true);
            assert!(log.ips.lock().len() <= MAX_IPS);
        };
        // A machine taught first and taught again half-way through: its place is its latest.
        let early: IpAddr = "198.19.255.1".parse().unwrap();
        let early_mac: Mac = "52:54:00:00:01:01".parse().unwrap();
        log.learn_ip(early, early_mac, true);
        let cap = MAX_IPS as u32;
        for i in 0..cap / 2 {
            teach(i);
        }
        log.learn_ip(early, early_mac, true);
        // Strangers fill the map to its cap, a machine is taught, and strangers keep coming.
        for i in cap / 2..cap - 2 {
            teach(i);
        }
        let recent: IpAddr = "198.19.255.2".parse().unwrap();
        let recent_mac: Mac = "52:54:00:00:01:02".parse().unwrap();
        log.learn_ip(recent, recent_mac, true);
        assert_eq!(log.ips.lock().len(), MAX_IPS, "full");
        for i in cap - 2..cap + 1000 {
            teach(i);
        }
        assert_eq!(log.ips.lock().len(), MAX_IPS);
        assert_eq!(log.mac_of_address(recent), Some(recent_mac));
        assert_eq!(log.mac_of_address(early), Some(early_mac), "taught again");
        // The oldest strangers went, one per newcomer; the rest still map.
        assert_eq!(log.mac_for_ip(stranger(0)), None);
        assert_eq!(log.mac_for_ip(stranger(1001)), None);
        assert_eq!(log.mac_for_ip(stranger(1002)), Some(stranger_mac(1002)));
        assert_eq!(
            log.mac_for_ip(stranger(cap - 3)),
            Some(stranger_mac(cap - 3))
        );
        assert_eq!(
            log.mac_for_ip(stranger(cap + 999)),
            Some(stranger_mac(cap + 999))
        );
    }

    #[test]
    fn a_full_queue_is_written_in_four_commits_with_what_it_tells_about_machines() {
        let store = Arc::new(Store::in_memory().unwrap());
        let macs: Vec<Mac> = (0..1000u32)
            .map(|i| Mac([0x52, 0x54, 0, 0x33, (i >> 8) as u8, i as u8]))
            .collect();
        let known = Observations {
            sightings: macs
                .iter()
                .map(|m| Sighting {
                    mac: *m,
                    at_ms: 1,
                    arch: None,
                    vendor_class: None,
                    uuid: None,
                    create_with_secret: Some("00".into()),
                })
                .collect(),
            ..Default::default()
        };
        store.machines_observe(&known).unwrap();
        // A storm's backlog: the queue full of a thousand machines' first stages and scripts
        // before the writer takes any.
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        for i in 0..QUEUE {
            let detail = if i < QUEUE / 2 {
                json!({"first_stage": true, "path": "undionly.kpxe", "outcome": "ok"})
            } else {
                json!({"what": "script", "path": "/boot.ipxe", "outcome": "ok"})
            };
            let kind = if i < QUEUE / 2 { "tftp" } else { "http" };
            let bytes = detail.to_string().len();
            let event = NewEvent {
                at_ms: 1000 + i as i64,
                mac: Some(macs[i % macs.len()]),
                kind: kind.into(),
                detail,
            };
            assert!(tx.try_send(Msg::Event(event, bytes)).is_ok());
        }
        drop(tx);
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        let stats = Arc::new(EventStats::default());
        let before = store.commits();
        writer(
            store.clone(),
            rx,
            live,
            stats.clone(),
            EventSettings::default(),
            None,
        );
        assert_eq!(stats.written.load(Ordering::Relaxed), QUEUE as u64);
        // One commit prunes at start; then one per BATCH messages, the machines' stages in
        // the same transactions as their events (not one more commit per batch).
        assert_eq!(BATCH, 2048);
        assert_eq!(stats.write_batches.load(Ordering::Relaxed), 4);
        assert_eq!(store.commits() - before, 1 + 4);
        for mac in &macs {
            let fw = store.machine(*mac).unwrap().unwrap().firmware;
            assert_eq!(fw.stage.as_deref(), Some("script"), "{mac}");
        }
        assert_eq!(
            events::list(&store, &EventFilter::default()).unwrap().len(),
            500
        );
    }

    #[test]
    fn a_flood_beyond_the_queue_is_written_or_counted_as_dropped_never_lost_silently() {
        let store = Arc::new(Store::in_memory().unwrap());
        let log = EventLog::start(store.clone(), EventSettings::default());
        let n = 3 * QUEUE as u64;
        for i in 0..n {
            log.record(
                None,
                "tftp",
                json!({"client": format!("198.18.0.{}:1000", i % 250), "outcome": "ok"}),
            );
        }
        assert!(log.flush(Duration::from_secs(60)));
        let s = log.stats();
        let (written, dropped) = (
            s.written.load(Ordering::Relaxed),
            s.dropped.load(Ordering::Relaxed),
        );
        assert_eq!(s.recorded.load(Ordering::Relaxed), n);
        assert_eq!(written + dropped, n, "written {written}, dropped {dropped}");
        assert!(
            written >= QUEUE as u64,
            "at least a queue's worth: {written}"
        );
    }

    #[test]
    fn events_held_through_a_database_outage_are_written_in_their_order_when_it_answers() {
        use chainboot_store::{StoreBackend, StoreConfig};
        let pg = chainboot_testnet::postgres::PgCluster::start();
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            backend: StoreBackend::Postgres,
            url: Some(pg.fresh_database()),
            password_file: Some(pg.password_file()),
            server_name: Some("pxe-a".into()),
            connect_timeout: Duration::from_millis(500),
            ..Default::default()
        };
        let store = Arc::new(Store::from_config(&cfg, dir.path()).unwrap());
        let log = EventLog::start(store.clone(), EventSettings::default());
        let record = |n: u32| log.record(None, "tftp", json!({"n": n}));
        record(0);
        assert!(log.flush(Duration::from_secs(30)));
        pg.stop();
        // Two batches tried while the database is away: both held, none dropped.
        (1..=5).for_each(record);
        assert!(log.flush(Duration::from_secs(30)));
        (6..=7).for_each(record);
        assert!(log.flush(Duration::from_secs(30)));
        assert_eq!(log.stats().held.load(Ordering::Relaxed), 7);
        assert_eq!(log.stats().dropped.load(Ordering::Relaxed), 0);
        pg.restart();
        assert!(log.flush(Duration::from_secs(30)));
        assert_eq!(log.stats().held.load(Ordering::Relaxed), 0);
        let all = events::list(&store, &EventFilter::default()).unwrap();
        let order: Vec<u64> = all
            .iter()
            .rev()
            .map(|e| e.detail["n"].as_u64().unwrap())
            .collect();
        assert_eq!(
            order,
            [0, 1, 2, 3, 4, 5, 6, 7],
            "ids follow the order recorded"
        );
    }

    #[test]
    fn recorded_events_are_written_streamed_and_loops_raised() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log = EventLog::start(store.clone(), EventSettings::default());
        let mut live = log.subscribe();
        let mac: Mac = "52:54:00:aa:bb:cc".parse().unwrap();
        log.learn_ip("198.18.0.9".parse().unwrap(), mac, true);
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
        let parsed: serde_json::Value = serde_json::from_str(&first.json).unwrap();
        assert_eq!(parsed["detail"]["path"], "undionly.kpxe");
        assert_eq!(parsed["mac"], "52:54:00:aa:bb:cc");
    }

    fn limiter() -> Arc<NewMachineLimiter> {
        Arc::new(NewMachineLimiter::new(
            chainboot_store::limit::MachineLimits::default(),
            Instant::now(),
        ))
    }

    fn pxe_sighting(mac: Mac, source: &str) -> Sighted {
        Sighted {
            mac,
            source: source.parse().unwrap(),
            arch: Some("efi-x64".into()),
            vendor_class: Some("PXEClient:Arch:00007:UNDI:003016".into()),
            uuid: None,
        }
    }

    /// An unsigned first stage taken whole, from the machine's own address or not.
    fn took_unsigned(log: &EventLog, mac: Mac, path: &str, own: bool) {
        log.record(
            Some(mac),
            "tftp",
            json!({"first_stage": true, "path": path, "outcome": "ok", "own_address": own}),
        );
    }

    #[test]
    fn a_proven_refusal_is_remembered_in_the_store_and_an_unproven_one_switches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log =
            EventLog::start_recording_machines(store.clone(), EventSettings::default(), limiter());
        let (refused, healthy, victim): (Mac, Mac, Mac) = (
            "52:54:00:aa:bb:01".parse().unwrap(),
            "52:54:00:aa:bb:02".parse().unwrap(),
            "52:54:00:aa:bb:04".parse().unwrap(),
        );
        for mac in [refused, healthy, victim] {
            log.sighted(pxe_sighting(mac, "0.0.0.0"));
            log.record(Some(mac), "dhcp", json!({"client": "pxe"}));
        }
        took_unsigned(&log, refused, "ipxe.efi", true);
        took_unsigned(&log, healthy, "ipxe.efi", true);
        log.record(Some(healthy), "dhcp", json!({"client": "ipxe"}));
        // OVMF's next option: DHCP (proves nothing), then the binary again over HTTP Boot.
        log.record(Some(refused), "dhcp", json!({"client": "http-boot"}));
        assert!(!log.refused_by_secure_boot(refused), "a DHCP request alone");
        log.record(
            Some(refused),
            "http",
            json!({"what": "first-stage", "path": "/ipxe-bin/ipxe.efi", "outcome": "ok",
                "own_address": true}),
        );
        assert!(log.refused_by_secure_boot(refused));
        assert!(!log.refused_by_secure_boot(healthy));
        // A stranger's fetch in the victim's name, then a DHCP request in its name.
        took_unsigned(&log, victim, "ipxe.efi", false);
        log.record(Some(victim), "dhcp", json!({"client": "pxe"}));
        assert!(!log.refused_by_secure_boot(victim));
        assert_eq!(log.stats().secure_boot_refusals.load(Ordering::Relaxed), 1);
        assert_eq!(log.stats().secure_boot_unproven.load(Ordering::Relaxed), 1);
        assert!(log.flush(Duration::from_secs(5)));
        let all = events::list(&store, &EventFilter::default()).unwrap();
        let alert = |mac| {
            all.iter()
                .find(|e| e.kind == SECURE_BOOT_REFUSED && e.mac == Some(mac))
                .unwrap()
        };
        assert_eq!(alert(refused).detail["proven"], true);
        assert_eq!(alert(refused).detail["evidence"], "fetched-again");
        assert!(alert(refused).detail["probable_cause"]
            .as_str()
            .unwrap()
            .contains("Secure Boot"));
        assert_eq!(alert(victim).detail["proven"], false);
        // Remembered in the machines' records, the victim's as unproven.
        let fw = |mac| store.machine(mac).unwrap().unwrap().firmware;
        let mark = fw(refused).secure_boot.unwrap();
        assert!(mark.proven);
        assert_eq!(fw(refused).stage.as_deref(), Some(SECURE_BOOT_REFUSED));
        assert!(!fw(victim).secure_boot.unwrap().proven);
        assert_eq!(fw(healthy).secure_boot, None);
        assert_eq!(fw(healthy).stage.as_deref(), Some("ipxe-dhcp"));
        // Silent after the download (OVMF trying PXE over IPv6 next): concluded by the tick.
        let silent: Mac = "52:54:00:aa:bb:03".parse().unwrap();
        took_unsigned(&log, silent, "snponly.efi", true);
        log.expire_silent(now_ms() + timeline::SECURE_BOOT_SILENCE_MS / 2);
        assert!(!log.refused_by_secure_boot(silent));
        log.expire_silent(now_ms() + timeline::SECURE_BOOT_SILENCE_MS);
        assert!(log.refused_by_secure_boot(silent));
        assert!(log.flush(Duration::from_secs(5)));
        drop(log);

        // A restart: the proven refusal is known again, the unproven one is not.
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log = EventLog::start(store, EventSettings::default());
        assert!(log.refused_by_secure_boot(refused));
        assert!(!log.refused_by_secure_boot(victim));
        assert!(!log.refused_by_secure_boot(healthy));
    }

    #[test]
    fn boot_clients_dhcp_requests_make_machines_known_within_the_new_machine_limits() {
        let store = Arc::new(Store::in_memory().unwrap());
        let log =
            EventLog::start_recording_machines(store.clone(), EventSettings::default(), limiter());
        let mac: Mac = "52:54:00:aa:cc:01".parse().unwrap();
        log.sighted(Sighted {
            uuid: Some("8d7a0e6c-0000-4000-8000-0000000000aa".into()),
            ..pxe_sighting(mac, "0.0.0.0")
        });
        log.record(Some(mac), "dhcp", json!({"client": "pxe"}));
        log.record(
            Some(mac),
            "tftp",
            json!({"first_stage": true, "path": "undionly.kpxe", "outcome": "ok"}),
        );
        assert!(log.flush(Duration::from_secs(5)));
        let m = store.machine(mac).unwrap().expect("known from DHCP");
        assert_eq!(m.firmware.arch.as_deref(), Some("efi-x64"));
        assert_eq!(
            m.firmware.vendor_class.as_deref(),
            Some("PXEClient:Arch:00007:UNDI:003016")
        );
        assert_eq!(
            m.firmware.uuid.as_deref(),
            Some("8d7a0e6c-0000-4000-8000-0000000000aa")
        );
        assert_eq!(m.firmware.stage.as_deref(), Some("first-stage"));
        // What DHCP said is not a fact the policy decides on.
        assert_eq!(m.facts, Default::default());
        // One relay (or one address) announcing random MACs: its per-source budget (20 a
        // minute), then nothing; the machines it named are not recorded.
        for i in 0..200u32 {
            let mac = Mac([0x02, 0, 0, 0, (i >> 8) as u8, i as u8]);
            log.sighted(pxe_sighting(mac, "198.18.5.1"));
        }
        assert!(log.flush(Duration::from_secs(5)));
        assert_eq!(store.machine_count().unwrap(), 1 + 20);
        assert_eq!(log.stats().sightings_refused.load(Ordering::Relaxed), 180);
        // Without a limiter (a log that does not record machines) nobody is created.
        let store = Arc::new(Store::in_memory().unwrap());
        let log = EventLog::start(store.clone(), EventSettings::default());
        log.sighted(pxe_sighting(mac, "0.0.0.0"));
        assert!(log.flush(Duration::from_secs(5)));
        assert_eq!(store.machine_count().unwrap(), 0);
    }

    #[test]
    fn large_details_are_replaced_by_a_note_of_their_size() {
        let store = Arc::new(Store::in_memory().unwrap());
        let log = EventLog::start(store.clone(), EventSettings::default());
        log.record(None, "api", json!({ "body": "x".repeat(1 << 20) }));
        assert!(log.flush(Duration::from_secs(5)));
        let all = events::list(&store, &EventFilter::default()).unwrap();
        assert_eq!(all[0].detail["truncated"], true);
        assert!(all[0].detail.to_string().len() < 100);
        assert_eq!(log.stats().truncated.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn refused_requests_are_rate_limited_and_never_a_machines_events() {
        let store = Arc::new(Store::in_memory().unwrap());
        let settings = EventSettings::default();
        let burst = settings.refused_per_second as usize * 10;
        let log = EventLog::start(store.clone(), settings);
        let recorded = (0..1000)
            .filter(|_| {
                log.record_refused(
                    None,
                    "tftp",
                    json!({"path": "undionly.kpxe", "first_stage": true}),
                )
            })
            .count();
        assert!((burst..burst + 5).contains(&recorded), "{recorded}");
        assert!(log.flush(Duration::from_secs(5)));
        let all = events::list(
            &store,
            &EventFilter {
                limit: Some(1000),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(all.len(), recorded);
        assert!(all.iter().all(|e| e.mac.is_none()));
        assert_eq!(log.stats().chainload_loops.load(Ordering::Relaxed), 0);
        assert_eq!(
            log.stats().refused_dropped.load(Ordering::Relaxed) as usize,
            1000 - recorded
        );
    }

    #[test]
    fn streams_per_address_are_capped_and_released() {
        let store = Arc::new(Store::in_memory().unwrap());
        let log = EventLog::start(store, EventSettings::default());
        let ip: IpAddr = "198.18.0.66".parse().unwrap();
        let slots: Vec<StreamSlot> = (0..4).filter_map(|_| log.stream_slot(ip)).collect();
        assert_eq!(slots.len(), 4);
        assert!(log.stream_slot(ip).is_none());
        assert!(log.stream_slot("198.18.0.10".parse().unwrap()).is_some());
        drop(slots);
        assert!(log.stream_slot(ip).is_some());
    }
}
