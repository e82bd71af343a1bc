//! Following the events other servers of a fleet write into the shared database, so that the
//! live stream of any server shows the whole fleet.
//!
//! Event ids come from one database sequence, but a batch takes its ids before it commits: a
//! batch that took lower ids may commit after one with higher ids was already read. So the
//! follower keeps, besides the highest id it saw, the ids it skipped below it (the gaps) and
//! asks for them again for [`GAP_WAIT`]; an id delivered once is never delivered again. Ids a
//! failed write took never appear: their gaps expire. Sans-IO: the caller runs the query
//! ([`chainboot_store::events::following`]) with what [`Follower::want`] says.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a skipped id is asked for again: far longer than a batch's transaction takes.
pub const GAP_WAIT: Duration = Duration::from_secs(30);
/// Skipped ids remembered at most (the oldest are given up first): a burst of failed writes
/// cannot grow the follower or its query without bound.
pub const MAX_GAPS: usize = 4096;

/// Where a follower is in the shared sequence of event ids.
#[derive(Debug, Default)]
pub struct Follower {
    /// The highest id seen; `None` until [`Follower::start_at`].
    seen: Option<i64>,
    /// Ids below `seen` not seen yet, and when they were first missed.
    gaps: BTreeMap<i64, Instant>,
}

impl Follower {
    pub fn new() -> Follower {
        Follower::default()
    }

    /// Whether [`Follower::start_at`] was called.
    pub fn started(&self) -> bool {
        self.seen.is_some()
    }

    /// Starts after `newest` (the newest id when the server starts: what was written before
    /// is in the database, not news).
    pub fn start_at(&mut self, newest: i64) {
        self.seen = Some(newest);
        self.gaps.clear();
    }

    /// The ids to ask for: every one above the first value, and the listed ones below it.
    pub fn want(&self) -> (i64, Vec<i64>) {
        (self.seen.unwrap_or(0), self.gaps.keys().copied().collect())
    }

    /// Takes the ids an answer to [`Follower::want`] held (ascending, as the query orders
    /// them); returns which of them are new to this follower.
    pub fn took(&mut self, ids: &[i64], now: Instant) -> Vec<i64> {
        let mut new = Vec::with_capacity(ids.len());
        for &id in ids {
            let seen = self.seen.unwrap_or(0);
            if id > seen {
                // Ids skipped between the last one seen and this one: asked for again. Beyond
                // MAX_GAPS only the highest ones are kept (the cap below would drop the rest).
                let from = (seen + 1).max(id - MAX_GAPS as i64);
                for gap in from..id {
                    self.gaps.insert(gap, now);
                }
                self.seen = Some(id);
                new.push(id);
            } else if self.gaps.remove(&id).is_some() {
                new.push(id);
            }
        }
        self.gaps
            .retain(|_, missed| now.saturating_duration_since(*missed) < GAP_WAIT);
        while self.gaps.len() > MAX_GAPS {
            self.gaps.pop_first();
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_committed_out_of_order_are_delivered_once_each() {
        let t = Instant::now();
        let mut f = Follower::new();
        f.start_at(10);
        assert_eq!(f.want(), (10, vec![]));
        // 11 and 12 were taken by a batch that has not committed yet.
        assert_eq!(f.took(&[13, 14], t), [13, 14]);
        assert_eq!(f.want(), (14, vec![11, 12]));
        // It commits: both come as gaps, once.
        assert_eq!(f.took(&[11, 12, 15], t), [11, 12, 15]);
        assert_eq!(f.want(), (15, vec![]));
        // An answer repeating ids already delivered delivers nothing.
        assert!(f.took(&[12, 13, 15], t).is_empty());
    }

    #[test]
    fn gaps_of_failed_writes_are_given_up_after_a_while() {
        let t = Instant::now();
        let mut f = Follower::new();
        f.start_at(0);
        f.took(&[5], t);
        assert_eq!(f.want().1, [1, 2, 3, 4]);
        f.took(&[], t + GAP_WAIT / 2);
        assert_eq!(f.want().1.len(), 4, "still waited for");
        f.took(&[], t + GAP_WAIT);
        assert!(f.want().1.is_empty(), "given up");
    }

    #[test]
    fn a_huge_jump_remembers_at_most_max_gaps() {
        let t = Instant::now();
        let mut f = Follower::new();
        f.start_at(0);
        f.took(&[1_000_000], t);
        let (seen, gaps) = f.want();
        assert_eq!(seen, 1_000_000);
        assert_eq!(gaps.len(), MAX_GAPS);
        assert_eq!(gaps.last(), Some(&999_999));
    }
}
