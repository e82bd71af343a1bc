//! The live servers: every server using the store writes a heartbeat row under its name. With
//! PostgreSQL this is the fleet (the peers among which DHCP clients are shared, what `check`
//! and the API list); with SQLite it holds the one server.
//!
//! Heartbeat times come from the database's clock on PostgreSQL, so that servers whose clocks
//! differ still agree on who is alive.
//!
//! A heartbeat alone notices a dead server only after `peer_timeout`, and a client it was
//! serving waits that long. On PostgreSQL a server that dies (a crash, `kill -9`) also loses its
//! database sessions at once: the kernel closes its sockets and each backend exits. So a server
//! is live only while at least one session named after it (`application_name` "chainboot
//! NAME", which every server sets) is open, as well as heart-beating: its peers see it gone
//! on their next beat. Where sessions cannot be told apart (a connection pooler in front of
//! the database that does not keep each client's `application_name`; the reading server does
//! not find its own session under its name), the heartbeat alone decides.

use std::net::Ipv4Addr;

use serde::Serialize;

use crate::schema::Migration;
use crate::{Backend, Store, StoreError};

/// Schema version 5: the live-servers table, and which server wrote an event or a lease.
pub(crate) const MIGRATION: Migration = Migration {
    sqlite: "
CREATE TABLE servers (
    name         TEXT PRIMARY KEY,
    started_ms   INTEGER NOT NULL,
    heartbeat_ms INTEGER NOT NULL,
    version      TEXT NOT NULL
);
ALTER TABLE events ADD COLUMN server TEXT;
ALTER TABLE leases ADD COLUMN server TEXT;
",
    postgres: "
CREATE TABLE servers (
    name         TEXT PRIMARY KEY,
    started_ms   BIGINT NOT NULL,
    heartbeat_ms BIGINT NOT NULL,
    version      TEXT NOT NULL
);
ALTER TABLE events ADD COLUMN server TEXT;
ALTER TABLE leases ADD COLUMN server TEXT;
",
};

/// Schema version 9: the addresses each server answers DHCP from (its server identifiers), so
/// that its peers tell a message for it from one for an unknown DHCP server.
pub(crate) const MIGRATION_ADDRESSES: Migration = Migration {
    sqlite: "ALTER TABLE servers ADD COLUMN addresses TEXT NOT NULL DEFAULT '';",
    postgres: "ALTER TABLE servers ADD COLUMN addresses TEXT NOT NULL DEFAULT '';",
};

/// Schema version 11: the base URL machines fetch a server's boot scripts and files from, so
/// that its peers can name it in their scripts as the place to go on when they die mid-boot;
/// and the secrets the servers of a fleet share (the key of the boot capabilities in those
/// URLs, so that a peer accepts them).
pub(crate) const MIGRATION_BOOT_BASE: Migration = Migration {
    sqlite: "ALTER TABLE servers ADD COLUMN boot_http TEXT NOT NULL DEFAULT '';
ALTER TABLE servers ADD COLUMN boot_https_port INTEGER;
CREATE TABLE fleet_secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL);",
    postgres: "ALTER TABLE servers ADD COLUMN boot_http TEXT NOT NULL DEFAULT '';
ALTER TABLE servers ADD COLUMN boot_https_port INTEGER;
CREATE TABLE fleet_secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL);",
};

/// The name of the fleet's boot capability key in `fleet_secrets`.
pub const BOOT_CAPABILITY_SECRET: &str = "boot-capability";

/// A shared secret's stored value is 32 to 256 characters (what `fresh` makes is checked too).
const SECRET_LEN: std::ops::RangeInclusive<usize> = 32..=256;

/// The secret `name` every server of the fleet shares: the stored one, else `fresh()` stored
/// now (the first server to ask makes it; when two race, both get the one that was stored).
/// A stored value that is too short or too long to be one is an error, not used.
pub fn fleet_secret(
    store: &Store,
    name: &str,
    fresh: impl FnOnce() -> String,
) -> Result<String, StoreError> {
    let name = name.to_string();
    let fresh = fresh();
    let stored = match store.backend() {
        Backend::Sqlite(db) => {
            let key = name.clone();
            db.write(move |tx| {
                tx.execute(
                    "INSERT INTO fleet_secrets (name, value) VALUES (?1, ?2)
                     ON CONFLICT(name) DO NOTHING",
                    rusqlite::params![key, fresh],
                )?;
                tx.query_row(
                    "SELECT value FROM fleet_secrets WHERE name = ?1",
                    [&key],
                    |r| r.get::<_, String>(0),
                )
            })?
        }
        Backend::Postgres(pg) => {
            let key = name.clone();
            pg.run(move |c| async move {
                c.execute(
                    "INSERT INTO fleet_secrets (name, value) VALUES ($1, $2)
                     ON CONFLICT (name) DO NOTHING",
                    &[&key, &fresh],
                )
                .await?;
                let row = c
                    .query_one("SELECT value FROM fleet_secrets WHERE name = $1", &[&key])
                    .await?;
                Ok(row.try_get::<_, String>(0)?)
            })?
        }
    };
    if !SECRET_LEN.contains(&stored.len()) {
        return Err(StoreError::Config(format!(
            "the fleet's secret {name:?} in the database is {} characters long, not {} to {} \
             (delete its row in fleet_secrets and start the servers again to make a new one)",
            stored.len(),
            SECRET_LEN.start(),
            SECRET_LEN.end()
        )));
    }
    Ok(stored)
}

