//! Machines: every client chainboot has seen.
//!
//! A machine is keyed by its MAC. Facts (arch, uuid, hostname, ...) are whatever the client
//! last told us; a fact that a later request leaves out keeps its old value, because DHCP only
//! knows the MAC and arch while iPXE's HTTP request knows much more. Operator state (pinned
//! profile, labels, boot-once state) is only changed through the API. The per-machine secret is
//! chosen once, when the machine is first recorded, and never changes: installers carry it in
//! their rendered config to authenticate their `installed` event.

use std::collections::BTreeMap;

use chainboot_machine::Mac;
use rusqlite::{params, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

pub use crate::firmware::{FirmwareSeen, SecureBootMark};
use crate::schema::Migration;
use crate::{Backend, Store, StoreError};

/// Requests of one boot fall within this span; a machine seen only within it after its first
/// request has not come back.
pub const UNPROVEN_SPAN_MS: i64 = 10 * 60 * 1000;

/// The schema for machines (schema version 3).
pub(crate) const MIGRATION: Migration = Migration {
    sqlite: "
CREATE TABLE machines (
    mac TEXT PRIMARY KEY NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    arch TEXT,
    uuid TEXT,
    hostname TEXT,
    serial TEXT,
    manufacturer TEXT,
    product TEXT,
    ip TEXT,
    pinned_profile TEXT,
    installed_ms INTEGER,
    installed_reason TEXT,
    labels TEXT NOT NULL DEFAULT '{}',
    secret TEXT NOT NULL,
    last_profile TEXT
)",
    postgres: "
CREATE TABLE machines (
    mac TEXT PRIMARY KEY NOT NULL,
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    arch TEXT,
    uuid TEXT,
    hostname TEXT,
    serial TEXT,
    manufacturer TEXT,
    product TEXT,
    ip TEXT,
    pinned_profile TEXT,
    installed_ms BIGINT,
    installed_reason TEXT,
    labels TEXT NOT NULL DEFAULT '{}',
    secret TEXT NOT NULL,
    last_profile TEXT
);
CREATE INDEX machines_ip ON machines(ip, last_seen_ms);
",
};

/// What a client told us about itself. `None` means \"not said this time\".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineFacts {
    pub arch: Option<String>,
    pub uuid: Option<String>,
    pub hostname: Option<String>,
    pub serial: Option<String>,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    pub ip: Option<String>,
}

impl MachineFacts {
    /// What the store holds after `machine_seen` with `self` over `older`: what was said now
    /// wins, what was not said keeps its old value (the same rule as the SQL's coalesce).
    pub fn merged_over(&self, older: &MachineFacts) -> MachineFacts {
        let pick = |new: &Option<String>, old: &Option<String>| new.clone().or(old.clone());
        MachineFacts {
            arch: pick(&self.arch, &older.arch),
            uuid: pick(&self.uuid, &older.uuid),
            hostname: pick(&self.hostname, &older.hostname),
            serial: pick(&self.serial, &older.serial),
            manufacturer: pick(&self.manufacturer, &older.manufacturer),
            product: pick(&self.product, &older.product),
            ip: pick(&self.ip, &older.ip),
        }
    }
}

/// A remembered machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRecord {
    pub mac: Mac,
    /// Unix time in milliseconds.
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub facts: MachineFacts,
    /// Set by the operator; wins over every group.
    pub pinned_profile: Option<String>,
    /// Boot-once: when the machine finished its install (fetched its kernel or POSTed
    /// `installed`); while set, a machine in a `once` group boots the local disk.
    pub installed_ms: Option<i64>,
    pub installed_reason: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Never serialised: the API must not hand one machine's secret to anyone asking.
    #[serde(skip_serializing, default)]
    pub secret: String,
    /// The profile the machine was last given (for the dashboard and `machines show`).
    pub last_profile: Option<String>,
    /// The server that last answered its script request (servers of a fleet share machines).
    #[serde(default)]
    pub last_server: Option<String>,
    /// What its firmware said over DHCP and how far its last boot got (shown, never decided
    /// on: see [`crate::firmware`]).
    #[serde(default)]
    pub firmware: FirmwareSeen,
}

