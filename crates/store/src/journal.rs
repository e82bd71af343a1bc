//! Renewals acknowledged while the fleet's database does not answer.
//!
//! A client renewing a lease the database already holds for it (same address, same client,
//! not expired) may be acknowledged without the database: no other server can take an
//! unexpired lease of another client, and none can write while the database is away. Such a
//! renewal is made durable here instead, in a file beside the server's other state (appended
//! and fsynced before its ACK leaves), and written to the database, in order, at the first
//! use once it answers again (and at start, when a server stopped during an outage). Any
//! other lease (a new client, another address) waits for the database.
//!
//! This holds as long as the outage is shorter than the time left on the renewed leases'
//! stored expiry (clients renew at half their lease): past it, another server could take the
//! address when the database returns, and the replay would be refused and logged.

use std::collections::HashMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::leases::{LeaseRecord, LeaseState};
use crate::StoreError;

/// The journal's file name in `state_dir`.
pub const JOURNAL_FILE: &str = "lease-journal.jsonl";
/// Renewals held at most; beyond it renewals wait for the database like new leases.
const MAX_PENDING: usize = 100_000;

/// What the database is known to hold, and the renewals it has not been told yet.
#[derive(Default)]
pub(crate) struct Journal {
    path: Option<PathBuf>,
    /// Address → (client MAC, expiry) of bound leases the database holds, as far as this
    /// server knows (its own writes and what it read).
    known: Mutex<HashMap<Ipv4Addr, (String, i64)>>,
    pending: Mutex<Vec<LeaseRecord>>,
}

impl Journal {
    /// The journal in `state_dir` (none: renewals wait for the database), with what an earlier
    /// run left in it.
    pub(crate) fn open(state_dir: Option<&Path>) -> Result<Journal, StoreError> {
        let Some(dir) = state_dir else {
            return Ok(Journal::default());
        };
        let path = dir.join(JOURNAL_FILE);
        let mut pending = Vec::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines() {
                // A line cut by a crash mid-write was never acknowledged: skip it.
                if let Ok(r) = serde_json::from_str::<LeaseRecord>(line) {
                    pending.push(r);
                }
            }
        }
        Ok(Journal {
            path: Some(path),
            known: Mutex::new(HashMap::new()),
            pending: Mutex::new(pending),
        })
    }

    /// Remembers what the database holds (rows read, writes accepted).
    pub(crate) fn learn(&self, records: &[LeaseRecord]) {
        let mut known = self.known.lock();
        for r in records {
            if r.state == LeaseState::Bound {
                known.insert(r.ip, (r.mac.clone(), r.expires));
            } else {
                known.remove(&r.ip);
            }
        }
    }

    /// Makes the renewals among `records` durable here; returns their addresses.
    pub(crate) fn hold_renewals(
        &self,
        records: &[LeaseRecord],
    ) -> Result<Vec<Ipv4Addr>, StoreError> {
        let Some(path) = &self.path else {
            return Ok(Vec::new());
        };
        let renewals: Vec<&LeaseRecord> = {
            let known = self.known.lock();
            records
                .iter()
                .filter(|r| {
                    r.state == LeaseState::Bound
                        && known
                            .get(&r.ip)
                            .is_some_and(|(mac, expires)| *mac == r.mac && *expires > r.updated)
                })
                .collect()
        };
        let mut pending = self.pending.lock();
        if renewals.is_empty() || pending.len() + renewals.len() > MAX_PENDING {
            return Ok(Vec::new());
        }
        let mut text = String::new();
        for r in &renewals {
            let line = serde_json::to_string(r)
                .map_err(|e| StoreError::Config(format!("lease journal: {e}")))?;
            text.push_str(&line);
            text.push('\n');
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
        let owned: Vec<LeaseRecord> = renewals.into_iter().cloned().collect();
        self.learn(&owned);
        Ok(owned.iter().map(|r| r.ip).collect())
    }

    /// The renewals not yet in the database, oldest first.
    pub(crate) fn pending(&self) -> Vec<LeaseRecord> {
        self.pending.lock().clone()
    }

    /// The first `n` pending renewals are in the database now.
    pub(crate) fn written(&self, n: usize) -> Result<(), StoreError> {
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
        // Renewals held meanwhile stay: the file is rewritten with them (atomically).
        let mut text = String::new();
        for r in pending.iter() {
            if let Ok(line) = serde_json::to_string(r) {
                text.push_str(&line);
                text.push('\n');
            }
        }
        let tmp = path.with_extension("jsonl.tmp");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(())
    }
}
