//! Small files under `[http] root` kept in memory between requests, each answer confirmed by
//! resolving its path again with the checked open's rules and one `statx` of what it leads to.
//!
//! A small file served from its file costs five system calls per request (the checked open,
//! `statx`, the read, the `statx` that confirms the read, the close), which on a busy server are
//! most of a small request's cost; kept here, it costs three that open and read no file
//! ([`Root::file_state`]: the path resolved by `openat2(O_PATH, RESOLVE_BENEATH)` as the checked
//! open does, the `statx` of what it found, the close), or one `statx` for a regular file
//! directly in the root. An entry holds the bytes of one state of
//! one file ([`FileState`]: device, inode, size, modification and status-change times), read
//! through the checked open (`Root`'s `openat2(RESOLVE_BENEATH)`, with its refusals). It answers
//! only while its path still leads, by those same rules, to that very inode in that very state.
//! A directory on the path swapped for a symlink out of the root is refused even when the link
//! leads back to the same unchanged file; one swapped for a symlink inside the root answers
//! what the link now leads to. Any write, truncation, rename, link or permission change of the
//! file moves its status-change time, and a replaced, removed or swapped-in file is another
//! inode, so the next request goes through the checked open again. A hit therefore never sends
//! a byte that the checked open would not read from that path now. Files whose status changed
//! within [`SETTLE`] are not kept (two writes in one tick of the file system's clock can leave
//! equal times behind). A path the checked open reaches only through its fallback (a
//! case-folded name, an absolute symlink) is confirmed by no state and always opened.
//!
//! Bounded: files up to [`MAX_FILE`], [`BUDGET`] bytes and [`MAX_ENTRIES`] files in all, the
//! least recently used going first. Only files that exist get an entry, so requests for
//! invented paths add nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use chainboot_content::{remove_least_recent, Content, FileState, Root};
use parking_lot::Mutex;

use crate::response::Validators;

#[cfg(doc)]
use chainboot_content::SETTLE;

/// Largest file kept: what a request reads whole when it opens the file anyway.
pub(crate) const MAX_FILE: u64 = crate::response::PREFETCH_MAX;
/// Bytes kept in all.
pub(crate) const BUDGET: usize = 16 << 20;
/// Files kept in all.
pub(crate) const MAX_ENTRIES: usize = 4096;

struct Entry {
    state: FileState,
    kept: Arc<Kept>,
    used: u64,
}

/// A kept file: its bytes, with its validators, and those validators as the header values
/// every answer for it carries (built once, when it is kept).
pub(crate) struct Kept {
    pub(crate) content: Content,
    pub(crate) validators: Validators,
}

#[derive(Default)]
struct Entries {
    /// By the request's clean path (`a/b/c`).
    map: HashMap<String, Entry>,
    bytes: usize,
    tick: u64,
}

/// The kept files of one root.
#[derive(Default)]
pub(crate) struct SmallFiles {
    entries: Mutex<Entries>,
}

impl SmallFiles {
    /// The kept copy of `path` under `root`, when there is one and the path still leads to
    /// the file it was read from, unchanged. A kept copy the file no longer matches is dropped.
    pub(crate) fn get(&self, root: &Root, path: &str) -> Option<Arc<Kept>> {
        // Marked as used before it is confirmed: a copy the file no longer matches goes below
        // anyway, and a hit takes the lock once.
        let (state, kept) = {
            let mut e = self.entries.lock();
            e.tick += 1;
            let tick = e.tick;
            let entry = e.map.get_mut(path)?;
            entry.used = tick;
            (entry.state, entry.kept.clone())
        };
        if root.file_state(path) == Some(state) {
            return Some(kept);
        }
        let mut e = self.entries.lock();
        if e.map.get(path).is_some_and(|entry| entry.state == state) {
            if let Some(gone) = e.map.remove(path) {
                e.bytes -= gone.kept.content.len() as usize;
            }
        }
        None
    }