/// Addresses a server publishes at most (a server on more interfaces publishes the first).
pub const MAX_ADDRESSES: usize = 64;

/// The longest boot base URL written or read back (a host name of DNS's 253 characters, the
/// scheme and a port fit).
pub const MAX_BOOT_BASE: usize = 280;

/// Where machines reach a server's boot listener: its HTTP base URL (`http://host[:port]`, no
/// path) and the port of its TLS listener when it has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootBase {
    pub http: String,
    pub https_port: Option<u16>,
}

impl BootBase {
    /// A row's base as read back: another server wrote it, so anything but a bounded
    /// `http://` or `https://` URL of printable characters without spaces is no base, and a
    /// port outside 1..=65535 is no port. (Whoever uses it parses it further.)
    fn from_row(http: &str, https_port: Option<i32>) -> Option<BootBase> {
        let plausible = http.len() <= MAX_BOOT_BASE
            && (http.starts_with("http://") || http.starts_with("https://"))
            && http.bytes().all(|b| b.is_ascii_graphic());
        plausible.then(|| BootBase {
            http: http.to_string(),
            https_port: https_port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0),
        })
    }

    /// The stored form (a base too long to read back is not written).
    fn row(base: Option<&BootBase>) -> (String, Option<i32>) {
        match base.filter(|b| b.http.len() <= MAX_BOOT_BASE) {
            Some(b) => (b.http.clone(), b.https_port.map(i32::from)),
            None => (String::new(), None),
        }
    }
}

/// One server's row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerRecord {
    pub name: String,
    /// Unix ms, by the database's clock on PostgreSQL.
    pub started_ms: i64,
    pub heartbeat_ms: i64,
    /// The chainboot version it runs.
    pub version: String,
    /// How long ago its last heartbeat was, by the clock heartbeats are written with.
    pub age_ms: i64,
    /// The IPv4 addresses it answers DHCP from (its server identifiers).
    pub addresses: Vec<Ipv4Addr>,
    /// Where machines fetch its boot scripts and files (none: it did not say, or what its row
    /// holds is no URL).
    pub boot: Option<BootBase>,
    /// Whether it has a session open to the database (always true on SQLite, and where
    /// sessions cannot be told apart: see the module's documentation).
    pub connected: bool,
}

impl ServerRecord {
    /// Whether the server counts as live: heart-beating within `max_age_ms` and connected.
    pub fn is_live(&self, max_age_ms: i64) -> bool {
        self.age_ms <= max_age_ms && self.connected
    }
}

/// A session's `application_name` holds at most this many bytes (PostgreSQL's NAMEDATALEN
/// less one); longer names are cut, so the comparison cuts too.
const PG_APPLICATION_NAME_MAX: i32 = 63;

/// The stored form of `addresses`: space-separated, at most [`MAX_ADDRESSES`].
fn addresses_text(addresses: &[Ipv4Addr]) -> String {
    let list: Vec<String> = addresses
        .iter()
        .take(MAX_ADDRESSES)
        .map(Ipv4Addr::to_string)
        .collect();
    list.join(" ")
}

/// Reads `addresses` back (a word that is no address, from a hand-edited row, is skipped).
fn addresses_of(text: &str) -> Vec<Ipv4Addr> {
    text.split_whitespace()
        .take(MAX_ADDRESSES)
        .filter_map(|a| a.parse().ok())
        .collect()
}

pub(crate) const PG_NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::int8";

