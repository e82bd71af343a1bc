//! Small files read whole into memory once and shared by every transfer of them.
//!
//! A boot storm fetches the same one or two first stages (`undionly.kpxe`, ~70 KiB;
//! `ipxe.efi`, ~1 MiB) thousands of times at once, lock-step, each transfer for seconds. Read
//! from the file, every transfer holds its own read-ahead chunk (32 KiB): a 10 000-machine
//! storm with thousands of transfers running held a hundred MiB or more in copies of the same
//! file. From memory, a transfer holds nothing of its own and makes no `pread` or `fstat`.
//!
//! Entries are keyed by the resolved path and the content's validator (inode, modification
//! time and length of the file it was opened from): a file replaced on disk is a new key, so
//! new transfers send the new bytes, while transfers already running finish with the bytes
//! they started with (never a mix of both). The bytes are read through
//! `chainboot_content::Content::read_at`, which fails if the file changed during the read;
//! then the transfer is served from the file as before. Bounded: files up to
//! [`MAX_CACHED_FILE`], [`CACHE_BYTES`] in all (least recently used first out), and one file
//! loads at a time, so a storm's first requests do not each read their own copy.

use std::collections::HashMap;
use std::sync::Mutex;

use chainboot_content::{remove_least_recent, Content};

/// Largest file kept: first stages (iPXE, shim, GRUB) are 70 KiB to 2 MiB; kernels and
/// initrds GRUB fetches over TFTP are larger and are read from their files as they go.
pub const MAX_CACHED_FILE: u64 = 3 << 20;
/// Bytes kept in all.
pub const CACHE_BYTES: usize = 24 << 20;

/// A file's identity in the cache: the path it was asked by and its validator.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    path: String,
    etag: String,
}

struct Entry {
    content: Content,
    last_used: u64,
}

#[derive(Default)]
struct Entries {
    map: HashMap<Key, Entry>,
    bytes: usize,
    tick: u64,
}

#[derive(Default)]
pub struct FileCache {
    entries: Mutex<Entries>,
    /// Held while a file is read, so that one file loads at a time.
    loading: Mutex<()>,
}

impl FileCache {
    /// `content` (opened for `path`) served from memory when it is a file small enough to
    /// keep; otherwise, or when it cannot be read whole, `content` itself.
    pub fn get(&self, path: &str, content: Content) -> Content {
        if content.as_bytes().is_some() || content.len() > MAX_CACHED_FILE {
            return content;
        }
        let key = Key {
            path: path.to_string(),
            etag: content.etag().to_string(),
        };
        if let Some(hit) = self.lookup(&key) {
            return hit;
        }
        let _one_at_a_time = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = self.lookup(&key) {
            return hit;
        }
        let Ok(len) = usize::try_from(content.len()) else {
            return content;
        };
        let mut bytes = vec![0u8; len];
        match content.read_at(0, &mut bytes) {
            Ok(n) if n == len => {}
            // Changed or unreadable: the transfer reads the file and fails as it would have.
            _ => return content,
        }
        let cached = Content::from_bytes(bytes)
            .served_as(content.served())
            .with_modified(content.modified());
        self.insert(key, cached.clone(), len);
        cached
    }

    fn lookup(&self, key: &Key) -> Option<Content> {
        let mut e = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        e.tick += 1;
        let tick = e.tick;
        let entry = e.map.get_mut(key)?;
        entry.last_used = tick;
        Some(entry.content.clone())
    }

    fn insert(&self, key: Key, content: Content, len: usize) {
        let mut e = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        while e.bytes + len > CACHE_BYTES {
            let Some(gone) = remove_least_recent(&mut e.map, |v| v.last_used) else {
                break;
            };
            e.bytes -= gone.content.len() as usize;
        }
        e.tick += 1;
        let last_used = e.tick;
        e.bytes += len;
        if let Some(old) = e.map.insert(key, Entry { content, last_used }) {
            e.bytes -= old.content.len() as usize;
        }
    }

    /// Bytes held now.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.entries.lock().map(|e| e.bytes).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_content(path: &std::path::Path) -> Content {
        Content::from_file(std::fs::File::open(path).unwrap()).unwrap()
    }

    #[test]
    fn a_small_file_is_read_once_and_served_from_memory_until_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipxe.efi");
        std::fs::write(&path, vec![7u8; 100_000]).unwrap();
        let cache = FileCache::default();
        let first = cache.get("ipxe.efi", file_content(&path));
        let bytes = first.as_bytes().expect("served from memory").clone();
        assert_eq!(bytes.len(), 100_000);
        assert!(bytes.iter().all(|&b| b == 7));
        // A second transfer shares the same bytes.
        let second = cache.get("ipxe.efi", file_content(&path));
        assert_eq!(second.as_bytes().map(|b| b.as_ptr()), Some(bytes.as_ptr()));
        assert_eq!(cache.bytes(), 100_000);

        // Replaced on disk (a new inode): new transfers get the new bytes, the running one
        // keeps the old ones whole.
        let tmp = dir.path().join("new");
        let mut f = std::fs::File::create(&tmp).unwrap();
        f.write_all(&[9u8; 50_000]).unwrap();
        drop(f);
        std::fs::rename(&tmp, &path).unwrap();
        let third = cache.get("ipxe.efi", file_content(&path));
        let new = third.as_bytes().expect("served from memory");
        assert_eq!(new.len(), 50_000);
        assert!(new.iter().all(|&b| b == 9));
        assert!(first.as_bytes().unwrap().iter().all(|&b| b == 7));
    }

    #[test]
    fn large_files_and_generated_content_pass_through_and_the_total_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("kernel");
        std::fs::write(&big, vec![1u8; MAX_CACHED_FILE as usize + 1]).unwrap();
        let cache = FileCache::default();
        assert!(cache.get("kernel", file_content(&big)).as_bytes().is_none());
        assert_eq!(cache.bytes(), 0);

        let script = Content::from_bytes(b"#!ipxe\n".to_vec());
        assert!(cache.get("boot.ipxe", script).as_bytes().is_some());
        assert_eq!(cache.bytes(), 0);

        // More files than the cache holds: the least recently used leave.
        let n = CACHE_BYTES / (2 << 20) + 3;
        for i in 0..n {
            let p = dir.path().join(format!("f{i}"));
            std::fs::write(&p, vec![i as u8; 2 << 20]).unwrap();
            let c = cache.get(&format!("f{i}"), file_content(&p));
            assert_eq!(c.as_bytes().map(|b| b[0]), Some(i as u8));
            assert!(cache.bytes() <= CACHE_BYTES, "{}", cache.bytes());
        }
        let last = dir.path().join(format!("f{}", n - 1));
        let again = cache.get(&format!("f{}", n - 1), file_content(&last));
        assert!(again.as_bytes().is_some());
    }
}
