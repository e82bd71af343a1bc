//! Events: every interaction of a machine with chainboot (DHCP, TFTP, HTTP, API callbacks),
//! the raw material of boot timelines. Written in batches by the event log in
//! chainboot-events; retention is bounded by count and age.

use chainboot_machine::Mac;
use rusqlite::{params, Row};
use serde::{Deserialize, Serialize};

use crate::firmware::{observe_pg, observe_sqlite, Observations};
use crate::schema::Migration;
use crate::{Backend, Store, StoreError};

/// Schema of the `events` table (schema version 4; version 5 adds `server`).
pub(crate) const MIGRATION: Migration = Migration {
    sqlite: "
CREATE TABLE events (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms  INTEGER NOT NULL,
    mac    TEXT,
    kind   TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX events_mac_at ON events(mac, at_ms);
CREATE INDEX events_kind_at ON events(kind, at_ms);
",
    postgres: "
CREATE TABLE events (
    id     BIGSERIAL PRIMARY KEY,
    at_ms  BIGINT NOT NULL,
    mac    TEXT,
    kind   TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX events_mac_at ON events(mac, at_ms);
CREATE INDEX events_kind_at ON events(kind, at_ms);
",
};

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

/// The kind of the event of an operator's change of a machine through the API (pin, labels,
/// re-arm, forget), written with the change ([`Store::machine_operator_change`]).
pub const OPERATOR: &str = "operator";

/// A stored event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub id: i64,
    pub at_ms: i64,
    pub mac: Option<Mac>,
    pub kind: String,
    pub detail: serde_json::Value,
    /// The server that recorded it (absent for events recorded before servers were named).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
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

/// Writes a batch of events, each as this server's, and what they tell about machines (`obs`)
/// in one transaction, so that the event writer pays one commit per batch; returns the new
/// ids in order.
pub fn append_observed(
    store: &Store,
    events: &[NewEvent],
    obs: &Observations,
) -> Result<Vec<i64>, StoreError> {
    let server = store.server_name().to_string();
    match store.backend() {
        Backend::Sqlite(db) => db.write(|tx| {
            let ids = append_sqlite(tx, events, &server)?;
            observe_sqlite(tx, obs)?;
            Ok(ids)
        }),
        Backend::Postgres(pg) => {
            if events.is_empty() && obs.is_empty() {
                return Ok(Vec::new());
            }
            let at: Vec<i64> = events.iter().map(|e| e.at_ms).collect();
            let macs: Vec<Option<String>> = events
                .iter()
                .map(|e| e.mac.map(|m| m.to_string()))
                .collect();
            let kinds: Vec<String> = events.iter().map(|e| e.kind.clone()).collect();
            let details: Vec<String> = events.iter().map(|e| e.detail.to_string()).collect();
            let obs = obs.clone();
            pg.run(move |mut c| async move {
                let tx = c.transaction().await?;
                let ids = if at.is_empty() {
                    Vec::new()
                } else {
                    // The ids are taken first, so that each event's id is known for certain
                    // (the order of RETURNING rows is not promised), then the batch is one
                    // statement.
                    let n = at.len() as i64;
                    let mut ids: Vec<i64> = tx
                        .query(
                            "SELECT nextval(pg_get_serial_sequence('events', 'id'))
                             FROM generate_series(1, $1::int8)",
                            &[&n],
                        )
                        .await?
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                    ids.sort_unstable();
                    tx.execute(
                        "INSERT INTO events (id, at_ms, mac, kind, detail, server)
                         SELECT u.*, $6::text
                         FROM unnest($1::int8[], $2::int8[], $3::text[], $4::text[], $5::text[]) AS u",
                        &[&ids, &at, &macs, &kinds, &details, &server],
                    )
                    .await?;
                    ids
                };
                observe_pg(&tx, &obs).await?;
                tx.commit().await?;
                Ok(ids)
            })
        }
    }
}

fn append_sqlite(
    tx: &rusqlite::Transaction<'_>,
    events: &[NewEvent],
    server: &str,
) -> Result<Vec<i64>, rusqlite::Error> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO events (at_ms, mac, kind, detail, server) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let mut ids = Vec::with_capacity(events.len());
    for e in events {
        stmt.execute(params![
            e.at_ms,
            e.mac.map(|m| m.to_string()),
            e.kind,
            e.detail.to_string(),
            server
        ])?;
        ids.push(tx.last_insert_rowid());
    }
    Ok(ids)
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
        server: row.get(5)?,
    })
}