/// Writes this server's heartbeat (the row is made on the first one; `version` is the
/// chainboot version it runs, `addresses` those it answers DHCP from, and the boot base is
/// the one [`Store::set_boot_base`] gave). `started_ms` is kept from the first heartbeat of
/// this run.
pub fn heartbeat(
    store: &Store,
    version: &str,
    first: bool,
    addresses: &[Ipv4Addr],
) -> Result<(), StoreError> {
    let name = store.server_name().to_string();
    let version = version.to_string();
    let addresses = addresses_text(addresses);
    let (boot_http, boot_https_port) = BootBase::row(store.boot_base().as_ref());
    match store.backend() {
        Backend::Sqlite(db) => {
            let now = crate::now_ms();
            db.write(|tx| {
                tx.execute(
                    "INSERT INTO servers (name, started_ms, heartbeat_ms, version, addresses,
                        boot_http, boot_https_port)
                     VALUES (?1, ?2, ?2, ?3, ?5, ?6, ?7)
                     ON CONFLICT(name) DO UPDATE SET heartbeat_ms = excluded.heartbeat_ms,
                        version = excluded.version, addresses = excluded.addresses,
                        boot_http = excluded.boot_http,
                        boot_https_port = excluded.boot_https_port,
                        started_ms = CASE WHEN ?4 THEN excluded.started_ms ELSE started_ms END",
                    rusqlite::params![
                        name,
                        now,
                        version,
                        first,
                        addresses,
                        boot_http,
                        boot_https_port
                    ],
                )
            })
            .map(|_| ())
        }
        Backend::Postgres(pg) => pg.run(move |c| async move {
            c.execute(
                &format!(
                    "INSERT INTO servers (name, started_ms, heartbeat_ms, version, addresses,
                        boot_http, boot_https_port)
                     VALUES ($1, {PG_NOW_MS}, {PG_NOW_MS}, $2, $4, $5, $6)
                     ON CONFLICT (name) DO UPDATE SET heartbeat_ms = excluded.heartbeat_ms,
                        version = excluded.version, addresses = excluded.addresses,
                        boot_http = excluded.boot_http,
                        boot_https_port = excluded.boot_https_port,
                        started_ms = CASE WHEN $3 THEN excluded.started_ms
                                     ELSE servers.started_ms END"
                ),
                &[
                    &name,
                    &version,
                    &first,
                    &addresses,
                    &boot_http,
                    &boot_https_port,
                ],
            )
            .await?;
            Ok(())
        }),
    }
}

/// Removes this server's row (a clean stop: its peers take its clients at once rather than
/// after its heartbeat times out).
pub fn leave(store: &Store) -> Result<(), StoreError> {
    let name = store.server_name().to_string();
    match store.backend() {
        Backend::Sqlite(db) => db
            .write(|tx| tx.execute("DELETE FROM servers WHERE name = ?1", [&name]))
            .map(|_| ()),
        Backend::Postgres(pg) => pg.run(move |c| async move {
            c.execute("DELETE FROM servers WHERE name = $1", &[&name])
                .await?;
            Ok(())
        }),
    }
}

/// Every server row, by name, with the age of its heartbeat.
pub fn all(store: &Store) -> Result<Vec<ServerRecord>, StoreError> {
    match store.backend() {
        Backend::Sqlite(db) => {
            let now = crate::now_ms();
            db.read(|c| {
                let mut st = c.prepare(
                    "SELECT name, started_ms, heartbeat_ms, version, addresses, boot_http,
                        boot_https_port
                     FROM servers ORDER BY name",
                )?;
                let rows = st.query_map([], |r| {
                    let heartbeat_ms: i64 = r.get(2)?;
                    Ok(ServerRecord {
                        name: r.get(0)?,
                        started_ms: r.get(1)?,
                        heartbeat_ms,
                        version: r.get(3)?,
                        age_ms: now - heartbeat_ms,
                        addresses: addresses_of(&r.get::<_, String>(4)?),
                        boot: BootBase::from_row(&r.get::<_, String>(5)?, r.get(6)?),
                        connected: true,
                    })
                })?;
                rows.collect()
            })
        }
        Backend::Postgres(pg) => {
            let me = store.server_name().to_string();
            pg.run(move |c| async move {
                // `connected`: a session of the server (`application_name` "chainboot NAME",
                // cut as PostgreSQL cuts it) is open on this database. `tracked`: this very
                // session carries its own server's name, so the others' names can be trusted.
                let rows = c
                    .query(
                        &format!(
                            "SELECT name, started_ms, heartbeat_ms, version,
                                {PG_NOW_MS} - heartbeat_ms, addresses,
                                EXISTS (SELECT 1 FROM pg_stat_activity a
                                        WHERE a.datname = current_database()
                                          AND a.application_name = left('chainboot ' || s.name,
                                              {PG_APPLICATION_NAME_MAX})),
                                EXISTS (SELECT 1 FROM pg_stat_activity a
                                        WHERE a.pid = pg_backend_pid()
                                          AND a.application_name = left('chainboot ' || $1::text,
                                              {PG_APPLICATION_NAME_MAX})),
                                boot_http, boot_https_port
                             FROM servers s ORDER BY name"
                        ),
                        &[&me],
                    )
                    .await?;
                rows.iter()
                    .map(|r| {
                        let tracked: bool = r.try_get(7)?;
                        let connected: bool = r.try_get(6)?;
                        Ok(ServerRecord {
                            name: r.try_get(0)?,
                            started_ms: r.try_get(1)?,
                            heartbeat_ms: r.try_get(2)?,
                            version: r.try_get(3)?,
                            age_ms: r.try_get(4)?,
                            addresses: addresses_of(r.try_get(5)?),
                            boot: BootBase::from_row(r.try_get(8)?, r.try_get(9)?),
                            connected: connected || !tracked,
                        })
                    })
                    .collect()
            })
        }
    }
}

/// The live servers ([`ServerRecord::is_live`]), by name.
pub fn live(store: &Store, max_age_ms: i64) -> Result<Vec<ServerRecord>, StoreError> {
    Ok(all(store)?
        .into_iter()
        .filter(|s| s.is_live(max_age_ms))
        .collect())
}
