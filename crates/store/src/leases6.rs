//! DHCPv6 leases: one row per IPv6 address the DHCPv6 server has bound, declined or seen
//! released, keyed by the client's DUID and IAID (RFC 8415 §12: an address belongs to an
//! identity association, not to a hardware address). Written in batches before the Reply of
//! the batch leaves, read back at start, like the IPv4 `leases`.
//!
//! With PostgreSQL several servers write here and the database decides who holds an address,
//! as for the IPv4 leases: one row per address (the primary key), and a write replaces a row
//! only when it is the same identity association's (DUID and IAID), released, or expired by
//! the writer's clock. A write the database refuses is returned with the row that won; its
//! Reply must not leave. The embedded SQLite store has one writer, whose engine already
//! decided: its writes always replace. While the fleet's database does not answer, renewals of
//! leases it holds for the same identity association are journaled locally and replayed when
//! it returns, as DHCPv4's are (`crate::journal`).
//!
//! Also each server's own DUID: clients renew with it in their Server Identifier option, so it
//! must outlive restarts, and in a fleet every server needs its own (a client's Request or
//! Renew names the one server that is to answer it). On PostgreSQL a server's DUID is kept
//! under its name; the SQLite store is one server's, whose DUID is kept under the empty name
//! so that it survives a change of host name.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::leases::LeaseState;
use crate::schema::Migration;
use crate::{Backend, Store, StoreError};

/// Schema of the `leases6` and `dhcp6_server` tables (schema version 6).
pub(crate) const MIGRATION: Migration = Migration {
    sqlite: "
CREATE TABLE leases6 (
    ip       TEXT PRIMARY KEY,
    duid     BLOB NOT NULL,
    iaid     INTEGER NOT NULL,
    mac      TEXT,
    state    TEXT NOT NULL,
    expires  INTEGER NOT NULL,
    updated  INTEGER NOT NULL
);
CREATE INDEX leases6_mac ON leases6(mac);
CREATE TABLE dhcp6_server (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    duid BLOB NOT NULL
);
",
    postgres: "
CREATE TABLE leases6 (
    ip       TEXT PRIMARY KEY,
    duid     BYTEA NOT NULL,
    iaid     BIGINT NOT NULL,
    mac      TEXT,
    state    TEXT NOT NULL CHECK (state IN ('bound', 'released', 'declined')),
    expires  BIGINT NOT NULL,
    updated  BIGINT NOT NULL
);
CREATE INDEX leases6_mac ON leases6(mac);
CREATE TABLE dhcp6_server (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    duid BYTEA NOT NULL
);
",
};

/// Schema version 10: which server wrote a DHCPv6 lease, and one DUID per server (the single
/// row of `dhcp6_server` becomes the SQLite server's, under the empty name). No two servers
/// may share a DUID: the database refuses it.
pub(crate) const MIGRATION_FLEET: Migration = Migration {
    sqlite: "
ALTER TABLE leases6 ADD COLUMN server TEXT;
CREATE TABLE dhcp6_duids (
    server TEXT PRIMARY KEY,
    duid   BLOB NOT NULL UNIQUE
);
INSERT INTO dhcp6_duids (server, duid) SELECT '', duid FROM dhcp6_server;
DROP TABLE dhcp6_server;
",
    postgres: "
ALTER TABLE leases6 ADD COLUMN server TEXT;
CREATE INDEX leases6_updated ON leases6(updated);
CREATE TABLE dhcp6_duids (
    server TEXT PRIMARY KEY,
    duid   BYTEA NOT NULL UNIQUE
);
INSERT INTO dhcp6_duids (server, duid) SELECT '', duid FROM dhcp6_server;
DROP TABLE dhcp6_server;
",
};

/// One stored DHCPv6 lease. Times are seconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lease6Record {
    pub ip: std::net::Ipv6Addr,
    pub duid: Vec<u8>,
    pub iaid: u32,
    /// Lower-case `aa:bb:cc:dd:ee:ff`, when the engine learned the MAC behind the DUID.
    pub mac: Option<String>,
    pub state: LeaseState,
    pub expires: i64,
    pub updated: i64,
    /// The server that wrote it, when read back (a write records the writing store's name
    /// whatever this says).
    pub server: Option<String>,
}

