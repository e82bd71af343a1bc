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
//! Polling only pays while the CPU it spins on is not wanted by anyone else. When another
//! process wants it (a compile, a VM's vCPU, the client itself when it shares a CPU), the
//! spinning thread delays the very client it waits for, and a transfer measured 2-3x slower
//! with polling than without on a machine with one CPU hog. So [`BusyPoll`] decides from
//! what it observes, and polls only when all of these hold:
//!
//! - **No one waits for a CPU**: the number of runnable tasks (sampled by the driver from
//!   `/proc/loadavg` at most every [`RUNNABLE_SAMPLE_EVERY`], right after a block is sent so
//!   that a client woken by it counts) is at most the number of CPUs. The sample counts the
//!   polling thread itself, so on two CPUs "this thread and its client" polls, "this thread,
//!   its client and a hog" does not. While the samples keep finding the machine crowded, they
//!   are taken less and less often (down to one per [`MAX_SAMPLE_EVERY`]): a transfer on a
//!   busy machine then does what it does with polling off, all but one read per 16 ms.
//! - **The client answers within the polling time**: after [`MISSES_BEFORE_BACKOFF`] polls in
//!   a row that the ACK missed (a real LAN, a slow PXE ROM), polling pauses for a growing
//!   number of blocks.
//! - **Polling makes the turnaround shorter**: every [`PROBE_EVERY`] polled waits, one wait
//!   sleeps at once, and the client's turnaround (block sent to ACK received) is averaged per
//!   way of waiting. If polling does not cut it by at least an eighth, polling pauses for a
//!   growing number of blocks: whatever the load signal misses, a transfer never stays in a
//!   mode that is slower than sleeping.
//!
//! On top of this the server lets a transfer poll only while at most one transfer runs per
//! two CPUs (see `server::polling_transfers`), so a boot storm never spins.

use std::time::{Duration, Instant};

/// Polls in a row that the ACK missed before polling pauses.
pub const MISSES_BEFORE_BACKOFF: u32 = 3;
/// Blocks waited for without polling after polling stopped paying; doubles on each failed
/// retry, up to the maximum. A 250 us LAN round trip at the maximum costs one 50 us poll
/// per 4096 blocks.
const FIRST_BACKOFF: u32 = 64;
const MAX_BACKOFF: u32 = 4096;
/// Polled waits between two waits that sleep at once to measure the sleeping turnaround.
/// One in 33 blocks costs at most a wake-up's worth of time, a few percent on loopback.
pub const PROBE_EVERY: u32 = 32;
/// How often the runnable-task count is sampled: reading `/proc/loadavg` costs a few
/// microseconds, so once per millisecond (about 20-50 blocks on a fast path) is under 1%.
pub const RUNNABLE_SAMPLE_EVERY: Duration = Duration::from_millis(1);
/// The longest interval between samples, reached after a few crowded ones in a row: a
/// machine that becomes quiet is noticed within this (16 ms is under 2% of a 1 s transfer).
pub const MAX_SAMPLE_EVERY: Duration = Duration::from_millis(16);

/// How a wait for the client's datagram went, as the driver saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// Polled, and the client's datagram came while polling, this long after the block was
    /// sent.
    Answered(Duration),
    /// Polled for the whole budget, then slept; the datagram came this long after the block
    /// was sent (`None`: none came before the wait ended).
    Missed(Option<Duration>),
    /// Slept at once; the turnaround as for `Missed`.
    Slept(Option<Duration>),
}

/// A smoothed turnaround (exponential moving average, in nanoseconds).
#[derive(Debug, Clone, Copy, Default)]
struct Average {
    nanos: Option<u64>,
}

impl Average {
    /// Folds in `sample` with weight 1/2^`shift`; the first sample is taken as is.
    fn add(&mut self, sample: Duration, shift: u32) {
        let s = u64::try_from(sample.as_nanos()).unwrap_or(u64::MAX);
        self.nanos = Some(match self.nanos {
            None => s,
            Some(a) => a - (a >> shift) + (s >> shift),
        });
    }
}

/// Per-transfer polling decisions (sans-IO: the caller polls, measures, samples the runnable
/// count and reports).
#[derive(Debug, Clone)]
pub struct BusyPoll {
    budget: Duration,
    cpus: u32,
    /// Consecutive polls that ended without an ACK.
    misses: u32,
    /// Waits left that do not poll.
    skip: u32,
    /// The next `skip` after polls miss again; reset by an answered poll.
    miss_backoff: u32,
    /// The next `skip` after a probe finds polling no faster; reset by one that finds it is.
    slow_backoff: u32,
    /// Whether the last runnable sample saw more runnable tasks than CPUs, and when it was
    /// taken (`None`: never).
    crowded: bool,
    sampled_at: Option<Instant>,
    /// Until the next sample: [`RUNNABLE_SAMPLE_EVERY`], doubled by each crowded sample up
    /// to [`MAX_SAMPLE_EVERY`].
    sample_every: Duration,
    /// Polled waits since the last probe, and whether the current wait is a probe.
    polled_since_probe: u32,
    probing: bool,
    polled: Average,
    slept: Average,
}

