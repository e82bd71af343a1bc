//! Crafted Rock Ridge images that made indexing use memory out of all proportion to their
//! size: thousands of symlink records whose system use areas all continue (SUSP "CE") into
//! one shared chain of sectors full of "SL" components. Read once per record, a few megabytes
//! of image assembled gigabytes of symlink targets. Now a target is capped at 4096 bytes and
//! the system use bytes read per image at the image's size: the images are refused with a
//! clear error, quickly and in bounded memory. Its own test binary, so that the peak memory
//! measured is this test's alone.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chainboot_iso::{IsoImage, MAX_SYMLINK_TARGET, SECTOR};

const SYMLINKS: usize = 8000;

fn xorriso(args: &[&str]) {
    let out = Command::new("xorriso").args(args).output().unwrap_or_else(|e| {
        panic!("xorriso is needed for these tests (apt-get install xorriso; .ci/install-deps): {e}")
    });
    assert!(
        out.status.success(),
        "xorriso {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn put_both32(b: &mut [u8], v: u32) {
    b[..4].copy_from_slice(&v.to_le_bytes());
    b[4..8].copy_from_slice(&v.to_be_bytes());
}

/// A SUSP "CE" entry: the continuation is `len` bytes at sector `lba`, offset 0.
fn ce(lba: u32, len: u32) -> Vec<u8> {
    let mut e = vec![0u8; 28];
    e[..4].copy_from_slice(&[b'C', b'E', 28, 1]);
    put_both32(&mut e[4..12], lba);
    put_both32(&mut e[12..20], 0);
    put_both32(&mut e[20..28], len);
    e
}

/// A sector of "SL" entries, 7 x 248 bytes of path components, then a "CE" to `next` if any.
fn sl_sector(next: Option<u32>) -> (Vec<u8>, u32) {
    let mut area = Vec::new();
    for _ in 0..7 {
        let mut e = vec![b'S', b'L', 255, 1, 0, 0, 248];
        e.extend(std::iter::repeat_n(b'x', 248));
        area.extend_from_slice(&e);
    }
    let len = area.len() as u32 + if next.is_some() { 28 } else { 0 };
    if let Some(next) = next {
        area.extend_from_slice(&ce(next, 7 * 255 + 28));
    }
    area.resize(SECTOR as usize, 0);
    (area, len)
}

/// An image of `SYMLINKS` symlinks, each of whose PX entries is overwritten by a CE into the
/// same chain of `chain` sectors of SL entries appended at the end of the image.
fn crafted(dir: &Path, chain: u32) -> (std::path::PathBuf, usize) {
    let src = dir.join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..SYMLINKS {
        std::os::unix::fs::symlink("t", src.join(format!("l{i:05}"))).unwrap();
    }
    let iso = dir.join("crafted.iso");
    xorriso(&[
        "-as",
        "mkisofs",
        "-R",
        "-o",
        iso.to_str().unwrap(),
        src.to_str().unwrap(),
    ]);
    let mut image = std::fs::read(&iso).unwrap();
    // The chain, in new sectors at the end.
    let first = (image.len() as u64).div_ceil(SECTOR) as u32;
    image.resize(first as usize * SECTOR as usize, 0);
    let mut first_len = 0;
    for k in 0..chain {
        let next = (k + 1 < chain).then_some(first + k + 1);
        let (sector, len) = sl_sector(next);
        if k == 0 {
            first_len = len;
        }
        image.extend_from_slice(&sector);
    }
    // Every record's 36-byte PX entry becomes a CE into the chain plus an 8-byte filler entry
    // (unknown signatures are skipped).
    let pvd = 16 * SECTOR as usize;
    let root = &image[pvd + 156..pvd + 190];
    let lba = u32::from_le_bytes(root[2..6].try_into().unwrap()) as usize;
    let len = u32::from_le_bytes(root[10..14].try_into().unwrap()) as usize;
    let (start, end) = (lba * SECTOR as usize, lba * SECTOR as usize + len);
    let mut patched = 0;
    let mut pos = start;
    while pos < end {
        let l = image[pos] as usize;
        if l == 0 {
            pos = (pos / SECTOR as usize + 1) * SECTOR as usize;
            continue;
        }
        let name_len = image[pos + 32] as usize;
        let su = pos + 33 + name_len + (1 - name_len % 2);
        let mut at = su;
        while at + 4 <= pos + l {
            let el = image[at + 2] as usize;
            if el < 4 {
                break;
            }
            if &image[at..at + 2] == b"PX" && el == 36 && name_len > 1 {
                let mut entry = ce(first, first_len);
                entry.extend_from_slice(&[b'Z', b'Z', 8, 1]);
                entry.resize(36, 0);
                image[at..at + 36].copy_from_slice(&entry);
                patched += 1;
                break;
            }
            at += el;
        }
        pos += l;
    }
    std::fs::write(&iso, &image).unwrap();
    (iso, patched)
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

fn refused(iso: &Path) -> (String, Duration, u64) {
    let before = peak_rss_kib();
    let started = Instant::now();
    let err = match IsoImage::open(iso) {
        Ok(image) => panic!(
            "the crafted image was indexed ({} entries, peak memory +{} KiB)",
            image.entry_count(),
            peak_rss_kib().saturating_sub(before)
        ),
        Err(e) => e,
    };
    (
        err.to_string(),
        started.elapsed(),
        peak_rss_kib().saturating_sub(before),
    )
}

#[test]
fn shared_continuation_areas_cannot_blow_up_indexing() {
    // Long targets: 16 chained sectors make every symlink about 28 KB long (8000 of them
    // were 224 MB of targets).
    let dir = tempfile::tempdir().unwrap();
    let (iso, patched) = crafted(dir.path(), 16);
    assert_eq!(patched, SYMLINKS, "every symlink record patched");
    let size = std::fs::metadata(&iso).unwrap().len();
    let (e, took, grew) = refused(&iso);
    eprintln!("{size}-byte image with {SYMLINKS} 28 KB targets: refused in {took:?}, peak +{grew} KiB: {e}");
    assert!(
        e.contains(&format!("target longer than {MAX_SYMLINK_TARGET} bytes")),
        "{e}"
    );
    assert!(grew < 64 * 1024, "peak memory grew by {grew} KiB");

    // Short targets, still one shared area read again for every record: the system use
    // bytes read reach the image's size and indexing stops.
    let dir = tempfile::tempdir().unwrap();
    let (iso, _) = crafted(dir.path(), 1);
    let size = std::fs::metadata(&iso).unwrap().len();
    let (e, took, grew) = refused(&iso);
    eprintln!("{size}-byte image, {SYMLINKS} records sharing one area: refused in {took:?}, peak +{grew} KiB: {e}");
    assert!(
        e.contains("Rock Ridge system use data adds up to more than")
            && e.contains("continuation areas shared between records"),
        "{e}"
    );
    assert!(grew < 64 * 1024, "peak memory grew by {grew} KiB");
}

#[test]
fn a_real_long_symlink_target_under_the_cap_still_resolves() {
    // Longer than a directory record holds (xorriso writes at most about 1 KiB): its SL
    // entries go on in a continuation area.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let deep: Vec<String> = (0..10)
        .map(|i| format!("{i:02}{}", "d".repeat(98)))
        .collect();
    let path = deep.join("/");
    std::fs::create_dir_all(src.join(&path)).unwrap();
    std::fs::write(src.join(&path).join("f"), b"deep file").unwrap();
    let target = format!("{path}/f");
    assert!(target.len() > 1000 && target.len() < MAX_SYMLINK_TARGET);
    std::os::unix::fs::symlink(&target, src.join("link")).unwrap();
    let iso = dir.path().join("long.iso");
    xorriso(&[
        "-as",
        "mkisofs",
        "-R",
        "-o",
        iso.to_str().unwrap(),
        src.to_str().unwrap(),
    ]);
    let image = IsoImage::open(&iso).unwrap();
    let c = image
        .content(&chainboot_content::CleanPath::parse("link").unwrap())
        .unwrap();
    assert_eq!(c.len(), 9);
}