/// Writes (inserts or replaces, by address) every record in one transaction: durable when
/// this returns `Ok`. Returns the writes the database refused because the address is another
/// identity association's (PostgreSQL only), each as the row that holds the address; their
/// Replies must not be sent.
pub fn save_batch(
    store: &Store,
    records: &[Lease6Record],
) -> Result<Vec<Lease6Record>, StoreError> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let server = store.server_name().to_string();
    match store.backend() {
        Backend::Sqlite(db) => db
            .write(|tx| save_in(tx, records, &server))
            .map(|()| Vec::new()),
        Backend::Postgres(pg) => pg
            .journal6
            .write_through(records, |r| save_pg_batch(store, pg, r)),
    }
}

/// While the fleet's database does not answer (after [`save_batch`] failed and the store
/// reports itself degraded): makes the renewals among `records` (same address, same DUID and
/// IAID as the database's unexpired lease) durable in the server's local journal and returns
/// their addresses, whose Replies may leave; the other leases wait for the database. Nothing
/// for SQLite (its failures are this server's own disk).
pub fn save_renewals_while_degraded(
    store: &Store,
    records: &[Lease6Record],
) -> Result<Vec<std::net::Ipv6Addr>, StoreError> {
    match store.backend() {
        Backend::Postgres(pg) if pg.degraded() => pg.journal6.hold_renewals(records),
        _ => Ok(Vec::new()),
    }
}

/// Writes the DHCPv6 renewals journaled during an outage, oldest first, before anything newer.
pub(crate) fn replay_journal(store: &Store, pg: &crate::pg::Postgres) -> Result<(), StoreError> {
    pg.journal6.replay(|r| save_pg_batch(store, pg, r))
}

/// One statement writing `records` (the last of each address); returns the refused writes'
/// holders.
fn save_pg_batch(
    store: &Store,
    pg: &crate::pg::Postgres,
    records: &[Lease6Record],
) -> Result<Vec<Lease6Record>, StoreError> {
    let server = store.server_name().to_string();
    let batch = last_per_address(records);
    pg.run(move |c| async move { save_pg(&c, batch, &server).await })
}

fn save_in(
    tx: &Transaction<'_>,
    records: &[Lease6Record],
    server: &str,
) -> Result<(), rusqlite::Error> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO leases6 (ip, duid, iaid, mac, state, expires, updated, server)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT(ip) DO UPDATE SET duid = excluded.duid, iaid = excluded.iaid,
           mac = excluded.mac, state = excluded.state, expires = excluded.expires,
           updated = excluded.updated, server = excluded.server",
    )?;
    for r in records {
        stmt.execute(params![
            r.ip.to_string(),
            r.duid,
            i64::from(r.iaid),
            r.mac,
            r.state.as_str(),
            r.expires,
            r.updated,
            server
        ])?;
    }
    Ok(())
}

/// One record per address, the last of each (one statement may not change a row twice), in
/// address order so that two servers' batches lock rows in the same order and never
/// deadlock.
fn last_per_address(records: &[Lease6Record]) -> Vec<Lease6Record> {
    let mut by_ip: BTreeMap<u128, &Lease6Record> = BTreeMap::new();
    for r in records {
        by_ip.insert(u128::from(r.ip), r);
    }
    by_ip.into_values().cloned().collect()
}

const PG_COLUMNS: &str = "ip, duid, iaid, mac, state, expires, updated, server";