    /// Keeps `bytes`, read from `content` (a file opened for `path` whose state was `state`
    /// before the read, and which the read found unchanged), when the file is small and
    /// settled.
    pub(crate) fn keep(&self, path: String, state: FileState, content: &Content, bytes: Bytes) {
        if state.size() > MAX_FILE
            || state.size() != content.len()
            || !state.settled(SystemTime::now())
        {
            return;
        }
        let Some(copy) = content.with_bytes(bytes) else {
            return;
        };
        let len = copy.len() as usize;
        let kept = Arc::new(Kept {
            validators: Validators::of(&copy),
            content: copy,
        });
        let mut e = self.entries.lock();
        if let Some(old) = e.map.remove(&path) {
            e.bytes -= old.kept.content.len() as usize;
        }
        while e.bytes + len > BUDGET || e.map.len() >= MAX_ENTRIES {
            let Some(gone) = remove_least_recent(&mut e.map, |v| v.used) else {
                break;
            };
            e.bytes -= gone.kept.content.len() as usize;
        }
        e.tick += 1;
        let used = e.tick;
        e.bytes += len;
        e.map.insert(path, Entry { state, kept, used });
    }

    /// Files and bytes kept now.
    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let e = self.entries.lock();
        (e.map.len(), e.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainboot_content::CleanPath;
    use std::time::Duration;

    /// Opens `name` under `root` as a request would, and keeps it when it may be kept.
    fn open_and_keep(cache: &SmallFiles, root: &Root, name: &str) -> Content {
        let content = root
            .open_exact_first(&CleanPath::parse(name).unwrap())
            .unwrap();
        let state = content.file_state().unwrap();
        let bytes = crate::response::prefetch_small(&content).unwrap().unwrap();
        cache.keep(name.to_string(), state, &content, bytes);
        content
    }

    /// Sets a file's modification time back, as `cp -p` or `touch -r` would.
    fn set_mtime(path: &std::path::Path, t: SystemTime) {
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(t).unwrap();
    }

    fn settle() {
        std::thread::sleep(chainboot_content::SETTLE + Duration::from_millis(100));
    }

    #[test]
    fn a_settled_small_file_is_answered_from_memory_with_the_files_validators() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.bin"), b"0123456789").unwrap();
        settle();
        let root = Root::new(dir.path()).unwrap();
        let cache = SmallFiles::default();
        assert!(cache.get(&root, "a.bin").is_none(), "nothing kept yet");
        let file = open_and_keep(&cache, &root, "a.bin");
        let kept = cache.get(&root, "a.bin").expect("kept");
        let copy = &kept.content;
        assert_eq!(copy.as_bytes().map(|b| &b[..]), Some(&b"0123456789"[..]));
        assert_eq!(copy.etag(), file.etag());
        assert_eq!(copy.modified(), file.modified());
        // The header values built when it was kept are the ones the file itself answers with.
        let (get, none) = (http::Method::GET, http::HeaderMap::new());
        let from_copy =
            crate::response::respond_with(&get, &none, copy, None, "x", kept.validators.clone());
        let from_file = crate::response::respond(&get, &none, &file, None, "x");
        for name in [http::header::ETAG, http::header::LAST_MODIFIED] {
            let want = from_file.headers().get(&name);
            assert!(want.is_some(), "{name}");
            assert_eq!(from_copy.headers().get(&name), want, "{name}");
        }
        assert_eq!(cache.held(), (1, 10));
    }

