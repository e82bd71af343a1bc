//! DHCPv6 leases: one row per IPv6 address the DHCPv6 server has bound, declined or seen
//! released, keyed by the client's DUID and IAID (RFC 8415 §12: an address belongs to an
//! identity association, not to a hardware address). Written in batches before the Reply of
//! the batch leaves, read back at start, like the IPv4 `leases`.
//!
//! Also the server's own DUID: clients renew with it in their Server Identifier option, so it
//! must outlive restarts.
//!
//! SQLite only for now: the tables exist in both dialects, but a fleet sharing one PostgreSQL
//! database would need the DHCPv4 leases' arbitration (the database deciding who gets an
//! address) for IPv6 too, which is not written; on PostgreSQL these functions refuse with a
//! clear error and `[dhcp6]` does not start.

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::leases::LeaseState;
use crate::schema::Migration;
use crate::{Backend, Sqlite, Store, StoreError};

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

/// The SQLite database, or why DHCPv6 leases cannot be kept in this store.
fn sqlite(store: &Store) -> Result<&Sqlite, StoreError> {
    match store.backend() {
        Backend::Sqlite(db) => Ok(db),
        Backend::Postgres(_) => Err(StoreError::Config(
            "DHCPv6 leases are kept in the embedded SQLite store only: with [store] backend = \"postgres\" set [dhcp6] mode = \"off\"".into(),
        )),
    }
}

/// One stored DHCPv6 lease. Times are seconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lease6Record {
    pub ip: std::net::Ipv6Addr,
    pub duid: Vec<u8>,
    pub iaid: u32,
    /// Lower-case `aa:bb:cc:dd:ee:ff`, when the engine learned the MAC behind the DUID.
    pub mac: Option<String>,
    pub state: LeaseState,
    pub expires: i64,
    pub updated: i64,
}

/// Writes (inserts or replaces, by address) every record in one transaction: durable when
/// this returns `Ok`.
pub fn save_batch(store: &Store, records: &[Lease6Record]) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    sqlite(store)?.write(|tx| save_in(tx, records))
}

fn save_in(tx: &Transaction<'_>, records: &[Lease6Record]) -> Result<(), rusqlite::Error> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO leases6 (ip, duid, iaid, mac, state, expires, updated)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(ip) DO UPDATE SET duid = excluded.duid, iaid = excluded.iaid,
           mac = excluded.mac, state = excluded.state, expires = excluded.expires,
           updated = excluded.updated",
    )?;
    for r in records {
        stmt.execute(params![
            r.ip.to_string(),
            r.duid,
            i64::from(r.iaid),
            r.mac,
            r.state.as_str(),
            r.expires,
            r.updated
        ])?;
    }
    Ok(())
}

/// Every stored DHCPv6 lease, ordered by address text; unreadable rows are skipped with a
/// warning.
pub fn load_all(store: &Store) -> Result<Vec<Lease6Record>, StoreError> {
    sqlite(store)?.read(|c| load_in(c, None, i64::MAX))
}

/// At most `n` stored DHCPv6 leases after the address `after` (from the first when `None`),
/// in the order of their address text (the primary key's: a page is one index range, and the
/// order stays the same between pages).
pub fn page(
    store: &Store,
    after: Option<std::net::Ipv6Addr>,
    n: usize,
) -> Result<Vec<Lease6Record>, StoreError> {
    let after = after.map(|a| a.to_string());
    let n = i64::try_from(n).unwrap_or(i64::MAX);
    sqlite(store)?.read(|c| load_in(c, after.as_deref(), n))
}

fn load_in(
    conn: &Connection,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Lease6Record>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT ip, duid, iaid, mac, state, expires, updated FROM leases6
         WHERE ?1 IS NULL OR ip > ?1 ORDER BY ip LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after, limit], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, Option<String>>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, i64>(5)?,
            r.get::<_, i64>(6)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (ip, duid, iaid, mac, state, expires, updated) = row?;
        match (ip.parse(), LeaseState::parse(&state), u32::try_from(iaid)) {
            (Ok(ip), Some(state), Ok(iaid)) => out.push(Lease6Record {
                ip,
                duid,
                iaid,
                mac,
                state,
                expires,
                updated,
            }),
            _ => tracing::warn!(ip, state, "leases6: skipping unreadable row"),
        }
    }
    Ok(out)
}

/// The server's DUID: the stored one, else `fresh()` stored now (once per state directory).
pub fn server_duid(store: &Store, fresh: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>, StoreError> {
    let db = sqlite(store)?;
    let stored = db.read(|c| {
        c.query_row("SELECT duid FROM dhcp6_server WHERE id = 1", [], |r| {
            r.get::<_, Vec<u8>>(0)
        })
        .optional()
    })?;
    if let Some(duid) = stored {
        return Ok(duid);
    }
    let duid = fresh();
    db.write(|tx| {
        tx.execute(
            "INSERT INTO dhcp6_server (id, duid) VALUES (1, ?1) ON CONFLICT(id) DO NOTHING",
            params![duid],
        )
    })?;
    // Another process may have won the insert: what is stored is the answer.
    db.read(|c| {
        c.query_row("SELECT duid FROM dhcp6_server WHERE id = 1", [], |r| {
            r.get(0)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ip: &str, iaid: u32, state: LeaseState) -> Lease6Record {
        Lease6Record {
            ip: ip.parse().unwrap(),
            duid: vec![0, 4, 1, 2, 3],
            iaid,
            mac: Some("52:54:00:00:00:01".into()),
            state,
            expires: 1000,
            updated: 10,
        }
    }

    #[test]
    fn v6_batch_survives_reopen_and_replaces_by_address() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        save_batch(
            &s,
            &[
                rec("2001:db8::10", 1, LeaseState::Bound),
                rec("2001:db8::11", u32::MAX, LeaseState::Bound),
            ],
        )
        .unwrap();
        save_batch(&s, &[rec("2001:db8::10", 1, LeaseState::Released)]).unwrap();
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        let all = load_all(&s).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].state, LeaseState::Released);
        assert_eq!(all[1], rec("2001:db8::11", u32::MAX, LeaseState::Bound));
    }

    #[test]
    fn pages_of_v6_leases_follow_the_address_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let all: Vec<Lease6Record> = (0..25u32)
            .map(|i| {
                rec(
                    &format!("2001:db8::{:x}", 0x100 + i * 7),
                    i,
                    LeaseState::Bound,
                )
            })
            .collect();
        save_batch(&s, &all).unwrap();
        let mut walked = Vec::new();
        let mut after = None;
        loop {
            let p = page(&s, after, 4).unwrap();
            assert!(p.len() <= 4);
            let Some(last) = p.last() else { break };
            after = Some(last.ip);
            walked.extend(p.into_iter().map(|l| l.ip));
        }
        let expected: Vec<_> = load_all(&s).unwrap().into_iter().map(|l| l.ip).collect();
        assert_eq!(walked.len(), 25);
        assert_eq!(
            walked, expected,
            "the same order as the whole list, each once"
        );
    }

    #[test]
    fn the_server_duid_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let first = server_duid(&s, || vec![0, 4, 9, 9]).unwrap();
        assert_eq!(first, vec![0, 4, 9, 9]);
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(server_duid(&s, || vec![0, 4, 1, 1]).unwrap(), first);
    }
}
