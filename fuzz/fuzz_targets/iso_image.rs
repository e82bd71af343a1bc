//! The ISO 9660 reader over corrupt images: the bytes go to a temp file, are opened and indexed,
//! then every directory is listed and every file read.
//!
//! Invariants: no panic; indexing work is bounded (libFuzzer's -timeout catches hangs, and the
//! entry count is bounded by the image size); every file's bytes lie inside the image (each
//! read succeeds, and every byte maps into the file); listings agree with `files()`.
#![no_main]

use std::io::Write;

use chainboot_content::CleanPath;
use chainboot_iso::{EntryKind, IsoImage};
use libfuzzer_sys::fuzz_target;

/// Bytes read per file at most (a corrupt image may declare a 4 GiB file made of one extent
/// repeated; reading a prefix and probing the end is enough to check the extents).
const READ_CAP: u64 = 256 * 1024;

fuzz_target!(|data: &[u8]| {
    let Ok(mut f) = tempfile::NamedTempFile::new() else {
        return;
    };
    if f.write_all(data).is_err() || f.flush().is_err() {
        return;
    }
    let size = data.len() as u64;
    let Ok(img) = IsoImage::open(f.path()) else {
        return;
    };
    let files = img.files();
    let mut listed_files = 0usize;
    // Walk the tree through `list` (bounded: directories visited at most once per path, depth
    // limited by CleanPath).
    let mut stack: Vec<Option<CleanPath>> = vec![None];
    let mut visits = 0usize;
    while let Some(dir) = stack.pop() {
        visits += 1;
        assert!(visits <= 100_000, "directory walk does not end");
        let Ok(entries) = img.list(dir.as_ref()) else {
            continue;
        };
        for e in entries {
            let mut parts: Vec<String> =
                dir.as_ref().map(|d| d.parts().to_vec()).unwrap_or_default();
            parts.push(e.name.clone());
            let Ok(p) = CleanPath::from_parts(&parts) else {
                continue;
            };
            match e.kind {
                EntryKind::Dir => {
                    if parts.len() < 16 {
                        stack.push(Some(p));
                    }
                }
                EntryKind::File => {
                    listed_files += 1;
                    if listed_files > 2_000 {
                        continue;
                    }
                    let Ok(c) = img.content(&p) else {
                        continue;
                    };
                    assert_eq!(c.len(), e.len, "listing and content disagree on {p}");
                    let len = c.len();
                    if len == 0 {
                        continue;
                    }
                    // The first and last byte map inside the image file.
                    for probe in [0, len - 1, len / 2] {
                        if let Some((_, abs)) = c.file_range(probe, 1) {
                            assert!(
                                abs < size,
                                "{p}: byte {probe} maps to {abs} >= image size {size}"
                            );
                        }
                    }
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut off = 0u64;
                    while off < len.min(READ_CAP) {
                        match c.read_at(off, &mut buf) {
                            Ok(0) => panic!("{p}: read_at returned 0 at {off} of {len}"),
                            Ok(n) => off += n as u64,
                            Err(e) => {
                                panic!("{p}: read at {off} failed (extent outside the image?): {e}")
                            }
                        }
                    }
                    // The end of the file is readable too.
                    if len > READ_CAP {
                        let mut tail = [0u8; 16];
                        let at = len - 16.min(len);
                        if let Err(e) = c.read_at(at, &mut tail) {
                            panic!("{p}: reading the end failed: {e}");
                        }
                    }
                }
            }
        }
    }
    for (path, _) in files.iter().take(2_000) {
        if let Ok(p) = CleanPath::parse(path) {
            let _ = img.content(&p);
        }
    }
});
