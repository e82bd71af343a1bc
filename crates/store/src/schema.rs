//! The schema's versions, one list for both backends: migration N takes a database from
//! version N-1 to N, in SQLite's dialect and in PostgreSQL's. Append only: never edit a
//! migration that has shipped; a new table or column is one more entry (with both texts),
//! owned by the module whose concern it is.
//!
//! SQLite records its version in `PRAGMA user_version`; PostgreSQL in a `schema_version`
//! table, migrated under an advisory lock so that servers starting together migrate once.
//! A database at a version this binary does not know (a newer chainboot migrated it) is
//! refused, never written to.

use rusqlite::Connection;

use crate::StoreError;

/// One step of the schema, in both dialects.
pub(crate) struct Migration {
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

const NOTHING: Migration = Migration {
    sqlite: "SELECT 1;",
    postgres: "SELECT 1;",
};

/// Applied in order, once each.
const MIGRATIONS: &[Migration] = &[
    // 1: nothing yet; modules append theirs below.
    NOTHING,
    // 2: DHCP leases.
    crate::leases::MIGRATION,
    // 3: machines (policy).
    crate::machines::MIGRATION,
    // 4: events (boot timelines).
    crate::events::MIGRATION,
    // 5: live servers; which server wrote an event or a lease.
    crate::servers::MIGRATION,
    // 6: DHCPv6 leases and the server's DUID.
    crate::leases6::MIGRATION,
    // 7: which server last answered each machine.
    crate::machines::MIGRATION_LAST_SERVER,
    // 8: what machines' firmware said over DHCP, their boots' stage, Secure Boot refusals.
    crate::firmware::MIGRATION,
    // 9: the addresses each live server answers DHCP from.
    crate::servers::MIGRATION_ADDRESSES,
    // 10: which server wrote a DHCPv6 lease; one DUID per server.
    crate::leases6::MIGRATION_FLEET,
    // 11: where each server's boot listener is (its peers' scripts name it as an
    // alternative); the secrets a fleet's servers share (the boot capabilities' key).
    crate::servers::MIGRATION_BOOT_BASE,
];

/// The schema version this binary brings databases to.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

fn check_not_newer(found: u32) -> Result<(), StoreError> {
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found,
            known: SCHEMA_VERSION,
        });
    }
    Ok(())
}

pub(crate) fn sqlite_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
}

pub(crate) fn sqlite_migrate(conn: &Connection) -> Result<(), StoreError> {
    sqlite_migrate_to(conn, SCHEMA_VERSION)
}

/// Brings the database to `version` (tests make databases as older binaries left them).
pub(crate) fn sqlite_migrate_to(conn: &Connection, version: u32) -> Result<(), StoreError> {
    let done = sqlite_version(conn)?;
    check_not_newer(done)?;
    let steps = version.saturating_sub(done) as usize;
    for (i, m) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(done as usize)
        .take(steps)
    {
        conn.execute_batch(&format!(
            "BEGIN; {}; PRAGMA user_version = {}; COMMIT;",
            m.sqlite,
            i + 1
        ))?;
    }
    Ok(())
}

/// Key of the advisory lock held while migrating ("chainboo" in ASCII).
const MIGRATION_LOCK: i64 = 0x6368_6169_6e62_6f6f;

const PG_VERSION_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_ms BIGINT NOT NULL)";

/// The version the database is at; 0 for an empty database.
pub(crate) async fn pg_version(c: &tokio_postgres::Client) -> Result<u32, StoreError> {
    let exists = c
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
        .await?;
    if !exists.get::<_, bool>(0) {
        return Ok(0);
    }
    let row = c
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await?;
    Ok(row.get::<_, i32>(0).max(0) as u32)
}

/// Brings the database to [`SCHEMA_VERSION`] in one transaction; returns the version it found.
pub(crate) async fn pg_migrate(c: &mut tokio_postgres::Client) -> Result<u32, StoreError> {
    let tx = c.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(PG_VERSION_TABLE).await?;
    let row = tx
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await?;
    let found = row.get::<_, i32>(0).max(0) as u32;
    check_not_newer(found)?;
    for (i, m) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(m.postgres).await?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_ms) VALUES ($1, $2)",
            &[&(i as i32 + 1), &crate::now_ms()],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(found)
}
