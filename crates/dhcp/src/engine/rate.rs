//! Rate limits: token buckets per key (client hardware address, relay address). Generic over
//! the key, so a DHCPv6 engine can key them by DUID or link address.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::SystemTime;

use super::{unix_f, Engine};

struct Bucket {
    tokens: f64,
    last: f64,
}

/// Token buckets per key (client MAC, relay address), bounded in memory and in time per packet
/// under a flood of made-up keys.
///
/// Idle buckets (refilled, so indistinguishable from new ones) are swept out when the table
/// reaches `sweep_at`; the next sweep waits until the table has doubled, so a sweep's cost is
/// paid by as many inserts as it scanned. (Sweeping at a fixed size, as first written, made
/// every packet scan the table once a flood of more than 65 536 distinct MACs arrived within
/// one refill time: at 36 000 DORA/s the receive thread fell behind within 2 s, see
/// bench/README.md `## DHCP`.) If a sweep frees too little, the table is emptied: every key
/// gets a full bucket again, which only forgives clients that were being limited, never
/// refuses one.
pub struct RateTable<K> {
    buckets: HashMap<K, Bucket>,
    sweep_at: usize,
}

/// Keys kept before the first sweep.
const RATE_SWEEP_AT: usize = 65_536;
/// Keys kept at most (about 10 MiB).
const RATE_MAX_KEYS: usize = 262_144;

impl<K: std::hash::Hash + Eq> Default for RateTable<K> {
    fn default() -> Self {
        RateTable::new()
    }
}

impl<K: std::hash::Hash + Eq> RateTable<K> {
    pub fn new() -> Self {
        RateTable {
            buckets: HashMap::new(),
            sweep_at: RATE_SWEEP_AT,
        }
    }

    /// Takes a token from `key`'s bucket (refilled at `rate` per second up to `burst`).
    pub fn take(&mut self, key: K, t: f64, rate: f64, burst: f64) -> bool {
        if self.buckets.len() >= self.sweep_at {
            self.buckets.retain(|_, b| t - b.last < burst / rate);
            if self.buckets.len() * 2 > RATE_MAX_KEYS {
                self.buckets.clear();
            }
            self.sweep_at = (self.buckets.len() * 2).max(RATE_SWEEP_AT);
        }
        let b = self.buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            last: t,
        });
        b.tokens = (b.tokens + (t - b.last).max(0.0) * rate).min(burst);
        b.last = t;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }
}

impl Engine {
    pub(super) fn rate_ok(&mut self, chaddr: &[u8], now: SystemTime) -> bool {
        let mut k = [0u8; 6];
        for (d, s) in k.iter_mut().zip(chaddr) {
            *d = *s;
        }
        let (rate, burst) = (self.cfg.limits.per_mac_rate, self.cfg.limits.per_mac_burst);
        self.buckets.take(k, unix_f(now), rate, burst)
    }

    pub(super) fn relay_rate_ok(&mut self, giaddr: Ipv4Addr, now: SystemTime) -> bool {
        if giaddr.is_unspecified() {
            return true;
        }
        let l = &self.cfg.limits;
        let (rate, burst) = (l.per_relay_rate, l.per_relay_burst);
        self.relay_buckets.take(giaddr, unix_f(now), rate, burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_new_keys_costs_amortised_constant_time_and_bounded_memory() {
        let mut table = RateTable::new();
        let mut sweeps = 0;
        let mut last_sweep_at = table.sweep_at;
        // Two million distinct keys within one refill time (burst / rate = 5 s): nothing is
        // ever idle, the worst case for sweeping.
        for i in 0..2_000_000u32 {
            assert!(table.take(i, 1.0 + f64::from(i) * 1e-6, 2.0, 10.0));
            if table.sweep_at != last_sweep_at {
                sweeps += 1;
                last_sweep_at = table.sweep_at;
            }
            assert!(table.len() <= RATE_MAX_KEYS, "{} keys", table.len());
        }
        // Doubling between sweeps: a handful of sweeps, not one per packet.
        assert!(sweeps < 40, "{sweeps} sweeps");
    }

    #[test]
    fn limits_still_apply_to_a_key_that_floods() {
        let mut table = RateTable::new();
        let allowed = (0..100)
            .filter(|i| table.take(7u8, f64::from(*i) * 1e-3, 2.0, 10.0))
            .count();
        assert_eq!(allowed, 10, "the burst, and no refill within 0.1 s at 2/s");
    }

    #[test]
    fn idle_keys_are_swept_and_busy_ones_kept() {
        let mut table = RateTable::new();
        for i in 0..RATE_SWEEP_AT as u32 {
            table.take(i, 0.0, 2.0, 10.0);
        }
        // 10 s later (refill time 5 s) one more key: the sweep drops every idle one.
        table.take(u32::MAX, 10.0, 2.0, 10.0);
        assert_eq!(table.len(), 1);
    }
}
