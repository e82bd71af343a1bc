//! Events: every interaction of a machine with chainboot (DHCP, TFTP, HTTP, API callbacks),
//! the raw material of boot timelines. Written in batches by the event log in
//! chainboot-events; retention is bounded by count and age.

use chainboot_machine::Mac;
use rusqlite::{params, Row};
use serde::{Deserialize, Serialize};

use crate::{Store, StoreError};

/// Schema of the `events` table; appended to `MIGRATIONS` in lib.rs.
pub(crate) const MIGRATION: &str = "
CREATE TABLE events (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms  INTEGER NOT NULL,
    mac    TEXT,
    kind   TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX events_mac_at ON events(mac, at_ms);
CREATE INDEX events_kind_at ON events(kind, at_ms);
";

/// An event to be written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// Unix time in milliseconds.
    pub at_ms: i64,
    pub mac: Option<Mac>,
    /// `dhcp`, `tftp`, `http`, `api`, `chainload-loop`, ... (see chainboot-events).
    pub kind: String,
    /// Free-form facts (JSON object).
    pub detail: serde_json::Value,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub id: i64,
    pub at_ms: i64,
    pub mac: Option<Mac>,
    pub kind: String,
    pub detail: serde_json::Value,
}

/// Which events to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub mac: Option<Mac>,
    /// Only events at or after this time (Unix ms).
    pub since_ms: Option<i64>,
    /// Only events with a greater id (for resuming a stream).
    pub after_id: Option<i64>,
    /// Only events with a smaller id (the cursor of the next, older page).
    pub before_id: Option<i64>,
    pub kind: Option<String>,
    /// At most this many, newest first (default [`DEFAULT_PAGE`], at most [`MAX_PAGE`]).
    pub limit: Option<usize>,
}

/// Events listed when a request names no limit.
pub const DEFAULT_PAGE: usize = 500;
/// Events listed at most in one page: with details bounded to a few KiB each, a page stays a
/// few MiB whatever a client asks for; older events are read with `before_id`.
pub const MAX_PAGE: usize = 1000;

/// What `prune` keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Events kept at most (oldest deleted first).
    pub max_count: usize,
    /// Events older than this (Unix ms) are deleted.
    pub min_at_ms: i64,
    /// Bytes the events may take in the database at most (see [`stored_bytes`]).
    pub max_bytes: u64,
    /// Events without a machine (refused requests, strangers) kept at most: a flood of them
    /// then only pushes out older ones of its kind, never a machine's history.
    pub max_unattributed: usize,
}

/// Pruning by bytes goes down to this share of the budget, so that it does not run again after
/// the next few events.
const PRUNE_TO: f64 = 0.9;

