//! Whether the page cache holds a byte range of a file, asked with `cachestat(2)` (Linux 6.5),
//! which neither std, rustix nor nix wraps. The HTTP server uses it to decide whether a
//! `sendfile` of that range can run on an async worker without waiting for the disk.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// `struct cachestat_range` of the kernel's uapi.
#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

/// `struct cachestat` of the kernel's uapi (page counts).
#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

const SYS_CACHESTAT: libc::c_long = 451;
/// Set once the kernel or a system call filter refused cachestat.
static UNAVAILABLE: AtomicBool = AtomicBool::new(false);
const PAGE: u64 = 4096;

/// `Some(true)` when every page of `[offset, offset+len)` of `file` is in the page cache,
/// `Some(false)` when one is not, `None` when the kernel cannot say (older than 6.5, or a
/// file system without a page cache).
pub(crate) fn range_cached(file: &File, offset: u64, len: u64) -> Option<bool> {
    if len == 0 {
        return Some(true);
    }
    if UNAVAILABLE.load(Ordering::Relaxed) {
        return None;
    }
    let range = CachestatRange { off: offset, len };
    let mut stat = Cachestat::default();
    // SAFETY: cachestat reads `range` and writes one `struct cachestat` into `stat`; both are
    // live, properly aligned `repr(C)` values of the kernel's layout (five and two u64s) for
    // the whole call, and the descriptor is borrowed from an open `File`.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd() as libc::c_uint,
            &range as *const CachestatRange,
            &mut stat as *mut Cachestat,
            0 as libc::c_uint,
        )
    };
    if r != 0 {
        // A kernel before 6.5, or a system call filter (a service manager's seccomp list):
        // the answer will not change, so the call is not tried again.
        let e = std::io::Error::last_os_error().raw_os_error();
        if matches!(e, Some(libc::ENOSYS) | Some(libc::EPERM)) {
            UNAVAILABLE.store(true, Ordering::Relaxed);
        }
        return None;
    }
    // The kernel counts whole pages overlapping the range (only those before the end of the
    // file, and the range never passes it here).
    let pages = (offset + len).div_ceil(PAGE) - offset / PAGE;
    Some(stat.nr_cache >= pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_just_written_file_is_cached_and_a_dropped_one_is_not() {
        use std::io::Write;
        // Not /tmp: a tmpfs cannot drop its pages.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("f");
        let mut f = File::create(&path).unwrap();
        f.write_all(&vec![7u8; 1 << 20]).unwrap();
        f.sync_all().unwrap();
        let f = File::open(&path).unwrap();
        let Some(cached) = range_cached(&f, 4096, 100_000) else {
            eprintln!("no cachestat on this kernel: nothing to check");
            return;
        };
        assert!(cached);
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        assert_eq!(range_cached(&f, 4096, 100_000), Some(false));
    }
}
