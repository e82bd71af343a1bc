//! Opening files under a root directory without ever leaving it.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::case_index::CaseIndex;
use crate::{CleanPath, Content, ResolveError};

/// A directory whose files may be served. Every open is checked twice: the canonical path must
/// lie under the root (so a symlink pointing outside is refused), and the open itself uses
/// `openat2(RESOLVE_BENEATH)` relative to the root's descriptor, so a symlink swapped in between
/// the check and the open still cannot escape.
#[derive(Debug)]
pub struct Root {
    dir: PathBuf,
    fd: OwnedFd,
    /// Directories' names folded to lower case, for the case-insensitive fallback.
    case_index: CaseIndex,
}

impl Root {
    /// Opens a root directory. The path is canonicalised once here.
    pub fn new(path: impl AsRef<Path>) -> io::Result<Root> {
        let dir = std::fs::canonicalize(path.as_ref())?;
        if !dir.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a directory", dir.display()),
            ));
        }
        let c = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
        // SAFETY: `c` is a valid NUL-terminated path; the returned descriptor is checked.
        let raw = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly opened descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Root {
            dir,
            fd,
            case_index: CaseIndex::default(),
        })
    }

    /// The canonical directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Directories read whole for the case-insensitive fallback since the root was opened.
    /// A miss reads its directory only when the directory changed since its last read.
    pub fn directory_reads(&self) -> u64 {
        self.case_index.reads()
    }

    /// Finds the file a clean path names, with a case-insensitive fallback per component when
    /// the exact name is missing (firmware and Windows clients ask for `PXELINUX.0` and
    /// `pxelinux.cfg\Default`), answered from an index of the directory (see `case_index`).
    /// Returns the canonical path, which is under the root.
    pub fn locate(&self, path: &CleanPath) -> Result<PathBuf, ResolveError> {
        let mut candidate = self.dir.clone();
        for part in path.parts() {
            candidate.push(part);
        }
        if std::fs::symlink_metadata(&candidate).is_err() {
            candidate = self.locate_ignoring_case(path)?;
        }
        let real = match std::fs::canonicalize(&candidate) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // A dangling symlink: say not found, there is nothing to serve.
                return Err(ResolveError::NotFound);
            }
            Err(e) => return Err(ResolveError::Io(e)),
        };
        if !real.starts_with(&self.dir) {
            return Err(ResolveError::Forbidden(format!(
                "{} resolves outside its root",
                path
            )));
        }
        Ok(real)
    }

    fn locate_ignoring_case(&self, path: &CleanPath) -> Result<PathBuf, ResolveError> {
        let mut at = self.dir.clone();
        for part in path.parts() {
            let exact = at.join(part);
            if std::fs::symlink_metadata(&exact).is_ok() {
                at = exact;
                continue;
            }
            // Two names that differ only by case are ambiguous: not found, no guess.
            let real = self
                .case_index
                .find(&at, part)
                .ok_or(ResolveError::NotFound)?;
            at.push(real);
        }
        Ok(at)
    }

    /// Opens a regular file under the root.
    pub fn open(&self, path: &CleanPath) -> Result<Content, ResolveError> {
        let real = self.locate(path)?;
        let meta = std::fs::metadata(&real).map_err(ResolveError::Io)?;
        if meta.is_dir() {
            return Err(ResolveError::IsDirectory);
        }
        if !meta.is_file() {
            return Err(ResolveError::Forbidden(format!(
                "{path} is not a regular file"
            )));
        }
        let rel = real
            .strip_prefix(&self.dir)
            .map_err(|_| ResolveError::Forbidden(format!("{path} resolves outside its root")))?;
        let file = self.open_beneath(rel)?;
        Content::from_file(file).map_err(ResolveError::Io)
    }

    /// Like [`Root::open`], but first tries the exact name with a single
    /// `openat2(RESOLVE_BENEATH)`, where the kernel itself refuses any escape, and only
    /// falls back to [`Root::open`] (case-insensitive names, precise errors) when that does
    /// not yield a regular file. For hot paths (HTTP static files): it saves the
    /// canonicalisation's readlink/stat calls per request. Same refusals as `open`.
    pub fn open_exact_first(&self, path: &CleanPath) -> Result<Content, ResolveError> {
        let Ok(c) = CString::new(path.as_string()) else {
            return self.open(path);
        };
        let how = OpenHow {
            // O_NONBLOCK: opening a FIFO must not block; it is refused below anyway.
            flags: (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK) as u64,
            mode: 0,
            resolve: RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
        };
        // SAFETY: openat2 with a valid dirfd, NUL-terminated path and a correctly sized
        // `open_how`; the result is checked before use.
        let raw = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if raw < 0 {
            return self.open(path);
        }
        // SAFETY: a new descriptor returned by the kernel, owned by nobody else.
        let file = unsafe { File::from_raw_fd(raw as i32) };
        match file.metadata() {
            Ok(m) if m.is_file() => Content::from_file_metadata(file, &m).map_err(ResolveError::Io),
            // Directories, devices, FIFOs: let `open` classify them.
            _ => self.open(path),
        }
    }

    /// The state of the regular file at exactly `path` under the root (no case folding), as
    /// the checked open's first try reaches it: `openat2(O_PATH, RESOLVE_BENEATH |
    /// RESOLVE_NO_MAGICLINKS)` relative to the root's descriptor, then one `statx` of what it
    /// found (forced to ask the server on a network file system, which answers from its
    /// attribute cache otherwise). A path the checked open would refuse, or resolve elsewhere
    /// (a directory on it swapped for a symlink out of the root, to the same inode or not),
    /// has no state here; so has one it reaches only through its fallback (an absolute
    /// symlink, a case-folded name), and `None` when a call fails. It confirms a file that a
    /// checked open found before: the same path still leads, by the same rules, to the same
    /// inode, unchanged since.
    ///
    /// Three system calls (the open, `statx`, the close of an `O_PATH` descriptor, which
    /// opens no file); one for a name directly in the root that is a regular file itself (not
    /// a symlink): with no directory and no link between, `statx` without following links
    /// finds exactly what the checked open would.
    pub fn file_state(&self, path: &str) -> Option<crate::FileState> {
        use crate::content::FileState;
        use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
        if path.starts_with('/') {
            // An absolute path would ignore the root's descriptor.
            return None;
        }
        if !path.contains('/') {
            let st = rustix::fs::statx(
                &self.fd,
                path,
                AtFlags::SYMLINK_NOFOLLOW | AtFlags::STATX_FORCE_SYNC,
                FileState::MASK,
            )
            .ok()?;
            if u32::from(st.stx_mode) & libc::S_IFMT != libc::S_IFLNK {
                return FileState::of(&st);
            }
            // A symlink: where it leads is the checked open's to say.
        }
        let found = rustix::fs::openat2(
            &self.fd,
            path,
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        )
        .ok()?;
        let st = rustix::fs::statx(
            &found,
            "",
            AtFlags::EMPTY_PATH | AtFlags::STATX_FORCE_SYNC,
            FileState::MASK,
        )
        .ok()?;
        FileState::of(&st)
    }

    /// Lists a directory under the root (for HTTP indexes): names, and whether each is a
    /// directory. Entries whose target leaves the root are left out.
    pub fn list(&self, path: Option<&CleanPath>) -> Result<Vec<(String, bool)>, ResolveError> {
        let real = match path {
            Some(p) => self.locate(p)?,
            None => self.dir.clone(),
        };
        let rd = std::fs::read_dir(&real).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ResolveError::NotFound,
            _ => ResolveError::Io(e),
        })?;
        let mut out = Vec::new();
        for entry in rd.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Ok(target) = std::fs::canonicalize(entry.path()) else {
                continue;
            };
            if !target.starts_with(&self.dir) {
                continue;
            }
            out.push((name, target.is_dir()));
        }
        out.sort();
        Ok(out)
    }

    fn open_beneath(&self, rel: &Path) -> Result<File, ResolveError> {
        let c = CString::new(rel.as_os_str().as_bytes())
            .map_err(|_| ResolveError::Forbidden("NUL in path".into()))?;
        let how = OpenHow {
            flags: (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY) as u64,
            mode: 0,
            resolve: RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
        };
        // SAFETY: openat2 with a valid dirfd, NUL-terminated path and a correctly sized
        // `open_how`; the result is checked before use.
        let raw = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if raw >= 0 {
            // SAFETY: a new descriptor returned by the kernel, owned by nobody else.
            return Ok(unsafe { File::from_raw_fd(raw as i32) });
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            // Kernels before 5.6: the canonical-path check in `locate` already holds; open
            // the canonical path without following a final symlink.
            Some(libc::ENOSYS) | Some(libc::EPERM) => {
                let full = self.dir.join(rel);
                let c = CString::new(full.as_os_str().as_bytes())
                    .map_err(|_| ResolveError::Forbidden("NUL in path".into()))?;
                // SAFETY: valid NUL-terminated path; result checked.
                let raw = unsafe {
                    libc::open(
                        c.as_ptr(),
                        libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NOCTTY,
                    )
                };
                if raw < 0 {
                    return Err(ResolveError::Io(io::Error::last_os_error()));
                }
                // SAFETY: a new descriptor owned by nobody else.
                Ok(unsafe { File::from_raw_fd(raw) })
            }
            Some(libc::EXDEV) | Some(libc::ELOOP) => Err(ResolveError::Forbidden(format!(
                "{} escapes its root",
                rel.display()
            ))),
            Some(libc::ENOENT) => Err(ResolveError::NotFound),
            _ => Err(ResolveError::Io(err)),
        }
    }
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_BENEATH: u64 = 0x08;

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, tempfile::TempDir, Root) {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"secret").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("pxelinux.cfg")).unwrap();
        std::fs::write(root.path().join("pxelinux.cfg/default"), b"DEFAULT x").unwrap();
        std::fs::write(root.path().join("Undionly.KPXE"), b"kpxe").unwrap();
        symlink(outside.path().join("secret"), root.path().join("escape")).unwrap();
        symlink(outside.path(), root.path().join("escdir")).unwrap();
        symlink("pxelinux.cfg/default", root.path().join("inside")).unwrap();
        let r = Root::new(root.path()).unwrap();
        (outside, root, r)
    }

    fn open(r: &Root, raw: &str) -> Result<Content, ResolveError> {
        r.open(&CleanPath::parse(raw).unwrap())
    }

    #[test]
    fn exact_and_case_insensitive_names_open() {
        let (_o, _d, r) = setup();
        assert_eq!(open(&r, "pxelinux.cfg/default").unwrap().len(), 9);
        assert_eq!(open(&r, "PXELINUX.CFG\\DEFAULT").unwrap().len(), 9);
        assert_eq!(open(&r, "undionly.kpxe").unwrap().len(), 4);
        assert!(matches!(open(&r, "nope"), Err(ResolveError::NotFound)));
        assert!(matches!(
            open(&r, "pxelinux.cfg"),
            Err(ResolveError::IsDirectory)
        ));
    }

    #[test]
    fn symlinks_out_of_the_root_are_refused() {
        let (_o, _d, r) = setup();
        assert!(matches!(
            open(&r, "escape"),
            Err(ResolveError::Forbidden(_))
        ));
        assert!(matches!(
            open(&r, "escdir/secret"),
            Err(ResolveError::Forbidden(_))
        ));
        assert_eq!(open(&r, "inside").unwrap().len(), 9);
    }

    #[test]
    fn exact_first_open_keeps_every_refusal() {
        let (_o, d, r) = setup();
        let open = |raw: &str| r.open_exact_first(&CleanPath::parse(raw).unwrap());
        assert_eq!(open("pxelinux.cfg/default").unwrap().len(), 9);
        assert_eq!(open("PXELINUX.CFG/DEFAULT").unwrap().len(), 9);
        assert_eq!(open("inside").unwrap().len(), 9);
        assert!(matches!(open("escape"), Err(ResolveError::Forbidden(_))));
        assert!(matches!(
            open("escdir/secret"),
            Err(ResolveError::Forbidden(_))
        ));
        assert!(matches!(open("nope"), Err(ResolveError::NotFound)));
        assert!(matches!(
            open("pxelinux.cfg"),
            Err(ResolveError::IsDirectory)
        ));
        let fifo = CString::new(d.path().join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        assert!(matches!(open("fifo"), Err(ResolveError::Forbidden(_))));
    }

    /// Sets a path's modification time `ago` in the past.
    fn age(path: &Path, ago: std::time::Duration) {
        let t = std::time::SystemTime::now() - ago;
        let d = t.duration_since(std::time::UNIX_EPOCH).unwrap();
        let ts = libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: d.subsec_nanos() as _,
        };
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid NUL-terminated path and two timespecs (atime, mtime).
        let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [ts, ts].as_ptr(), 0) };
        assert_eq!(r, 0);
    }

    #[test]
    fn misses_in_a_huge_directory_read_it_once_and_a_change_is_seen() {
        let root = tempfile::tempdir().unwrap();
        let big = root.path().join("big");
        std::fs::create_dir(&big).unwrap();
        for i in 0..20_000 {
            File::create(big.join(format!("file-{i:05}"))).unwrap();
        }
        std::fs::write(big.join("PXELINUX.0"), b"pxe").unwrap();
        std::fs::write(big.join("Twice"), b"1").unwrap();
        std::fs::write(big.join("TWICE"), b"2").unwrap();
        age(&big, std::time::Duration::from_secs(3600));
        let r = Root::new(root.path()).unwrap();
        let open = |raw: &str| r.open(&CleanPath::parse(raw).unwrap());

        assert_eq!(open("big/pxelinux.0").unwrap().len(), 3);
        assert_eq!(r.directory_reads(), 1);
        // A flood of misses (and case-insensitive hits) reads the directory no more.
        let started = std::time::Instant::now();
        for i in 0..2000 {
            assert!(matches!(
                open(&format!("big/missing-{i}")),
                Err(ResolveError::NotFound)
            ));
            assert_eq!(open("big/Pxelinux.0").unwrap().len(), 3);
        }
        eprintln!(
            "4000 lookups in a 20 000-entry directory: {:?}, {} directory read(s)",
            started.elapsed(),
            r.directory_reads()
        );
        assert_eq!(r.directory_reads(), 1);
        // Exact names never need the index; names that differ only by case are ambiguous.
        assert_eq!(open("big/Twice").unwrap().len(), 1);
        assert!(matches!(open("big/twice"), Err(ResolveError::NotFound)));
        assert_eq!(r.directory_reads(), 1);

        // A file added: the directory's mtime moves and the next miss sees it.
        std::fs::write(big.join("New.CFG"), b"new!").unwrap();
        assert_eq!(open("big/new.cfg").unwrap().len(), 4);
        assert_eq!(r.directory_reads(), 2);
        // Changed just now: a second change could share the timestamp, so the index is not
        // trusted yet and the next miss reads again...
        assert!(matches!(open("big/nope"), Err(ResolveError::NotFound)));
        assert_eq!(r.directory_reads(), 3);
        // ...until the directory has been quiet for a while.
        age(&big, std::time::Duration::from_secs(60));
        assert!(matches!(open("big/nope"), Err(ResolveError::NotFound)));
        assert!(matches!(open("big/nope2"), Err(ResolveError::NotFound)));
        assert_eq!(open("big/NEW.cfg").unwrap().len(), 4);
        assert_eq!(r.directory_reads(), 4);
        // A file removed is gone from the index too.
        std::fs::remove_file(big.join("PXELINUX.0")).unwrap();
        assert!(matches!(
            open("big/pxelinux.0"),
            Err(ResolveError::NotFound)
        ));
        assert_eq!(r.directory_reads(), 5);
    }

    #[test]
    fn listing_hides_escapes() {
        let (_o, _d, r) = setup();
        let names: Vec<String> = r.list(None).unwrap().into_iter().map(|e| e.0).collect();
        assert!(names.contains(&"inside".to_string()));
        assert!(!names.contains(&"escape".to_string()));
    }
}