async fn save_pg(
    c: &deadpool_postgres::ClientWrapper,
    batch: Vec<Lease6Record>,
    server: &str,
) -> Result<Vec<Lease6Record>, StoreError> {
    let ips: Vec<String> = batch.iter().map(|r| r.ip.to_string()).collect();
    let duids: Vec<&[u8]> = batch.iter().map(|r| r.duid.as_slice()).collect();
    let iaids: Vec<i64> = batch.iter().map(|r| i64::from(r.iaid)).collect();
    let macs: Vec<Option<&str>> = batch.iter().map(|r| r.mac.as_deref()).collect();
    let states: Vec<&str> = batch.iter().map(|r| r.state.as_str()).collect();
    let expires: Vec<i64> = batch.iter().map(|r| r.expires).collect();
    let updated: Vec<i64> = batch.iter().map(|r| r.updated).collect();
    let stmt = c
        .prepare_cached(
            "INSERT INTO leases6 (ip, duid, iaid, mac, state, expires, updated, server)
             SELECT u.*, $8::text FROM unnest($1::text[], $2::bytea[], $3::int8[], $4::text[],
                 $5::text[], $6::int8[], $7::int8[]) AS u
             ON CONFLICT (ip) DO UPDATE SET duid = excluded.duid, iaid = excluded.iaid,
               mac = excluded.mac, state = excluded.state, expires = excluded.expires,
               updated = excluded.updated, server = excluded.server
             WHERE (leases6.duid = excluded.duid AND leases6.iaid = excluded.iaid)
               OR leases6.state = 'released' OR leases6.expires <= excluded.updated
             RETURNING ip",
        )
        .await?;
    let written = c
        .query(
            &stmt,
            &[
                &ips, &duids, &iaids, &macs, &states, &expires, &updated, &server,
            ],
        )
        .await?;
    let select = format!("SELECT {PG_COLUMNS} FROM leases6 WHERE ip = ANY($1) ORDER BY ip");
    crate::pg::refused_holders(c, ips, written, &select, from_pg_row).await
}

/// A row read back; `None` (with a warning) for one that does not parse (hand-edited).
#[allow(clippy::too_many_arguments)] // one argument per column
fn parsed(
    ip: String,
    duid: Vec<u8>,
    iaid: i64,
    mac: Option<String>,
    state: String,
    expires: i64,
    updated: i64,
    server: Option<String>,
) -> Option<Lease6Record> {
    match (ip.parse(), LeaseState::parse(&state), u32::try_from(iaid)) {
        (Ok(ip), Some(state), Ok(iaid)) => Some(Lease6Record {
            ip,
            duid,
            iaid,
            mac,
            state,
            expires,
            updated,
            server,
        }),
        _ => {
            tracing::warn!(ip, state, "leases6: skipping unreadable row");
            None
        }
    }
}

fn from_pg_row(r: &tokio_postgres::Row) -> Option<Lease6Record> {
    parsed(
        r.get(0),
        r.get(1),
        r.get(2),
        r.get(3),
        r.get(4),
        r.get(5),
        r.get(6),
        r.get(7),
    )
}

/// Every stored DHCPv6 lease, ordered by address text; unreadable rows are skipped with a
/// warning.
pub fn load_all(store: &Store) -> Result<Vec<Lease6Record>, StoreError> {
    page(store, None, usize::MAX)
}

/// At most `n` stored DHCPv6 leases after the address `after` (from the first when `None`),
/// in the order of their address text compared byte by byte on both backends (on PostgreSQL
/// whatever the database's collation): a page is one range, and the order stays the same
/// between pages and servers.
pub fn page(
    store: &Store,
    after: Option<std::net::Ipv6Addr>,
    n: usize,
) -> Result<Vec<Lease6Record>, StoreError> {
    let after = after.map(|a| a.to_string());
    let n = i64::try_from(n).unwrap_or(i64::MAX);
    match store.backend() {
        Backend::Sqlite(db) => db.read(|c| load_in(c, after.as_deref(), n)),
        Backend::Postgres(pg) => {
            let rows: Vec<Lease6Record> = pg.run(move |c| async move {
                let rows = c
                    .query(
                        &format!(
                            "SELECT {PG_COLUMNS} FROM leases6
                             WHERE $1::text IS NULL OR ip COLLATE \"C\" > $1
                             ORDER BY ip COLLATE \"C\" LIMIT $2"
                        ),
                        &[&after, &n],
                    )
                    .await?;
                Ok(rows.iter().filter_map(from_pg_row).collect())
            })?;
            // What the database holds, this server's own leases of an earlier run included
            // (the fleet's polls skip those): a renewal of one of these may be journaled.
            pg.journal6.learn(&rows);
            Ok(rows)
        }
    }
}

