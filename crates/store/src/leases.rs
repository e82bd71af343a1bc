//! DHCP leases: one row per address the DHCP server has handed out, declined
//! or released. The DHCP engine keeps the live table in memory; this module is its durable
//! copy, written before every ACK leaves (never ACK before the lease is durable)
//! and read back at start.
//!
//! Writes come in batches so that the DHCP driver can group-commit: every ACK that arrives
//! while one fsync is in progress is written by the next single transaction (one statement
//! and one round trip on PostgreSQL).
//!
//! With PostgreSQL several servers write here, and the database decides who gets an address:
//! one row per address (the primary key), and a write replaces a row only when the row is the
//! same client's, released, or expired by the writer's clock. A write the database refuses is
//! returned to the caller with the row that won, and its ACK must not leave. The embedded
//! SQLite store has one writer, whose engine already decided: its writes always replace.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use rusqlite::{params, Connection, Transaction};

use crate::schema::Migration;
use crate::{Backend, Store, StoreError};

/// Schema of the `leases` table (schema version 2).
pub(crate) const MIGRATION: Migration = Migration {
    sqlite: "
CREATE TABLE leases (
    ip        TEXT PRIMARY KEY,
    mac       TEXT NOT NULL,
    client_id BLOB,
    hostname  TEXT,
    state     TEXT NOT NULL,
    expires   INTEGER NOT NULL,
    updated   INTEGER NOT NULL
);
CREATE INDEX leases_mac ON leases(mac);
",
    postgres: "
CREATE TABLE leases (
    ip        TEXT PRIMARY KEY,
    mac       TEXT NOT NULL,
    client_id BYTEA,
    hostname  TEXT,
    state     TEXT NOT NULL CHECK (state IN ('bound', 'released', 'declined')),
    expires   BIGINT NOT NULL,
    updated   BIGINT NOT NULL
);
CREATE INDEX leases_mac ON leases(mac);
CREATE INDEX leases_updated ON leases(updated);
",
};

/// What an address is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// ACKed to a client until `expires`.
    Bound,
    /// The client gave it back (DHCPRELEASE); it stays tied to that client for reuse.
    Released,
    /// A client said it is in use by someone else (DHCPDECLINE): quarantined until `expires`.
    Declined,
}

impl LeaseState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Bound => "bound",
            LeaseState::Released => "released",
            LeaseState::Declined => "declined",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<LeaseState> {
        match s {
            "bound" => Some(LeaseState::Bound),
            "released" => Some(LeaseState::Released),
            "declined" => Some(LeaseState::Declined),
            _ => None,
        }
    }
}

/// One stored lease. Times are seconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaseRecord {
    pub ip: std::net::Ipv4Addr,
    /// Lower-case `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Option 61 as sent, when the client sent one.
    pub client_id: Option<Vec<u8>>,
    pub hostname: Option<String>,
    pub state: LeaseState,
    pub expires: i64,
    pub updated: i64,
}

/// Writes every record in one transaction: durable when this returns `Ok` (SQLite runs with
/// `synchronous=FULL`, PostgreSQL commits synchronously). Returns the writes the database
/// refused because the address is another client's (PostgreSQL only), each as the row that
/// holds the address; their ACKs must not be sent.
pub fn save_batch(store: &Store, records: &[LeaseRecord]) -> Result<Vec<LeaseRecord>, StoreError> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    match store.backend() {
        Backend::Sqlite(db) => db.write(|tx| save_in(tx, records)).map(|()| Vec::new()),
        Backend::Postgres(pg) => pg
            .journal
            .write_through(records, |r| save_pg_batch(store, pg, r)),
    }
}

/// While the fleet's database does not answer (after [`save_batch`] failed and the store
/// reports itself degraded): makes the renewals among `records` durable in the server's local
/// journal and returns their addresses, whose ACKs may leave; the other leases wait for the
/// database. Nothing for SQLite (its failures are this server's own disk).
pub fn save_renewals_while_degraded(
    store: &Store,
    records: &[LeaseRecord],
) -> Result<Vec<Ipv4Addr>, StoreError> {
    match store.backend() {
        Backend::Sqlite(_) => Ok(Vec::new()),
        Backend::Postgres(pg) if pg.degraded() => pg.journal.hold_renewals(records),
        Backend::Postgres(_) => Ok(Vec::new()),
    }
}

/// Writes the renewals journaled during an outage, oldest first, before anything newer.
pub(crate) fn replay_journal(store: &Store, pg: &crate::pg::Postgres) -> Result<(), StoreError> {
    pg.journal.replay(|r| save_pg_batch(store, pg, r))
}

/// One statement writing `records` (the last of each address); returns the refused writes'
/// holders.
fn save_pg_batch(
    store: &Store,
    pg: &crate::pg::Postgres,
    records: &[LeaseRecord],
) -> Result<Vec<LeaseRecord>, StoreError> {
    let server = store.server_name().to_string();
    let batch = last_per_address(records);
    pg.run(move |c| async move { save_pg(&c, batch, &server).await })
}

/// One record per address, the last of each (a batch may hold an OFFER's and an ACK's write
/// of one address; one statement may not change a row twice), in address order so that two
/// servers' batches lock rows in the same order and never deadlock.
fn last_per_address(records: &[LeaseRecord]) -> Vec<LeaseRecord> {
    let mut by_ip: BTreeMap<u32, &LeaseRecord> = BTreeMap::new();
    for r in records {
        by_ip.insert(u32::from(r.ip), r);
    }
    by_ip.into_values().cloned().collect()
}

const PG_COLUMNS: &str = "ip, mac, client_id, hostname, state, expires, updated";

