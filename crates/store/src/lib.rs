//! chainboot's state: leases, machines, events and the live servers, in one of two backends.
//!
//! - SQLite (the default): one database file under `state_dir`, in WAL mode, for one server.
//!   Writers share one connection behind a mutex (SQLite allows one writer at a time anyway);
//!   readers use their own connection so that dashboards and the API never wait behind a write
//!   transaction.
//! - PostgreSQL (`[store] backend = "postgres"`): every server pointing at one database is one
//!   fleet (see `pg`).
//!
//! Each concern owns a module with its schema and queries for both backends (`leases`,
//! `leases6`, `machines` and `firmware`, `events`, `servers`); this file owns the SQLite
//! connection handling, `schema` the versioned migrations, `pg` the PostgreSQL pool.

pub mod config;
pub mod events;
pub mod firmware;
mod journal;
pub mod leases;
pub mod leases6;
pub mod limit;
pub mod machines;
mod pg;
pub mod presence;
mod schema;
pub mod servers;

pub use config::{StoreBackend, StoreConfig};
pub use journal::{JournalStats, JOURNAL6_FILE, JOURNAL_FILE};
pub use schema::SCHEMA_VERSION;

use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, Transaction};
use thiserror::Error;

/// The database file name inside `state_dir`.
pub const DB_FILE: &str = "chainboot.sqlite3";
/// SQLite's write-ahead log and shared-memory index beside it (WAL mode).
const WAL_FILE: &str = "chainboot.sqlite3-wal";
const SHM_FILE: &str = "chainboot.sqlite3-shm";

/// Modes of state chainboot keeps private: secrets of every machine (the database) and the
/// API token.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) with mode 0700 when it does not exist.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
}

/// Creates `path` empty with mode 0600 unless it exists (an empty file is a new database to
/// SQLite, which would otherwise create it 0644).
fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE_MODE)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes the permission bits of `path` beyond `allowed` (group and other bits for 0600 or
/// 0700), logging a warning when it changes anything. A directory with the sticky bit (a
/// shared one such as /tmp) is left alone with a warning: it is not chainboot's own to change.
pub fn restrict_permissions(path: &Path, allowed: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & !allowed & 0o777 == 0 {
        return Ok(());
    }
    if meta.is_dir() && mode & 0o1000 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{mode:04o}"),
            "state directory is shared (sticky bit): its files are made private, the directory is left as it is"
        );
        return Ok(());
    }
    let tightened = mode & !(!allowed & 0o777);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(tightened))?;
    tracing::warn!(
        path = %path.display(),
        was = format_args!("{mode:04o}"),
        now = format_args!("{tightened:04o}"),
        "state file was readable by others (it holds machine secrets or the API token); permissions tightened"
    );
    Ok(())
}

/// A store failure. The message says what was being done.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database was migrated by a newer chainboot: this binary does not know its schema
    /// and must not write to it.
    #[error(
        "state store: the database schema is version {found}, newer than this chainboot knows \
         ({known}); run the newer chainboot, or restore a backup taken before it migrated"
    )]
    NewerSchema { found: u32, known: u32 },
    #[error("state store (PostgreSQL): {}", pg::error_text(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// No connection could be had from the pool (database down, unreachable, or every
    /// connection busy for longer than the pool's wait).
    #[error("state store (PostgreSQL): no connection: {0}")]
    Unavailable(String),
    #[error("state store: {0}")]
    Config(String),
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

/// Now, in Unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Bytes the write-ahead log is truncated to at checkpoints.
const WAL_SIZE_LIMIT: i64 = 4 * 1024 * 1024;

/// The state store: one of the backends behind one API.
pub struct Store {
    backend: Backend,
    /// This server's name, recorded with what it writes (events, leases, the live-servers
    /// table).
    server: String,
    /// Where machines reach this server's boot listener, written with its heartbeats.
    boot_base: parking_lot::Mutex<Option<servers::BootBase>>,
}

enum Backend {
    Sqlite(Sqlite),
    Postgres(pg::Postgres),
}

/// The embedded SQLite database.
pub(crate) struct Sqlite {
    path: Option<PathBuf>,
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    /// Write transactions committed (each one fsync with `synchronous=FULL`).
    commits: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Store");
        match &self.backend {
            Backend::Sqlite(db) => d.field("sqlite", &db.path),
            Backend::Postgres(pg) => d.field("postgres", &pg.describe()),
        };
        d.field("server", &self.server).finish()
    }
}

