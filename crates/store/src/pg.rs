//! The PostgreSQL backend: a pool of connections on a small runtime of its own.
//!
//! Driver: `tokio-postgres` (the maintained native Rust driver; no libpq, pipelining, binary
//! parameters so a batch of leases is one statement with arrays). Pool: `deadpool-postgres`
//! (small, maintained with tokio-postgres in mind; bounded size, wait and create timeouts, so
//! a dead database makes a call fail after `connect_timeout` instead of hanging). TLS:
//! `tokio-postgres-rustls` over the rustls the rest of chainboot already uses.
//!
//! The store's API is blocking (its callers are the DHCP committer thread, the event writer
//! thread and handlers already on blocking threads). Each call is spawned onto the store's own
//! runtime and waited for on a plain channel, which is safe from any thread, even one inside
//! another tokio runtime (where `block_on` would panic).

use std::future::Future;
use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};

use crate::{StoreConfig, StoreError};

pub(crate) struct Postgres {
    runtime: Option<tokio::runtime::Runtime>,
    pool: Pool,
    /// How to open a session outside the pool (the presence lock and its watches hold theirs
    /// for as long as they run, which a pooled connection must not).
    session: Arc<Session>,
    describe: String,
    /// The last call failed for want of the database (not for a statement's error).
    degraded: std::sync::atomic::AtomicBool,
    /// Renewals acknowledged while the database did not answer: DHCPv4's and DHCPv6's.
    pub(crate) journal: crate::journal::Journal<crate::leases::LeaseRecord>,
    pub(crate) journal6: crate::journal::Journal<crate::leases6::Lease6Record>,
    /// The machines this server has read or written, as last seen in the database: while it
    /// does not answer, known machines boot from these (at most [`MAX_CACHED_MACHINES`]).
    pub(crate) machines: parking_lot::Mutex<
        std::collections::HashMap<chainboot_machine::Mac, crate::machines::MachineRecord>,
    >,
}

/// Machines whose last record a server keeps for an outage (a few hundred bytes each).
pub(crate) const MAX_CACHED_MACHINES: usize = 100_000;

/// Runtime threads: the work is waiting on the network, one suffices; a second keeps a slow
/// query from delaying the others' wake-ups.
const RUNTIME_THREADS: usize = 2;