impl BusyPoll {
    /// Polls for up to `budget` per wait on a machine of `cpus` CPUs; a zero budget never
    /// polls.
    pub fn new(budget: Duration, cpus: u32) -> BusyPoll {
        BusyPoll {
            budget,
            cpus,
            misses: 0,
            skip: 0,
            miss_backoff: FIRST_BACKOFF,
            slow_backoff: FIRST_BACKOFF,
            crowded: false,
            sampled_at: None,
            sample_every: RUNNABLE_SAMPLE_EVERY,
            polled_since_probe: 0,
            probing: false,
            polled: Average::default(),
            slept: Average::default(),
        }
    }

    /// Whether the driver should sample the runnable-task count now (before
    /// [`BusyPoll::next_wait`]) and report it with [`BusyPoll::record_runnable`].
    pub fn wants_runnable(&self, now: Instant) -> bool {
        !self.budget.is_zero()
            && self
                .sampled_at
                .is_none_or(|at| now.saturating_duration_since(at) >= self.sample_every)
    }

    /// A runnable-task count sampled at `now` (this thread included); `None`: it could not
    /// be read, which leaves polling off (never spin blind).
    pub fn record_runnable(&mut self, now: Instant, runnable: Option<u32>) {
        self.sampled_at = Some(now);
        self.crowded = runnable.is_none_or(|r| r > self.cpus);
        self.sample_every = if self.crowded {
            (self.sample_every * 2).min(MAX_SAMPLE_EVERY)
        } else {
            RUNNABLE_SAMPLE_EVERY
        };
    }

    /// How long to poll before this wait sleeps; `None`: sleep at once. Call once per wait,
    /// then report the wait with [`BusyPoll::record`].
    pub fn next_wait(&mut self) -> Option<Duration> {
        self.probing = false;
        if self.budget.is_zero() || self.crowded {
            return None;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        if self.polled_since_probe >= PROBE_EVERY {
            self.polled_since_probe = 0;
            self.probing = true;
            return None;
        }
        self.polled_since_probe += 1;
        Some(self.budget)
    }

    /// How the wait went.
    pub fn record(&mut self, waited: Waited) {
        match waited {
            Waited::Answered(turnaround) => {
                self.misses = 0;
                self.miss_backoff = FIRST_BACKOFF;
                self.polled.add(turnaround, 4);
            }
            Waited::Missed(turnaround) => {
                if let Some(t) = turnaround {
                    self.polled.add(t, 4);
                }
                self.misses += 1;
                if self.misses >= MISSES_BEFORE_BACKOFF {
                    self.misses = 0;
                    self.pause(Pause::Misses);
                }
            }
            Waited::Slept(turnaround) => {
                if let Some(t) = turnaround {
                    self.slept.add(t, 2);
                }
                if std::mem::take(&mut self.probing) {
                    self.judge_probe();
                }
            }
        }
    }

    /// After a probe: keep polling only if it makes the turnaround at least an eighth shorter
    /// than sleeping does.
    fn judge_probe(&mut self) {
        let (Some(polled), Some(slept)) = (self.polled.nanos, self.slept.nanos) else {
            return;
        };
        if polled.saturating_add(polled / 7) < slept {
            self.slow_backoff = FIRST_BACKOFF;
        } else {
            self.pause(Pause::Slow);
        }
    }

    fn pause(&mut self, why: Pause) {
        let backoff = match why {
            Pause::Misses => &mut self.miss_backoff,
            Pause::Slow => &mut self.slow_backoff,
        };
        self.skip = *backoff;
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
        self.polled_since_probe = 0;
    }
}

enum Pause {
    Misses,
    Slow,
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Duration = Duration::from_micros(50);
    const CPUS: u32 = 2;
    const US: Duration = Duration::from_micros(1);

    /// A polling state on a quiet two-CPU machine (the first sample saw this thread and its
    /// client).
    fn quiet() -> BusyPoll {
        let mut p = BusyPoll::new(BUDGET, CPUS);
        p.record_runnable(Instant::now(), Some(2));
        p
    }