fn from_pg_row(row: &tokio_postgres::Row) -> Result<EventRecord, tokio_postgres::Error> {
    let mac: Option<String> = row.try_get(2)?;
    let detail: String = row.try_get(4)?;
    Ok(EventRecord {
        id: row.try_get(0)?,
        at_ms: row.try_get(1)?,
        mac: mac.and_then(|m| m.parse().ok()),
        kind: row.try_get(3)?,
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
        server: row.try_get(5)?,
    })
}

/// Lists events, newest first.
pub fn list(store: &Store, filter: &EventFilter) -> Result<Vec<EventRecord>, StoreError> {
    let limit = filter.limit.unwrap_or(DEFAULT_PAGE).min(MAX_PAGE) as i64;
    match store.backend() {
        Backend::Sqlite(db) => db.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, at_ms, mac, kind, detail, server FROM events
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
        }),
        Backend::Postgres(pg) => {
            let f = filter.clone();
            pg.run(move |c| async move {
                let rows = c
                    .query(
                        "SELECT id, at_ms, mac, kind, detail, server FROM events
                         WHERE ($1::text IS NULL OR mac = $1)
                           AND ($2::int8 IS NULL OR at_ms >= $2)
                           AND ($3::int8 IS NULL OR id > $3)
                           AND ($4::text IS NULL OR kind = $4)
                           AND ($6::int8 IS NULL OR id < $6)
                         ORDER BY id DESC LIMIT $5",
                        &[
                            &f.mac.map(|m| m.to_string()),
                            &f.since_ms,
                            &f.after_id,
                            &f.kind,
                            &limit,
                            &f.before_id,
                        ],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(from_pg_row)
                    .collect::<Result<Vec<_>, _>>()?)
            })
        }
    }
}

/// Events a follower has not seen: ids above `after_id`, or among `ids` (ones it missed
/// below), oldest first, at most `limit` (capped at [`MAX_PAGE`]). The details of `own`'s
/// events are left out (`{}`): the follower already streamed them and needs only their ids.
pub fn following(
    store: &Store,
    after_id: i64,
    ids: &[i64],
    own: &str,
    limit: usize,
) -> Result<Vec<EventRecord>, StoreError> {
    let limit = limit.min(MAX_PAGE) as i64;
    let own = own.to_string();
    match store.backend() {
        Backend::Sqlite(db) => {
            let ids = serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
            db.read(|conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT id, at_ms, mac, kind,
                        CASE WHEN server IS ?3 THEN '{}' ELSE detail END, server
                     FROM events
                     WHERE id > ?1 OR id IN (SELECT value FROM json_each(?2))
                     ORDER BY id LIMIT ?4",
                )?;
                let rows = stmt.query_map(params![after_id, ids, own, limit], from_row)?;
                rows.collect()
            })
        }
        Backend::Postgres(pg) => {
            let ids = ids.to_vec();
            pg.run(move |c| async move {
                let rows = c
                    .query(
                        "SELECT id, at_ms, mac, kind,
                            CASE WHEN server IS NOT DISTINCT FROM $3 THEN '{}' ELSE detail END,
                            server
                         FROM events WHERE id > $1 OR id = ANY($2)
                         ORDER BY id LIMIT $4",
                        &[&after_id, &ids, &own, &limit],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(from_pg_row)
                    .collect::<Result<Vec<_>, _>>()?)
            })
        }
    }
}

/// The highest event id (0 when there is none): where a follower starts.
pub fn newest_id(store: &Store) -> Result<i64, StoreError> {
    match store.backend() {
        Backend::Sqlite(db) => db.read(|conn| {
            conn.query_row("SELECT coalesce(max(id), 0) FROM events", [], |r| r.get(0))
        }),
        Backend::Postgres(pg) => pg.run(|c| async move {
            Ok(
                c.query_one("SELECT coalesce(max(id), 0)::int8 FROM events", &[])
                    .await?
                    .try_get(0)?,
            )
        }),
    }
}

