//! A piece of content ready to be sent: its length, validators for HTTP caching, and positioned
//! reads. TFTP reads it block by block, HTTP streams it or a range of it.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::Served;

/// A run of bytes inside a backing file: ISO 9660 stores files over 4 GiB (and, rarely, others)
/// as several extents, so a file is a list of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Byte offset in the backing file.
    pub offset: u64,
    /// Number of bytes.
    pub len: u64,
}

/// What the backing file looked like when the content was opened. Reads check it again so that
/// a file replaced in place (truncated, rewritten) fails the transfer instead of sending a mix of
/// old and new bytes.
#[derive(Debug, Clone, Copy)]
struct Fingerprint {
    len: u64,
    mtime_ns: i128,
    /// In the ETag only: a file rewritten in place at the same size with its old mtime put back
    /// (`cp -p`, `touch -r`) looks unchanged by size and mtime, and no program can set the
    /// ctime back. Not in [`Fingerprint::same_bytes`]: replacing a file by rename unlinks the
    /// old one, which moves its ctime, and the readers holding it must keep reading its
    /// unchanged bytes.
    ctime_ns: i128,
    ino: u64,
}

impl Fingerprint {
    /// Whether `now` describes the same bytes as when the content was opened.
    fn same_bytes(&self, now: &Fingerprint) -> bool {
        (self.len, self.mtime_ns, self.ino) == (now.len, now.mtime_ns, now.ino)
    }

    fn of(file: &File) -> io::Result<Fingerprint> {
        Ok(Fingerprint::from_metadata(&file.metadata()?))
    }

    fn from_metadata(m: &std::fs::Metadata) -> Fingerprint {
        Fingerprint {
            len: m.len(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
            ino: m.ino(),
        }
    }
}

/// One state of a file as `statx` reports it: which inode on which device, its size, and when
/// its data and its metadata last changed. Writing, truncating, renaming, linking or changing the
/// permissions of a file moves its status-change time, which no program can set: an unchanged
/// state means the same bytes, as long as the state was read when the file was
/// [`settled`](FileState::settled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileState {
    dev: (u32, u32),
    ino: u64,
    size: u64,
    mtime: (i64, u32),
    ctime: (i64, u32),
}

/// How long ago a file's status must have changed for its state to identify its bytes: two
/// writes within one tick of the file system's clock (milliseconds locally, a second on some
/// file systems, a server's clock on a network file system) can leave the same times behind.
/// A file changed since the state was read always shows a later status-change time than a
/// settled state's.
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

impl FileState {
    /// From `statx`; `None` for anything but a regular file.
    pub(crate) fn of(st: &rustix::fs::Statx) -> Option<FileState> {
        (u32::from(st.stx_mode) & libc::S_IFMT == libc::S_IFREG).then_some(FileState {
            dev: (st.stx_dev_major, st.stx_dev_minor),
            ino: st.stx_ino,
            size: st.stx_size,
            mtime: (st.stx_mtime.tv_sec, st.stx_mtime.tv_nsec),
            ctime: (st.stx_ctime.tv_sec, st.stx_ctime.tv_nsec),
        })
    }

    /// The attributes a state needs (`STATX_BASIC_STATS` holds them all).
    pub(crate) const MASK: rustix::fs::StatxFlags = rustix::fs::StatxFlags::BASIC_STATS;

    /// Whether the file's status last changed at least [`SETTLE`] before `now`.
    pub fn settled(&self, now: SystemTime) -> bool {
        let Ok(since) = now.duration_since(UNIX_EPOCH) else {
            return false;
        };
        let changed = std::time::Duration::new(self.ctime.0.max(0) as u64, self.ctime.1);
        self.ctime.0 >= 0 && changed + SETTLE <= since
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}

#[derive(Debug, Clone)]
enum Body {
    /// Bytes produced for one request (rendered configs, scripts).
    Bytes(Bytes),
    /// Extents of an open file; a plain file is one extent starting at 0.
    File {
        file: Arc<File>,
        extents: Arc<[Extent]>,
        fingerprint: Fingerprint,
    },
}

/// Something to send. Cheap to clone (the file handle and extent list are shared).
#[derive(Debug, Clone)]
pub struct Content {
    body: Body,
    len: u64,
    modified: Option<SystemTime>,
    etag: String,
    served: Served,
}

fn etag_for(fp: &Fingerprint, first: u64, len: u64) -> String {
    format!(
        "\"{:x}-{:x}-{:x}-{:x}-{:x}\"",
        fp.ino, fp.mtime_ns as u64, fp.ctime_ns as u64, first, len
    )
}

/// Error returned by [`Content::read_at`] when the backing file changed after the content was
/// opened. Transfers must abort on it rather than retry.
pub fn changed_error() -> io::Error {
    io::Error::other("file changed on disk while being served")
}

impl Content {
    /// Content generated in memory.
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Content {
        let bytes: Bytes = bytes.into();
        let digest = Sha256::digest(&bytes);
        Content {
            len: bytes.len() as u64,
            etag: format!("\"g-{}\"", hex::encode(&digest[..12])),
            body: Body::Bytes(bytes),
            modified: None,
            served: Served::default(),
        }
    }