/// Writes a batch in one transaction, returning the new ids in order.
pub fn append_batch(store: &Store, events: &[NewEvent]) -> Result<Vec<i64>, StoreError> {
    store.write(|tx| {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO events (at_ms, mac, kind, detail) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut ids = Vec::with_capacity(events.len());
        for e in events {
            stmt.execute(params![
                e.at_ms,
                e.mac.map(|m| m.to_string()),
                e.kind,
                e.detail.to_string()
            ])?;
            ids.push(tx.last_insert_rowid());
        }
        Ok(ids)
    })
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<EventRecord> {
    let mac: Option<String> = row.get(2)?;
    let detail: String = row.get(4)?;
    Ok(EventRecord {
        id: row.get(0)?,
        at_ms: row.get(1)?,
        mac: mac.and_then(|m| m.parse().ok()),
        kind: row.get(3)?,
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
    })
}

/// Lists events, newest first.
pub fn list(store: &Store, filter: &EventFilter) -> Result<Vec<EventRecord>, StoreError> {
    let limit = filter.limit.unwrap_or(DEFAULT_PAGE).min(MAX_PAGE) as i64;
    store.read(|conn| {
        let mut stmt = conn.prepare_cached(
            "SELECT id, at_ms, mac, kind, detail FROM events
             WHERE (?1 IS NULL OR mac = ?1)
               AND (?2 IS NULL OR at_ms >= ?2)
               AND (?3 IS NULL OR id > ?3)
               AND (?4 IS NULL OR kind = ?4)
               AND (?6 IS NULL OR id < ?6)
             ORDER BY id DESC LIMIT ?5",
        )?;
        let rows = stmt.query_map(
            params![
                filter.mac.map(|m| m.to_string()),
                filter.since_ms,
                filter.after_id,
                filter.kind,
                limit,
                filter.before_id
            ],
            from_row,
        )?;
        rows.collect()
    })
}

/// Bytes the events take in the database: the pages of their table and its indexes, as SQLite's
/// `dbstat` counts them (page fragmentation and overflow pages included, which for rows of a few
/// KiB is up to twice their text).
pub fn stored_bytes(store: &Store) -> Result<u64, StoreError> {
    store.read(event_pages_bytes)
}

fn event_pages_bytes(c: &rusqlite::Connection) -> rusqlite::Result<u64> {
    c.query_row(
        "SELECT coalesce(sum(pgsize), 0) FROM dbstat
         WHERE name IN ('events', 'events_mac_at', 'events_kind_at')",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n.max(0) as u64)
}

/// Deletes what `keep` does not keep: events older than its time, unattributed events beyond
/// their own cap, the oldest beyond the count, then the oldest until the events take at most
/// [`PRUNE_TO`] of the byte budget. Gives the freed pages back. Returns how many were deleted.
pub fn prune(store: &Store, keep: &Retention) -> Result<usize, StoreError> {
    let n = store.write(|tx| {
        let mut n = tx.execute(
            "DELETE FROM events WHERE at_ms < ?1",
            params![keep.min_at_ms],
        )?;
        n += tx.execute(
            "DELETE FROM events WHERE mac IS NULL AND id <= (
                SELECT id FROM events WHERE mac IS NULL ORDER BY id DESC LIMIT 1 OFFSET ?1)",
            params![keep.max_unattributed as i64],
        )?;
        n += delete_oldest_beyond(tx, keep.max_count as i64)?;
        // Rows differ in size but not by much on average: keep the newest share that fits,
        // and measure again (deleted rows free their pages at once).
        for _ in 0..4 {
            let bytes = event_pages_bytes(tx)?;
            if bytes <= keep.max_bytes {
                break;
            }
            let count: i64 = tx.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
            let share = keep.max_bytes as f64 * PRUNE_TO / bytes as f64;
            n += delete_oldest_beyond(tx, (count as f64 * share) as i64)?;
        }
        Ok(n)
    })?;
    if n > 0 {
        store.reclaim_space()?;
    }
    Ok(n)
}

/// Deletes all but the newest `keep` events.
fn delete_oldest_beyond(tx: &rusqlite::Transaction<'_>, keep: i64) -> rusqlite::Result<usize> {
    tx.execute(
        "DELETE FROM events WHERE id <= (SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?1)",
        params![keep],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(at: i64, mac: &str, kind: &str) -> NewEvent {
        NewEvent {
            at_ms: at,
            mac: Some(mac.parse().unwrap()),
            kind: kind.into(),
            detail: serde_json::json!({"n": at}),
        }
    }

    #[test]
    fn events_round_trip_filter_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let a = "52:54:00:00:00:01";
        let b = "52:54:00:00:00:02";
        let ids = append_batch(
            &s,
            &[
                ev(1, a, "dhcp"),
                ev(2, b, "dhcp"),
                ev(3, a, "tftp"),
                ev(4, a, "http"),
            ],
        )
        .unwrap();
        assert_eq!(ids.len(), 4);
        let all_a = list(
            &s,
            &EventFilter {
                mac: Some(a.parse().unwrap()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            all_a.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
            vec![4, 3, 1]
        );
        assert_eq!(all_a[0].detail["n"], 4);
        let tftp = list(
            &s,
            &EventFilter {
                kind: Some("tftp".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(tftp.len(), 1);
        let after = list(
            &s,
            &EventFilter {
                after_id: Some(ids[1]),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(after.len(), 2);
        let before = list(
            &s,
            &EventFilter {
                before_id: Some(ids[2]),
                limit: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(before.iter().map(|e| e.id).collect::<Vec<_>>(), [ids[1]]);
        // Age: drop at_ms < 2; count: keep the newest 2.
        let keep = Retention {
            max_count: 2,
            min_at_ms: 2,
            max_bytes: u64::MAX,
            max_unattributed: 10,
        };
        assert_eq!(prune(&s, &keep).unwrap(), 2);
        let left = list(&s, &EventFilter::default()).unwrap();
        assert_eq!(left.iter().map(|e| e.at_ms).collect::<Vec<_>>(), vec![4, 3]);
    }

    fn sized(at: i64, mac: Option<&str>, bytes: usize) -> NewEvent {
        NewEvent {
            at_ms: at,
            mac: mac.map(|m| m.parse().unwrap()),
            kind: "http".into(),
            detail: serde_json::json!({ "pad": "x".repeat(bytes) }),
        }
    }

    #[test]
    fn pruning_keeps_the_byte_budget_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let batch: Vec<NewEvent> = (0..4000)
            .map(|i| sized(i, Some("52:54:00:00:00:01"), 1000))
            .collect();
        append_batch(&s, &batch).unwrap();
        let full = stored_bytes(&s).unwrap();
        assert!(full > 4_000_000, "{full}");
        let file = s.disk_bytes();
        let keep = Retention {
            max_count: 100_000,
            min_at_ms: 0,
            max_bytes: 1_000_000,
            max_unattributed: 100_000,
        };
        assert!(prune(&s, &keep).unwrap() > 3000);
        let left = list(&s, &EventFilter::default()).unwrap();
        let kept = stored_bytes(&s).unwrap();
        assert!((700_000..=1_000_000).contains(&kept), "{kept}");
        let count: i64 = s
            .read(|c| c.query_row("SELECT count(*) FROM events", [], |r| r.get(0)))
            .unwrap();
        assert!(count >= 600, "{count} kept");
        assert_eq!(left[0].at_ms, 3999, "the newest stay");
        assert!(s.disk_bytes() < file / 3, "space given back");
    }

    #[test]
    fn a_flood_of_unattributed_events_does_not_push_out_machines_history() {
        let s = Store::in_memory().unwrap();
        let history: Vec<NewEvent> = (0..50)
            .map(|i| sized(i, Some("52:54:00:00:00:07"), 10))
            .collect();
        append_batch(&s, &history).unwrap();
        let flood: Vec<NewEvent> = (50..5050).map(|i| sized(i, None, 10)).collect();
        append_batch(&s, &flood).unwrap();
        let keep = Retention {
            max_count: 1000,
            min_at_ms: 0,
            max_bytes: u64::MAX,
            max_unattributed: 100,
        };
        prune(&s, &keep).unwrap();
        let machine = list(
            &s,
            &EventFilter {
                mac: Some("52:54:00:00:00:07".parse().unwrap()),
                limit: Some(MAX_PAGE),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(machine.len(), 50, "history intact");
        let all = list(
            &s,
            &EventFilter {
                limit: Some(MAX_PAGE),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(all.len(), 150);
        assert_eq!(all[0].at_ms, 5049, "the newest unattributed stay");
    }
}
