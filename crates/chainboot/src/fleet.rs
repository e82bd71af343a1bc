//! A server's part in a fleet (`[store] backend = "postgres"`): its heartbeat in the
//! live-servers table, the live peers handed to the DHCP and DHCPv6 engines (which share
//! clients with them by hash; the DHCPv6 engine also gets the peers' server DUIDs), and the
//! leases other servers wrote (IPv4 and IPv6) loaded into the engines, so that a client whose
//! server stopped is renewed by the server that takes it over, and no server offers an
//! address another one holds. The events other servers wrote are read from the database on the
//! same beat and handed to this server's live streams, so any server's stream shows the fleet.
//!
//! A peer that dies is noticed through its presence lock (`chainboot_store::presence`) the
//! moment its database sessions close, and a beat runs at once, so that its clients are
//! answered by the others within milliseconds instead of at the next heartbeat.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chainboot_dhcp::driver::Takeover;
use chainboot_dhcp::engine::fleet::Fleet;
use chainboot_dhcp::Engine;
use chainboot_dhcp6::Engine6;
use chainboot_events::follow::Follower;
use chainboot_events::EventLog;
use chainboot_policy::PeerBases;
use chainboot_store::events::EventRecord;
use chainboot_store::leases6::{self, Lease6Record};
use chainboot_store::presence::PresenceWatch;
use chainboot_store::{events, leases, servers, Store, StoreConfig, StoreError};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Leases written this long before the last poll are read again: writers' clocks differ a
/// little, and a batch committed just after a poll started carries a time before it.
const LEASE_OVERLAP_S: i64 = 10;

/// How long after a server stopped its address still counts as a departed fleet server's
/// (whose clients get a NAK rather than silence): a client repeats a REQUEST to the server it
/// chose for about a minute at most (RFC 2131's backoff reaches 64 s); later that address may
/// be anybody's.
const DEPARTED_FOR_MS: i64 = 60_000;

/// Pages of other servers' events read per beat at most (a page is at most 1000): a beat
/// takes at most this many from a fleet that writes faster, the rest follows on later beats.
const EVENT_PAGES_PER_BEAT: usize = 10;
const EVENT_PAGE: usize = 1000;

/// Peers whose presence is watched at most (each watch holds a database session); beyond
/// them, the heartbeat alone notices a death.
const MAX_WATCHED_PEERS: usize = 16;

/// What this server knows of its peers' presence: the watches running, and the peers whose
/// presence ended, with when (Unix ms by the database's clock, as heartbeats are written).
#[derive(Default)]
struct Presence {
    watches: HashMap<String, PresenceWatch>,
    gone: HashMap<String, i64>,
}

impl Presence {
    /// Whether `row` counts as live: heart-beating and connected, and, if its presence ended,
    /// heart-beating since (a server whose lock was released while it lives, say while its
    /// presence session reconnects after a database restart, is back at its next heartbeat;
    /// a server killed just after a heartbeat is not).
    fn is_live(&self, row: &servers::ServerRecord, within_ms: i64) -> bool {
        if !row.is_live(within_ms) {
            return false;
        }
        match self.gone.get(&row.name) {
            Some(at_ms) => row.heartbeat_ms > *at_ms,
            None => true,
        }
    }

    /// After a beat: forget ended presences of servers live again or no longer listed, stop
    /// watching servers not live, and watch the live peers not yet watched (at most
    /// [`MAX_WATCHED_PEERS`]); a watch that fires sends the peer's name on `gone`.
    fn after_beat(
        &mut self,
        store: &Store,
        rows: &[servers::ServerRecord],
        live: &[&servers::ServerRecord],
        gone: &tokio::sync::mpsc::Sender<(String, i64)>,
    ) {
        let me = store.server_name();
        self.gone.retain(|name, _| {
            rows.iter().any(|r| r.name == *name) && !live.iter().any(|r| r.name == *name)
        });
        self.watches
            .retain(|name, _| live.iter().any(|r| r.name == *name));
        for row in live {
            if row.name == me
                || self.watches.contains_key(&row.name)
                || self.watches.len() >= MAX_WATCHED_PEERS
            {
                continue;
            }
            let tx = gone.clone();
            let name = row.name.clone();
            let watch = store.watch_presence(&row.name, move |at_ms| {
                // At most one message per watch, and the loop reads them as they come.
                let _ = tx.try_send((name, at_ms));
            });
            if let Some(w) = watch {
                self.watches.insert(row.name.clone(), w);
            }
        }
    }

