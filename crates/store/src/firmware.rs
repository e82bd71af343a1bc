//! What the event log learns about machines before (or without) their boot script: a boot
//! client's DHCP request makes its machine known, with what its firmware said (architecture,
//! vendor class, SMBIOS UUID); every step of its boot moves its stage; a Secure Boot refusal of
//! the unsigned first stage is remembered, proven or only observed.
//!
//! None of this is a fact the boot policy decides on: any host can send DHCP naming any MAC,
//! so what DHCP said is kept apart from the facts a machine proved on `/ipxe`
//! ([`crate::machines::MachineFacts`]), and shown to the operator only. The one exception is a
//! *proven* Secure Boot refusal, which may switch the machine's loader; the event log proves
//! it before it is written here.
//!
//! Written by the event log's writer, one transaction per batch of events (never per packet).

use std::collections::HashSet;

use chainboot_machine::Mac;
use rusqlite::params;
use serde::{Deserialize, Serialize};

use crate::schema::Migration;
use crate::{Backend, Store, StoreError};

/// Schema version 8: the firmware's own words and the boot's progress, beside the facts.
pub(crate) const MIGRATION: Migration = Migration {
    sqlite: "
ALTER TABLE machines ADD COLUMN fw_arch TEXT;
ALTER TABLE machines ADD COLUMN fw_vendor_class TEXT;
ALTER TABLE machines ADD COLUMN fw_uuid TEXT;
ALTER TABLE machines ADD COLUMN stage TEXT;
ALTER TABLE machines ADD COLUMN stage_ms INTEGER;
ALTER TABLE machines ADD COLUMN secure_boot TEXT;
ALTER TABLE machines ADD COLUMN secure_boot_ms INTEGER;
ALTER TABLE machines ADD COLUMN secure_boot_why TEXT
",
    postgres: "
ALTER TABLE machines ADD COLUMN fw_arch TEXT;
ALTER TABLE machines ADD COLUMN fw_vendor_class TEXT;
ALTER TABLE machines ADD COLUMN fw_uuid TEXT;
ALTER TABLE machines ADD COLUMN stage TEXT;
ALTER TABLE machines ADD COLUMN stage_ms BIGINT;
ALTER TABLE machines ADD COLUMN secure_boot TEXT;
ALTER TABLE machines ADD COLUMN secure_boot_ms BIGINT;
ALTER TABLE machines ADD COLUMN secure_boot_why TEXT;
",
};

/// `secure_boot` of a refusal whose fetch was shown to come from the machine itself.
const REFUSED: &str = "refused";
/// `secure_boot` of a refusal seen from an address not shown to be the machine's.
const UNPROVEN: &str = "unproven";

/// What the machine's firmware said at its last boot DHCP request, and how far its last boot
/// got. For the operator's eyes: never a fact the policy decides on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareSeen {
    /// The architecture of option 93 (or DHCPv6's option 61), as chainboot names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// Option 60 (DHCPv6: option 16), sanitised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_class: Option<String>,
    /// The SMBIOS UUID of option 97 (DHCPv6: a DUID-UUID), canonical form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// The stage of its latest boot step (`firmware-dhcp`, `first-stage`, `ipxe-dhcp`,
    /// `script`, ..., or `secure-boot-refused`), and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_ms: Option<i64>,
    /// Its firmware refused the unsigned first stage (Secure Boot, probably).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<SecureBootMark>,
}

/// A Secure Boot refusal of the unsigned first stage, as remembered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecureBootMark {
    /// The fetch came from the machine's own address (its lease from chainboot's DHCP and the
    /// neighbour table agree): only then may `[boot] secure_boot_fallback` switch its loader.
    pub proven: bool,
    pub at_ms: i64,
    /// What showed it, and for an unproven one why it does not count.
    pub why: String,
}