    /// A whole regular file.
    pub fn from_file(file: File) -> io::Result<Content> {
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        let len = meta.len();
        Content::from_extents(Arc::new(file), vec![Extent { offset: 0, len }])
    }

    /// A whole regular file whose metadata the caller has just read with `fstat` on the same
    /// descriptor (saves the two further `fstat`s of [`Content::from_file`] on hot paths).
    pub fn from_file_metadata(file: File, meta: &std::fs::Metadata) -> io::Result<Content> {
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        let fingerprint = Fingerprint::from_metadata(meta);
        let len = meta.len();
        Ok(Content {
            body: Body::File {
                file: Arc::new(file),
                extents: vec![Extent { offset: 0, len }].into(),
                fingerprint,
            },
            len,
            modified: meta.modified().ok(),
            etag: etag_for(&fingerprint, 0, len),
            served: Served::default(),
        })
    }

    /// Extents of a backing file (an ISO image). The ETag is derived from the image's identity
    /// and the extents, so it changes when the image is replaced.
    pub fn from_extents(file: Arc<File>, extents: Vec<Extent>) -> io::Result<Content> {
        let fingerprint = Fingerprint::of(&file)?;
        let meta = file.metadata()?;
        let len: u64 = extents.iter().map(|e| e.len).sum();
        let first = extents.first().map(|e| e.offset).unwrap_or(0);
        let etag = etag_for(&fingerprint, first, len);
        Ok(Content {
            body: Body::File {
                file,
                extents: extents.into(),
                fingerprint,
            },
            len,
            modified: meta.modified().ok(),
            etag,
            served: Served::default(),
        })
    }

    /// Overrides the modification time (ISO entries carry their own recording date).
    pub fn with_modified(mut self, modified: Option<SystemTime>) -> Content {
        if modified.is_some() {
            self.modified = modified;
        }
        self
    }

    /// The same content, its bytes read into memory: the validators (ETag, modification time)
    /// stay the file's, so a copy answers exactly as the file would. `None` when `bytes` is not
    /// as long as the content.
    pub fn with_bytes(&self, bytes: Bytes) -> Option<Content> {
        (bytes.len() as u64 == self.len).then(|| Content {
            body: Body::Bytes(bytes),
            len: self.len,
            modified: self.modified,
            etag: self.etag.clone(),
            served: self.served,
        })
    }

    /// The state of the file behind a whole-file content, read from its open descriptor (one
    /// `statx`); `None` for generated content, extents of an image, or when the call fails.
    pub fn file_state(&self) -> Option<FileState> {
        match &self.body {
            Body::File { file, extents, .. }
                if extents.len() == 1 && extents[0].offset == 0 && extents[0].len == self.len =>
            {
                let st = rustix::fs::statx(
                    file.as_ref(),
                    "",
                    rustix::fs::AtFlags::EMPTY_PATH,
                    FileState::MASK,
                )
                .ok()?;
                FileState::of(&st).filter(|s| s.size == self.len)
            }
            _ => None,
        }
    }

    /// Says what this content is (resolvers know: a first stage, a script, a file inside an
    /// ISO image); a plain file when no one said.
    pub fn served_as(mut self, served: Served) -> Content {
        self.served = served;
        self
    }

    /// What this content is, as its resolver said.
    pub fn served(&self) -> Served {
        self.served
    }

    /// Total length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the content has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Last modification time, when known.
    pub fn modified(&self) -> Option<SystemTime> {
        self.modified
    }

    /// A strong validator for HTTP (`ETag`), quoted.
    pub fn etag(&self) -> &str {
        &self.etag
    }

