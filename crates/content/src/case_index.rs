//! The case-insensitive fallback's index: per directory, the names folded to ASCII lower case,
//! built by one directory read and kept while the directory's modification time stays the
//! same. A request for a missing name then costs a `stat` of its directory and a hash lookup,
//! not a read of the whole directory (a 100 000-entry directory took 22 ms of CPU per miss).
//!
//! Bounds: a directory with more than [`MAX_DIR_ENTRIES`] names gets no case-insensitive
//! lookup (exact names only; the read stops at the cap), at most [`MAX_CACHED_NAMES`] names
//! and [`MAX_CACHED_DIRS`] directories are kept (least recently used go first).

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

/// Names in one directory beyond which it gets exact lookups only.
pub const MAX_DIR_ENTRIES: usize = 200_000;
/// Names kept over all directories (about 100 bytes each with the map).
pub const MAX_CACHED_NAMES: usize = 400_000;
/// Directories kept.
pub const MAX_CACHED_DIRS: usize = 4096;
/// A directory modified this recently before its read may have changed again within the same
/// timestamp tick (file systems store mtime with coarse granularity): such an index is used
/// for the lookup that built it only, and the next miss reads the directory again.
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// What identifies one state of a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

enum Names {
    /// Lower-cased name → the real name, or `None` when two names differ only by case
    /// (ambiguous: refuse to guess).
    Indexed(HashMap<String, Option<OsString>>),
    /// More than [`MAX_DIR_ENTRIES`]: no case-insensitive lookup.
    TooLarge,
}

impl Names {
    fn len(&self) -> usize {
        match self {
            Names::Indexed(m) => m.len(),
            Names::TooLarge => 0,
        }
    }
}

struct DirIndex {
    stamp: Stamp,
    /// Built when the directory had not changed for [`RACY_WINDOW`].
    trusted: bool,
    names: Names,
    last_used: u64,
}

#[derive(Default)]
struct Cache {
    dirs: HashMap<PathBuf, DirIndex>,
    names: usize,
    clock: u64,
}

/// The per-root index of directories, shared by every request.
pub(crate) struct CaseIndex {
    cache: Mutex<Cache>,
    reads: AtomicU64,
    max_dir_entries: usize,
}

impl Default for CaseIndex {
    fn default() -> CaseIndex {
        CaseIndex {
            cache: Mutex::default(),
            reads: AtomicU64::new(0),
            max_dir_entries: MAX_DIR_ENTRIES,
        }
    }
}

impl std::fmt::Debug for CaseIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaseIndex")
            .field("reads", &self.reads())
            .finish()
    }
}

impl CaseIndex {
    /// Directory reads done so far (for tests and metrics).
    pub(crate) fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// The real name in `dir` that equals `name` ignoring ASCII case, if exactly one does.
    pub(crate) fn find(&self, dir: &Path, name: &str) -> Option<OsString> {
        let stamp = Stamp::of(&std::fs::metadata(dir).ok()?);
        // One lock for lookup and rebuild: concurrent misses in one directory wait for one
        // read instead of each doing their own.
        let mut cache = self.cache.lock();
        cache.clock += 1;
        let now = cache.clock;
        let usable = cache
            .dirs
            .get(dir)
            .is_some_and(|d| d.stamp == stamp && d.trusted);
        if !usable {
            let index = self.read_dir(dir, stamp)?;
            cache.insert(dir.to_path_buf(), index);
        }
        let entry = cache.dirs.get_mut(dir)?;
        entry.last_used = now;
        match &entry.names {
            Names::Indexed(m) => m.get(&name.to_ascii_lowercase()).cloned().flatten(),
            Names::TooLarge => None,
        }
    }