impl FirmwareSeen {
    /// From the columns `fw_arch, fw_vendor_class, fw_uuid, stage, secure_boot,
    /// secure_boot_why` and `stage_ms, secure_boot_ms`.
    pub(crate) fn from_values(
        [arch, vendor_class, uuid, stage, mark, why]: [Option<String>; 6],
        stage_ms: Option<i64>,
        mark_ms: Option<i64>,
    ) -> FirmwareSeen {
        let secure_boot = match (mark.as_deref(), mark_ms) {
            (Some(m @ (REFUSED | UNPROVEN)), Some(at_ms)) => Some(SecureBootMark {
                proven: m == REFUSED,
                at_ms,
                why: why.unwrap_or_default(),
            }),
            _ => None,
        };
        FirmwareSeen {
            arch,
            vendor_class,
            uuid,
            stage,
            stage_ms,
            secure_boot,
        }
    }
}

/// A boot client's DHCP request, as the event log hands it to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    pub mac: Mac,
    pub at_ms: i64,
    pub arch: Option<String>,
    pub vendor_class: Option<String>,
    pub uuid: Option<String>,
    /// Create the record if the machine has none (the caller's new-machine limiter admitted
    /// it), with this secret; `None`: only update a record that exists.
    pub create_with_secret: Option<String>,
}

/// What one batch of events tells about machines; applied in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observations {
    pub sightings: Vec<Sighting>,
    /// The latest stage of each machine in the batch: (MAC, stage, when).
    pub stages: Vec<(Mac, String, i64)>,
    /// Secure Boot refusals: a proven one replaces whatever was remembered, an unproven one
    /// never replaces a proven one.
    pub secure_boot: Vec<(Mac, SecureBootMark)>,
}

impl Observations {
    pub fn is_empty(&self) -> bool {
        self.sightings.is_empty() && self.stages.is_empty() && self.secure_boot.is_empty()
    }
}

const SQL_CREATE: &str = "INSERT INTO machines (mac, first_seen_ms, last_seen_ms, secret)
    VALUES ($1, $2, $2, $3) ON CONFLICT (mac) DO NOTHING";
const SQL_SIGHTED: &str = "UPDATE machines SET last_seen_ms = greatest(last_seen_ms, $2),
    fw_arch = coalesce($3, fw_arch), fw_vendor_class = coalesce($4, fw_vendor_class),
    fw_uuid = coalesce($5, fw_uuid) WHERE mac = $1";
const SQL_STAGE: &str = "UPDATE machines SET stage = $2, stage_ms = $3
    WHERE mac = $1 AND (stage_ms IS NULL OR stage_ms <= $3)";
const SQL_REFUSED: &str = "UPDATE machines SET secure_boot = $2, secure_boot_ms = $3,
    secure_boot_why = $4 WHERE mac = $1 AND ($2 = 'refused' OR secure_boot IS NULL
    OR secure_boot <> 'refused')";

/// Applies `obs` in the caller's SQLite transaction.
pub(crate) fn observe_sqlite(
    tx: &rusqlite::Transaction<'_>,
    obs: &Observations,
) -> Result<(), rusqlite::Error> {
    let mut create = tx.prepare_cached(&sqlite(SQL_CREATE))?;
    let mut sighted = tx.prepare_cached(&sqlite(SQL_SIGHTED))?;
    for s in &obs.sightings {
        let mac = s.mac.to_string();
        if let Some(secret) = &s.create_with_secret {
            create.execute(params![mac, s.at_ms, secret])?;
        }
        sighted.execute(params![mac, s.at_ms, s.arch, s.vendor_class, s.uuid])?;
    }
    let mut stage = tx.prepare_cached(&sqlite(SQL_STAGE))?;
    for (mac, name, at) in &obs.stages {
        stage.execute(params![mac.to_string(), name, at])?;
    }
    let mut refused = tx.prepare_cached(&sqlite(SQL_REFUSED))?;
    for (mac, m) in &obs.secure_boot {
        refused.execute(params![mac.to_string(), mark_word(m), m.at_ms, m.why])?;
    }
    Ok(())
}