impl Postgres {
    /// Connects and, with `migrate`, brings the schema up to date (refusing a newer one);
    /// either way a connection has worked when this returns.
    pub(crate) fn connect(
        cfg: &StoreConfig,
        server: &str,
        journal_dir: Option<&std::path::Path>,
    ) -> Result<Postgres, StoreError> {
        let migrate = journal_dir.is_some();
        let mut pg = cfg
            .pg_config()
            .map_err(|e| StoreError::Config(format!("url: {e}")))?;
        if let Some(file) = &cfg.password_file {
            let text = std::fs::read_to_string(file).map_err(|e| {
                StoreError::Config(format!("password_file {}: {e}", file.display()))
            })?;
            let password = text.lines().next().unwrap_or("").to_string();
            if password.is_empty() {
                return Err(StoreError::Config(format!(
                    "password_file {}: empty",
                    file.display()
                )));
            }
            pg.password(password);
        }
        pg.application_name(format!("chainboot {server}"));
        pg.connect_timeout(cfg.connect_timeout);
        let describe = describe(&pg);
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let (manager, session) = match &cfg.tls_ca {
            Some(ca) => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Require);
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(ca)?);
                let session = Session {
                    config: pg.clone(),
                    tls: Some(tls.clone()),
                };
                (Manager::from_config(pg, tls, manager_config), session)
            }
            None => {
                let session = Session {
                    config: pg.clone(),
                    tls: None,
                };
                (
                    Manager::from_config(pg, tokio_postgres::NoTls, manager_config),
                    session,
                )
            }
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("store-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Config(format!("runtime: {e}")))?;
        let pool = {
            let _guard = runtime.enter();
            Pool::builder(manager)
                .max_size(cfg.pool_size)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(cfg.connect_timeout))
                .create_timeout(Some(cfg.connect_timeout))
                .recycle_timeout(Some(cfg.connect_timeout))
                .build()
                .map_err(|e| StoreError::Config(format!("pool: {e}")))?
        };
        let pg = Postgres {
            runtime: Some(runtime),
            pool,
            session: Arc::new(session),
            describe,
            degraded: std::sync::atomic::AtomicBool::new(false),
            journal: crate::journal::Journal::open(journal_dir, crate::journal::JOURNAL_FILE),
            journal6: crate::journal::Journal::open(journal_dir, crate::journal::JOURNAL6_FILE),
            machines: parking_lot::Mutex::new(std::collections::HashMap::new()),
        };
        if !migrate {
            pg.run(|c| async move {
                c.simple_query("SELECT 1").await?;
                Ok(())
            })?;
            return Ok(pg);
        }
        let found = pg.run(|mut c| async move { crate::schema::pg_migrate(&mut c).await })?;
        if found < crate::SCHEMA_VERSION {
            tracing::info!(
                from = found,
                to = crate::SCHEMA_VERSION,
                database = %pg.describe,
                "state store: schema migrated"
            );
        }
        Ok(pg)
    }

    /// `host:port/database` (never the password).
    pub(crate) fn describe(&self) -> String {
        self.describe.clone()
    }

    /// Runs `f` with a pooled connection on the store's runtime and waits for its result.
    pub(crate) fn run<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let Some(runtime) = &self.runtime else {
            return Err(StoreError::Unavailable("store is shut down".into()));
        };
        let pool = self.pool.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let out = match pool.get().await {
                Ok(c) => f(c).await,
                Err(deadpool_postgres::PoolError::Backend(e)) => {
                    Err(StoreError::Unavailable(error_text(&e)))
                }
                Err(e) => Err(StoreError::Unavailable(e.to_string())),
            };
            let _ = tx.send(out);
        });
        let out = rx
            .recv()
            .map_err(|_| StoreError::Unavailable("store runtime stopped".into()))
            .and_then(|r| r);
        self.note_health(&out);
        out
    }

    /// The store's runtime, for tasks that outlive a call (presence sessions).
    pub(crate) fn runtime(&self) -> Option<&tokio::runtime::Runtime> {
        self.runtime.as_ref()
    }

    /// How to open a session of its own, outside the pool.
    pub(crate) fn session(&self) -> Arc<Session> {
        self.session.clone()
    }

    /// Whether the database was unreachable at the last call.
    pub(crate) fn degraded(&self) -> bool {
        self.degraded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Logs the moments the database stops and starts answering (one line each, not one per
    /// failed call).
    fn note_health<T>(&self, out: &Result<T, StoreError>) {
        use std::sync::atomic::Ordering;
        let unreachable = match out {
            Ok(_) => false,
            Err(StoreError::Unavailable(_)) => true,
            // A statement the server rejected is not an outage; a broken connection is.
            Err(StoreError::Postgres(e)) => e.as_db_error().is_none(),
            Err(_) => false,
        };
        let was = self.degraded.swap(unreachable, Ordering::Relaxed);
        match (was, unreachable, out) {
            (false, true, Err(e)) => tracing::warn!(
                database = %self.describe,
                "state store degraded: the database does not answer ({e}); reconnecting on every use"
            ),
            (true, false, _) => {
                tracing::info!(database = %self.describe, "state store: the database answers again")
            }
            _ => {}
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Dropping a runtime blocks until its tasks finish, which panics inside another
        // runtime: let it wind down in the background instead.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A way to open a database session outside the pool: the pool's settings (address,
/// password, TLS, `application_name`, connect timeout).
pub(crate) struct Session {
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

impl Session {
    /// Connects; the session's connection runs as a task of the current runtime, which ends
    /// (the returned handle completes) when the session closes, from either side. Dropping the
    /// client closes it.
    pub(crate) async fn connect(
        &self,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), StoreError> {
        Ok(match &self.tls {
            Some(tls) => {
                let (client, conn) = self.config.connect(tls.clone()).await?;
                (client, tokio::spawn(async move { drop(conn.await) }))
            }
            None => {
                let (client, conn) = self.config.connect(tokio_postgres::NoTls).await?;
                (client, tokio::spawn(async move { drop(conn.await) }))
            }
        })
    }
}

/// After a batch's statement whose `RETURNING` gave back the addresses it wrote (`written`,
/// of the batch's `ips`): the rows holding the others, the writes its conflict rule refused,
/// read by `select` (taking the refused addresses as `$1`) and parsed by `parse`.
pub(crate) async fn refused_holders<T>(
    c: &deadpool_postgres::ClientWrapper,
    ips: Vec<String>,
    written: Vec<tokio_postgres::Row>,
    select: &str,
    parse: fn(&tokio_postgres::Row) -> Option<T>,
) -> Result<Vec<T>, StoreError> {
    if written.len() == ips.len() {
        return Ok(Vec::new());
    }
    let written: std::collections::HashSet<String> =
        written.iter().map(|r| r.get::<_, String>(0)).collect();
    let refused: Vec<String> = ips.into_iter().filter(|ip| !written.contains(ip)).collect();
    let rows = c.query(select, &[&refused]).await?;
    Ok(rows.iter().filter_map(parse).collect())
}

/// The driver's error with what the server said (its `Display` alone is often just "db
/// error") or the cause beneath it (a refused connection, a TLS failure).
pub(crate) fn error_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {} ({})", db.severity(), db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn describe(pg: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match pg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let db = pg.get_dbname().unwrap_or("");
    format!("{host}:{port}/{db}")
}

fn tls_config(ca: &std::path::Path) -> Result<rustls::ClientConfig, StoreError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let bad = |e: String| StoreError::Config(format!("tls_ca {}: {e}", ca.display()));
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca).map_err(|e| bad(e.to_string()))?;
    for cert in certs {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}