    /// A watch fired: `name`'s presence session closed at `at_ms`.
    fn ended(&mut self, name: String, at_ms: i64) {
        self.watches.remove(&name);
        self.gone.insert(name, at_ms);
    }
}

/// The events written by other servers since the last call (none on the first: the follower
/// starts at the newest event).
fn others_events(store: &Store, follower: &mut Follower) -> Result<Vec<EventRecord>, StoreError> {
    if !follower.started() {
        follower.start_at(events::newest_id(store)?);
        return Ok(Vec::new());
    }
    let me = store.server_name();
    let mut out = Vec::new();
    for _ in 0..EVENT_PAGES_PER_BEAT {
        let (after, gaps) = follower.want();
        let page = events::following(store, after, &gaps, me, EVENT_PAGE)?;
        let full = page.len() >= EVENT_PAGE;
        let ids: Vec<i64> = page.iter().map(|e| e.id).collect();
        let new = follower.took(&ids, Instant::now());
        out.extend(
            page.into_iter()
                .filter(|e| e.server.as_deref() != Some(me) && new.binary_search(&e.id).is_ok()),
        );
        if !full {
            break;
        }
    }
    Ok(out)
}

/// What one beat learns.
struct Beat {
    /// Every server's row.
    rows: Vec<servers::ServerRecord>,
    /// The leases other servers changed since the poll's start (Unix s).
    changed: Vec<leases::LeaseRecord>,
    /// The same for DHCPv6 leases, and every server's DHCPv6 DUID (when DHCPv6 runs).
    changed6: Vec<Lease6Record>,
    duids: Vec<(String, Vec<u8>)>,
    /// The other servers' new events.
    news: Vec<EventRecord>,
}

/// One beat: this server's heartbeat, then what the others did.
fn beat(
    s: &Store,
    first: bool,
    poll_from: i64,
    follower: &mut Follower,
    addresses: &[Ipv4Addr],
    dhcp6: bool,
) -> Result<Beat, StoreError> {
    servers::heartbeat(s, env!("CARGO_PKG_VERSION"), first, addresses)?;
    let rows = servers::all(s)?;
    let changed = leases::changed_since(s, poll_from)?;
    let (changed6, duids) = if dhcp6 {
        (
            leases6::changed_since(s, poll_from)?,
            leases6::server_duids(s)?,
        )
    } else {
        (Vec::new(), Vec::new())
    };
    let news = others_events(s, follower)?;
    Ok(Beat {
        rows,
        changed,
        changed6,
        duids,
        news,
    })
}

/// What a server hands the fleet loop: its DHCP engines (with what tells their drivers that
/// a peer is gone), the addresses it answers DHCP from (its server identifiers, published so
/// that its peers know a message naming one is this server's) and where the live peers' boot
/// listeners go (the script routes name them as alternatives to this server's URLs).
pub struct Member {
    pub engine: Option<(Arc<Mutex<Engine>>, Takeover)>,
    pub engine6: Option<(Arc<Mutex<Engine6>>, Takeover)>,
    pub addresses: Vec<Ipv4Addr>,
    pub peer_bases: PeerBases,
}