/// The machine's own columns, then the firmware's ([`FirmwareSeen`], from column 17 on).
const COLUMNS: &str = "mac, first_seen_ms, last_seen_ms, arch, uuid, hostname, serial, \
    manufacturer, product, ip, pinned_profile, installed_ms, installed_reason, labels, secret, \
    last_profile, last_server, fw_arch, fw_vendor_class, fw_uuid, stage, stage_ms, secure_boot, \
    secure_boot_ms, secure_boot_why";

/// Schema version 7: which server last answered each machine.
pub(crate) const MIGRATION_LAST_SERVER: Migration = Migration {
    sqlite: "ALTER TABLE machines ADD COLUMN last_server TEXT",
    postgres: "ALTER TABLE machines ADD COLUMN last_server TEXT",
};

/// A row of [`COLUMNS`] from either backend, read column by column.
trait MachineRow {
    type Error;
    fn column<T: Column>(&self, i: usize) -> Result<T, Self::Error>;
    /// Column `i` held text that does not parse as `what`.
    fn unreadable(i: usize, what: &str, e: String) -> Self::Error;
}

/// A column type both backends read.
trait Column: rusqlite::types::FromSql + for<'a> tokio_postgres::types::FromSql<'a> {}
impl<T: rusqlite::types::FromSql + for<'a> tokio_postgres::types::FromSql<'a>> Column for T {}

impl MachineRow for Row<'_> {
    type Error = rusqlite::Error;

    fn column<T: Column>(&self, i: usize) -> rusqlite::Result<T> {
        self.get(i)
    }

    fn unreadable(i: usize, _what: &str, e: String) -> rusqlite::Error {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
    }
}

impl MachineRow for tokio_postgres::Row {
    type Error = StoreError;

    fn column<T: Column>(&self, i: usize) -> Result<T, StoreError> {
        Ok(self.try_get(i)?)
    }

    fn unreadable(_i: usize, what: &str, e: String) -> StoreError {
        StoreError::Config(format!("machines: unreadable {what}: {e}"))
    }
}

/// One machine from a row of [`COLUMNS`].
fn decode<R: MachineRow>(r: &R) -> Result<MachineRecord, R::Error> {
    let mac_text: String = r.column(0)?;
    let mac = mac_text
        .parse::<Mac>()
        .map_err(|e| R::unreadable(0, "mac", e.to_string()))?;
    let labels_text: String = r.column(13)?;
    let labels = serde_json::from_str(&labels_text)
        .map_err(|e| R::unreadable(13, "labels", e.to_string()))?;
    Ok(MachineRecord {
        mac,
        first_seen_ms: r.column(1)?,
        last_seen_ms: r.column(2)?,
        facts: MachineFacts {
            arch: r.column(3)?,
            uuid: r.column(4)?,
            hostname: r.column(5)?,
            serial: r.column(6)?,
            manufacturer: r.column(7)?,
            product: r.column(8)?,
            ip: r.column(9)?,
        },
        pinned_profile: r.column(10)?,
        installed_ms: r.column(11)?,
        installed_reason: r.column(12)?,
        labels,
        secret: r.column(14)?,
        last_profile: r.column(15)?,
        last_server: r.column(16)?,
        firmware: FirmwareSeen::from_values(
            [
                r.column(17)?,
                r.column(18)?,
                r.column(19)?,
                r.column(20)?,
                r.column(22)?,
                r.column(24)?,
            ],
            r.column(21)?,
            r.column(23)?,
        ),
    })
}

/// [`decode`] for rusqlite's `query_row`/`query_map`, which take a function of rows of any
/// lifetime.
fn from_row(r: &Row<'_>) -> rusqlite::Result<MachineRecord> {
    decode(r)
}