/// Bytes the events take in the database. SQLite: the pages of their table and its indexes,
/// as its `dbstat` counts them (page fragmentation and overflow pages included, which for rows
/// of a few KiB is up to twice their text). PostgreSQL: the rows' text plus a row's overhead
/// (its files only shrink when vacuumed, so their size would not follow a prune).
pub fn stored_bytes(store: &Store) -> Result<u64, StoreError> {
    match store.backend() {
        Backend::Sqlite(db) => db.read(event_pages_bytes),
        Backend::Postgres(pg) => pg.run(|c| async move { pg_event_bytes(&c).await }),
    }
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

/// A row's overhead beyond its text on PostgreSQL: tuple header, the fixed columns and its
/// entries in the three indexes, about.
const PG_ROW_OVERHEAD: i64 = 120;

async fn pg_event_bytes(c: &impl deadpool_postgres::GenericClient) -> Result<u64, StoreError> {
    let n: i64 = c
        .query_one(
            "SELECT coalesce(sum(octet_length(detail) + octet_length(kind)
                + coalesce(octet_length(mac), 0) + coalesce(octet_length(server), 0) + $1::int8), 0)::int8
             FROM events",
            &[&PG_ROW_OVERHEAD],
        )
        .await?
        .try_get(0)?;
    Ok(n.max(0) as u64)
}

/// Deletes what `keep` does not keep: events older than its time, unattributed events beyond
/// their own cap, the oldest beyond the count, then the oldest until the events take at most
/// [`PRUNE_TO`] of the byte budget. Gives the freed pages back. Returns how many were deleted.
pub fn prune(store: &Store, keep: &Retention) -> Result<usize, StoreError> {
    let n = match store.backend() {
        Backend::Sqlite(db) => db.write(|tx| prune_sqlite(tx, keep))?,
        Backend::Postgres(pg) => {
            let keep = *keep;
            pg.run(move |mut c| async move {
                let tx = c.transaction().await?;
                let n = prune_pg(&tx, &keep).await?;
                tx.commit().await?;
                Ok(n)
            })?
        }
    };
    if n > 0 {
        store.reclaim_space()?;
    }
    Ok(n)
}

fn prune_sqlite(tx: &rusqlite::Transaction<'_>, keep: &Retention) -> rusqlite::Result<usize> {
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
        n += delete_oldest_beyond(tx, share_to_keep(count, bytes, keep.max_bytes))?;
    }
    Ok(n)
}

/// Of `count` events taking `bytes`, how many to keep so that they take [`PRUNE_TO`] of
/// `budget`.
fn share_to_keep(count: i64, bytes: u64, budget: u64) -> i64 {
    (count as f64 * (budget as f64 * PRUNE_TO / bytes as f64)) as i64
}

async fn prune_pg(
    tx: &deadpool_postgres::Transaction<'_>,
    keep: &Retention,
) -> Result<usize, StoreError> {
    let mut n = tx
        .execute("DELETE FROM events WHERE at_ms < $1", &[&keep.min_at_ms])
        .await?;
    n += tx
        .execute(
            "DELETE FROM events WHERE mac IS NULL AND id <= (
                SELECT id FROM events WHERE mac IS NULL ORDER BY id DESC LIMIT 1 OFFSET $1)",
            &[&(keep.max_unattributed as i64)],
        )
        .await?;
    let beyond = "DELETE FROM events WHERE id <= (
        SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET $1)";
    n += tx.execute(beyond, &[&(keep.max_count as i64)]).await?;
    for _ in 0..4 {
        let bytes = pg_event_bytes(tx).await?;
        if bytes <= keep.max_bytes {
            break;
        }
        let count: i64 = tx
            .query_one("SELECT count(*) FROM events", &[])
            .await?
            .try_get(0)?;
        let left = share_to_keep(count, bytes, keep.max_bytes);
        n += tx.execute(beyond, &[&left]).await?;
    }
    Ok(n as usize)
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

    /// SQLite only: what pruning frees goes back to the filesystem (the byte budget itself is
    /// tested on both backends in tests/suite.rs).
    #[test]
    fn pruning_gives_space_back_to_the_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let batch: Vec<NewEvent> = (0..4000)
            .map(|i| NewEvent {
                at_ms: i,
                mac: None,
                kind: "http".into(),
                detail: serde_json::json!({ "pad": "x".repeat(1000) }),
            })
            .collect();
        append_observed(&s, &batch, &Observations::default()).unwrap();
        let file = s.disk_bytes();
        let keep = Retention {
            max_count: 100_000,
            min_at_ms: 0,
            max_bytes: 1_000_000,
            max_unattributed: 100_000,
        };
        assert!(prune(&s, &keep).unwrap() > 3000);
        assert!(s.disk_bytes() < file / 3, "space given back");
    }
}