/// Runs until `shutdown`, then removes this server from the live-servers table.
pub async fn run(
    store: Arc<Store>,
    member: Member,
    events: Arc<EventLog>,
    cfg: StoreConfig,
    shutdown: CancellationToken,
) {
    let Member {
        engine,
        engine6,
        addresses,
        peer_bases,
    } = member;
    let mut every = tokio::time::interval(cfg.heartbeat);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let within_ms = cfg.peer_timeout.as_millis() as i64;
    let mut first = true;
    let mut since = 0i64;
    let mut failing = false;
    let mut peers: Vec<String> = Vec::new();
    let mut follower = Some(Follower::new());
    let mut presence = Presence::default();
    let (gone_tx, mut gone_rx) = tokio::sync::mpsc::channel::<(String, i64)>(MAX_WATCHED_PEERS);
    // This server's own presence lock, held before its first heartbeat, so that a peer that
    // sees it live finds the lock held.
    let s = store.clone();
    let wait = cfg.connect_timeout;
    let _ = tokio::task::spawn_blocking(move || s.hold_presence(wait)).await;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            Some((name, at_ms)) = gone_rx.recv() => {
                info!(server = %name, "fleet: a server's database sessions closed: it is gone, its clients are taken over now");
                presence.ended(name, at_ms);
            }
            _ = shutdown.cancelled() => break,
        }
        let s = store.clone();
        let poll_from = since;
        let started = chainboot_events::now_ms() / 1000;
        let mut f = follower.take().unwrap_or_default();
        let addrs = addresses.clone();
        let dhcp6 = engine6.is_some();
        let polled = tokio::task::spawn_blocking(move || {
            let got = beat(&s, first, poll_from, &mut f, &addrs, dhcp6);
            (got, f)
        })
        .await;
        let polled = polled.map(|(got, f)| {
            follower = Some(f);
            got
        });
        match polled {
            Ok(Ok(Beat {
                rows,
                changed,
                changed6,
                duids,
                news,
            })) => {
                events.relay(news);
                if failing {
                    info!("fleet: the database answers again");
                    failing = false;
                }
                first = false;
                since = started - LEASE_OVERLAP_S;
                let me = store.server_name();
                // An address this server answers from is never a peer's, whatever a row
                // says: its own messages must not be taken for another's.
                let addresses_of = |rows: &[&servers::ServerRecord]| -> Vec<Ipv4Addr> {
                    rows.iter()
                        .filter(|s| s.name != me)
                        .flat_map(|s| s.addresses.iter().copied())
                        .filter(|a| !addresses.contains(a))
                        .collect()
                };
                let (live, gone): (Vec<_>, Vec<_>) =
                    rows.iter().partition(|s| presence.is_live(s, within_ms));
                presence.after_beat(&store, &rows, &live, &gone_tx);
                let departed: Vec<&servers::ServerRecord> = gone
                    .into_iter()
                    .filter(|s| s.age_ms <= within_ms.saturating_add(DEPARTED_FOR_MS))
                    .collect();
                let peer_addresses = addresses_of(&live);
                let departed_addresses = addresses_of(&departed);
                let names: Vec<String> = live.iter().map(|s| s.name.clone()).collect();
                // A DHCPv6 message naming a server that just stopped is a fleet server's too,
                // not a rogue server's (it goes unanswered: the client falls back to Solicit
                // or Rebind, which the new owner answers).
                let peer_duids: Vec<Vec<u8>> = duids
                    .into_iter()
                    .filter(|(name, _)| {
                        name != me
                            && (names.contains(name) || departed.iter().any(|s| s.name == *name))
                    })
                    .map(|(_, duid)| duid)
                    .collect();
                // A peer gone: its clients are this server's now, those whose messages it left
                // to that peer in the last seconds too.
                let lost_a_peer = peers.iter().any(|p| !names.contains(p));
                if names != peers {
                    info!(live = ?names, "fleet: live servers changed");
                    peers = names.clone();
                }
                let fleet = Fleet::new(store.server_name(), names);
                // Where a machine of this server goes on when it dies mid-boot: the same
                // live servers the DHCP engines share clients with.
                if peer_bases.set_live(me, &live) {
                    let bases: Vec<String> =
                        peer_bases.current().iter().map(|b| b.to_string()).collect();
                    info!(
                        ?bases,
                        "fleet: scripts name these live peers as alternatives"
                    );
                }
                if let Some((engine6, _)) = &engine6 {
                    let mut e = engine6.lock();
                    e.set_fleet(Some(fleet.clone()), peer_duids);
                    e.load_leases(&changed6);
                }
                if let Some((engine, _)) = &engine {
                    let mut e = engine.lock();
                    e.set_fleet(Some(
                        fleet
                            .with_peer_addresses(peer_addresses)
                            .with_departed_addresses(departed_addresses),
                    ));
                    e.load_leases(&changed);
                }
                if lost_a_peer {
                    for (_, t) in engine.iter() {
                        t.now();
                    }
                    for (_, t) in engine6.iter() {
                        t.now();
                    }
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
