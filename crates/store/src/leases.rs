//! DHCP leases: one row per address the DHCP server has handed out, declined
//! or released. The DHCP engine keeps the live table in memory; this module is its durable
//! copy, written before every ACK leaves (never ACK before the lease is durable)
//! and read back at start.
//!
//! Writes come in batches so that the DHCP driver can group-commit: every ACK that arrives
//! while one fsync is in progress is written by the next single transaction.

use rusqlite::{params, Connection, Transaction};

use crate::{Store, StoreError};

/// Schema of the `leases` table; appended to `MIGRATIONS` in lib.rs.
pub(crate) const MIGRATION: &str = "
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
";

/// What an address is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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

    fn parse(s: &str) -> Option<LeaseState> {
        match s {
            "bound" => Some(LeaseState::Bound),
            "released" => Some(LeaseState::Released),
            "declined" => Some(LeaseState::Declined),
            _ => None,
        }
    }
}

/// One stored lease. Times are seconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
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

/// Writes (inserts or replaces, by address) every record in one transaction: durable when
/// this returns `Ok` (the store runs with `synchronous=FULL`).
pub fn save_batch(store: &Store, records: &[LeaseRecord]) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    store.write(|tx| save_in(tx, records))
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
    store.read(load_in)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ip: &str, mac: &str, state: LeaseState) -> LeaseRecord {
        LeaseRecord {
            ip: ip.parse().unwrap(),
            mac: mac.into(),
            client_id: Some(vec![1, 2, 3]),
            hostname: Some("node".into()),
            state,
            expires: 1000,
            updated: 10,
        }
    }

    #[test]
    fn batch_survives_reopen_and_replaces_by_address() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        save_batch(
            &s,
            &[
                rec("198.18.0.10", "52:54:00:00:00:01", LeaseState::Bound),
                rec("198.18.0.11", "52:54:00:00:00:02", LeaseState::Bound),
            ],
        )
        .unwrap();
        save_batch(
            &s,
            &[rec(
                "198.18.0.10",
                "52:54:00:00:00:01",
                LeaseState::Released,
            )],
        )
        .unwrap();
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        let all = load_all(&s).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].state, LeaseState::Released);
        assert_eq!(
            all[1],
            rec("198.18.0.11", "52:54:00:00:00:02", LeaseState::Bound)
        );
    }

    #[test]
    fn empty_batch_writes_nothing() {
        let s = Store::in_memory().unwrap();
        save_batch(&s, &[]).unwrap();
        assert!(load_all(&s).unwrap().is_empty());
    }
}
