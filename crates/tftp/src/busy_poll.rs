//! When a lock-step transfer's thread polls for the next ACK instead of sleeping at once.
//!
//! A lock-step transfer (windowsize 1, what every PXE ROM asks for) sends a block and waits for
//! its ACK. When the client is very close (a VM on this host behind a tap or bridge, a
//! container on a veth, loopback) the ACK comes back within tens of microseconds, and the
//! round trip is then dominated by wake-ups, not by work: the sleeping thread has to be woken
//! by an interrupt, and on a virtual machine a halted vCPU takes 20-25 us to come back
//! (measured here with `perf sched timehist`: 53 us per block, of which the two wake-ups were
//! ~45). Polling the socket for a few tens of microseconds before sleeping removes the
//! server's half of that: the ACK is found the moment it lands. Linux offers the same trade
//! for NIC queues (`net.core.busy_read`, whose documentation suggests 50 us), but not for
//! loopback, veth or tap devices, hence this.
//!
//! Polling costs CPU, so it is only done when it pays: [`BusyPoll`] stops after a few ACKs in
//! a row that came later than the polling time (a real LAN, a slow PXE ROM) and only tries
//! again after a growing number of blocks; and the server only lets a transfer poll while at
//! most one transfer runs per two CPUs (see `server::polling_transfers`): the other CPU is left
//! for the client, often on the same host, and for the rest of the server, and a boot storm
//! never spins.

use std::time::Duration;

/// ACKs in a row that arrive after the polling time before polling stops.
const MISSES_BEFORE_BACKOFF: u32 = 3;
/// Blocks waited for without polling after polling stopped paying; doubles on each failed
/// retry, up to the maximum. A 250 us LAN round trip at the maximum costs one 50 us poll
/// per 4096 blocks.
const FIRST_BACKOFF: u32 = 64;
const MAX_BACKOFF: u32 = 4096;

/// Per-transfer polling decisions (sans-IO: the caller polls, measures and reports).
#[derive(Debug, Clone)]
pub struct BusyPoll {
    budget: Duration,
    /// Consecutive polls that ended without an ACK.
    misses: u32,
    /// Waits left that do not poll.
    skip: u32,
    /// The next `skip` after polling fails again.
    backoff: u32,
}

impl BusyPoll {
    /// Polls for up to `budget` per wait; a zero budget never polls.
    pub fn new(budget: Duration) -> BusyPoll {
        BusyPoll {
            budget,
            misses: 0,
            skip: 0,
            backoff: FIRST_BACKOFF,
        }
    }

    /// How long to poll before this wait sleeps; `None`: sleep at once. Call once per wait.
    pub fn next_wait(&mut self) -> Option<Duration> {
        if self.budget.is_zero() {
            return None;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        Some(self.budget)
    }

    /// The outcome of a wait that polled: `answered` when a datagram arrived while polling.
    pub fn record(&mut self, answered: bool) {
        if answered {
            self.misses = 0;
            self.backoff = FIRST_BACKOFF;
            return;
        }
        self.misses += 1;
        if self.misses >= MISSES_BEFORE_BACKOFF {
            self.misses = 0;
            self.skip = self.backoff;
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Duration = Duration::from_micros(50);

    /// Waits (out of `n`) that poll when every poll ends as `answered` says.
    fn polls(p: &mut BusyPoll, n: usize, answered: bool) -> usize {
        let mut polled = 0;
        for _ in 0..n {
            if p.next_wait().is_some() {
                polled += 1;
                p.record(answered);
            }
        }
        polled
    }

    #[test]
    fn zero_budget_never_polls() {
        let mut p = BusyPoll::new(Duration::ZERO);
        assert_eq!(polls(&mut p, 1000, true), 0);
    }

    #[test]
    fn a_close_client_is_polled_for_every_block() {
        let mut p = BusyPoll::new(BUDGET);
        assert_eq!(p.next_wait(), Some(BUDGET));
        p.record(true);
        assert_eq!(polls(&mut p, 10_000, true), 10_000);
    }

    #[test]
    fn a_far_client_stops_polling_after_three_misses_then_backs_off() {
        let mut p = BusyPoll::new(BUDGET);
        for _ in 0..3 {
            assert!(p.next_wait().is_some());
            p.record(false);
        }
        // The next FIRST_BACKOFF waits sleep at once.
        for _ in 0..FIRST_BACKOFF {
            assert_eq!(p.next_wait(), None);
        }
        // Then one try; three more misses double the pause.
        for _ in 0..3 {
            assert!(p.next_wait().is_some());
            p.record(false);
        }
        for _ in 0..2 * FIRST_BACKOFF {
            assert_eq!(p.next_wait(), None);
        }
        assert!(p.next_wait().is_some());
    }

    #[test]
    fn a_far_client_costs_few_polls_over_a_long_transfer() {
        // A 64 MiB file at blksize 512 over a LAN: 131 072 blocks. The pauses grow to
        // MAX_BACKOFF, so polling is tried on well under 1% of them.
        let mut p = BusyPoll::new(BUDGET);
        let polled = polls(&mut p, 131_072, false);
        assert!(polled < 200, "polled {polled} times");
    }

    #[test]
    fn an_answer_resets_the_backoff() {
        let mut p = BusyPoll::new(BUDGET);
        let miss_three_times = |p: &mut BusyPoll| {
            for _ in 0..3 {
                assert!(p.next_wait().is_some());
                p.record(false);
            }
        };
        let skipped = |p: &mut BusyPoll| {
            let mut n = 0;
            while p.next_wait().is_none() {
                n += 1;
            }
            n
        };
        // Two failed rounds grow the pause to 2 x FIRST_BACKOFF.
        miss_three_times(&mut p);
        assert_eq!(skipped(&mut p), FIRST_BACKOFF);
        // (`skipped` ends on the wait that polls again.)
        p.record(false);
        for _ in 0..2 {
            assert!(p.next_wait().is_some());
            p.record(false);
        }
        assert_eq!(skipped(&mut p), 2 * FIRST_BACKOFF);
        // An answer: polling goes on, and a single miss later does not stop it.
        p.record(true);
        assert!(p.next_wait().is_some());
        p.record(false);
        assert!(p.next_wait().is_some());
        p.record(true);
        // Three misses now pause for FIRST_BACKOFF again, not 4 x.
        miss_three_times(&mut p);
        assert_eq!(skipped(&mut p), FIRST_BACKOFF);
    }
}
