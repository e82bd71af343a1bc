//! Giving memory back to the system after bursts.
//!
//! glibc's malloc keeps what the runtime's worker threads free in their per-thread arenas. After
//! a burst (100 TFTP transfers, each with a 32 KiB read-ahead chunk and a 23 KiB send batch;
//! a boot storm's HTTP chunks) most of an arena is free but a few live allocations sit above
//! the free space, so the arena never shrinks from the top and RSS stays ~6.5 MiB above the
//! baseline for good (measured on the faults test: arenas of 4.8 and 1.4 MiB holding ~100 KiB
//! in use). `malloc_trim` releases free pages anywhere in every arena and brought RSS back to
//! within ~1 MiB of the baseline. The other knobs were measured and do not help:
//! `M_ARENA_MAX` 1 or 2 and a lower `M_TRIM_THRESHOLD` (the free space is not at the top),
//! a fixed `M_MMAP_THRESHOLD` of 128 KiB (the buffers are smaller); only a 16 KiB mmap
//! threshold did, at the price of an mmap/munmap pair per HTTP chunk and per transfer.
//!
//! So a thread trims once the process goes quiet after doing work: every second it reads the
//! process's CPU time, and when the last second used at most a tick (10 ms) after some work
//! since the last trim, it calls `malloc_trim(0)` (measured: 0.6 ms for a 40 MiB process).
//! Under load nothing is trimmed (the memory is about to be reused); after a burst the first
//! quiet second trims; a server doing a little now and then trims now and then, which also
//! catches memory freed after a trim that came too early.

use std::time::{Duration, Instant};

/// CPU ticks (USER_HZ, 100 per second on Linux) in a second that still count as quiet.
const QUIET_TICKS: u64 = 1;
/// CPU ticks of work since the last trim that make another one worth it.
const WORK_TICKS: u64 = 1;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
extern "C" {
    /// glibc: releases free memory of every arena to the system; returns 1 if it did.
    fn malloc_trim(pad: usize) -> std::os::raw::c_int;
}

/// Starts the trimming thread (glibc on Linux only; elsewhere nothing to do).
pub fn spawn_trimmer() {
    if cfg!(all(target_os = "linux", target_env = "gnu")) && cpu_ticks().is_some() {
        let spawned = std::thread::Builder::new()
            .name("malloc-trim".into())
            .spawn(run);
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the allocator trimming thread");
        }
    }
}

fn run() {
    let mut last = cpu_ticks().unwrap_or(0);
    let mut work = 0u64;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let Some(now) = cpu_ticks() else { return };
        let used = now.saturating_sub(last);
        last = now;
        work += used;
        if used <= QUIET_TICKS && work >= WORK_TICKS {
            let (rss_before, started) = (rss_kib(), Instant::now());
            trim();
            tracing::debug!(
                target: "chainboot::memory",
                rss_before_kib = rss_before,
                rss_after_kib = rss_kib(),
                took_us = started.elapsed().as_micros() as u64,
                "quiet after work: free allocator memory returned to the system"
            );
            work = 0;
            // The trim's own CPU time is not work that calls for another trim.
            last = cpu_ticks().unwrap_or(last);
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim takes the arena locks itself and is safe to call from any
    // thread at any time.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

/// User plus system CPU time of the whole process, in ticks (/proc/self/stat fields 14
/// and 15, counted after the parenthesised command name, which may hold spaces).
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_time_of_this_process_is_readable_and_grows() {
        let before = super::cpu_ticks().expect("/proc/self/stat");
        // Spin until the count moves (a tick is 10 ms of CPU), for at most 10 s.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while after == before && started.elapsed() < std::time::Duration::from_secs(10) {
            for _ in 0..100_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            after = super::cpu_ticks().unwrap();
        }
        std::hint::black_box(x);
        assert!(after > before, "{before} -> {after}");
        assert!(super::rss_kib() > 0);
    }
}