    fn read_dir(&self, dir: &Path, stamp: Stamp) -> Option<DirIndex> {
        let started = SystemTime::now();
        self.reads.fetch_add(1, Ordering::Relaxed);
        let entries = std::fs::read_dir(dir).ok()?;
        let mut names: HashMap<String, Option<OsString>> = HashMap::new();
        let mut count = 0usize;
        for entry in entries.flatten() {
            count += 1;
            if count > self.max_dir_entries {
                return Some(DirIndex {
                    stamp,
                    trusted: true,
                    names: Names::TooLarge,
                    last_used: 0,
                });
            }
            let real = entry.file_name();
            // Clients send ASCII names; a name that is not UTF-8 can only match exactly.
            let Some(folded) = real.to_str().map(str::to_ascii_lowercase) else {
                continue;
            };
            names
                .entry(folded)
                .and_modify(|v| *v = None)
                .or_insert(Some(real));
        }
        let modified = SystemTime::UNIX_EPOCH
            + Duration::new(
                stamp.mtime.max(0) as u64,
                stamp.mtime_nsec.clamp(0, 999_999_999) as u32,
            );
        let trusted = modified + RACY_WINDOW < started;
        Some(DirIndex {
            stamp,
            trusted,
            names: Names::Indexed(names),
            last_used: 0,
        })
    }
}

impl Cache {
    fn insert(&mut self, dir: PathBuf, index: DirIndex) {
        if let Some(old) = self.dirs.remove(&dir) {
            self.names -= old.names.len();
        }
        let added = index.names.len();
        while !self.dirs.is_empty()
            && (self.names + added > MAX_CACHED_NAMES || self.dirs.len() >= MAX_CACHED_DIRS)
        {
            let Some(oldest) = self
                .dirs
                .iter()
                .min_by_key(|(_, d)| d.last_used)
                .map(|(p, _)| p.clone())
            else {
                break;
            };
            if let Some(gone) = self.dirs.remove(&oldest) {
                self.names -= gone.names.len();
            }
        }
        self.names += added;
        self.dirs.insert(dir, index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_beyond_the_cap_gets_no_case_insensitive_names_and_is_read_once() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..=100 {
            std::fs::write(dir.path().join(format!("F{i}")), b"").unwrap();
        }
        let index = CaseIndex {
            max_dir_entries: 100,
            ..CaseIndex::default()
        };
        assert_eq!(index.find(dir.path(), "f1"), None);
        assert_eq!(index.find(dir.path(), "f2"), None);
        assert_eq!(index.reads(), 1, "the verdict is kept like an index");
        let small = CaseIndex {
            max_dir_entries: 101,
            ..CaseIndex::default()
        };
        assert_eq!(small.find(dir.path(), "f1"), Some("F1".into()));
    }

    #[test]
    fn the_cache_keeps_its_bounds_and_drops_the_least_recently_used() {
        let mut cache = Cache::default();
        let stamp = Stamp {
            dev: 0,
            ino: 0,
            mtime: 0,
            mtime_nsec: 0,
        };
        let index = |n: usize, last_used: u64| DirIndex {
            stamp,
            trusted: true,
            names: Names::Indexed((0..n).map(|i| (i.to_string(), None)).collect()),
            last_used,
        };
        cache.insert("a".into(), index(MAX_CACHED_NAMES / 2, 1));
        cache.insert("b".into(), index(MAX_CACHED_NAMES / 2, 2));
        assert_eq!(cache.names, MAX_CACHED_NAMES);
        cache.insert("c".into(), index(10, 3));
        assert!(!cache.dirs.contains_key(Path::new("a")), "oldest dropped");
        assert!(cache.dirs.contains_key(Path::new("b")));
        assert_eq!(cache.names, MAX_CACHED_NAMES / 2 + 10);
        for i in 0..MAX_CACHED_DIRS + 10 {
            cache.insert(format!("d{i}").into(), index(1, 10 + i as u64));
        }
        assert_eq!(cache.dirs.len(), MAX_CACHED_DIRS);
        assert_eq!(
            cache.names,
            cache.dirs.values().map(|d| d.names.len()).sum::<usize>()
        );
    }
}
