//! The machine's runnable-task count, which tells a busy-polling thread whether anyone else
//! wants a CPU (see `busy_poll.rs`).
//!
//! `/proc/loadavg`'s fourth field ("running/total") is the number of runnable tasks right
//! now, summed over all CPUs. The file stays open and is read again from offset 0, which makes
//! the kernel regenerate it: about a microsecond, where `/proc/stat`'s `procs_running` costs a
//! page of per-CPU counters.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Where a lock-step thread gets the runnable count from.
#[derive(Debug, Clone, Copy)]
pub enum RunnableSource {
    /// `/proc/loadavg`.
    LoadAvg,
    /// A fixed count (tests, which must not depend on how busy the machine running them is).
    Fixed(u32),
}

/// An open reader of the runnable count, one per polling thread.
pub struct Runnable {
    source: RunnableSource,
    file: Option<File>,
}

impl Runnable {
    pub fn open(source: RunnableSource) -> Runnable {
        let file = match source {
            RunnableSource::LoadAvg => File::open("/proc/loadavg").ok(),
            RunnableSource::Fixed(_) => None,
        };
        Runnable { source, file }
    }

    /// The runnable tasks now, this thread included; `None` when it cannot be read.
    pub fn count(&self) -> Option<u32> {
        match self.source {
            RunnableSource::Fixed(n) => Some(n),
            RunnableSource::LoadAvg => {
                let mut buf = [0u8; 128];
                let n = self.file.as_ref()?.read_at(&mut buf, 0).ok()?;
                parse_running(&buf[..n])
            }
        }
    }
}

/// The running count of a `/proc/loadavg` line ("0.52 0.58 0.59 3/467 12345").
fn parse_running(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let field = text.split_ascii_whitespace().nth(3)?;
    let (running, _total) = field.split_once('/')?;
    running.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_count_is_the_fourth_fields_numerator() {
        assert_eq!(parse_running(b"0.52 0.58 0.59 3/467 12345\n"), Some(3));
        assert_eq!(parse_running(b"8.10 8.16 7.54 11/176 1627\n"), Some(11));
    }

    #[test]
    fn a_line_of_another_shape_reads_as_unknown() {
        assert_eq!(parse_running(b""), None);
        assert_eq!(parse_running(b"0.52 0.58 0.59"), None);
        assert_eq!(parse_running(b"0.52 0.58 0.59 3 467"), None);
        assert_eq!(parse_running(b"0.52 0.58 0.59 x/467 1"), None);
    }

    #[test]
    fn this_machines_count_reads_and_includes_the_reader() {
        let r = Runnable::open(RunnableSource::LoadAvg);
        assert!(r.count().is_some_and(|n| n >= 1), "{:?}", r.count());
    }
}