impl Store {
    /// Opens the backend `cfg` chooses: the SQLite file in `state_dir`, or the PostgreSQL
    /// database (connected, migrated, this server registered in the live-servers table).
    pub fn from_config(cfg: &StoreConfig, state_dir: &Path) -> Result<Store, StoreError> {
        let server = cfg.server_name();
        match cfg.backend {
            StoreBackend::Sqlite => Ok(Store::open(state_dir)?.named(server)),
            StoreBackend::Postgres => {
                create_private_dir(state_dir).map_err(|source| StoreError::Dir {
                    path: state_dir.to_path_buf(),
                    source,
                })?;
                let pg = pg::Postgres::connect(cfg, &server, Some(state_dir))?;
                let store = Store {
                    backend: Backend::Postgres(pg),
                    server,
                    boot_base: Default::default(),
                };
                // Renewals acknowledged during an outage that ended with this server stopped.
                if let Backend::Postgres(pg) = &store.backend {
                    leases::replay_journal(&store, pg)?;
                    leases6::replay_journal(&store, pg)?;
                }
                Ok(store)
            }
        }
    }

    /// Connects to the PostgreSQL database `cfg` names without migrating anything (`check`
    /// looks; only `serve` changes the schema). `None` for the SQLite backend.
    pub fn inspect(cfg: &StoreConfig) -> Result<Option<Store>, StoreError> {
        match cfg.backend {
            StoreBackend::Sqlite => Ok(None),
            StoreBackend::Postgres => {
                let server = cfg.server_name();
                Ok(Some(Store {
                    backend: Backend::Postgres(pg::Postgres::connect(cfg, &server, None)?),
                    server,
                    boot_base: Default::default(),
                }))
            }
        }
    }

    /// The same store recording `server` as the name of this server.
    pub fn named(mut self, server: String) -> Store {
        self.server = server;
        self
    }

    /// This server's name (what it writes is recorded under it).
    pub fn server_name(&self) -> &str {
        &self.server
    }

    /// Where machines reach this server's boot listener, published with every heartbeat from
    /// now on (the listener is bound after the store is opened).
    pub fn set_boot_base(&self, base: Option<servers::BootBase>) {
        *self.boot_base.lock() = base;
    }

    /// What [`Store::set_boot_base`] gave.
    pub fn boot_base(&self) -> Option<servers::BootBase> {
        self.boot_base.lock().clone()
    }

    /// Whether other servers write this state too (PostgreSQL: a fleet). What a server read
    /// from a shared store may be changed by another at any moment, through no path of its
    /// own, so it must not answer from a copy as if it were current.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// `sqlite` or `postgres`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Where the state is: the SQLite file, or the PostgreSQL host and database.
    pub fn location(&self) -> String {
        match &self.backend {
            Backend::Sqlite(db) => db
                .path
                .as_deref()
                .map_or_else(|| "(in memory)".to_string(), |p| p.display().to_string()),
            Backend::Postgres(pg) => pg.describe(),
        }
    }

    /// The schema version the database is at.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.read(schema::sqlite_version),
            Backend::Postgres(pg) => pg.run(|c| async move { schema::pg_version(&c).await }),
        }
    }

    /// The database's schema version and whether this binary can use it: `Ok(version)` when
    /// it is at most [`SCHEMA_VERSION`] (older ones are migrated at start).
    pub fn compatible_schema(&self) -> Result<u32, StoreError> {
        let found = self.schema_version()?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                found,
                known: SCHEMA_VERSION,
            });
        }
        Ok(found)
    }

    /// Whether the database did not answer at the last use (PostgreSQL down or unreachable;
    /// never for SQLite). Connections are made again on every use until it answers.
    pub fn degraded(&self) -> bool {
        match &self.backend {
            Backend::Sqlite(_) => false,
            Backend::Postgres(pg) => pg.degraded(),
        }
    }

    /// The local journals of renewals made while the fleet's database did not answer:
    /// DHCPv4's, then DHCPv6's (nothing for SQLite).
    pub fn lease_journals(&self) -> [(&'static str, JournalStats); 2] {
        match &self.backend {
            Backend::Sqlite(_) => [
                ("ipv4", JournalStats::default()),
                ("ipv6", JournalStats::default()),
            ],
            Backend::Postgres(pg) => [("ipv4", pg.journal.stats()), ("ipv6", pg.journal6.stats())],
        }
    }

    /// A round trip to the database (health checks).
    pub fn ping(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.read(|c| c.query_row("SELECT 1", [], |_| Ok(()))),
            Backend::Postgres(pg) => pg.run(|c| async move {
                c.simple_query("SELECT 1").await?;
                Ok(())
            }),
        }
    }

    pub(crate) fn backend(&self) -> &Backend {
        &self.backend
    }
}