    /// The bytes themselves when the content was generated in memory.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match &self.body {
            Body::Bytes(b) => Some(b),
            Body::File { .. } => None,
        }
    }

    /// Reads up to `buf.len()` bytes at `offset`, returning how many were read (0 at the end).
    /// Fills `buf` completely unless the end of the content is reached. Fails with
    /// [`changed_error`] if the backing file was modified since the content was opened.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min((self.len - offset) as usize);
        let buf = &mut buf[..want];
        match &self.body {
            Body::Bytes(b) => {
                let start = offset as usize;
                buf.copy_from_slice(&b[start..start + want]);
                Ok(want)
            }
            Body::File {
                file,
                extents,
                fingerprint,
            } => {
                let mut done = 0usize;
                let mut logical = 0u64;
                for ext in extents.iter() {
                    if done == want {
                        break;
                    }
                    let pos = offset + done as u64;
                    if pos >= logical + ext.len {
                        logical += ext.len;
                        continue;
                    }
                    let within = pos - logical;
                    let n = ((ext.len - within) as usize).min(want - done);
                    read_exact_at(file, &mut buf[done..done + n], ext.offset + within)?;
                    done += n;
                    logical += ext.len;
                }
                // Checked after reading: if the file changed during the read, the bytes in
                // `buf` may be mixed, and the caller gets an error instead of them.
                if !fingerprint.same_bytes(&Fingerprint::of(file)?) {
                    return Err(changed_error());
                }
                Ok(done)
            }
        }
    }

    /// Like [`Content::read_at`], but only what the page cache holds now, without waiting for
    /// the disk (`preadv2` with `RWF_NOWAIT`): `Ok(None)` when even the first byte would block
    /// (or the file system cannot say), else the bytes read, possibly fewer than asked and at
    /// most to the end of the extent `offset` lies in. An async task can call this inline and
    /// go to a blocking thread only on `None`: a boot storm reads the same few files thousands
    /// of times, so nearly every read is a hit, and a hop to the blocking pool per chunk costs
    /// more than the copy. Fails with [`changed_error`] as `read_at` does.
    pub fn read_cached_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<Option<usize>> {
        if offset >= self.len || buf.is_empty() {
            return Ok(Some(0));
        }
        let want = buf.len().min((self.len - offset) as usize);
        let (file, extents, fingerprint) = match &self.body {
            Body::Bytes(_) => return self.read_at(offset, &mut buf[..want]).map(Some),
            Body::File {
                file,
                extents,
                fingerprint,
            } => (file, extents, fingerprint),
        };
        let mut logical = 0u64;
        let Some((ext, within)) = extents.iter().find_map(|e| {
            let found = (offset < logical + e.len).then(|| (*e, offset - logical));
            logical += e.len;
            found
        }) else {
            return Ok(Some(0));
        };
        let n = ((ext.len - within) as usize).min(want);
        let mut iov = [io::IoSliceMut::new(&mut buf[..n])];
        let got = loop {
            match rustix::io::preadv2(
                &**file,
                &mut iov,
                ext.offset + within,
                rustix::io::ReadWriteFlags::NOWAIT,
            ) {
                Ok(0) => return Err(changed_error()), // shorter than its extents: truncated
                Ok(got) => break got,
                Err(rustix::io::Errno::INTR) => {}
                // Not cached, or no RWF_NOWAIT here (old kernel, some file systems).
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::OPNOTSUPP) => return Ok(None),
                Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        };
        // As in `read_at`: checked after reading, so mixed bytes are never returned.
        if !fingerprint.same_bytes(&Fingerprint::of(file)?) {
            return Err(changed_error());
        }
        Ok(Some(got))
    }

    /// For callers that can use `sendfile`/zero-copy: the backing file and the absolute byte
    /// range of `[offset, offset+len)` when it lies inside one extent.
    pub fn file_range(&self, offset: u64, len: u64) -> Option<(&Arc<File>, u64)> {
        let Body::File { file, extents, .. } = &self.body else {
            return None;
        };
        let mut logical = 0u64;
        for ext in extents.iter() {
            if offset >= logical && offset + len <= logical + ext.len {
                return Some((file, ext.offset + (offset - logical)));
            }
            logical += ext.len;
        }
        None
    }
}

impl Content {
    /// For `sendfile`: the backing file and the absolute file offset of `[offset, offset+len)`
    /// when that range lies inside one extent and the page cache holds all of it now, so that
    /// sending it does not wait for the disk. `None` otherwise (generated content, a range
    /// across extents, pages not cached, or a kernel that cannot say): read it instead.
    pub fn cached_file_range(&self, offset: u64, len: u64) -> Option<(&Arc<File>, u64)> {
        let (file, at) = self.file_range(offset, len)?;
        crate::cache::range_cached(file, at, len)
            .unwrap_or(false)
            .then_some((file, at))
    }

    /// Fails with [`changed_error`] when the backing file changed since the content was
    /// opened (what [`Content::read_at`] checks after each read, for callers that send the
    /// file's bytes without reading them).
    pub fn check_unchanged(&self) -> io::Result<()> {
        match &self.body {
            Body::Bytes(_) => Ok(()),
            Body::File {
                file, fingerprint, ..
            } => {
                if !fingerprint.same_bytes(&Fingerprint::of(file)?) {
                    return Err(changed_error());
                }
                Ok(())
            }
        }
    }
}

fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match file.read_at(buf, offset) {
            Ok(0) => {
                // The file is shorter than its extents say: truncated under us.
                return Err(changed_error());
            }
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn all(c: &Content, chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            let n = c.read_at(out.len() as u64, &mut buf).unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn bytes_read_back_in_any_chunking() {
        let c = Content::from_bytes(b"hello world".to_vec());
        assert_eq!(c.len(), 11);
        for chunk in 1..13 {
            assert_eq!(all(&c, chunk), b"hello world");
        }
        assert!(c.etag().starts_with("\"g-"));
    }

    #[test]
    fn a_file_rewritten_in_place_with_its_mtime_put_back_gets_a_new_etag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"old bytes").unwrap();
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let before = Content::from_file(File::open(&path).unwrap()).unwrap();
        // The ctime has a clock tick to move on coarse file systems.
        std::thread::sleep(std::time::Duration::from_millis(20));
        // Same size, same inode, the old modification time restored (`cp -p`, `touch -r`).
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"new bytes", 0).unwrap();
        f.set_modified(mtime).unwrap();
        drop(f);
        let after = Content::from_file(File::open(&path).unwrap()).unwrap();
        assert_ne!(
            before.etag(),
            after.etag(),
            "a client's If-None-Match must not match"
        );
    }

    #[test]
    fn extents_are_stitched_in_order() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"0123456789abcdefghij").unwrap();
        let c = Content::from_extents(
            Arc::new(f),
            vec![
                Extent { offset: 10, len: 5 },
                Extent { offset: 0, len: 3 },
                Extent { offset: 18, len: 2 },
            ],
        )
        .unwrap();
        assert_eq!(c.len(), 10);
        for chunk in 1..12 {
            assert_eq!(all(&c, chunk), b"abcde012ij", "chunk {chunk}");
        }
        assert!(c.file_range(0, 5).is_some());
        assert!(c.file_range(3, 4).is_none());
    }

    #[test]
    fn from_file_metadata_equals_from_file() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"0123456789").unwrap();
        let a = Content::from_file(f.reopen().unwrap()).unwrap();
        let file = f.reopen().unwrap();
        let meta = file.metadata().unwrap();
        let b = Content::from_file_metadata(file, &meta).unwrap();
        assert_eq!(
            (a.len(), a.etag(), a.modified()),
            (b.len(), b.etag(), b.modified())
        );
        assert_eq!(all(&b, 3), b"0123456789");
        f.as_file().set_len(4).unwrap();
        assert!(
            b.read_at(0, &mut [0u8; 4]).is_err(),
            "change check still applies"
        );
    }

    #[test]
    fn truncation_under_a_reader_is_an_error_not_short_data() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[7u8; 4096]).unwrap();
        let c = Content::from_file(f.reopen().unwrap()).unwrap();
        let mut buf = [0u8; 100];
        assert_eq!(c.read_at(0, &mut buf).unwrap(), 100);
        f.as_file().set_len(1000).unwrap();
        assert!(c.read_at(2000, &mut buf).is_err());
        assert!(c.read_at(0, &mut buf).is_err(), "changed file must fail");
    }

    #[test]
    fn cached_reads_return_the_same_bytes_as_reads_and_stop_at_extent_ends() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"0123456789abcdefghij").unwrap();
        let c = Content::from_extents(
            Arc::new(f.reopen().unwrap()),
            vec![Extent { offset: 10, len: 5 }, Extent { offset: 0, len: 3 }],
        )
        .unwrap();
        // Just written: in the page cache, so NOWAIT reads are answered.
        let mut buf = [0u8; 16];
        assert_eq!(c.read_cached_at(0, &mut buf).unwrap(), Some(5));
        assert_eq!(&buf[..5], b"abcde");
        assert_eq!(c.read_cached_at(3, &mut buf).unwrap(), Some(2));
        assert_eq!(&buf[..2], b"de");
        assert_eq!(c.read_cached_at(5, &mut buf).unwrap(), Some(3));
        assert_eq!(&buf[..3], b"012");
        assert_eq!(
            c.read_cached_at(8, &mut buf).unwrap(),
            Some(0),
            "at the end"
        );
        let g = Content::from_bytes(&b"xyz"[..]);
        assert_eq!(g.read_cached_at(1, &mut buf).unwrap(), Some(2));
        assert_eq!(&buf[..2], b"yz");
        // Changed under the reader: an error, as with `read_at`.
        f.as_file().set_len(12).unwrap();
        assert!(c.read_cached_at(0, &mut buf).is_err());
        f.as_file().set_len(2).unwrap();
        assert!(
            c.read_cached_at(5, &mut buf).is_err(),
            "truncated below the extent"
        );
    }
}