/// Applies `obs` in the caller's PostgreSQL transaction.
pub(crate) async fn observe_pg(
    tx: &deadpool_postgres::Transaction<'_>,
    obs: &Observations,
) -> Result<(), StoreError> {
    for s in &obs.sightings {
        let mac = s.mac.to_string();
        if let Some(secret) = &s.create_with_secret {
            tx.execute(SQL_CREATE, &[&mac, &s.at_ms, secret]).await?;
        }
        tx.execute(
            SQL_SIGHTED,
            &[&mac, &s.at_ms, &s.arch, &s.vendor_class, &s.uuid],
        )
        .await?;
    }
    for (mac, name, at) in &obs.stages {
        tx.execute(SQL_STAGE, &[&mac.to_string(), name, at]).await?;
    }
    for (mac, m) in &obs.secure_boot {
        tx.execute(
            SQL_REFUSED,
            &[&mac.to_string(), &mark_word(m), &m.at_ms, &m.why],
        )
        .await?;
    }
    Ok(())
}

/// SQLite's spelling of the same statements (`?N`, `max`).
fn sqlite(sql: &str) -> String {
    sql.replace('$', "?").replace("greatest(", "max(")
}

impl Store {
    /// Which of `macs` have a record.
    pub fn machines_known(&self, macs: &[Mac]) -> Result<HashSet<Mac>, StoreError> {
        if macs.is_empty() {
            return Ok(HashSet::new());
        }
        let texts: Vec<String> = macs.iter().map(Mac::to_string).collect();
        let rows: Vec<String> = match self.backend() {
            Backend::Sqlite(db) => db.read(|c| {
                let mut st = c.prepare_cached("SELECT mac FROM machines WHERE mac = ?1")?;
                let mut out = Vec::new();
                for t in &texts {
                    if let Some(m) = st
                        .query_map([t], |r| r.get::<_, String>(0))?
                        .next()
                        .transpose()?
                    {
                        out.push(m);
                    }
                }
                Ok(out)
            })?,
            Backend::Postgres(pg) => pg.run(move |c| async move {
                let rows = c
                    .query(
                        "SELECT mac FROM machines WHERE mac = ANY($1::text[])",
                        &[&texts],
                    )
                    .await?;
                rows.iter()
                    .map(|r| r.try_get::<_, String>(0).map_err(StoreError::from))
                    .collect()
            })?,
        };
        Ok(rows.iter().filter_map(|m| m.parse().ok()).collect())
    }

    /// Applies one batch's [`Observations`] in one transaction.
    pub fn machines_observe(&self, obs: &Observations) -> Result<(), StoreError> {
        if obs.is_empty() {
            return Ok(());
        }
        match self.backend() {
            Backend::Sqlite(db) => db.write(|tx| observe_sqlite(tx, obs)),
            Backend::Postgres(pg) => {
                let obs = obs.clone();
                pg.run(move |mut c| async move {
                    let tx = c.transaction().await?;
                    observe_pg(&tx, &obs).await?;
                    tx.commit().await?;
                    Ok(())
                })
            }
        }
    }

    /// Machines whose proven Secure Boot refusal is remembered, newest first, at most `limit`
    /// (the running server's memory of them, at start and as the fleet's servers add some).
    pub fn machines_refusing_secure_boot(
        &self,
        limit: usize,
    ) -> Result<Vec<(Mac, i64)>, StoreError> {
        let sql = "SELECT mac, secure_boot_ms FROM machines WHERE secure_boot = 'refused'
                   ORDER BY secure_boot_ms DESC LIMIT $1";
        let limit = limit as i64;
        let rows: Vec<(String, i64)> = match self.backend() {
            Backend::Sqlite(db) => db.read(|c| {
                let mut st = c.prepare_cached(&sqlite(sql))?;
                let rows = st.query_map([limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect()
            })?,
            Backend::Postgres(pg) => pg.run(move |c| async move {
                let rows = c.query(sql, &[&limit]).await?;
                rows.iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect()
            })?,
        };
        Ok(rows
            .into_iter()
            .filter_map(|(m, at)| Some((m.parse().ok()?, at)))
            .collect())
    }
}

fn mark_word(m: &SecureBootMark) -> &'static str {
    if m.proven {
        REFUSED
    } else {
        UNPROVEN
    }
}
