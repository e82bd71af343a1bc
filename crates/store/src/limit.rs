//! Admission for what strangers can make the store write: token buckets (time is an input, so
//! they are tested without sleeping), a table of them per source address with a bounded size,
//! and the limiter for new machine records built from both.
//!
//! Hand-written rather than `governor`: its keyed limiter keeps one entry per key until told to
//! forget, and the bound on the table of sources (with the idle entries evicted first) is the
//! point here; a bucket is ten lines.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Deserialize;

/// A rate: `burst` at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

/// A token bucket, full at creation.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: Rate,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn new(rate: Rate, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            tokens: rate.burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate.per_second).min(self.rate.burst);
        self.at = now;
    }

    /// Takes a token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full again (its key has been idle long enough to forget).
    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.rate.burst
    }
}

/// A bucket per key, at most `max_keys` of them. When the table is full, keys whose bucket has
/// refilled (idle sources) are forgotten; if none has, an unknown key is refused: a flood of
/// new sources cannot grow the table, and a known busy source is not reset by forgetting it.
#[derive(Debug)]
pub struct KeyedBuckets<K> {
    rate: Rate,
    max_keys: usize,
    buckets: HashMap<K, TokenBucket>,
}

impl<K: Hash + Eq + Copy> KeyedBuckets<K> {
    pub fn new(rate: Rate, max_keys: usize) -> KeyedBuckets<K> {
        KeyedBuckets {
            rate,
            max_keys,
            buckets: HashMap::new(),
        }
    }

    /// Takes a token from `key`'s bucket.
    pub fn try_take(&mut self, key: K, now: Instant) -> bool {
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.max_keys {
            self.buckets.retain(|_, b| !b.is_full(now));
            if self.buckets.len() >= self.max_keys {
                return false;
            }
        }
        let rate = self.rate;
        self.buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::new(rate, now))
            .try_take(now)
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// `[machines]`: how fast strangers may add machine records, and when unproven ones expire.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MachineLimits {
    /// New machine records one source address may cause per minute (also its burst).
    pub new_per_source_per_minute: u32,
    /// New machine records per second from all sources together, sustained...
    pub new_per_second: u32,
    /// ... and at once (a rack powered on together).
    pub new_burst: u32,
    /// Machine records at most; beyond it new machines boot but are not recorded.
    pub max_records: u64,
    /// Unproven machine records (see `Store::machine_prune_unproven`) are forgotten this long
    /// after they were last seen.
    #[serde(deserialize_with = "chainboot_config::duration::deserialize")]
    pub unproven_expiry: Duration,
}

impl Default for MachineLimits {
    fn default() -> Self {
        MachineLimits {
            new_per_source_per_minute: 20,
            new_per_second: 10,
            new_burst: 1000,
            max_records: 100_000,
            unproven_expiry: Duration::from_secs(24 * 3600),
        }
    }
}

impl chainboot_config::Validate for MachineLimits {
    fn validate(&self) -> Vec<chainboot_config::Issue> {
        let mut out = Vec::new();
        let mut positive = |key: &str, v: u64| {
            if v == 0 {
                out.push(chainboot_config::Issue::at(&[key], "must be at least 1"));
            }
        };
        positive(
            "new_per_source_per_minute",
            self.new_per_source_per_minute.into(),
        );
        positive("new_per_second", self.new_per_second.into());
        positive("new_burst", self.new_burst.into());
        positive("max_records", self.max_records);
        if self.unproven_expiry < Duration::from_secs(600) {
            out.push(chainboot_config::Issue::new(
                vec!["unproven_expiry".into()],
                "must be at least 10m (an install must be able to report back)".into(),
            ));
        }
        out
    }
}

/// Why a new machine was not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewMachineRefusal {
    /// This source address made too many new machines recently.
    PerSource,
    /// All sources together did.
    Global,
    /// `max_records` machines are recorded.
    Full,
}

