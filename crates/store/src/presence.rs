//! Presence: a fleet server's peers learn of its death the moment its process dies, not at
//! their next heartbeat.
//!
//! Every server holds a session-level advisory lock named after it on a database session of
//! its own ([`Store::hold_presence`]). A process that dies (a crash, `kill -9`) loses its
//! sessions at once (the kernel closes its sockets and each backend exits), and the database
//! releases the lock with the session. Each peer keeps one more session per live server
//! waiting to take that lock ([`Store::watch_presence`]): the wait ends when the holder's
//! session ends, and the peer counts the server gone then, in milliseconds, where a heartbeat
//! poll would notice it up to a beat (1 s) later, with a storm's worth of its clients
//! unanswered meanwhile. The watcher gives the lock back at once, so a restarted server takes
//! it again.
//!
//! A watch arms only once it has seen the lock held: a server of an older version, or one
//! whose sessions go through a pooler that does not keep sessions, never holds it, and is
//! left to the heartbeat instead of being taken for dead. A lock granted while the database
//! itself was away and back (the holder not yet reconnected) also looks like a death; the
//! caller counts the server live again at its next heartbeat (the watch tells when, by the
//! database's clock, the lock came free: a heartbeat written later is a living server's).

use std::time::Duration;

use crate::{Backend, Store, StoreError};

/// The first key of every presence lock (the two-key form of PostgreSQL's advisory locks,
/// so that they never meet a single-key lock someone else takes in the same database):
/// "cbpr".
const PRESENCE_CLASS: i32 = 0x6362_7072;

/// How often a watch looks whether the lock it waits for is held yet.
const ARM_POLL: Duration = Duration::from_millis(500);

/// How long a session that failed waits before connecting again.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// The second key of `server`'s presence lock: a fixed hash of its name (FNV-1a, the same on
/// every server and version; `std`'s hasher is seeded per process).
pub fn lock_key(server: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in server.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h as i32
}

/// A running watch of one server's presence; dropping it ends the watch (and its session).
pub struct PresenceWatch {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PresenceWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Store {
    /// Holds this server's presence lock on a session of its own for as long as the store
    /// lives, taking it again after the session breaks. Waits up to `wait` for the first hold
    /// (so that peers who see this server's first heartbeat find the lock held) and returns
    /// whether it got it; a lock held by another session of the same name (a second server
    /// under this name, or the session of this server's previous run not yet closed) is
    /// logged and waited for in the background. Nothing to do on SQLite (no peers).
    pub fn hold_presence(&self, wait: Duration) -> bool {
        let Backend::Postgres(pg) = &self.backend else {
            return true;
        };
        let Some(runtime) = pg.runtime() else {
            return false;
        };
        let key = lock_key(&self.server);
        let name = self.server.clone();
        let session = pg.session();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let mut first = Some(tx);
            loop {
                match session.connect().await {
                    Ok((client, closed)) => {
                        let held = client
                            .execute("SELECT pg_advisory_lock($1, $2)", &[&PRESENCE_CLASS, &key])
                            .await;
                        match held {
                            Ok(_) => {
                                if let Some(tx) = first.take() {
                                    let _ = tx.send(());
                                }
                                // Held until the session ends.
                                let _ = closed.await;
                                tracing::warn!(
                                    server = %name,
                                    "fleet: the presence session closed; taking the lock again"
                                );
                            }
                            Err(e) => tracing::warn!(
                                server = %name,
                                "fleet: taking the presence lock failed: {}",
                                crate::pg::error_text(&e)
                            ),
                        }
                    }
                    Err(e) => tracing::debug!(server = %name, "fleet: presence session: {e}"),
                }
                tokio::time::sleep(RECONNECT_AFTER).await;
            }
        });
        match rx.recv_timeout(wait) {
            Ok(()) => true,
            Err(_) => {
                tracing::warn!(
                    server = %self.server,
                    "fleet: another session holds this server's presence lock (another server \
                     under the same name, or this one's previous run still closing); its peers \
                     notice its death by heartbeat only until it is free"
                );
                false
            }
        }
    }

    /// Watches `peer`'s presence: once its lock has been seen held, waits for it on a session
    /// of its own and calls `gone` when it is released (the peer's session ended), once, with
    /// the moment it was taken (Unix ms by the database's clock, the clock heartbeats are
    /// written with). `None` on SQLite.
    pub fn watch_presence(
        &self,
        peer: &str,
        gone: impl FnOnce(i64) + Send + 'static,
    ) -> Option<PresenceWatch> {
        let Backend::Postgres(pg) = &self.backend else {
            return None;
        };
        let runtime = pg.runtime()?;
        let key = lock_key(peer);
        let session = pg.session();
        let name = peer.to_string();
        let task = runtime.spawn(async move {
            let mut told = false;
            let mut armed = false;
            loop {
                let on_armed = || {
                    if !armed {
                        tracing::info!(server = %name, "fleet: watching a peer's presence: its death is seen when its database sessions close");
                    }
                    armed = true;
                };
                match watch_once(&session, key, on_armed).await {
                    Ok(at_ms) => {
                        gone(at_ms);
                        return;
                    }
                    // Once per watch: a database that is away fails every try.
                    Err(e) if !told => {
                        told = true;
                        tracing::warn!(server = %name, "fleet: watching a peer's presence failed, trying again every second: {e}");
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(RECONNECT_AFTER).await;
            }
        });
        Some(PresenceWatch { task })
    }
}

/// One session's watch: waits until the lock is held by someone, then until it is free;
/// `Ok` with the database's time when the lock was taken (and given back), an error when the
/// session failed.
async fn watch_once(
    session: &crate::pg::Session,
    key: i32,
    on_armed: impl FnOnce(),
) -> Result<i64, StoreError> {
    let (client, _closed) = session.connect().await?;
    // pg_locks shows the two keys as unsigned object ids.
    let (class, object) = (i64::from(PRESENCE_CLASS as u32), i64::from(key as u32));
    loop {
        let held = client
            .query_opt(
                "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid::int8 = $1 \
                 AND objid::int8 = $2 AND objsubid = 2 AND granted",
                &[&class, &object],
            )
            .await?;
        if held.is_some() {
            on_armed();
            break;
        }
        tokio::time::sleep(ARM_POLL).await;
    }
    client
        .execute("SELECT pg_advisory_lock($1, $2)", &[&PRESENCE_CLASS, &key])
        .await?;
    let at = client
        .query_one(
            &format!(
                "SELECT pg_advisory_unlock($1, $2), {}",
                crate::servers::PG_NOW_MS
            ),
            &[&PRESENCE_CLASS, &key],
        )
        .await?;
    Ok(at.try_get(1)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_fixed_and_differ_between_names() {
        // The key is part of the protocol between servers of different builds: it must not
        // change.
        assert_eq!(lock_key(""), 0x811c_9dc5_u32 as i32);
        assert_eq!(lock_key("pxe-0"), lock_key("pxe-0"));
        assert_ne!(lock_key("pxe-0"), lock_key("pxe-1"));
    }
}