    #[test]
    fn a_file_rewritten_in_place_with_its_size_and_modification_time_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        std::fs::write(&path, b"old bytes!").unwrap();
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        settle();
        let root = Root::new(dir.path()).unwrap();
        let cache = SmallFiles::default();
        open_and_keep(&cache, &root, "a.bin");
        assert!(cache.get(&root, "a.bin").is_some());
        // Same inode, same size, same modification time: only the status-change time tells.
        std::fs::write(&path, b"new bytes!").unwrap();
        set_mtime(&path, mtime);
        assert!(
            cache.get(&root, "a.bin").is_none(),
            "a changed file is not answered"
        );
        assert_eq!(cache.held(), (0, 0), "and its copy is gone");
    }

    #[test]
    fn a_removed_replaced_or_swapped_file_is_not_answered() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        for n in ["gone.bin", "replaced.bin", "swapped.bin"] {
            std::fs::write(dir.path().join(n), b"kept bytes").unwrap();
        }
        std::fs::write(outside.path().join("secret"), b"not served").unwrap();
        settle();
        let root = Root::new(dir.path()).unwrap();
        let cache = SmallFiles::default();
        for n in ["gone.bin", "replaced.bin", "swapped.bin"] {
            open_and_keep(&cache, &root, n);
            assert!(cache.get(&root, n).is_some(), "{n}");
        }
        std::fs::remove_file(dir.path().join("gone.bin")).unwrap();
        let tmp = dir.path().join("tmp");
        std::fs::write(&tmp, b"kept bytes").unwrap();
        std::fs::rename(&tmp, dir.path().join("replaced.bin")).unwrap();
        std::fs::remove_file(dir.path().join("swapped.bin")).unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("secret"),
            dir.path().join("swapped.bin"),
        )
        .unwrap();
        for n in ["gone.bin", "replaced.bin", "swapped.bin"] {
            assert!(cache.get(&root, n).is_none(), "{n}");
        }
    }

    /// A root with `sub/f.cfg` kept in memory, and a directory beside the root (outside it).
    fn kept_in_a_directory() -> (tempfile::TempDir, Root, SmallFiles) {
        let base = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(base.path().join("root/sub")).unwrap();
        std::fs::create_dir(base.path().join("outside")).unwrap();
        std::fs::write(base.path().join("root/sub/f.cfg"), b"kept bytes").unwrap();
        settle();
        let root = Root::new(base.path().join("root")).unwrap();
        let cache = SmallFiles::default();
        open_and_keep(&cache, &root, "sub/f.cfg");
        assert!(cache.get(&root, "sub/f.cfg").is_some(), "kept");
        (base, root, cache)
    }

    /// What a fresh checked open of `name` answers: the bytes, or that it has none.
    fn checked(root: &Root, name: &str) -> Result<Vec<u8>, chainboot_content::ResolveError> {
        let content = root.open_exact_first(&CleanPath::parse(name).unwrap())?;
        let bytes = crate::response::prefetch_small(&content).unwrap().unwrap();
        Ok(bytes.to_vec())
    }

    #[test]
    fn a_directory_moved_out_of_the_root_and_linked_back_is_not_answered_from_memory() {
        for link in ["absolute", "relative"] {
            let (base, root, cache) = kept_in_a_directory();
            // The very inode, unchanged, now reached through a symlink that leaves the root.
            let sub = base.path().join("root/sub");
            let moved = base.path().join("outside/sub");
            std::fs::rename(&sub, &moved).unwrap();
            match link {
                "absolute" => std::os::unix::fs::symlink(&moved, &sub).unwrap(),
                _ => std::os::unix::fs::symlink("../outside/sub", &sub).unwrap(),
            }
            assert!(
                matches!(
                    checked(&root, "sub/f.cfg"),
                    Err(chainboot_content::ResolveError::Forbidden(_))
                ),
                "{link}: the checked open refuses it"
            );
            assert!(cache.get(&root, "sub/f.cfg").is_none(), "{link}");
            assert_eq!(cache.held(), (0, 0), "{link}: and its copy is gone");
        }
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_inside_the_root_answers_what_the_link_leads_to() {
        // To a directory with another file of that name: the new bytes, never the kept ones.
        let (base, root, cache) = kept_in_a_directory();
        let r = base.path().join("root");
        std::fs::rename(r.join("sub"), r.join("old")).unwrap();
        std::fs::create_dir(r.join("new")).unwrap();
        std::fs::write(r.join("new/f.cfg"), b"new bytes!").unwrap();
        std::os::unix::fs::symlink("new", r.join("sub")).unwrap();
        assert!(cache.get(&root, "sub/f.cfg").is_none());
        assert_eq!(checked(&root, "sub/f.cfg").unwrap(), b"new bytes!");

        // To the moved directory itself: the checked open reaches the same unchanged file, so
        // the kept copy is what it would send.
        let (base, root, cache) = kept_in_a_directory();
        let r = base.path().join("root");
        std::fs::rename(r.join("sub"), r.join("moved")).unwrap();
        std::os::unix::fs::symlink("moved", r.join("sub")).unwrap();
        assert_eq!(checked(&root, "sub/f.cfg").unwrap(), b"kept bytes");
        let kept = cache.get(&root, "sub/f.cfg").expect("still the same file");
        assert_eq!(
            kept.content.as_bytes().map(|b| &b[..]),
            Some(&b"kept bytes"[..])
        );

        // Removed, with nothing in its place: not found, and no copy.
        std::fs::remove_file(r.join("sub")).unwrap();
        assert!(matches!(
            checked(&root, "sub/f.cfg"),
            Err(chainboot_content::ResolveError::NotFound)
        ));
        assert!(cache.get(&root, "sub/f.cfg").is_none());
    }

    #[test]
    fn a_symlink_in_the_root_answers_from_memory_only_while_it_leads_where_the_checked_open_goes() {
        let base = tempfile::tempdir().unwrap();
        let r = base.path().join("root");
        std::fs::create_dir_all(r.join("dir")).unwrap();
        std::fs::create_dir(base.path().join("outside")).unwrap();
        std::fs::write(r.join("dir/real.cfg"), b"kept bytes").unwrap();
        // The same inode under a name outside the root, made before the copy is kept.
        std::fs::hard_link(r.join("dir/real.cfg"), base.path().join("outside/real.cfg")).unwrap();
        std::os::unix::fs::symlink("dir/real.cfg", r.join("link.cfg")).unwrap();
        settle();
        let root = Root::new(&r).unwrap();
        let cache = SmallFiles::default();
        open_and_keep(&cache, &root, "link.cfg");
        let kept = cache
            .get(&root, "link.cfg")
            .expect("a link inside the root is followed");
        assert_eq!(
            kept.content.as_bytes().map(|b| &b[..]),
            Some(&b"kept bytes"[..])
        );
        // The link replaced by one out of the root, to the very same unchanged inode.
        std::os::unix::fs::symlink("../outside/real.cfg", r.join("tmp")).unwrap();
        std::fs::rename(r.join("tmp"), r.join("link.cfg")).unwrap();
        assert!(matches!(
            checked(&root, "link.cfg"),
            Err(chainboot_content::ResolveError::Forbidden(_))
        ));
        assert!(cache.get(&root, "link.cfg").is_none());
    }

    #[test]
    fn a_file_changed_moments_ago_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("fresh.bin"), b"just now").unwrap();
        let root = Root::new(dir.path()).unwrap();
        let cache = SmallFiles::default();
        open_and_keep(&cache, &root, "fresh.bin");
        assert_eq!(cache.held(), (0, 0));
        assert!(cache.get(&root, "fresh.bin").is_none());
    }

    #[test]
    fn kept_files_stay_within_the_count_and_the_oldest_go_first() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        settle();
        let root = Root::new(dir.path()).unwrap();
        let cache = SmallFiles::default();
        let content = root
            .open_exact_first(&CleanPath::parse("f").unwrap())
            .unwrap();
        let state = content.file_state().unwrap();
        // The same file under many names (as many request paths could lead to files).
        for i in 0..MAX_ENTRIES + 10 {
            cache.keep(format!("f{i}"), state, &content, Bytes::from_static(b"x"));
        }
        assert_eq!(cache.held(), (MAX_ENTRIES, MAX_ENTRIES));
        let e = cache.entries.lock();
        assert!(!e.map.contains_key("f0") && e.map.contains_key(&format!("f{}", MAX_ENTRIES + 9)));
    }
}