impl Store {
    /// Opens (creating if needed) the SQLite database in `state_dir` and brings its schema up
    /// to date. The database holds every machine's secret: `state_dir` is made 0700 and the
    /// database files 0600 (created so, and tightened with a warning when found looser).
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let dir_error = |source| StoreError::Dir {
            path: state_dir.to_path_buf(),
            source,
        };
        create_private_dir(state_dir).map_err(dir_error)?;
        restrict_permissions(state_dir, PRIVATE_DIR_MODE).map_err(dir_error)?;
        create_private_file(&state_dir.join(DB_FILE)).map_err(dir_error)?;
        let db = Sqlite::open_rw(state_dir).map_err(|e| {
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
        })?;
        // SQLite gives -wal and -shm the database file's mode; tighten any left looser by an
        // older version.
        for name in [DB_FILE, WAL_FILE, SHM_FILE] {
            let path = state_dir.join(name);
            if path.exists() {
                restrict_permissions(&path, PRIVATE_FILE_MODE).map_err(dir_error)?;
            }
        }
        Ok(Store::sqlite(db))
    }

    fn sqlite(db: Sqlite) -> Store {
        Store {
            backend: Backend::Sqlite(db),
            server: config::default_server_name(),
            boot_base: Default::default(),
        }
    }

    /// A private in-memory store for tests and `explain`. Reads go through the writer
    /// connection (an in-memory database cannot be shared between connections).
    pub fn in_memory() -> Result<Store, StoreError> {
        let writer = Connection::open_in_memory()?;
        schema::sqlite_migrate(&writer)?;
        let reader = Connection::open_in_memory()?;
        Ok(Store::sqlite(Sqlite {
            path: None,
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            commits: Default::default(),
        }))
    }

    /// The SQLite database file, if on disk.
    pub fn path(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Sqlite(db) => db.path.as_deref(),
            Backend::Postgres(_) => None,
        }
    }

    /// Gives the space freed by deletions back: SQLite's freed pages to the filesystem (the
    /// database uses `auto_vacuum = INCREMENTAL`, so deleted rows otherwise only become
    /// reusable space) and a truncated write-ahead log; PostgreSQL's autovacuum does this on
    /// its own. Returns how many pages were released.
    pub fn reclaim_space(&self) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.reclaim_space(),
            Backend::Postgres(_) => Ok(0),
        }
    }

    /// Write transactions the SQLite store committed since it was opened (each one an fsync):
    /// what batching saves is counted here. 0 for PostgreSQL.
    pub fn commits(&self) -> u64 {
        match &self.backend {
            Backend::Sqlite(db) => db.commits.load(std::sync::atomic::Ordering::Relaxed),
            Backend::Postgres(_) => 0,
        }
    }

    /// Bytes the SQLite database takes on disk: the file and its write-ahead log (0 for
    /// PostgreSQL, whose size is the database server's business).
    pub fn disk_bytes(&self) -> u64 {
        match &self.backend {
            Backend::Sqlite(db) => db.disk_bytes(),
            Backend::Postgres(_) => 0,
        }
    }

    /// SQLite only, for this crate's tests: a write transaction.
    #[cfg(test)]
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, rusqlite::Error>,
    ) -> Result<T, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.write(f),
            Backend::Postgres(_) => Err(StoreError::Config("SQLite only".into())),
        }
    }

    /// SQLite only, for this crate's tests: the read connection.
    #[cfg(test)]
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, rusqlite::Error>,
    ) -> Result<T, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.read(f),
            Backend::Postgres(_) => Err(StoreError::Config("SQLite only".into())),
        }
    }
}

impl Sqlite {
    fn open_rw(state_dir: &Path) -> Result<Sqlite, StoreError> {
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
        schema::sqlite_migrate(&writer)?;
        let reader = open(OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        configure(&reader)?;
        Ok(Sqlite {
            path: Some(path),
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            commits: Default::default(),
        })
    }

    /// Runs `f` in a write transaction and commits it. With `synchronous=FULL` the data is on
    /// disk when this returns `Ok`.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, rusqlite::Error>,
    ) -> Result<T, StoreError> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        self.commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(out)
    }

    fn reclaim_space(&self) -> Result<u64, StoreError> {
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

    fn disk_bytes(&self) -> u64 {
        let Some(path) = &self.path else { return 0 };
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        size(path) + size(Path::new(&wal))
    }

    /// Runs `f` on the read connection (a consistent snapshot for the duration of `f` if it
    /// opens a transaction itself).
    pub(crate) fn read<T>(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_new_state_dir_is_0700_and_the_database_files_0600() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("state");
        let s = Store::open(&dir).unwrap();
        s.write(|tx| tx.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);"))
            .unwrap();
        assert_eq!(mode(&dir), 0o700);
        for name in [DB_FILE, WAL_FILE, SHM_FILE] {
            assert!(dir.join(name).exists(), "{name}");
            assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
        }
    }

    #[test]
    fn looser_state_files_are_tightened_at_open() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("state");
        drop(Store::open(&dir).unwrap());
        // As an older version left them: 0755 dir, 0644 files.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.join(WAL_FILE), b"").unwrap();
        for name in [DB_FILE, WAL_FILE] {
            std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o644))
                .unwrap();
        }
        let _s = Store::open(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(DB_FILE)), 0o600);
        assert_eq!(mode(&dir.join(WAL_FILE)), 0o600);
    }

    #[test]
    fn a_shared_sticky_directory_is_left_alone() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let _s = Store::open(base.path()).unwrap();
        assert_eq!(mode(base.path()), 0o1777);
        assert_eq!(mode(&base.path().join(DB_FILE)), 0o600);
    }

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
        assert_eq!(v, schema::SCHEMA_VERSION as usize);
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
