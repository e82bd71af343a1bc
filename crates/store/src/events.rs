//! Events: every interaction of a machine with chainboot (DHCP, TFTP, HTTP, API callbacks),
//! the raw material of boot timelines (issue 7). Written in batches by the event log in
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
    pub kind: Option<String>,
    /// At most this many, newest first (default 500, at most 10 000).
    pub limit: Option<usize>,
}

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
    let limit = filter.limit.unwrap_or(500).min(10_000) as i64;
    store.read(|conn| {
        let mut stmt = conn.prepare_cached(
            "SELECT id, at_ms, mac, kind, detail FROM events
             WHERE (?1 IS NULL OR mac = ?1)
               AND (?2 IS NULL OR at_ms >= ?2)
               AND (?3 IS NULL OR id > ?3)
               AND (?4 IS NULL OR kind = ?4)
             ORDER BY id DESC LIMIT ?5",
        )?;
        let rows = stmt.query_map(
            params![
                filter.mac.map(|m| m.to_string()),
                filter.since_ms,
                filter.after_id,
                filter.kind,
                limit
            ],
            from_row,
        )?;
        rows.collect()
    })
}

/// Deletes events beyond `max_count` (oldest first) and older than `min_at_ms`. Returns how
/// many were deleted.
pub fn prune(store: &Store, max_count: usize, min_at_ms: i64) -> Result<usize, StoreError> {
    store.write(|tx| {
        let mut n = tx.execute("DELETE FROM events WHERE at_ms < ?1", params![min_at_ms])?;
        n += tx.execute(
            "DELETE FROM events WHERE id <= (SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?1)",
            params![max_count as i64],
        )?;
        Ok(n)
    })
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
        // Age: drop at_ms < 2; count: keep the newest 2.
        assert_eq!(prune(&s, 2, 2).unwrap(), 2);
        let left = list(&s, &EventFilter::default()).unwrap();
        assert_eq!(left.iter().map(|e| e.at_ms).collect::<Vec<_>>(), vec![4, 3]);
    }
}
