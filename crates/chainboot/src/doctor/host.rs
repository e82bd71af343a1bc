//! The host itself: a state directory the server can write, and a clock that is not in the
//! past (leases, events and certificates are all stamped with it).

use std::path::Path;
use std::time::{Duration, SystemTime};

use nix::sys::statvfs::{statvfs, FsFlags};
use nix::unistd::{access, AccessFlags};

use super::{Finding, Level};
use crate::config::Config;

/// 2026-01-01T00:00:00Z: no clock that works reads earlier than this release.
const NOT_BEFORE_UNIX: u64 = 1_767_225_600;

/// The state directory (or, before first start, the folder it will be created in) is
/// writable and on a writable filesystem.
pub fn check_state_dir(cfg: &Config) -> Finding {
    let dir = &cfg.server.state_dir;
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let label = if existing == dir.as_path() {
        format!("state directory {}", dir.display())
    } else {
        format!(
            "state directory {} (created at first start in {})",
            dir.display(),
            existing.display()
        )
    };
    if !existing.is_dir() {
        return Finding::new(
            Level::Error,
            format!("{label}: {} is not a folder", existing.display()),
        )
        .fix("set [server] state_dir to a folder");
    }
    if statvfs(existing).is_ok_and(|s| s.flags().contains(FsFlags::ST_RDONLY)) {
        return Finding::new(Level::Error, format!("{label} is on a read-only filesystem"))
            .fix("set [server] state_dir to a folder on a writable filesystem (the package uses /var/lib/chainboot)");
    }
    if let Err(e) = access(existing, AccessFlags::W_OK | AccessFlags::X_OK) {
        return Finding::new(Level::Error, format!("{label} is not writable by this user: {e}"))
            .fix("run as the user the server runs as (the package's unit: chainboot, which owns /var/lib/chainboot), or fix the folder's owner");
    }
    Finding::new(Level::Ok, format!("{label} is writable"))
}

/// The clock reads no earlier than this release and than this binary's installation.
pub fn check_clock() -> Finding {
    let now = SystemTime::now();
    let floor = SystemTime::UNIX_EPOCH + Duration::from_secs(NOT_BEFORE_UNIX);
    let installed = std::env::current_exe()
        .and_then(std::fs::metadata)
        .and_then(|m| m.modified())
        .ok();
    let (limit, what) = match installed {
        Some(t) if t > floor => (t, "this binary's file was written"),
        _ => (floor, "this release"),
    };
    let shown = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    if now < limit {
        return Finding::new(
            Level::Error,
            format!(
                "the clock reads {}, before {what} ({}): lease times, boot capabilities and TLS certificates would be wrong",
                shown(now),
                shown(limit)
            ),
        )
        .fix("set the clock and keep it synchronised (e.g. `timedatectl set-ntp true`, chrony or systemd-timesyncd)");
    }
    Finding::new(Level::Ok, format!("clock {}", shown(now)))
}
