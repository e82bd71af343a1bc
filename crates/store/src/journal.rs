//! Renewals acknowledged while the fleet's database does not answer, for DHCPv4 and DHCPv6
//! alike (one journal per family, each in its own file).
//!
//! A client renewing a lease the database already holds for it (same address, same client,
//! not expired) may be acknowledged without the database: no other server can take an
//! unexpired lease of another client, and none can write while the database is away. Such a
//! renewal is made durable here instead, in a file beside the server's other state (appended
//! and fsynced before its reply leaves), and written to the database, in order, at the first
//! use once it answers again (and at start, when a server stopped during an outage). Any
//! other lease (a new client, another address) waits for the database.
//!
//! This holds as long as the outage is shorter than the time left on the renewed leases'
//! stored expiry (clients renew at half their lease): past it, another server could take the
//! address when the database returns, and the replay would be refused, logged and counted.

use std::collections::HashMap;
use std::hash::Hash;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::leases::{LeaseRecord, LeaseState};
use crate::leases6::Lease6Record;
use crate::StoreError;

/// The DHCPv4 journal's file name in `state_dir`.
pub const JOURNAL_FILE: &str = "lease-journal.jsonl";
/// The DHCPv6 journal's file name in `state_dir`.
pub const JOURNAL6_FILE: &str = "lease6-journal.jsonl";
/// Renewals held at most, per family; beyond it renewals wait for the database like new
/// leases.
const MAX_PENDING: usize = 100_000;
/// Addresses whose holder a journal remembers at most, per family (a DHCPv6 prefix has far
/// more addresses than any server binds): the renewals of addresses learned beyond it wait
/// for the database.
const MAX_KNOWN: usize = 1_000_000;

/// A lease row a journal can hold: its address, who holds it, and until when.
pub(crate) trait Renewal: Clone + Serialize + DeserializeOwned {
    type Addr: Copy + Eq + Hash + std::fmt::Display;
    /// Who a lease belongs to: the client's MAC (DHCPv4), its DUID and IAID (DHCPv6).
    type Holder: Eq;
    /// `ipv4` or `ipv6`, for the log.
    const FAMILY: &'static str;
    fn addr(&self) -> Self::Addr;
    fn holder(&self) -> Self::Holder;
    /// The holder as the log names it.
    fn holder_text(&self) -> String;
    fn state(&self) -> LeaseState;
    fn expires(&self) -> i64;
    fn updated(&self) -> i64;
}

impl Renewal for LeaseRecord {
    type Addr = std::net::Ipv4Addr;
    type Holder = String;
    const FAMILY: &'static str = "ipv4";
    fn addr(&self) -> Self::Addr {
        self.ip
    }
    fn holder(&self) -> String {
        self.mac.clone()
    }
    fn holder_text(&self) -> String {
        self.mac.clone()
    }
    fn state(&self) -> LeaseState {
        self.state
    }
    fn expires(&self) -> i64 {
        self.expires
    }
    fn updated(&self) -> i64 {
        self.updated
    }
}

impl Renewal for Lease6Record {
    type Addr = std::net::Ipv6Addr;
    type Holder = (Vec<u8>, u32);
    const FAMILY: &'static str = "ipv6";
    fn addr(&self) -> Self::Addr {
        self.ip
    }
    fn holder(&self) -> (Vec<u8>, u32) {
        (self.duid.clone(), self.iaid)
    }
    fn holder_text(&self) -> String {
        let duid: String = self.duid.iter().map(|b| format!("{b:02x}")).collect();
        format!("duid {duid} iaid {}", self.iaid)
    }
    fn state(&self) -> LeaseState {
        self.state
    }
    fn expires(&self) -> i64 {
        self.expires
    }
    fn updated(&self) -> i64 {
        self.updated
    }
}

/// What a journal holds and did, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Renewals not yet written to the database.
    pub pending: u64,
    /// Replayed renewals the database refused: the address had changed hands.
    pub refused: u64,
}

/// Address → (holder, expiry).
type Known<R> = HashMap<<R as Renewal>::Addr, (<R as Renewal>::Holder, i64)>;