impl std::fmt::Display for NewMachineRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NewMachineRefusal::PerSource => {
                "this address announced too many new machines ([machines] new_per_source_per_minute)"
            }
            NewMachineRefusal::Global => {
                "too many new machines at once ([machines] new_per_second, new_burst)"
            }
            NewMachineRefusal::Full => "the machine table is full ([machines] max_records)",
        })
    }
}

/// Source addresses remembered by the new-machine limiter at most.
const MAX_SOURCES: usize = 16_384;

/// How long a count of the machine table stands before it is read again. Counting scans the
/// table (its cost grows with it), too dear for each new machine of a storm; in between, the
/// machines this server admitted are added to the last count. Records other servers of a fleet
/// add in the meantime are seen at the next read: the cap may be passed by what they admit in
/// this time, which their own rate limits bound.
pub const RECORD_COUNT_REFRESH: Duration = Duration::from_secs(10);

/// The machine table's size as last read, plus what was admitted since.
#[derive(Debug, Default)]
struct RecordCount {
    read_at: Option<Instant>,
    count: u64,
}

/// Admission of new machine records: per source address and for all together, plus a cap on
/// the table. Shared (`Arc`) by the request handlers; one short lock per new machine.
#[derive(Debug)]
pub struct NewMachineLimiter {
    limits: MachineLimits,
    state: Mutex<(TokenBucket, KeyedBuckets<IpAddr>)>,
    recorded: Mutex<RecordCount>,
    refused: AtomicU64,
}

impl NewMachineLimiter {
    pub fn new(limits: MachineLimits, now: Instant) -> NewMachineLimiter {
        let global = Rate {
            per_second: f64::from(limits.new_per_second),
            burst: f64::from(limits.new_burst),
        };
        let per_source = Rate {
            per_second: f64::from(limits.new_per_source_per_minute) / 60.0,
            burst: f64::from(limits.new_per_source_per_minute),
        };
        NewMachineLimiter {
            limits,
            state: Mutex::new((
                TokenBucket::new(global, now),
                KeyedBuckets::new(per_source, MAX_SOURCES),
            )),
            recorded: Mutex::new(RecordCount::default()),
            refused: AtomicU64::new(0),
        }
    }

    /// The limits it applies.
    pub fn limits(&self) -> &MachineLimits {
        &self.limits
    }

    /// How many machines the store holds, for [`NewMachineLimiter::admit`]: `read` (a count of
    /// the table) at most once per [`RECORD_COUNT_REFRESH`], the last count plus the machines
    /// admitted since in between.
    pub fn recorded<E>(
        &self,
        now: Instant,
        read: impl FnOnce() -> Result<u64, E>,
    ) -> Result<u64, E> {
        {
            let c = self.recorded.lock();
            if let Some(at) = c.read_at {
                if now.saturating_duration_since(at) < RECORD_COUNT_REFRESH {
                    return Ok(c.count);
                }
            }
        }
        // Read without the lock held: two requests may both count, and the later stays.
        let n = read()?;
        *self.recorded.lock() = RecordCount {
            read_at: Some(now),
            count: n,
        };
        Ok(n)
    }

