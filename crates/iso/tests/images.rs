//! Images built here with xorriso (the real tool, as CI installs it), read back through
//! `IsoImage` / `IsoLibrary`, byte for byte against the source tree.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use chainboot_content::{CleanPath, Content, ResolveError};
use chainboot_iso::{
    EntryKind, IsoConfig, IsoError, IsoErrorKind, IsoImage, IsoLibrary, NameScheme, SECTOR,
};
use sha2::{Digest, Sha256};

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn read_all(c: &Content) -> Vec<u8> {
    let mut out = vec![0u8; c.len() as usize];
    let mut pos = 0;
    while pos < out.len() {
        // Odd chunk size on purpose: reads cross extent boundaries at unaligned offsets.
        let end = (pos + 7777).min(out.len());
        let n = c.read_at(pos as u64, &mut out[pos..end]).unwrap();
        assert!(n > 0, "short read at {pos}");
        pos += n;
    }
    out
}

fn p(s: &str) -> CleanPath {
    CleanPath::parse(s).unwrap()
}

/// Deterministic pseudo-random bytes (no rand dependency needed).
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

const LONG_NAME: &str = "a-very-long-file-name-that-rock-ridge-has-to-continue-elsewhere-\
     because-it-does-not-fit-in-the-directory-record-together-with-the-other-entries-\
     of-the-system-use-area-0123456789012345678901234567890123456789.cfg";

/// The source tree: files at depth, odd names, an empty file, symlinks inside and outside.
/// Returns path -> bytes of every regular file.
fn build_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("README", b"read me\n".to_vec()),
        ("Mixed Case.TXT", b"mixed\n".to_vec()),
        ("name.with.many.dots.cfg", b"dots\n".to_vec()),
        ("ümlaut-ß.bin", b"unicode\n".to_vec()),
        ("empty", Vec::new()),
        ("install.amd/vmlinuz", bytes(300_000, 1)),
        ("install.amd/initrd.gz", bytes(1_000_003, 2)),
        ("a/b/c/d/e/f/deep.txt", b"deep\n".to_vec()),
        // Long enough that Rock Ridge spills the name into a continuation area (CE).
        (LONG_NAME, b"long\n".to_vec()),
    ];
    let mut out = BTreeMap::new();
    for (name, data) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &data).unwrap();
        out.insert(name.to_string(), data);
    }
    symlink("install.amd/vmlinuz", dir.join("linux")).unwrap();
    symlink("../../../../etc/passwd", dir.join("a/escape")).unwrap();
    symlink("loop2", dir.join("loop1")).unwrap();
    symlink("loop1", dir.join("loop2")).unwrap();
    out
}

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

struct Fixture {
    _dir: tempfile::TempDir,
    src: PathBuf,
    files: BTreeMap<String, Vec<u8>>,
    root: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let files = build_tree(&src);
    let root = dir.path().to_path_buf();
    Fixture {
        _dir: dir,
        src,
        files,
        root,
    }
}

fn rock_ridge_joliet(f: &Fixture) -> PathBuf {
    let iso = f.root.join("rrj.iso");
    xorriso(&[
        "-as",
        "mkisofs",
        "-R",
        "-J",
        "-V",
        "CHAINBOOT_TEST",
        "-o",
        iso.to_str().unwrap(),
        f.src.to_str().unwrap(),
    ]);
    iso
}