async fn save_pg(
    c: &deadpool_postgres::ClientWrapper,
    batch: Vec<LeaseRecord>,
    server: &str,
) -> Result<Vec<LeaseRecord>, StoreError> {
    let ips: Vec<String> = batch.iter().map(|r| r.ip.to_string()).collect();
    let macs: Vec<&str> = batch.iter().map(|r| r.mac.as_str()).collect();
    let ids: Vec<Option<&[u8]>> = batch.iter().map(|r| r.client_id.as_deref()).collect();
    let names: Vec<Option<&str>> = batch.iter().map(|r| r.hostname.as_deref()).collect();
    let states: Vec<&str> = batch.iter().map(|r| r.state.as_str()).collect();
    let expires: Vec<i64> = batch.iter().map(|r| r.expires).collect();
    let updated: Vec<i64> = batch.iter().map(|r| r.updated).collect();
    let stmt = c
        .prepare_cached(
            "INSERT INTO leases (ip, mac, client_id, hostname, state, expires, updated, server)
             SELECT u.*, $8::text FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[],
                 $5::text[], $6::int8[], $7::int8[]) AS u
             ON CONFLICT (ip) DO UPDATE SET mac = excluded.mac, client_id = excluded.client_id,
               hostname = excluded.hostname, state = excluded.state, expires = excluded.expires,
               updated = excluded.updated, server = excluded.server
             WHERE leases.mac = excluded.mac OR leases.state = 'released'
               OR leases.expires <= excluded.updated
             RETURNING ip",
        )
        .await?;
    let written = c
        .query(
            &stmt,
            &[
                &ips, &macs, &ids, &names, &states, &expires, &updated, &server,
            ],
        )
        .await?;
    let select = format!("SELECT {PG_COLUMNS} FROM leases WHERE ip = ANY($1) ORDER BY ip");
    crate::pg::refused_holders(c, ips, written, &select, from_pg_row).await
}

fn from_pg_row(r: &tokio_postgres::Row) -> Option<LeaseRecord> {
    let ip: String = r.get(0);
    let state: String = r.get(4);
    match (ip.parse::<Ipv4Addr>(), LeaseState::parse(&state)) {
        (Ok(ip), Some(state)) => Some(LeaseRecord {
            ip,
            mac: r.get(1),
            client_id: r.get(2),
            hostname: r.get(3),
            state,
            expires: r.get(5),
            updated: r.get(6),
        }),
        _ => {
            tracing::warn!(ip, state, "leases: skipping unreadable row");
            None
        }
    }
}

fn save_in(tx: &Transaction<'_>, records: &[LeaseRecord]) -> Result<(), rusqlite::Error> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO leases (ip, mac, client_id, hostname, state, expires, updated)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(ip) DO UPDATE SET mac = excluded.mac, client_id = excluded.client_id,
           hostname = excluded.hostname, state = excluded.state, expires = excluded.expires,
           updated = excluded.updated",
    )?;
    for r in records {
        stmt.execute(params![
            r.ip.to_string(),
            r.mac,
            r.client_id,
            r.hostname,
            r.state.as_str(),
            r.expires,
            r.updated
        ])?;
    }
    Ok(())
}

/// Every stored lease, ordered by address text. Rows that do not parse (hand-edited
/// database) are skipped with a warning rather than failing the start.
pub fn load_all(store: &Store) -> Result<Vec<LeaseRecord>, StoreError> {
    match store.backend() {
        Backend::Sqlite(db) => db.read(load_in),
        Backend::Postgres(pg) => {
            let rows: Vec<LeaseRecord> = pg.run(|c| async move {
                let rows = c
                    .query(&format!("SELECT {PG_COLUMNS} FROM leases ORDER BY ip"), &[])
                    .await?;
                Ok(rows.iter().filter_map(from_pg_row).collect())
            })?;
            // What the database holds, this server's own leases of an earlier run included
            // (the fleet's polls skip those): a renewal of one of these may be journaled.
            pg.journal.learn(&rows);
            Ok(rows)
        }
    }
}

/// Leases other servers wrote at or after `since` (seconds; the writers' clocks), ordered by
/// address: how a server of a fleet learns what the others handed out. Empty for SQLite (its
/// only writer is this server).
pub fn changed_since(store: &Store, since: i64) -> Result<Vec<LeaseRecord>, StoreError> {
    let me = store.server_name().to_string();
    match store.backend() {
        Backend::Sqlite(_) => Ok(Vec::new()),
        Backend::Postgres(pg) => {
            replay_journal(store, pg)?;
            let changed: Vec<LeaseRecord> = pg.run(move |c| async move {
                let rows = c
                    .query(
                        &format!(
                            "SELECT {PG_COLUMNS} FROM leases
                             WHERE updated >= $1 AND server IS DISTINCT FROM $2 ORDER BY ip"
                        ),
                        &[&since, &me],
                    )
                    .await?;
                Ok(rows.iter().filter_map(from_pg_row).collect())
            })?;
            pg.journal.learn(&changed);
            Ok(changed)
        }
    }
}

fn load_in(conn: &Connection) -> Result<Vec<LeaseRecord>, rusqlite::Error> {
    let mut stmt = conn.prepare(
        "SELECT ip, mac, client_id, hostname, state, expires, updated FROM leases ORDER BY ip",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<Vec<u8>>>(2)?,
            r.get::<_, Option<String>>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, i64>(5)?,
            r.get::<_, i64>(6)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (ip, mac, client_id, hostname, state, expires, updated) = row?;
        match (ip.parse(), LeaseState::parse(&state)) {
            (Ok(ip), Some(state)) => out.push(LeaseRecord {
                ip,
                mac,
                client_id,
                hostname,
                state,
                expires,
                updated,
            }),
            _ => tracing::warn!(ip, state, "leases: skipping unreadable row"),
        }
    }
    Ok(out)
}