/// DHCPv6 leases other servers wrote at or after `since` (seconds; the writers' clocks),
/// ordered by address: how a server of a fleet learns what the others bound. Empty for SQLite
/// (its only writer is this server).
pub fn changed_since(store: &Store, since: i64) -> Result<Vec<Lease6Record>, StoreError> {
    let me = store.server_name().to_string();
    match store.backend() {
        Backend::Sqlite(_) => Ok(Vec::new()),
        Backend::Postgres(pg) => {
            replay_journal(store, pg)?;
            let changed: Vec<Lease6Record> = pg.run(move |c| async move {
                let rows = c
                    .query(
                        &format!(
                            "SELECT {PG_COLUMNS} FROM leases6
                             WHERE updated >= $1 AND server IS DISTINCT FROM $2 ORDER BY ip"
                        ),
                        &[&since, &me],
                    )
                    .await?;
                Ok(rows.iter().filter_map(from_pg_row).collect())
            })?;
            pg.journal6.learn(&changed);
            Ok(changed)
        }
    }
}

fn load_in(
    conn: &Connection,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Lease6Record>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {PG_COLUMNS} FROM leases6 WHERE ?1 IS NULL OR ip > ?1 ORDER BY ip LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![after, limit], |r| {
        Ok(parsed(
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        out.extend(row?);
    }
    Ok(out)
}

/// The name this store keeps its server's DUID under: the server's name in a fleet, the empty
/// name for the SQLite store (one server, whatever its host name becomes).
fn duid_key(store: &Store) -> String {
    match store.backend() {
        Backend::Sqlite(_) => String::new(),
        Backend::Postgres(_) => store.server_name().to_string(),
    }
}

/// This server's DUID: the stored one, else `fresh()` stored now (once per state directory,
/// or per server name in a fleet).
pub fn server_duid(store: &Store, fresh: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>, StoreError> {
    let key = duid_key(store);
    match store.backend() {
        Backend::Sqlite(db) => {
            let get = |c: &Connection| {
                c.query_row(
                    "SELECT duid FROM dhcp6_duids WHERE server = ?1",
                    [&key],
                    |r| r.get::<_, Vec<u8>>(0),
                )
                .optional()
            };
            if let Some(duid) = db.read(get)? {
                return Ok(duid);
            }
            let duid = fresh();
            db.write(|tx| {
                tx.execute(
                    "INSERT INTO dhcp6_duids (server, duid) VALUES (?1, ?2)
                     ON CONFLICT(server) DO NOTHING",
                    params![key, duid],
                )
            })?;
            // Another process may have won the insert: what is stored is the answer.
            db.read(get)?
                .ok_or_else(|| StoreError::Config("the server's DUID was not stored".into()))
        }
        Backend::Postgres(pg) => {
            let duid = fresh();
            pg.run(move |c| async move {
                c.execute(
                    "INSERT INTO dhcp6_duids (server, duid) VALUES ($1, $2)
                     ON CONFLICT (server) DO NOTHING",
                    &[&key, &duid],
                )
                .await?;
                let row = c
                    .query_one("SELECT duid FROM dhcp6_duids WHERE server = $1", &[&key])
                    .await?;
                Ok(row.try_get(0)?)
            })
        }
    }
}

/// Every server's DUID, by server name (the SQLite store's one under the empty name).
pub fn server_duids(store: &Store) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    match store.backend() {
        Backend::Sqlite(db) => db.read(|c| {
            let mut st = c.prepare("SELECT server, duid FROM dhcp6_duids ORDER BY server")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        }),
        Backend::Postgres(pg) => pg.run(|c| async move {
            let rows = c
                .query("SELECT server, duid FROM dhcp6_duids ORDER BY server", &[])
                .await?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_single_servers_duid_survives_the_migration_to_one_duid_per_server() {
        let dir = tempfile::tempdir().unwrap();
        {
            // A database as schema version 9 left it, its DUID in the one-row table.
            let c = Connection::open(dir.path().join(crate::DB_FILE)).unwrap();
            crate::schema::sqlite_migrate_to(&c, 9).unwrap();
            c.execute(
                "INSERT INTO dhcp6_server (id, duid) VALUES (1, ?1)",
                [vec![0u8, 4, 7, 7]],
            )
            .unwrap();
        }
        let s = Store::open(dir.path())
            .unwrap()
            .named("renamed-host".into());
        assert_eq!(server_duid(&s, || vec![0, 4, 1, 1]).unwrap(), [0, 4, 7, 7]);
        assert_eq!(
            server_duids(&s).unwrap(),
            [(String::new(), vec![0, 4, 7, 7])]
        );
    }
}
