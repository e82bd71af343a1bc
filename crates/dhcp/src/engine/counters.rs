//! The engine's counters, read by `/metrics` while the driver runs.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters (atomics so that `/metrics` can read them while the driver runs).
#[derive(Debug, Default)]
pub struct Counters {
    pub received: AtomicU64,
    pub discover: AtomicU64,
    pub request: AtomicU64,
    pub decline: AtomicU64,
    pub release: AtomicU64,
    pub inform: AtomicU64,
    pub offer_sent: AtomicU64,
    pub ack_sent: AtomicU64,
    pub nak_sent: AtomicU64,
    /// NAKs (also in `nak_sent`) to REQUESTs choosing a fleet server that has stopped.
    pub nak_departed_server: AtomicU64,
    pub boot_first_stage: AtomicU64,
    pub boot_first_stage_http: AtomicU64,
    pub boot_script_http: AtomicU64,
    pub boot_script_tftp: AtomicU64,
    pub ignored_not_boot_client: AtomicU64,
    pub ignored_unknown_arch: AtomicU64,
    pub ignored_no_subnet: AtomicU64,
    pub ignored_other_server: AtomicU64,
    /// Messages naming a live peer of the fleet as their server (counted, no event).
    pub ignored_peer_server: AtomicU64,
    /// Clients another live server of the fleet answers (load balancing).
    pub ignored_peer_client: AtomicU64,
    pub pool_exhausted: AtomicU64,
    pub drop_malformed: AtomicU64,
    pub drop_oversized: AtomicU64,
    pub drop_rate_limited: AtomicU64,
    pub drop_relay_rate_limited: AtomicU64,
    /// Unproven clients refused by the starvation guard.
    pub refused_new_client: AtomicU64,
    pub drop_reply_too_large: AtomicU64,
    /// Filled by the driver.
    pub send_errors: AtomicU64,
    pub store_errors: AtomicU64,
    /// Lease writes the fleet's database refused (another server's client holds the address);
    /// their replies were withheld.
    pub lease_conflicts: AtomicU64,
    /// Renewals acknowledged from the local journal while the fleet's database did not
    /// answer.
    pub degraded_renewals: AtomicU64,
    pub arp_fallback_broadcast: AtomicU64,
    /// Lease transactions (fsyncs) and the leases they carried: their ratio is the group
    /// commit's batching factor.
    pub commit_batches: AtomicU64,
    pub committed_leases: AtomicU64,
}

impl Counters {
    /// Every counter by name (`chainboot_dhcp_<name>` in /metrics).
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("received", g(&self.received)),
            ("discover", g(&self.discover)),
            ("request", g(&self.request)),
            ("decline", g(&self.decline)),
            ("release", g(&self.release)),
            ("inform", g(&self.inform)),
            ("offer_sent", g(&self.offer_sent)),
            ("ack_sent", g(&self.ack_sent)),
            ("nak_sent", g(&self.nak_sent)),
            ("nak_departed_server", g(&self.nak_departed_server)),
            ("boot_first_stage", g(&self.boot_first_stage)),
            ("boot_first_stage_http", g(&self.boot_first_stage_http)),
            ("boot_script_http", g(&self.boot_script_http)),
            ("boot_script_tftp", g(&self.boot_script_tftp)),
            ("ignored_not_boot_client", g(&self.ignored_not_boot_client)),
            ("ignored_unknown_arch", g(&self.ignored_unknown_arch)),
            ("ignored_no_subnet", g(&self.ignored_no_subnet)),
            ("ignored_other_server", g(&self.ignored_other_server)),
            ("ignored_peer_server", g(&self.ignored_peer_server)),
            ("ignored_peer_client", g(&self.ignored_peer_client)),
            ("pool_exhausted", g(&self.pool_exhausted)),
            ("drop_malformed", g(&self.drop_malformed)),
            ("drop_oversized", g(&self.drop_oversized)),
            ("drop_rate_limited", g(&self.drop_rate_limited)),
            ("drop_relay_rate_limited", g(&self.drop_relay_rate_limited)),
            ("refused_new_client", g(&self.refused_new_client)),
            ("drop_reply_too_large", g(&self.drop_reply_too_large)),
            ("send_errors", g(&self.send_errors)),
            ("store_errors", g(&self.store_errors)),
            ("lease_conflicts", g(&self.lease_conflicts)),
            ("degraded_renewals", g(&self.degraded_renewals)),
            ("arp_fallback_broadcast", g(&self.arp_fallback_broadcast)),
            ("commit_batches", g(&self.commit_batches)),
            ("committed_leases", g(&self.committed_leases)),
        ]
    }
}

pub(super) fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}