fn get(conn: &rusqlite::Connection, mac: Mac) -> rusqlite::Result<Option<MachineRecord>> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM machines WHERE mac = ?1"),
        [mac.to_string()],
        from_row,
    )
    .optional()
}

fn pg_rows(rows: &[tokio_postgres::Row]) -> Result<Vec<MachineRecord>, StoreError> {
    rows.iter().map(decode).collect()
}

/// Runs one statement on PostgreSQL that returns machine rows.
fn pg_query(
    store: &Store,
    sql: String,
    params: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>,
) -> Result<Vec<MachineRecord>, StoreError> {
    let Backend::Postgres(pg) = store.backend() else {
        return Err(StoreError::Config("not PostgreSQL".into()));
    };
    pg.run(move |c| async move {
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            params.iter().map(|p| p.as_ref() as _).collect();
        let rows = c.query(&sql, &refs).await?;
        pg_rows(&rows)
    })
}

/// Runs one statement on PostgreSQL; the number of rows it changed.
fn pg_execute(
    store: &Store,
    sql: &'static str,
    params: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>,
) -> Result<u64, StoreError> {
    let Backend::Postgres(pg) = store.backend() else {
        return Err(StoreError::Config("not PostgreSQL".into()));
    };
    pg.run(move |c| async move {
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            params.iter().map(|p| p.as_ref() as _).collect();
        Ok(c.execute(sql, &refs).await?)
    })
}

fn one(rows: Vec<MachineRecord>) -> Result<MachineRecord, StoreError> {
    rows.into_iter()
        .next()
        .ok_or(StoreError::Sql(rusqlite::Error::QueryReturnedNoRows))
}

/// Inserts the machine if absent (with `secret`), leaving an existing one untouched.
fn ensure(
    tx: &rusqlite::Transaction<'_>,
    mac: Mac,
    now_ms: i64,
    secret: &str,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO machines (mac, first_seen_ms, last_seen_ms, secret) VALUES (?1, ?2, ?2, ?3)
         ON CONFLICT(mac) DO NOTHING",
        params![mac.to_string(), now_ms, secret],
    )?;
    Ok(())
}