#[test]
fn rock_ridge_image_serves_every_file_byte_exact() {
    let f = fixture();
    let img = IsoImage::open(rock_ridge_joliet(&f)).unwrap();
    assert_eq!(img.scheme(), NameScheme::RockRidge);
    assert_eq!(img.volume_id(), "CHAINBOOT_TEST");
    for (name, data) in &f.files {
        let c = img
            .content(&p(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(c.len(), data.len() as u64, "{name}");
        assert_eq!(sha(&read_all(&c)), sha(data), "{name}");
    }
    let listed: Vec<String> = img.files().into_iter().map(|(n, _)| n).collect();
    let expected: Vec<String> = f.files.keys().cloned().collect();
    assert_eq!(
        listed, expected,
        "every file indexed under its Rock Ridge name"
    );
}

#[test]
fn symlinks_resolve_inside_the_image_or_are_refused() {
    let f = fixture();
    let img = IsoImage::open(rock_ridge_joliet(&f)).unwrap();
    let c = img.content(&p("linux")).unwrap();
    assert_eq!(sha(&read_all(&c)), sha(&f.files["install.amd/vmlinuz"]));
    assert!(matches!(
        img.content(&p("a/escape")),
        Err(ResolveError::Forbidden(_))
    ));
    assert!(matches!(
        img.content(&p("loop1")),
        Err(ResolveError::Forbidden(_))
    ));
    // Listing shows a good symlink as what it points to and hides the broken ones.
    let root = img.list(None).unwrap();
    let linux = root.iter().find(|e| e.name == "linux").unwrap();
    assert_eq!((linux.kind, linux.len), (EntryKind::File, 300_000));
    assert!(!root.iter().any(|e| e.name.starts_with("loop")));
}

#[test]
fn lookups_fall_back_to_case_insensitive_names() {
    let f = fixture();
    let img = IsoImage::open(rock_ridge_joliet(&f)).unwrap();
    assert_eq!(
        img.content(&p("INSTALL.AMD/VMLINUZ")).unwrap().len(),
        300_000
    );
    assert_eq!(img.content(&p("mixed case.txt")).unwrap().len(), 6);
    assert!(matches!(
        img.content(&p("install.amd")),
        Err(ResolveError::IsDirectory)
    ));
    assert!(matches!(
        img.content(&p("nope")),
        Err(ResolveError::NotFound)
    ));
    assert!(matches!(
        img.content(&p("README/x")),
        Err(ResolveError::NotFound)
    ));
    let sub = img.list(Some(&p("install.amd"))).unwrap();
    let names: Vec<&str> = sub.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["initrd.gz", "vmlinuz"]);
}

#[test]
fn joliet_only_image_uses_joliet_names() {
    let f = fixture();
    let iso = f.root.join("joliet.iso");
    xorriso(&[
        "-rockridge",
        "off",
        "-joliet",
        "on",
        "-outdev",
        iso.to_str().unwrap(),
        "-map",
        f.src.to_str().unwrap(),
        "/",
    ]);
    let img = IsoImage::open(&iso).unwrap();
    assert_eq!(img.scheme(), NameScheme::Joliet);
    // Joliet names stop at 64 UCS-2 characters; the long name is checked under Rock Ridge.
    for (name, data) in f.files.iter().filter(|(n, _)| n.as_str() != LONG_NAME) {
        let c = img
            .content(&p(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(sha(&read_all(&c)), sha(data), "{name}");
    }
    let root: Vec<String> = img
        .list(None)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(root.contains(&"ümlaut-ß.bin".to_string()), "{root:?}");
    assert!(root.contains(&"Mixed Case.TXT".to_string()), "{root:?}");
}

#[test]
fn plain_iso9660_names_lose_versions_and_trailing_dots() {
    let f = fixture();
    let iso = f.root.join("plain.iso");
    xorriso(&[
        "-rockridge",
        "off",
        "-joliet",
        "off",
        "-outdev",
        iso.to_str().unwrap(),
        "-map",
        f.src.to_str().unwrap(),
        "/",
    ]);
    let img = IsoImage::open(&iso).unwrap();
    assert_eq!(img.scheme(), NameScheme::Iso9660);
    let names: Vec<String> = img.files().into_iter().map(|(n, _)| n).collect();
    // `README` is recorded as `README.;1`, `VMLINUZ.;1`: no dot, no version.
    assert!(names.contains(&"README".to_string()), "{names:?}");
    // ISO level 1 has no dots in directory names: xorriso maps them to `_`.
    assert!(
        names.contains(&"INSTALL_AMD/VMLINUZ".to_string()),
        "{names:?}"
    );
    assert!(
        names.iter().all(|n| !n.contains(';') && !n.ends_with('.')),
        "{names:?}"
    );
    // Clients ask in lower case, and with the names the files had before mangling.
    for (name, source) in [
        ("readme", "README"),
        ("install.amd/vmlinuz", "install.amd/vmlinuz"),
        ("install.amd/initrd.gz", "install.amd/initrd.gz"),
        ("install_amd/vmlinuz", "install.amd/vmlinuz"),
        ("install_amd/initrd.gz", "install.amd/initrd.gz"),
        ("a/b/c/d/e/f/deep.txt", "a/b/c/d/e/f/deep.txt"),
        ("empty", "empty"),
    ] {
        let c = img
            .content(&p(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(sha(&read_all(&c)), sha(&f.files[source]), "{name}");
    }
}

/// Directory records of the root directory: (byte offset in the image, record bytes).
fn root_records(image: &[u8]) -> Vec<(usize, Vec<u8>)> {
    let pvd = 16 * SECTOR as usize;
    let root = &image[pvd + 156..pvd + 190];
    let lba = u32::from_le_bytes(root[2..6].try_into().unwrap()) as usize;
    let len = u32::from_le_bytes(root[10..14].try_into().unwrap()) as usize;
    let start = lba * SECTOR as usize;
    let mut out = Vec::new();
    let mut pos = start;
    while pos < start + len {
        let l = image[pos] as usize;
        if l == 0 {
            pos = (pos / SECTOR as usize + 1) * SECTOR as usize;
            continue;
        }
        out.push((pos, image[pos..pos + l].to_vec()));
        pos += l;
    }
    out
}

fn record_named<'a>(recs: &'a [(usize, Vec<u8>)], prefix: &[u8]) -> &'a (usize, Vec<u8>) {
    recs.iter()
        .find(|(_, r)| r[33..33 + r[32] as usize].starts_with(prefix))
        .unwrap_or_else(|| panic!("no record named {:?}", String::from_utf8_lossy(prefix)))
}

fn put32(rec: &mut [u8], at: usize, v: u32) {
    rec[at..at + 4].copy_from_slice(&v.to_le_bytes());
    rec[at + 4..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// Rewrites `BIG.BIN` in the root so that it is stored as three extents in a scrambled
/// order on disk: its middle part moved to the end of the image and the original middle
/// overwritten with garbage. A reader that ignores the multi-extent flag (or stitches
/// extents in the wrong order) returns the wrong bytes or the wrong length.
fn make_multi_extent(image: &mut Vec<u8>) {
    let recs = root_records(image);
    let (at, rec) = record_named(&recs, b"BIG.BIN").clone();
    let lba = u32::from_le_bytes(rec[2..6].try_into().unwrap());
    let len = u32::from_le_bytes(rec[10..14].try_into().unwrap());
    let s = SECTOR as u32;
    let (first, middle) = (3 * s, 5 * s);
    let last = len - first - middle;
    // Middle part moves to new sectors at the end of the image.
    let moved_lba = (image.len() as u32).div_ceil(s);
    image.resize(moved_lba as usize * s as usize, 0);
    let mid_start = (lba + 3) as usize * s as usize;
    let middle_bytes = image[mid_start..mid_start + middle as usize].to_vec();
    image.extend_from_slice(&middle_bytes);
    image[mid_start..mid_start + middle as usize].fill(0xAA);

    let mut r1 = rec.clone();
    put32(&mut r1, 10, first);
    r1[25] |= 0x80;
    let mut r2 = rec.clone();
    put32(&mut r2, 2, moved_lba);
    put32(&mut r2, 10, middle);
    r2[25] |= 0x80;
    let mut r3 = rec.clone();
    put32(&mut r3, 2, lba + 8);
    put32(&mut r3, 10, last);
    let mut new = Vec::new();
    new.extend_from_slice(&r1);
    new.extend_from_slice(&r2);
    new.extend_from_slice(&r3);
    // Shift the rest of the sector to make room (the test tree leaves plenty).
    let sector_end = (at / SECTOR as usize + 1) * SECTOR as usize;
    let tail: Vec<u8> = image[at + rec.len()..sector_end].to_vec();
    let grow = new.len() - rec.len();
    assert!(
        tail[tail.len() - grow..].iter().all(|&b| b == 0),
        "no room in the directory sector"
    );
    image[at..at + new.len()].copy_from_slice(&new);
    let rest = at + new.len();
    image[rest..sector_end].copy_from_slice(&tail[..tail.len() - grow]);
}

#[test]
fn multi_extent_files_are_stitched_from_their_extents() {
    for rock_ridge in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let big = bytes(10 * SECTOR as usize + 1234, 9);
        std::fs::write(src.join("big.bin"), &big).unwrap();
        std::fs::write(src.join("small.txt"), b"small").unwrap();
        let iso = dir.path().join("m.iso");
        let rr = if rock_ridge { "on" } else { "off" };
        xorriso(&[
            "-rockridge",
            rr,
            "-joliet",
            "off",
            "-outdev",
            iso.to_str().unwrap(),
            "-map",
            src.to_str().unwrap(),
            "/",
        ]);
        let mut image = std::fs::read(&iso).unwrap();
        make_multi_extent(&mut image);
        std::fs::write(&iso, &image).unwrap();

        let img = IsoImage::open(&iso).unwrap();
        let name = if rock_ridge { "big.bin" } else { "BIG.BIN" };
        let c = img.content(&p(name)).unwrap();
        assert_eq!(c.len(), big.len() as u64, "rr={rock_ridge}");
        assert_eq!(sha(&read_all(&c)), sha(&big), "rr={rock_ridge}");
        assert_eq!(img.content(&p("small.txt")).unwrap().len(), 5);
        let listed = img.files();
        assert_eq!(
            listed.len(),
            2,
            "one entry for the three records: {listed:?}"
        );
    }
}

fn open_err(path: &Path) -> IsoError {
    IsoImage::open(path).expect_err("image must be refused")
}

#[test]
fn missing_truncated_and_garbage_files_are_refused_clearly() {
    let f = fixture();
    let iso = rock_ridge_joliet(&f);
    let image = std::fs::read(&iso).unwrap();

    let missing = f.root.join("missing.iso");
    let e = open_err(&missing);
    assert!(matches!(e.kind, IsoErrorKind::Io(_)));
    assert!(e.to_string().contains("missing.iso"), "{e}");

    let truncated = f.root.join("truncated.iso");
    std::fs::write(&truncated, &image[..image.len() / 2]).unwrap();
    let e = open_err(&truncated);
    assert!(matches!(e.kind, IsoErrorKind::Truncated(_)), "{e}");
    assert!(e.to_string().contains("truncated.iso"), "{e}");

    let tiny = f.root.join("tiny.iso");
    std::fs::write(&tiny, &image[..40_000]).unwrap();
    let e = open_err(&tiny);
    assert!(
        matches!(e.kind, IsoErrorKind::Truncated(_) | IsoErrorKind::NotIso(_)),
        "{e}"
    );

    let garbage = f.root.join("garbage.iso");
    std::fs::write(&garbage, bytes(1 << 20, 5)).unwrap();
    let e = open_err(&garbage);
    assert!(matches!(e.kind, IsoErrorKind::NotIso(_)), "{e}");
    assert!(
        e.to_string().contains("garbage.iso: not an ISO 9660 image"),
        "{e}"
    );

    let empty = f.root.join("empty.iso");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(open_err(&empty).kind, IsoErrorKind::NotIso(_)));
    assert!(matches!(
        open_err(&f.root).kind,
        IsoErrorKind::NotIso(_) | IsoErrorKind::Io(_)
    ));
}

#[test]
fn directory_loops_and_extents_past_the_end_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/x"), b"x").unwrap();
    std::fs::write(src.join("file.bin"), bytes(5000, 3)).unwrap();
    let iso = dir.path().join("l.iso");
    xorriso(&[
        "-rockridge",
        "off",
        "-joliet",
        "off",
        "-outdev",
        iso.to_str().unwrap(),
        "-map",
        src.to_str().unwrap(),
        "/",
    ]);
    let image = std::fs::read(&iso).unwrap();
    let recs = root_records(&image);
    let root_lba = u32::from_le_bytes(recs[0].1[2..6].try_into().unwrap());

    // SUB points back at the root directory: a loop.
    let mut looped = image.clone();
    let (at, _) = record_named(&recs, b"SUB");
    put32(&mut looped[*at..], 2, root_lba);
    let path = dir.path().join("looped.iso");
    std::fs::write(&path, &looped).unwrap();
    let e = open_err(&path);
    assert!(e.to_string().contains("directory loop"), "{e}");

    // FILE.BIN claims a sector far past the end of the image.
    let mut past = image.clone();
    let (at, _) = record_named(&recs, b"FILE.BIN");
    put32(&mut past[*at..], 2, 0x00ff_ffff);
    let path = dir.path().join("past.iso");
    std::fs::write(&path, &past).unwrap();
    let e = open_err(&path);
    assert!(matches!(e.kind, IsoErrorKind::Truncated(_)), "{e}");

    // SUB claims a directory of 2 GiB.
    let mut huge = image.clone();
    let (at, _) = record_named(&recs, b"SUB");
    put32(&mut huge[*at..], 10, 0x7fff_ffff);
    let path = dir.path().join("huge.iso");
    std::fs::write(&path, &huge).unwrap();
    let e = open_err(&path);
    assert!(matches!(e.kind, IsoErrorKind::Corrupt(_)), "{e}");

    // Random bytes over the root directory: refused or indexed, never a panic or a hang.
    for seed in 0..32 {
        let mut fuzzed = image.clone();
        let start = root_lba as usize * SECTOR as usize;
        let noise = bytes(SECTOR as usize, seed + 100);
        for (i, b) in noise.iter().enumerate() {
            if i % 3 == 0 {
                fuzzed[start + i] = *b;
            }
        }
        let path = dir.path().join("fuzzed.iso");
        std::fs::write(&path, &fuzzed).unwrap();
        let _ = IsoImage::open(&path);
    }
}

fn cfg(name: &str, path: &Path, required: bool) -> IsoConfig {
    IsoConfig {
        name: name.into(),
        path: path.to_path_buf(),
        required,
    }
}

#[test]
fn library_keeps_broken_images_aside_unless_required() {
    let f = fixture();
    let iso = rock_ridge_joliet(&f);
    let missing = f.root.join("gone.iso");
    let configs = vec![cfg("good", &iso, true), cfg("broken", &missing, false)];
    let lib = IsoLibrary::open(&configs).unwrap();
    assert_eq!(lib.content("good", &p("README")).unwrap().len(), 8);
    assert_eq!(lib.content("GOOD", &p("README")).unwrap().len(), 8);
    let e = lib.content("broken", &p("README")).unwrap_err();
    assert!(e.to_string().contains("gone.iso"), "{e}");
    assert!(matches!(
        lib.content("nope", &p("README")),
        Err(ResolveError::NotFound)
    ));
    let status = lib.status();
    assert!(status[0].result.as_ref().unwrap_err().contains("gone.iso"));
    assert!(status[1].result.is_ok());

    let configs = vec![cfg("good", &iso, false), cfg("broken", &missing, true)];
    let e = IsoLibrary::open(&configs).unwrap_err();
    assert!(e.to_string().contains("gone.iso"), "{e}");

    // Through the sync Resolver interface, as the TFTP server uses it.
    use chainboot_content::{Request, Resolver, Transport};
    let req_path = p("good/install.amd/vmlinuz");
    let c = lib
        .resolve(&Request {
            path: &req_path,
            client: "127.0.0.1:1".parse().unwrap(),
            transport: Transport::Tftp,
        })
        .unwrap();
    assert_eq!(sha(&read_all(&c)), sha(&f.files["install.amd/vmlinuz"]));
}

#[test]
fn library_reindexes_a_changed_image_and_old_readers_fail_cleanly() {
    let f = fixture();
    let iso = rock_ridge_joliet(&f);
    let served = f.root.join("served.iso");
    std::fs::copy(&iso, &served).unwrap();
    let lib = IsoLibrary::new(&[cfg("d", &served, false)]);
    let old = lib.content("d", &p("install.amd/vmlinuz")).unwrap();
    assert_eq!(sha(&read_all(&old)), sha(&f.files["install.amd/vmlinuz"]));

    // A new image with different content, written in place (same inode).
    std::fs::write(f.src.join("install.amd/vmlinuz"), bytes(123_456, 77)).unwrap();
    std::fs::write(f.src.join("new.txt"), b"new").unwrap();
    let iso2 = f.root.join("rrj2.iso");
    xorriso(&[
        "-as",
        "mkisofs",
        "-R",
        "-J",
        "-o",
        iso2.to_str().unwrap(),
        f.src.to_str().unwrap(),
    ]);
    std::fs::write(&served, std::fs::read(&iso2).unwrap()).unwrap();

    // The content opened before the change must not return bytes of the new image.
    let mut buf = vec![0u8; 4096];
    assert!(
        old.read_at(0, &mut buf).is_err(),
        "old reader must fail, not mix bytes"
    );
    // The next access sees the new index.
    let new = lib.content("d", &p("install.amd/vmlinuz")).unwrap();
    assert_eq!(sha(&read_all(&new)), sha(&bytes(123_456, 77)));
    assert_eq!(lib.content("d", &p("new.txt")).unwrap().len(), 3);

    // Replaced by rename (new inode): old readers keep reading the old, complete image.
    let before = lib.content("d", &p("new.txt")).unwrap();
    let tmp = f.root.join("tmp.iso");
    std::fs::copy(&iso, &tmp).unwrap();
    std::fs::rename(&tmp, &served).unwrap();
    assert_eq!(read_all(&before), b"new");
    assert!(matches!(
        lib.content("d", &p("new.txt")),
        Err(ResolveError::NotFound)
    ));
}

#[test]
fn overlapping_directory_extents_are_refused() {
    // Three directories all pointed into one region of zeros (a file's data): each read
    // alone looks like an empty directory, together they read three times the image.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    for d in ["DA", "DB", "DC"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    std::fs::write(src.join("ZEROS.BIN"), vec![0u8; 1 << 20]).unwrap();
    let iso = dir.path().join("o.iso");
    xorriso(&[
        "-rockridge",
        "off",
        "-joliet",
        "off",
        "-outdev",
        iso.to_str().unwrap(),
        "-map",
        src.to_str().unwrap(),
        "/",
    ]);
    let mut image = std::fs::read(&iso).unwrap();
    IsoImage::open(&iso).unwrap();
    let recs = root_records(&image);
    let zeros = &record_named(&recs, b"ZEROS.BIN").1;
    let zeros_lba = u32::from_le_bytes(zeros[2..6].try_into().unwrap());
    for (i, name) in [&b"DA"[..], b"DB", b"DC"].iter().enumerate() {
        let (at, _) = record_named(&recs, name);
        put32(&mut image[*at..], 2, zeros_lba + i as u32);
        put32(&mut image[*at..], 10, (1 << 20) - 4 * SECTOR as u32);
    }
    std::fs::write(&iso, &image).unwrap();
    let e = open_err(&iso);
    assert!(
        e.to_string().contains("overlapping directory extents"),
        "{e}"
    );
}

#[test]
fn associated_files_do_not_shadow_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("KERNEL"), b"the kernel").unwrap();
    std::fs::write(src.join("OTHER"), b"resource fork bytes").unwrap();
    let iso = dir.path().join("a.iso");
    xorriso(&[
        "-rockridge",
        "off",
        "-joliet",
        "off",
        "-outdev",
        iso.to_str().unwrap(),
        "-map",
        src.to_str().unwrap(),
        "/",
    ]);
    let mut image = std::fs::read(&iso).unwrap();
    let recs = root_records(&image);
    let (at, kernel) = record_named(&recs, b"KERNEL").clone();
    let other = &record_named(&recs, b"OTHER").1;
    // An associated-file record named like KERNEL, pointing at OTHER's bytes, placed right
    // before KERNEL's record as ECMA-119 orders them.
    let mut assoc = kernel.clone();
    assoc[2..10].copy_from_slice(&other[2..10]);
    assoc[10..18].copy_from_slice(&other[10..18]);
    assoc[25] |= 0x04;
    let sector_end = (at / SECTOR as usize + 1) * SECTOR as usize;
    let tail = image[at..sector_end - assoc.len()].to_vec();
    image[at..at + assoc.len()].copy_from_slice(&assoc);
    image[at + assoc.len()..sector_end].copy_from_slice(&tail);
    std::fs::write(&iso, &image).unwrap();
    let img = IsoImage::open(&iso).unwrap();
    assert_eq!(read_all(&img.content(&p("kernel")).unwrap()), b"the kernel");
    assert_eq!(img.files().len(), 2);
}

