//! The process's allocator, and giving memory back to the system after bursts.
//!
//! Rust's memory comes from mimalloc (the `mimalloc` crate, which builds Microsoft's allocator
//! from source; kept up to date with it and used by many Rust servers): allocation and free are
//! a thread-local free-list pop and push, where glibc's malloc takes its arena's lock and,
//! for a block freed by another thread than the one that allocated it, a slower path. A
//! small HTTP request allocates and frees a few dozen blocks (hyper's buffers, the header
//! map, the router's boxed futures, extensions); under wrk, malloc and free were ~11% of the
//! server's CPU samples with glibc. jemalloc (tikv-jemallocator) would do the same job; mimalloc
//! was picked for being one C file to build (jemalloc runs a configure script, minutes here)
//! and for its free-list sharding, which suits many short-lived blocks best.
//!
//! glibc's malloc stays in the process for C code (SQLite), and both keep what threads free
//! for reuse. After a burst (100 TFTP transfers, each with a 32 KiB read-ahead chunk and a
//! 23 KiB send batch; a boot storm's HTTP chunks) most of that memory is free but would stay
//! mapped: with glibc alone RSS stayed ~6.5 MiB above the baseline for good (measured on the
//! faults test: arenas of 4.8 and 1.4 MiB holding ~100 KiB in use), because a few live
//! allocations sat above the free space and the arena never shrank from the top.
//! `malloc_trim` releases free pages anywhere in every glibc arena; `mi_collect(true)` makes
//! mimalloc return the free memory it has not yet returned (it purges freed pages on its own
//! after a short delay, but only when the thread that owns them next allocates, and idle
//! threads do not).
//!
//! So a thread trims once the process goes quiet after doing work: every second it reads the
//! process's CPU time, and when the last second used at most a tick (10 ms) after some work
//! since the last trim, it calls both (measured with glibc: 0.6 ms for a 40 MiB process).
//! Under load nothing is trimmed (the memory is about to be reused); after a burst the first
//! quiet second trims; a server doing a little now and then trims now and then, which also
//! catches memory freed after a trim that came too early.

/// Every Rust allocation of the binary (see the module documentation for why mimalloc).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// Starts the trimming thread (where the process's CPU time can be read: Linux).
pub fn spawn_trimmer() {
    if cpu_ticks().is_some() {
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

fn trim() {
    // SAFETY: mi_collect takes what it needs itself (the calling thread's heap, the shared
    // segment and arena state under their own locks) and may be called from any thread at any
    // time.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
    trim_glibc();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_glibc() {
    // SAFETY: malloc_trim takes the arena locks itself and is safe to call from any
    // thread at any time.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_glibc() {}

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