    /// May `source` add a machine now, with `recorded` machines in the store (see
    /// [`NewMachineLimiter::recorded`])? Call it only for a MAC that has no record yet; a
    /// refusal is counted, an admission is added to the count.
    pub fn admit(
        &self,
        source: IpAddr,
        now: Instant,
        recorded: u64,
    ) -> Result<(), NewMachineRefusal> {
        let verdict = if recorded >= self.limits.max_records {
            Err(NewMachineRefusal::Full)
        } else {
            let mut state = self.state.lock();
            let (global, per_source) = &mut *state;
            // The source's own budget first: one noisy address must not drain the global one.
            if !per_source.try_take(source, now) {
                Err(NewMachineRefusal::PerSource)
            } else if !global.try_take(now) {
                Err(NewMachineRefusal::Global)
            } else {
                Ok(())
            }
        };
        match verdict {
            Ok(()) => self.recorded.lock().count += 1,
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        verdict
    }

    /// New machines refused so far (for metrics).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_counted_once_per_refresh_and_admissions_are_added_in_between() {
        let t0 = Instant::now();
        let limits = MachineLimits {
            max_records: 105,
            new_per_second: 1000,
            new_burst: 1000,
            new_per_source_per_minute: 1000,
            ..MachineLimits::default()
        };
        let l = NewMachineLimiter::new(limits, t0);
        let reads = std::cell::Cell::new(0);
        let count = |n: u64| {
            reads.set(reads.get() + 1);
            Ok::<u64, ()>(n)
        };
        let src: IpAddr = "198.18.0.9".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let mut admitted = 0;
        for i in 0..10 {
            let at = t0 + Duration::from_millis(i);
            let n = l.recorded(at, || count(100)).unwrap_or(u64::MAX);
            if l.admit(src, at, n).is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(reads.get(), 1, "one count for a burst of new machines");
        assert_eq!(admitted, 5, "the cap of 105 holds without counting again");
        // After the refresh the table is read again (machines were forgotten meanwhile).
        let later = t0 + RECORD_COUNT_REFRESH;
        let n = l.recorded(later, || count(50)).unwrap_or(u64::MAX);
        assert_eq!((reads.get(), n), (2, 50));
        assert!(l.admit(src, later, n).is_ok());
    }

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(
            Rate {
                per_second: 2.0,
                burst: 3.0,
            },
            t0,
        );
        assert!((0..3).all(|_| b.try_take(t0)));
        assert!(!b.try_take(t0));
        assert!(b.try_take(t0 + Duration::from_millis(500)));
        assert!(!b.try_take(t0 + Duration::from_millis(600)));
        let later = t0 + Duration::from_secs(60);
        assert!((0..3).all(|_| b.try_take(later)), "refilled, to the burst");
        assert!(!b.try_take(later));
    }

    #[test]
    fn the_source_table_stays_bounded_and_forgets_idle_sources_first() {
        let t0 = Instant::now();
        let rate = Rate {
            per_second: 1.0,
            burst: 1.0,
        };
        let mut k = KeyedBuckets::new(rate, 4);
        for i in 0..4u8 {
            assert!(k.try_take(i, t0));
        }
        assert!(!k.try_take(9, t0), "full of busy sources: a stranger waits");
        assert_eq!(k.len(), 4);
        let later = t0 + Duration::from_secs(5);
        assert!(k.try_take(9, later), "idle ones forgotten");
        assert!(k.len() <= 4);
    }

    #[test]
    fn random_macs_from_one_address_are_refused_after_its_budget() {
        let t0 = Instant::now();
        let limiter = NewMachineLimiter::new(MachineLimits::default(), t0);
        let attacker: IpAddr = "198.18.0.66".parse().unwrap();
        let admitted = (0..20_000)
            .filter(|_| limiter.admit(attacker, t0, 0).is_ok())
            .count();
        assert_eq!(admitted, 20);
        assert_eq!(limiter.refused(), 19_980);
        let victim: IpAddr = "198.18.0.10".parse().unwrap();
        assert_eq!(
            limiter.admit(victim, t0, 0),
            Ok(()),
            "others still admitted"
        );
        assert_eq!(
            limiter.admit(victim, t0, 100_000),
            Err(NewMachineRefusal::Full)
        );
    }

    #[test]
    fn many_sources_together_are_held_to_the_global_rate() {
        let t0 = Instant::now();
        let limiter = NewMachineLimiter::new(MachineLimits::default(), t0);
        let admitted = (0..5000u32)
            .filter(|i| {
                let ip = IpAddr::from([198, 18, (i >> 8) as u8, *i as u8]);
                limiter.admit(ip, t0, 0).is_ok()
            })
            .count();
        assert_eq!(admitted, 1000, "the burst");
        let second = t0 + Duration::from_secs(1);
        let ip = IpAddr::from([198, 19, 0, 1]);
        let more = (0..20)
            .filter(|_| limiter.admit(ip, second, 0).is_ok())
            .count();
        assert_eq!(more, 10, "then new_per_second");
    }
}