impl Store {
    /// PostgreSQL: a machine read or written is remembered; while the database does not
    /// answer, a machine this server knows is answered from that copy (with `while_away`
    /// applied: what this request would have changed, not stored), so known machines keep
    /// booting. Anything else fails as the database did.
    fn through_cache(
        &self,
        mac: Mac,
        fresh: Result<MachineRecord, StoreError>,
        while_away: impl FnOnce(MachineRecord) -> MachineRecord,
    ) -> Result<MachineRecord, StoreError> {
        let Backend::Postgres(pg) = self.backend() else {
            return fresh;
        };
        let mut cache = pg.machines.lock();
        match fresh {
            Ok(r) => {
                if cache.len() < crate::pg::MAX_CACHED_MACHINES || cache.contains_key(&mac) {
                    cache.insert(mac, r.clone());
                }
                Ok(r)
            }
            Err(e) if pg.degraded() => match cache.get(&mac) {
                Some(cached) => {
                    let r = while_away(cached.clone());
                    cache.insert(mac, r.clone());
                    Ok(r)
                }
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }
}

/// Boxed parameters for a PostgreSQL statement run on the store's runtime.
macro_rules! pg_params {
    ($($p:expr),* $(,)?) => {
        vec![$(Box::new($p) as Box<dyn tokio_postgres::types::ToSql + Sync + Send>),*]
    };
}

fn pg_columns() -> String {
    COLUMNS.to_string()
}

impl Store {
    /// Records that `mac` was seen now with `facts` (facts left `None` keep their old value)
    /// and, when given, the profile it was just given, in one write; returns the machine.
    /// `secret_if_new` becomes the machine's secret when it is new.
    pub fn machine_seen(
        &self,
        mac: Mac,
        facts: &MachineFacts,
        now_ms: i64,
        secret_if_new: &str,
        last_profile: Option<&str>,
    ) -> Result<MachineRecord, StoreError> {
        let profile = last_profile.map(str::to_string);
        let server = self.server_name().to_string();
        let Backend::Sqlite(db) = self.backend() else {
            let f = facts.clone();
            let fresh = pg_query(
                self,
                format!(
                    "INSERT INTO machines (mac, first_seen_ms, last_seen_ms, secret, arch, uuid,
                        hostname, serial, manufacturer, product, ip, last_profile, last_server)
                     VALUES ($1, $2, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                     ON CONFLICT (mac) DO UPDATE SET
                        last_seen_ms = greatest(machines.last_seen_ms, $2),
                        arch = coalesce($4, machines.arch), uuid = coalesce($5, machines.uuid),
                        hostname = coalesce($6, machines.hostname),
                        serial = coalesce($7, machines.serial),
                        manufacturer = coalesce($8, machines.manufacturer),
                        product = coalesce($9, machines.product), ip = coalesce($10, machines.ip),
                        last_profile = coalesce($11, machines.last_profile),
                        last_server = $12
                     RETURNING {}",
                    pg_columns()
                ),
                pg_params![
                    mac.to_string(),
                    now_ms,
                    secret_if_new.to_string(),
                    f.arch,
                    f.uuid,
                    f.hostname,
                    f.serial,
                    f.manufacturer,
                    f.product,
                    f.ip,
                    profile.clone(),
                    server.clone()
                ],
            )
            .and_then(one);
            return self.through_cache(mac, fresh, |cached| MachineRecord {
                last_seen_ms: cached.last_seen_ms.max(now_ms),
                facts: facts.merged_over(&cached.facts),
                last_profile: profile.or(cached.last_profile),
                last_server: Some(server),
                ..cached
            });
        };
        db.write(|tx| {
            ensure(tx, mac, now_ms, secret_if_new)?;
            tx.execute(
                "UPDATE machines SET last_seen_ms = max(last_seen_ms, ?2),
                    arch = coalesce(?3, arch), uuid = coalesce(?4, uuid),
                    hostname = coalesce(?5, hostname), serial = coalesce(?6, serial),
                    manufacturer = coalesce(?7, manufacturer), product = coalesce(?8, product),
                    ip = coalesce(?9, ip), last_profile = coalesce(?10, last_profile),
                    last_server = ?11
                 WHERE mac = ?1",
                params![
                    mac.to_string(),
                    now_ms,
                    facts.arch,
                    facts.uuid,
                    facts.hostname,
                    facts.serial,
                    facts.manufacturer,
                    facts.product,
                    facts.ip,
                    last_profile,
                    server
                ],
            )?;
            get(tx, mac)?.ok_or(rusqlite::Error::QueryReturnedNoRows)
        })
    }

    /// Makes sure the machine exists (an operator may pin or label a machine before it ever
    /// boots) and returns it.
    pub fn machine_ensure(
        &self,
        mac: Mac,
        now_ms: i64,
        secret_if_new: &str,
    ) -> Result<MachineRecord, StoreError> {
        let Backend::Sqlite(db) = self.backend() else {
            // The no-op update makes RETURNING give the existing row too.
            let fresh = pg_query(
                self,
                format!(
                    "INSERT INTO machines (mac, first_seen_ms, last_seen_ms, secret)
                     VALUES ($1, $2, $2, $3)
                     ON CONFLICT (mac) DO UPDATE SET mac = machines.mac
                     RETURNING {}",
                    pg_columns()
                ),
                pg_params![mac.to_string(), now_ms, secret_if_new.to_string()],
            )
            .and_then(one);
            return self.through_cache(mac, fresh, |cached| cached);
        };
        db.write(|tx| {
            ensure(tx, mac, now_ms, secret_if_new)?;
            get(tx, mac)?.ok_or(rusqlite::Error::QueryReturnedNoRows)
        })
    }

    /// One machine.
    pub fn machine(&self, mac: Mac) -> Result<Option<MachineRecord>, StoreError> {
        let Backend::Sqlite(db) = self.backend() else {
            let fresh = pg_query(
                self,
                format!("SELECT {} FROM machines WHERE mac = $1", pg_columns()),
                pg_params![mac.to_string()],
            )
            .map(|rows| rows.into_iter().next());
            return match fresh {
                Ok(Some(r)) => self.through_cache(mac, Ok(r), |c| c).map(Some),
                Ok(None) => Ok(None),
                Err(e) => self.through_cache(mac, Err(e), |c| c).map(Some),
            };
        };
        db.read(|c| get(c, mac))
    }

    /// Every machine, most recently seen first.
    pub fn machines(&self) -> Result<Vec<MachineRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM machines ORDER BY last_seen_ms DESC, mac");
        let Backend::Sqlite(db) = self.backend() else {
            return pg_query(self, sql, pg_params![]);
        };
        db.read(|c| {
            let mut st = c.prepare(&sql)?;
            let rows = st.query_map([], from_row)?;
            rows.collect()
        })
    }

    /// One page of machines in MAC order, starting after `after` (the last MAC of the page
    /// before); at most `limit`. MAC order is stable while machines are seen, so paging never
    /// skips or repeats one.
    pub fn machines_page(
        &self,
        after: Option<Mac>,
        limit: usize,
    ) -> Result<Vec<MachineRecord>, StoreError> {
        let Backend::Sqlite(db) = self.backend() else {
            return pg_query(
                self,
                format!(
                    "SELECT {} FROM machines WHERE ($1::text IS NULL OR mac > $1)
                     ORDER BY mac LIMIT $2",
                    pg_columns()
                ),
                pg_params![after.map(|m| m.to_string()), limit as i64],
            );
        };
        db.read(|c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM machines WHERE (?1 IS NULL OR mac > ?1) ORDER BY mac LIMIT ?2"
            ))?;
            let rows = st.query_map(
                params![after.map(|m| m.to_string()), limit as i64],
                from_row,
            )?;
            rows.collect()
        })
    }

    /// How many machines are recorded.
    pub fn machine_count(&self) -> Result<u64, StoreError> {
        match self.backend() {
            Backend::Postgres(pg) => pg.run(|c| async move {
                let n: i64 = c
                    .query_one("SELECT count(*) FROM machines", &[])
                    .await?
                    .try_get(0)?;
                Ok(n.max(0) as u64)
            }),
            Backend::Sqlite(db) => db.read(|c| {
                c.query_row("SELECT count(*) FROM machines", [], |r| r.get::<_, i64>(0))
                    .map(|n| n.max(0) as u64)
            }),
        }
    }

    /// Forgets unproven machines last seen before `older_than_ms`, returning how many. A
    /// machine is unproven when nothing but its own script requests vouches for it: all its
    /// requests fell within one boot ([`UNPROVEN_SPAN_MS`] of its first), it never had a lease
    /// from chainboot's DHCP, its firmware's Secure Boot refusal was not proven from its own
    /// address, and no operator pinned, labelled or marked it installed. Anyone
    /// can make such a record by naming a made-up MAC in `/ipxe?mac=`; a real machine that
    /// comes back later simply gets a new record.
    pub fn machine_prune_unproven(&self, older_than_ms: i64) -> Result<usize, StoreError> {
        let Backend::Sqlite(db) = self.backend() else {
            return pg_execute(
                self,
                "DELETE FROM machines WHERE last_seen_ms < $1
                    AND last_seen_ms - first_seen_ms < $2
                    AND pinned_profile IS NULL AND installed_ms IS NULL AND labels = '{}'
                    AND (secure_boot IS NULL OR secure_boot <> 'refused')
                    AND NOT EXISTS (SELECT 1 FROM leases WHERE leases.mac = machines.mac)",
                pg_params![older_than_ms, UNPROVEN_SPAN_MS],
            )
            .map(|n| n as usize);
        };
        db.write(|tx| {
            tx.execute(
                "DELETE FROM machines WHERE last_seen_ms < ?1
                    AND last_seen_ms - first_seen_ms < ?2
                    AND pinned_profile IS NULL AND installed_ms IS NULL AND labels = '{}'
                    AND (secure_boot IS NULL OR secure_boot <> 'refused')
                    AND NOT EXISTS (SELECT 1 FROM leases WHERE leases.mac = machines.mac)",
                params![older_than_ms, UNPROVEN_SPAN_MS],
            )
        })
    }

    /// The machine most recently seen with this IP address (PXELINUX asks for its config by
    /// hex IP when it has no MAC-specific file).
    pub fn machine_by_ip(&self, ip: &str) -> Result<Option<MachineRecord>, StoreError> {
        let Backend::Sqlite(db) = self.backend() else {
            return Ok(pg_query(
                self,
                format!(
                    "SELECT {} FROM machines WHERE ip = $1 ORDER BY last_seen_ms DESC LIMIT 1",
                    pg_columns()
                ),
                pg_params![ip.to_string()],
            )?
            .into_iter()
            .next());
        };
        db.read(|c| {
            c.query_row(
                &format!(
                    "SELECT {COLUMNS} FROM machines WHERE ip = ?1 ORDER BY last_seen_ms DESC LIMIT 1"
                ),
                [ip],
                from_row,
            )
            .optional()
        })
    }

    /// Boot-once: the machine finished installing (`reason` says how we know). Keeps the first
    /// time if already set. Returns false for an unknown machine.
    pub fn machine_mark_installed(
        &self,
        mac: Mac,
        now_ms: i64,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let Backend::Sqlite(db) = self.backend() else {
            return pg_execute(
                self,
                "UPDATE machines SET installed_ms = coalesce(installed_ms, $2),
                    installed_reason = coalesce(installed_reason, $3) WHERE mac = $1",
                pg_params![mac.to_string(), now_ms, reason.to_string()],
            )
            .map(|n| n == 1);
        };
        db.write(|tx| {
            let n = tx.execute(
                "UPDATE machines SET installed_ms = coalesce(installed_ms, ?2),
                    installed_reason = coalesce(installed_reason, ?3) WHERE mac = ?1",
                params![mac.to_string(), now_ms, reason],
            )?;
            Ok(n == 1)
        })
    }

    /// Records the profile a machine was just given.
    pub fn machine_set_last_profile(&self, mac: Mac, profile: &str) -> Result<(), StoreError> {
        let Backend::Sqlite(db) = self.backend() else {
            return pg_execute(
                self,
                "UPDATE machines SET last_profile = $2
                 WHERE mac = $1 AND last_profile IS DISTINCT FROM $2",
                pg_params![mac.to_string(), profile.to_string()],
            )
            .map(|_| ());
        };
        db.write(|tx| {
            tx.execute(
                "UPDATE machines SET last_profile = ?2 WHERE mac = ?1 AND last_profile IS NOT ?2",
                params![mac.to_string(), profile],
            )?;
            Ok(())
        })
    }
}