#[test]
fn directories_deeper_than_eight_levels_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let deep = src.join("1/2/3/4/5/6/7/8/9/10/11");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("f.txt"), b"deep file").unwrap();
    for (name, extra) in [
        ("plain-deep.iso", vec![]),
        // Deep-directory relocation (RRIP CL/RE entries), as mkisofs does by default.
        (
            "relocated.iso",
            vec!["-compliance", "deep_paths_off", "-rr_reloc_dir", "RR_MOVED"],
        ),
    ] {
        let iso = dir.path().join(name);
        let mut args = extra.clone();
        args.extend([
            "-outdev",
            iso.to_str().unwrap(),
            "-map",
            src.to_str().unwrap(),
            "/",
        ]);
        xorriso(&args);
        if name == "relocated.iso" {
            let bytes = std::fs::read(&iso).unwrap();
            assert!(
                bytes.windows(4).any(|w| w == b"CL\x0c\x01"),
                "xorriso did not relocate: the CL path is not exercised"
            );
        }
        let img = IsoImage::open(&iso).unwrap();
        assert_eq!(img.scheme(), NameScheme::RockRidge);
        let c = img
            .content(&p("1/2/3/4/5/6/7/8/9/10/11/f.txt"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(read_all(&c), b"deep file", "{name}");
        let names: Vec<String> = img.files().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["1/2/3/4/5/6/7/8/9/10/11/f.txt"],
            "{name}: relocation dir hidden"
        );
    }
}