    /// Runs `n` waits against a client whose turnaround is `polled` when the thread polls and
    /// `slept` when it sleeps (an ACK later than the budget is a miss); returns the waits that
    /// polled.
    fn trace(p: &mut BusyPoll, n: usize, polled: Duration, slept: Duration) -> usize {
        let mut polls = 0;
        for _ in 0..n {
            match p.next_wait() {
                Some(budget) => {
                    polls += 1;
                    p.record(if polled <= budget {
                        Waited::Answered(polled)
                    } else {
                        Waited::Missed(Some(polled))
                    });
                }
                None => p.record(Waited::Slept(Some(slept))),
            }
        }
        polls
    }

    #[test]
    fn zero_budget_never_polls_nor_samples() {
        let mut p = BusyPoll::new(Duration::ZERO, CPUS);
        assert!(!p.wants_runnable(Instant::now()));
        p.record_runnable(Instant::now(), Some(1));
        assert_eq!(trace(&mut p, 1000, 10 * US, 60 * US), 0);
    }

    #[test]
    fn nothing_polls_before_the_first_runnable_sample() {
        let mut p = BusyPoll::new(BUDGET, CPUS);
        assert!(p.wants_runnable(Instant::now()));
        // The driver did not sample (or could not read the count): never spin blind.
        p.crowded = true;
        assert_eq!(p.next_wait(), None);
        let mut p = BusyPoll::new(BUDGET, CPUS);
        p.record_runnable(Instant::now(), None);
        assert_eq!(p.next_wait(), None);
    }

    #[test]
    fn runnable_count_is_sampled_once_per_interval() {
        let t0 = Instant::now();
        let mut p = BusyPoll::new(BUDGET, CPUS);
        assert!(p.wants_runnable(t0));
        p.record_runnable(t0, Some(1));
        assert!(!p.wants_runnable(t0 + RUNNABLE_SAMPLE_EVERY / 2));
        assert!(p.wants_runnable(t0 + RUNNABLE_SAMPLE_EVERY));
    }

    #[test]
    fn a_crowded_machine_is_sampled_less_and_less_often_and_a_quiet_sample_restores_the_pace() {
        let mut p = BusyPoll::new(BUDGET, CPUS);
        let mut t = Instant::now();
        // Crowded samples in a row: 2, 4, 8, 16 ms apart, then every 16 ms.
        let mut gaps = Vec::new();
        let mut last = t;
        p.record_runnable(t, Some(5));
        while gaps.len() < 6 {
            t += Duration::from_micros(250);
            assert_eq!(p.next_wait(), None, "a crowded machine never polls");
            p.record(Waited::Slept(Some(30 * US)));
            if p.wants_runnable(t) {
                gaps.push((t - last).as_millis());
                last = t;
                p.record_runnable(t, Some(5));
            }
        }
        assert_eq!(gaps, [2, 4, 8, 16, 16, 16]);
        // The machine turns quiet: noticed at the next sample, within MAX_SAMPLE_EVERY, and
        // polling and the 1 ms pace resume at once.
        assert!(!p.wants_runnable(t + MAX_SAMPLE_EVERY - US));
        t += MAX_SAMPLE_EVERY;
        assert!(p.wants_runnable(t));
        p.record_runnable(t, Some(2));
        assert_eq!(p.next_wait(), Some(BUDGET));
        assert!(!p.wants_runnable(t + RUNNABLE_SAMPLE_EVERY - US));
        assert!(p.wants_runnable(t + RUNNABLE_SAMPLE_EVERY));
        // An unreadable count is crowded too (never spin blind), and backs off the same way.
        p.record_runnable(t, None);
        assert!(!p.wants_runnable(t + RUNNABLE_SAMPLE_EVERY));
        assert!(p.wants_runnable(t + 2 * RUNNABLE_SAMPLE_EVERY));
    }

    #[test]
    fn a_close_client_on_a_quiet_machine_is_polled_for_all_but_the_probes() {
        let mut p = quiet();
        let n = 33 * 300;
        let polls = trace(&mut p, n, 10 * US, 60 * US);
        // One wait in PROBE_EVERY + 1 sleeps to measure; the rest poll.
        assert_eq!(polls, n - n / (PROBE_EVERY as usize + 1));
    }

    #[test]
    fn more_runnable_tasks_than_cpus_stop_polling_at_once_and_a_quiet_sample_resumes_it() {
        let t0 = Instant::now();
        let mut p = quiet();
        assert_eq!(trace(&mut p, 10, 10 * US, 60 * US), 10);
        // A CPU hog: this thread, its client and the hog on two CPUs.
        p.record_runnable(t0 + RUNNABLE_SAMPLE_EVERY, Some(3));
        assert_eq!(trace(&mut p, 1000, 10 * US, 60 * US), 0);
        // The hog is gone.
        p.record_runnable(t0 + 2 * RUNNABLE_SAMPLE_EVERY, Some(2));
        assert_eq!(trace(&mut p, 10, 10 * US, 60 * US), 10);
    }