/// A change an operator makes to a machine through the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorChange {
    /// Pin a profile (`None`: unpin).
    Profile(Option<String>),
    /// Replace the labels.
    Labels(BTreeMap<String, String>),
    /// Boot-once: forget the install.
    Rearm,
    /// Forget the machine.
    Forget,
}

/// What an operator change did: the record before it, and the event that records it (written
/// in the same transaction) with its id.
#[derive(Debug, Clone)]
pub struct OperatorChanged {
    pub before: MachineRecord,
    pub event_id: i64,
    pub event: crate::events::NewEvent,
}

impl Store {
    /// Applies an operator's `change` to a machine and records `event(record before)` as this
    /// server's event, in one transaction: the change and its event are stored together or not
    /// at all. With `secret_if_new` an unknown machine is recorded first (pinning or labelling
    /// a machine before it boots); without, an unknown machine changes nothing (`None`).
    pub fn machine_operator_change(
        &self,
        mac: Mac,
        now_ms: i64,
        secret_if_new: Option<&str>,
        change: OperatorChange,
        event: impl FnOnce(&MachineRecord) -> crate::events::NewEvent + Send + 'static,
    ) -> Result<Option<OperatorChanged>, StoreError> {
        let labels = match &change {
            OperatorChange::Labels(l) => Some(serde_json::to_string(l).map_err(|e| {
                StoreError::Sql(rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
            })?),
            _ => None,
        };
        let server = self.server_name().to_string();
        let key = mac.to_string();
        let secret = secret_if_new.map(str::to_string);
        let pg = match self.backend() {
            Backend::Postgres(pg) => pg,
            Backend::Sqlite(db) => {
                return db.write(|tx| {
                    if let Some(secret) = &secret {
                        ensure(tx, mac, now_ms, secret)?;
                    }
                    let Some(before) = get(tx, mac)? else {
                        return Ok(None);
                    };
                    match &change {
                        OperatorChange::Profile(p) => tx.execute(
                            "UPDATE machines SET pinned_profile = ?2 WHERE mac = ?1",
                            params![key, p],
                        )?,
                        OperatorChange::Labels(_) => tx.execute(
                            "UPDATE machines SET labels = ?2 WHERE mac = ?1",
                            params![key, labels],
                        )?,
                        OperatorChange::Rearm => tx.execute(
                            "UPDATE machines SET installed_ms = NULL, installed_reason = NULL
                             WHERE mac = ?1",
                            [&key],
                        )?,
                        OperatorChange::Forget => {
                            tx.execute("DELETE FROM machines WHERE mac = ?1", [&key])?
                        }
                    };
                    let e = event(&before);
                    tx.execute(
                        "INSERT INTO events (at_ms, mac, kind, detail, server)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![e.at_ms, key, e.kind, e.detail.to_string(), server],
                    )?;
                    Ok(Some(OperatorChanged {
                        before,
                        event_id: tx.last_insert_rowid(),
                        event: e,
                    }))
                });
            }
        };
        let select = format!(
            "SELECT {} FROM machines WHERE mac = $1 FOR UPDATE",
            pg_columns()
        );
        pg.run(move |mut c| async move {
            let tx = c.transaction().await?;
            if let Some(secret) = &secret {
                tx.execute(
                    "INSERT INTO machines (mac, first_seen_ms, last_seen_ms, secret)
                     VALUES ($1, $2, $2, $3) ON CONFLICT (mac) DO NOTHING",
                    &[&key, &now_ms, secret],
                )
                .await?;
            }
            let rows = tx.query(&select, &[&key]).await?;
            let Some(before) = pg_rows(&rows)?.into_iter().next() else {
                return Ok(None);
            };
            match &change {
                OperatorChange::Profile(p) => {
                    tx.execute(
                        "UPDATE machines SET pinned_profile = $2 WHERE mac = $1",
                        &[&key, p],
                    )
                    .await?
                }
                OperatorChange::Labels(_) => {
                    tx.execute(
                        "UPDATE machines SET labels = $2 WHERE mac = $1",
                        &[&key, &labels],
                    )
                    .await?
                }
                OperatorChange::Rearm => {
                    tx.execute(
                        "UPDATE machines SET installed_ms = NULL, installed_reason = NULL
                         WHERE mac = $1",
                        &[&key],
                    )
                    .await?
                }
                OperatorChange::Forget => {
                    tx.execute("DELETE FROM machines WHERE mac = $1", &[&key])
                        .await?
                }
            };
            let e = event(&before);
            let detail = e.detail.to_string();
            let id: i64 = tx
                .query_one(
                    "INSERT INTO events (at_ms, mac, kind, detail, server)
                     VALUES ($1, $2, $3, $4, $5) RETURNING id",
                    &[&e.at_ms, &key, &e.kind, &detail, &server],
                )
                .await?
                .try_get(0)?;
            tx.commit().await?;
            Ok(Some(OperatorChanged {
                before,
                event_id: id,
                event: e,
            }))
        })
    }
}
