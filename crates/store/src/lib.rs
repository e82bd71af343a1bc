//! chainboot's embedded state (PRODUCT.md §6): leases, machines and events in one SQLite
//! database under `state_dir`, in WAL mode.
//!
//! Each concern owns a module with its schema and queries (`leases`, `machines`, `events`);
//! this file owns the connection handling and the migration list. Writers share one
//! connection behind a mutex (SQLite allows one writer at a time anyway); readers use their
//! own connection so that dashboards and the API never wait behind a write transaction.

pub mod events;
pub mod leases;
pub mod limit;
pub mod machines;

use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, Transaction};
use thiserror::Error;

/// The database file name inside `state_dir`.
pub const DB_FILE: &str = "chainboot.sqlite3";

/// A store failure. The message says what was being done.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("state store {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("state store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("state store: cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The state_dir exists but files cannot be written in it (read-only filesystem, full
    /// disk, permissions): leases could not be made durable, so the server does not start.
    #[error("state store: cannot write in {path}: {source}")]
    NotWritable {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Bytes the write-ahead log is truncated to at checkpoints.
const WAL_SIZE_LIMIT: i64 = 4 * 1024 * 1024;

/// Schema migrations, applied in order once each; `PRAGMA user_version` records how far a
/// database got. Append only: never edit a migration that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: nothing yet; modules append theirs below.
    "SELECT 1;",
    // 2: DHCP leases.
    leases::MIGRATION,
    // 3: machines (policy).
    machines::MIGRATION,
    // 4: events (boot timelines).
    events::MIGRATION,
];

/// The embedded store.
pub struct Store {
    path: Option<PathBuf>,
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database in `state_dir` and brings its schema up to date.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::Dir {
            path: state_dir.to_path_buf(),
            source,
        })?;
        Store::open_rw(state_dir).map_err(|e| {
            // SQLite's own message for an unwritable folder is vague ("unable to open database
            // file"): when a probe file cannot be written either, name the cause.
            let probe = state_dir.join(".write-probe");
            match std::fs::write(&probe, b"").and_then(|()| std::fs::remove_file(&probe)) {
                Err(source) => StoreError::NotWritable {
                    path: state_dir.to_path_buf(),
                    source,
                },
                Ok(()) => e,
            }
        })
    }

    fn open_rw(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join(DB_FILE);
        let open = |flags| {
            Connection::open_with_flags(&path, flags).map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })
        };
        let writer = open(OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE)?;
        incremental_vacuum_on(&writer)?;
        configure(&writer)?;
        migrate(&writer)?;
        let reader = open(OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        configure(&reader)?;
        Ok(Store {
            path: Some(path),
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
        })
    }

    /// A private in-memory store for tests and `explain`. Reads go through the writer
    /// connection (an in-memory database cannot be shared between connections).
    pub fn in_memory() -> Result<Store, StoreError> {
        let writer = Connection::open_in_memory()?;
        migrate(&writer)?;
        let reader = Connection::open_in_memory()?;
        Ok(Store {
            path: None,
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
        })
    }

    /// The database file, if on disk.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Runs `f` in a write transaction and commits it. With `synchronous=FULL` the data is on
    /// disk when this returns `Ok`.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, rusqlite::Error>,
    ) -> Result<T, StoreError> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Gives the pages freed by deletions back to the filesystem (the database uses
    /// `auto_vacuum = INCREMENTAL`, so deleted rows otherwise only become reusable space) and
    /// truncates the write-ahead log. Returns how many pages were released.
    pub fn reclaim_space(&self) -> Result<u64, StoreError> {
        let conn = self.writer.lock();
        let free: u64 = conn.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
        // Each step of the pragma frees pages: run it to the end.
        let mut stmt = conn.prepare("PRAGMA incremental_vacuum")?;
        let mut rows = stmt.query([])?;
        while rows.next()?.is_some() {}
        drop(rows);
        drop(stmt);
        if self.path.is_some() {
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        }
        Ok(free)
    }

    /// Bytes the database takes on disk: the file and its write-ahead log.
    pub fn disk_bytes(&self) -> u64 {
        let Some(path) = &self.path else { return 0 };
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        size(path) + size(Path::new(&wal))
    }

    /// Runs `f` on the read connection (a consistent snapshot for the duration of `f` if it
    /// opens a transaction itself).
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, rusqlite::Error>,
    ) -> Result<T, StoreError> {
        if self.path.is_none() {
            let conn = self.writer.lock();
            return Ok(f(&conn)?);
        }
        let conn = self.reader.lock();
        Ok(f(&conn)?)
    }
}

/// Makes deletions give space back. `auto_vacuum` can only be chosen before the first table
/// exists; a database created without it (by an older chainboot) is rebuilt once with VACUUM,
/// which takes a moment proportional to its size, then never again.
fn incremental_vacuum_on(conn: &Connection) -> Result<(), StoreError> {
    const INCREMENTAL: i64 = 2;
    let mode: i64 = conn.pragma_query_value(None, "auto_vacuum", |r| r.get(0))?;
    if mode == INCREMENTAL {
        return Ok(());
    }
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    if tables > 0 {
        tracing::info!("state store: converting to incremental vacuum (once)");
        conn.execute_batch("VACUUM")?;
    }
    Ok(())
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    // WAL: readers never block the writer; synchronous=FULL: a committed transaction survives
    // power loss, which is what "never ACK before the lease is durable" needs.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // A checkpoint truncates the write-ahead log back to this size, so a burst of writes does
    // not leave a large WAL file behind.
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(())
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let done: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        conn.execute_batch(&format!(
            "BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_twice_and_migrates_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.write(|tx| tx.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);"))
            .unwrap();
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        let n: i64 = s
            .read(|c| c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(n, 1);
        let v: usize = s
            .read(|c| c.pragma_query_value(None, "user_version", |r| r.get(0)))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len());
    }

    #[test]
    fn a_database_without_incremental_vacuum_is_converted_and_gives_space_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            // What an older chainboot left: auto_vacuum off, tables present.
            let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
            c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
                .unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let mode: i64 = s
            .read(|c| c.pragma_query_value(None, "auto_vacuum", |r| r.get(0)))
            .unwrap();
        assert_eq!(mode, 2, "incremental");
        s.write(|tx| {
            tx.execute_batch(
                "CREATE TABLE big(x); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 2000)
                 INSERT INTO big SELECT randomblob(1000) FROM n;",
            )
        })
        .unwrap();
        s.reclaim_space().unwrap();
        let full = s.disk_bytes();
        assert!(full > 2_000_000, "{full}");
        s.write(|tx| tx.execute_batch("DELETE FROM big")).unwrap();
        assert!(s.reclaim_space().unwrap() > 400, "pages freed");
        let after = s.disk_bytes();
        assert!(after < full / 4, "{after} of {full} bytes left");
    }
}