    #[test]
    fn a_far_client_stops_polling_after_three_misses_then_backs_off() {
        let mut p = quiet();
        for _ in 0..MISSES_BEFORE_BACKOFF {
            assert!(p.next_wait().is_some());
            p.record(Waited::Missed(Some(300 * US)));
        }
        // The next FIRST_BACKOFF waits sleep at once.
        for _ in 0..FIRST_BACKOFF {
            assert_eq!(p.next_wait(), None);
            p.record(Waited::Slept(Some(300 * US)));
        }
        // Then one try; three more misses double the pause.
        for _ in 0..MISSES_BEFORE_BACKOFF {
            assert!(p.next_wait().is_some());
            p.record(Waited::Missed(Some(300 * US)));
        }
        for _ in 0..2 * FIRST_BACKOFF {
            assert_eq!(p.next_wait(), None);
            p.record(Waited::Slept(Some(300 * US)));
        }
        assert!(p.next_wait().is_some());
    }

    #[test]
    fn a_far_client_costs_few_polls_over_a_long_transfer() {
        // A 64 MiB file at blksize 512 over a LAN: 131 072 blocks. The pauses grow to
        // MAX_BACKOFF, so polling is tried on well under 1% of them.
        let mut p = quiet();
        let polled = trace(&mut p, 131_072, 250 * US, 250 * US);
        assert!(polled < 200, "polled {polled} times");
    }

    #[test]
    fn polling_that_slows_the_client_down_pauses_and_the_pauses_grow() {
        // Contention the runnable count did not see: the ACKs still come within the budget
        // while polling (no misses), but later than when the thread sleeps and leaves its CPU
        // to the client.
        let mut p = quiet();
        let n = 200_000;
        let polled = trace(&mut p, n, 40 * US, 30 * US);
        // Each round polls PROBE_EVERY times, then pauses for up to MAX_BACKOFF waits.
        assert!(polled < n / 50, "polled {polled} of {n}");
        assert!(p.slow_backoff == MAX_BACKOFF, "{}", p.slow_backoff);
    }

    #[test]
    fn polling_that_barely_helps_is_not_worth_its_cpu() {
        // 10% shorter turnaround: less than the eighth polling must win to go on.
        let mut p = quiet();
        let n = 100_000;
        let polled = trace(&mut p, n, 45 * US, 50 * US);
        assert!(polled < n / 20, "polled {polled} of {n}");
    }

    #[test]
    fn a_probe_that_finds_polling_faster_resets_the_slow_backoff() {
        let mut p = quiet();
        // Slower while polling for a while: the pause grows past the first.
        trace(&mut p, 2_000, 40 * US, 30 * US);
        assert!(p.slow_backoff > FIRST_BACKOFF);
        // Then the contention ends: polling turns fast, and once the averages have moved,
        // the next probe resets the pause and polling goes on for good.
        trace(&mut p, 20_000, 10 * US, 60 * US);
        assert_eq!(p.slow_backoff, FIRST_BACKOFF);
        let polls = trace(&mut p, 3_300, 10 * US, 60 * US);
        assert_eq!(polls, 3_200);
    }

    #[test]
    fn an_answer_resets_the_miss_backoff() {
        let mut p = quiet();
        let miss_three_times = |p: &mut BusyPoll| {
            for _ in 0..MISSES_BEFORE_BACKOFF {
                assert!(p.next_wait().is_some());
                p.record(Waited::Missed(None));
            }
        };
        let skipped = |p: &mut BusyPoll| {
            let mut n = 0;
            while p.next_wait().is_none() {
                p.record(Waited::Slept(None));
                n += 1;
            }
            n
        };
        // Two failed rounds grow the pause to 2 x FIRST_BACKOFF.
        miss_three_times(&mut p);
        assert_eq!(skipped(&mut p), FIRST_BACKOFF);
        // (`skipped` ends on the wait that polls again.)
        p.record(Waited::Missed(None));
        for _ in 1..MISSES_BEFORE_BACKOFF {
            assert!(p.next_wait().is_some());
            p.record(Waited::Missed(None));
        }
        assert_eq!(skipped(&mut p), 2 * FIRST_BACKOFF);
        // An answer: polling goes on, and a single miss later does not stop it.
        p.record(Waited::Answered(10 * US));
        assert!(p.next_wait().is_some());
        p.record(Waited::Missed(None));
        assert!(p.next_wait().is_some());
        p.record(Waited::Answered(10 * US));
        // Three misses now pause for FIRST_BACKOFF again, not 4 x.
        miss_three_times(&mut p);
        assert_eq!(skipped(&mut p), FIRST_BACKOFF);
    }
}