/// What the database is known to hold, and the renewals it has not been told yet.
pub(crate) struct Journal<R: Renewal> {
    path: Option<PathBuf>,
    /// Address → (holder, expiry) of bound leases the database holds, as far as this server
    /// knows (its own writes and what it read).
    known: Mutex<Known<R>>,
    pending: Mutex<Vec<R>>,
    /// Held by a replay from reading the pending renewals until they are dropped, so that two
    /// threads never replay (and drop) the same renewals.
    replaying: Mutex<()>,
    refused: AtomicU64,
}

impl<R: Renewal> Default for Journal<R> {
    fn default() -> Self {
        Journal {
            path: None,
            known: Mutex::new(HashMap::new()),
            pending: Mutex::new(Vec::new()),
            replaying: Mutex::new(()),
            refused: AtomicU64::new(0),
        }
    }
}

impl<R: Renewal> Journal<R> {
    /// The journal `file` in `state_dir` (none: renewals wait for the database), with what an
    /// earlier run left in it.
    pub(crate) fn open(state_dir: Option<&Path>, file: &str) -> Journal<R> {
        let Some(dir) = state_dir else {
            return Journal::default();
        };
        let path = dir.join(file);
        let mut pending = Vec::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines() {
                // A line cut by a crash mid-write was never acknowledged: skip it.
                if let Ok(r) = serde_json::from_str::<R>(line) {
                    if pending.len() < MAX_PENDING {
                        pending.push(r);
                    }
                }
            }
        }
        Journal {
            path: Some(path),
            pending: Mutex::new(pending),
            ..Journal::default()
        }
    }

    /// Remembers what the database holds (rows read, writes accepted).
    pub(crate) fn learn(&self, records: &[R]) {
        let mut known = self.known.lock();
        for r in records {
            if r.state() != LeaseState::Bound {
                known.remove(&r.addr());
            } else if known.len() < MAX_KNOWN || known.contains_key(&r.addr()) {
                known.insert(r.addr(), (r.holder(), r.expires()));
            }
        }
    }

    /// Makes the renewals among `records` durable here; returns their addresses.
    pub(crate) fn hold_renewals(&self, records: &[R]) -> Result<Vec<R::Addr>, StoreError> {
        let Some(path) = &self.path else {
            return Ok(Vec::new());
        };
        let renewals: Vec<&R> = {
            let known = self.known.lock();
            records
                .iter()
                .filter(|r| {
                    r.state() == LeaseState::Bound
                        && known.get(&r.addr()).is_some_and(|(holder, expires)| {
                            *holder == r.holder() && *expires > r.updated()
                        })
                })
                .collect()
        };
        let mut pending = self.pending.lock();
        if renewals.is_empty() || pending.len() + renewals.len() > MAX_PENDING {
            return Ok(Vec::new());
        }
        let mut text = String::new();
        for r in &renewals {
            text.push_str(&line(*r)?);
        }
        let io = |e: std::io::Error| StoreError::Dir {
            path: path.clone(),
            source: e,
        };
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(crate::PRIVATE_FILE_MODE)
                .open(path)
                .map_err(io)?;
            f.write_all(text.as_bytes()).map_err(io)?;
            f.sync_data().map_err(io)?;
        }
        pending.extend(renewals.iter().map(|r| (*r).clone()));
        drop(pending);
        let owned: Vec<R> = renewals.into_iter().cloned().collect();
        self.learn(&owned);
        Ok(owned.iter().map(|r| r.addr()).collect())
    }

    /// Writes `records` with `write` (the family's batch write to the database, which returns
    /// the rows holding the addresses it refused) after the pending renewals, and learns what
    /// the database holds then. Returns the refused writes' holders.
    pub(crate) fn write_through(
        &self,
        records: &[R],
        write: impl Fn(&[R]) -> Result<Vec<R>, StoreError>,
    ) -> Result<Vec<R>, StoreError> {
        self.replay(&write)?;
        let refused = write(records)?;
        // A set: a batch may hold thousands of leases, and in a conflict as many refusals.
        let taken: std::collections::HashSet<R::Addr> = refused.iter().map(|h| h.addr()).collect();
        let accepted: Vec<R> = records
            .iter()
            .filter(|r| !taken.contains(&r.addr()))
            .cloned()
            .collect();
        self.learn(&accepted);
        self.learn(&refused);
        Ok(refused)
    }

    /// Writes the pending renewals, oldest first, with `save` (the family's batch write, which
    /// returns the rows holding the addresses it refused), then forgets them.
    pub(crate) fn replay(
        &self,
        save: impl FnOnce(&[R]) -> Result<Vec<R>, StoreError>,
    ) -> Result<(), StoreError> {
        let _one = self.replaying.lock();
        let pending = self.pending.lock().clone();
        if pending.is_empty() {
            return Ok(());
        }
        let refused = save(&pending)?;
        for r in &refused {
            tracing::warn!(
                family = R::FAMILY,
                ip = %r.addr(),
                holder = r.holder_text(),
                "lease journal: a renewal made during the outage was refused: the address changed hands"
            );
        }
        self.refused
            .fetch_add(refused.len() as u64, Ordering::Relaxed);
        self.learn(&refused);
        self.written(pending.len())?;
        tracing::info!(
            family = R::FAMILY,
            renewals = pending.len(),
            refused = refused.len(),
            "lease journal: renewals made during the outage written to the database"
        );
        Ok(())
    }

    pub(crate) fn stats(&self) -> JournalStats {
        JournalStats {
            pending: self.pending.lock().len() as u64,
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    /// The first `n` pending renewals are in the database now.
    fn written(&self, n: usize) -> Result<(), StoreError> {
        let mut pending = self.pending.lock();
        let n = n.min(pending.len());
        pending.drain(..n);
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io = |source: std::io::Error| StoreError::Dir {
            path: path.clone(),
            source,
        };
        if pending.is_empty() {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
            return Ok(());
        }
        // Renewals held meanwhile stay: the file is rewritten with them, atomically and
        // durably (their replies have left).
        let mut text = String::new();
        for r in pending.iter() {
            text.push_str(&line(r)?);
        }
        let tmp = path.with_extension("jsonl.tmp");
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(crate::PRIVATE_FILE_MODE)
                .open(&tmp)
                .map_err(io)?;
            f.write_all(text.as_bytes()).map_err(io)?;
            f.sync_data().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(())
    }
}

/// One journal line.
fn line<R: Renewal>(r: &R) -> Result<String, StoreError> {
    let mut l =
        serde_json::to_string(r).map_err(|e| StoreError::Config(format!("lease journal: {e}")))?;
    l.push('\n');
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease6(n: u32, updated: i64) -> Lease6Record {
        Lease6Record {
            ip: std::net::Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(n)),
            duid: vec![0, 3, 0, 1, 0xaa],
            iaid: n,
            mac: None,
            state: LeaseState::Bound,
            expires: updated + 100,
            updated,
            server: None,
        }
    }

    #[test]
    fn renewals_beyond_the_bound_wait_for_the_database_and_a_cut_line_is_skipped_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let j: Journal<Lease6Record> = Journal::open(Some(dir.path()), JOURNAL6_FILE);
        let known: Vec<Lease6Record> = (0..MAX_PENDING as u32 + 1).map(|n| lease6(n, 10)).collect();
        j.learn(&known);
        let renewals: Vec<Lease6Record> = known.iter().map(|r| lease6(r.iaid, 20)).collect();
        assert!(
            j.hold_renewals(&renewals).unwrap().is_empty(),
            "more than the journal holds: none taken"
        );
        assert_eq!(j.stats().pending, 0);
        let fit = &renewals[..MAX_PENDING];
        assert_eq!(j.hold_renewals(fit).unwrap().len(), MAX_PENDING);
        assert!(j
            .hold_renewals(&renewals[MAX_PENDING..])
            .unwrap()
            .is_empty());
        // A crash in the middle of an append leaves a cut line: never acknowledged, skipped.
        let path = dir.path().join(JOURNAL6_FILE);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"ip\":\"2001:db8::").unwrap();
        let reopened: Journal<Lease6Record> = Journal::open(Some(dir.path()), JOURNAL6_FILE);
        assert_eq!(reopened.stats().pending, MAX_PENDING as u64);
        assert_eq!(reopened.pending.lock()[0], renewals[0]);
    }
}
