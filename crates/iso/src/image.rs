//! Reading and indexing one ISO 9660 image (ECMA-119, with SUSP/RRIP and Joliet).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chainboot_content::{CleanPath, Content, Extent, ResolveError};
use thiserror::Error;

/// Logical sector size. ECMA-119 allows others in theory; every image in the wild uses 2048
/// and images that say otherwise are refused.
pub const SECTOR: u64 = 2048;
/// Deepest directory nesting indexed. ECMA-119 allows 8 levels, Rock Ridge lifts that; this
/// bounds work on hostile images while leaving room for real trees.
pub const MAX_DEPTH: usize = 64;
/// Most entries indexed in one image (a full Debian DVD has about 70 000).
pub const MAX_ENTRIES: usize = 2_000_000;
/// Largest directory extent read (a directory of ~100 000 entries is about 10 MiB).
pub const MAX_DIR_BYTES: u64 = 64 << 20;
/// Longest symlink chain followed in one lookup (Linux uses 40 too).
pub const MAX_SYMLINK_HOPS: usize = 40;
/// Volume descriptors read before giving up on finding the set terminator.
const MAX_DESCRIPTORS: u64 = 64;
/// Rock Ridge continuation areas (CE) followed for one directory record.
const MAX_CONTINUATIONS: usize = 16;
/// Longest Rock Ridge symlink target (Linux's PATH_MAX: no real file system holds longer).
pub const MAX_SYMLINK_TARGET: usize = 4096;
/// Longest Rock Ridge name (NM) kept while assembling it; longer names are not indexed.
const MAX_NAME: usize = 1024;
/// Most system use bytes (SUSP entries in directory records and their continuation areas)
/// read for one image, also never more than the image's own size. A continuation area can be
/// shared by any number of records and is read again for each of them: without this, a few
/// megabytes of image made indexing assemble gigabytes of symlink targets. Real images use
/// a few hundred bytes per entry (a Debian DVD: about 20 MiB for 70 000 entries).
pub const MAX_SYSTEM_USE_BYTES: u64 = 64 << 20;

/// Which names the index uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameScheme {
    /// POSIX names, symlinks and deep directories from the Rock Ridge extension.
    RockRidge,
    /// UCS-2 names from the Joliet supplementary volume descriptor.
    Joliet,
    /// Plain ISO 9660 names (`;1` versions and trailing dots removed).
    Iso9660,
}

/// Why an image cannot be served. Display names the file and what is wrong.
#[derive(Debug, Error)]
#[error("ISO image {}: {kind}", path.display())]
pub struct IsoError {
    /// The image file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub kind: IsoErrorKind,
}

/// The kinds of [`IsoError`].
#[derive(Debug, Error)]
pub enum IsoErrorKind {
    /// The file could not be opened, stat'ed or read.
    #[error("cannot read the file: {0}")]
    Io(#[from] io::Error),
    /// No ISO 9660 volume descriptor where one must be.
    #[error("not an ISO 9660 image: {0}")]
    NotIso(String),
    /// Structures point past the end of the file.
    #[error("truncated image: {0}")]
    Truncated(String),
    /// Structures are inconsistent (loops, absurd sizes, bad records).
    #[error("corrupt image: {0}")]
    Corrupt(String),
}

/// What an entry is, for listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
}

/// One entry of a directory listing (symlinks are shown as what they point to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoEntry {
    pub name: String,
    pub kind: EntryKind,
    /// Bytes for files, 0 for directories.
    pub len: u64,
    pub modified: Option<SystemTime>,
}

#[derive(Debug)]
enum NodeKind {
    Dir {
        children: HashMap<String, u32>,
        /// Lower-cased name -> entry; `None` when two names differ only by case (ambiguous:
        /// refuse to guess, as the content layer's `Root` does).
        folded: HashMap<String, Option<u32>>,
    },
    File {
        extents: Vec<Extent>,
        len: u64,
    },
    Symlink {
        target: String,
    },
}

#[derive(Debug)]
struct Node {
    parent: u32,
    modified: Option<SystemTime>,
    kind: NodeKind,
}

/// What the image file looked like when indexed; a change means re-index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    len: u64,
    mtime_ns: i128,
    ino: u64,
    dev: u64,
}

impl FileStamp {
    pub(crate) fn of(meta: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            len: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            ino: meta.ino(),
            dev: meta.dev(),
        }
    }
}

/// An indexed image. Lookups never touch the file; content reads do (positioned reads).
#[derive(Debug)]
pub struct IsoImage {
    path: PathBuf,
    file: Arc<File>,
    stamp: FileStamp,
    scheme: NameScheme,
    volume_id: String,
    nodes: Vec<Node>,
}

const ROOT: u32 = 0;

/// A directory found while reading another: (node, sector, bytes, path).
type Subdir = (u32, u32, u64, String);

/// A directory waiting in the breadth-first walk: its node, extent, nesting depth and path.
struct DirToRead {
    node: u32,
    lba: u32,
    len: u64,
    depth: usize,
    path: String,
}

impl IsoImage {
    /// Opens and indexes an image. Every problem is an [`IsoError`] naming the file.
    pub fn open(path: impl AsRef<Path>) -> Result<IsoImage, IsoError> {
        let path = path.as_ref().to_path_buf();
        Self::open_inner(&path).map_err(|kind| IsoError { path, kind })
    }

    fn open_inner(path: &Path) -> Result<IsoImage, IsoErrorKind> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(IsoErrorKind::NotIso("not a regular file".into()));
        }
        let stamp = FileStamp::of(&meta);
        let reader = Reader {
            file: &file,
            len: meta.len(),
            system_use: std::cell::Cell::new(0),
        };
        if reader.len < 17 * SECTOR {
            return Err(IsoErrorKind::NotIso(format!(
                "the file is {} bytes; an ISO 9660 image has its volume descriptors at byte {}",
                reader.len,
                16 * SECTOR
            )));
        }

        let (primary, joliet) = reader.volume_descriptors()?;
        check_primary(&primary, reader.len)?;
        let volume_id = String::from_utf8_lossy(&primary[40..72]).trim().to_string();

        let primary_root = DirRecord::parse(&primary[156..190])
            .ok_or_else(|| IsoErrorKind::Corrupt("bad root directory record".into()))?;
        // Rock Ridge is announced by a SUSP "SP" entry in the root's "." record (SUSP 5.3).
        let susp_skip = reader.susp_skip(&primary_root)?;
        let (scheme, root) = match (susp_skip, &joliet) {
            (Some(_), _) => (NameScheme::RockRidge, primary_root),
            (None, Some(svd)) => (
                NameScheme::Joliet,
                DirRecord::parse(&svd[156..190]).ok_or_else(|| {
                    IsoErrorKind::Corrupt("bad Joliet root directory record".into())
                })?,
            ),
            (None, None) => (NameScheme::Iso9660, primary_root),
        };

        let mut image = IsoImage {
            path: path.to_path_buf(),
            file: Arc::new(file.try_clone()?),
            stamp,
            scheme,
            volume_id,
            nodes: vec![Node {
                parent: ROOT,
                modified: root.modified,
                kind: NodeKind::Dir {
                    children: HashMap::new(),
                    folded: HashMap::new(),
                },
            }],
        };
        image.index(&reader, &root, susp_skip.unwrap_or(0))?;
        Ok(image)
    }

    /// Breadth-first walk of the directory tree.
    fn index(
        &mut self,
        reader: &Reader,
        root: &DirRecord,
        skip: usize,
    ) -> Result<(), IsoErrorKind> {
        let mut visited: HashSet<u32> = HashSet::new();
        let mut dir_bytes = 0u64;
        let mut queue: VecDeque<DirToRead> = VecDeque::new();
        queue.push_back(DirToRead {
            node: ROOT,
            lba: root.lba,
            len: root.len,
            depth: 0,
            path: String::new(),
        });
        while let Some(dir) = queue.pop_front() {
            let DirToRead {
                lba,
                len,
                depth,
                path: ref dir_path,
                ..
            } = dir;
            if !visited.insert(lba) {
                return Err(IsoErrorKind::Corrupt(format!(
                    "directory loop: /{dir_path} points back to a directory already read (sector {lba})"
                )));
            }
            if depth > MAX_DEPTH {
                return Err(IsoErrorKind::Corrupt(format!(
                    "directories nested deeper than {MAX_DEPTH} levels at /{dir_path}"
                )));
            }
            if len > MAX_DIR_BYTES {
                return Err(IsoErrorKind::Corrupt(format!(
                    "directory /{dir_path} claims {len} bytes (limit {MAX_DIR_BYTES})"
                )));
            }
            // Extents of a well-formed image never overlap, so all directories together fit
            // in the file; a hostile image with many directories pointing at the same large
            // region would otherwise make indexing read far more than the image.
            dir_bytes += len;
            if dir_bytes > reader.len {
                return Err(IsoErrorKind::Corrupt(format!(
                    "directories add up to more bytes than the image has (at /{dir_path}): \
                     overlapping directory extents"
                )));
            }
            let data = reader.read_extent(lba, len, &format!("directory /{dir_path}"))?;
            let records = parse_directory(&data, dir_path)?;
            self.index_records(reader, &dir, records, skip, &mut queue)?;
        }
        Ok(())
    }

    /// Adds the entries of one directory `dir` (its parsed `records`) below its node; the
    /// subdirectories found go to `queue`.
    fn index_records(
        &mut self,
        reader: &Reader,
        dir: &DirToRead,
        records: Vec<DirRecord>,
        skip: usize,
        queue: &mut VecDeque<DirToRead>,
    ) -> Result<(), IsoErrorKind> {
        let (dir_node, dir_path, depth) = (dir.node, dir.path.as_str(), dir.depth);
        let mut pending: Option<(DirRecord, Vec<Extent>)> = None;
        for rec in records {
            // Associated files (ECMA-119 9.1.6 bit 2, e.g. Mac resource forks) carry the
            // same name as the file and come before it; serving one instead of the file
            // would send the wrong bytes.
            if rec.is_dot() || rec.flags & FLAG_ASSOCIATED != 0 {
                continue;
            }
            if let Some((first, exts)) = pending.as_mut() {
                if first.raw_name != rec.raw_name {
                    return Err(IsoErrorKind::Corrupt(format!(
                        "multi-extent file in /{dir_path} is followed by a different name"
                    )));
                }
                if rec.len > 0 {
                    exts.push(reader.checked_extent(&rec, dir_path)?);
                }
                if rec.flags & FLAG_MULTI_EXTENT != 0 {
                    continue;
                }
                let (first, exts) = pending
                    .take()
                    .ok_or_else(|| IsoErrorKind::Corrupt("multi-extent bookkeeping".into()))?;
                // A multi-extent record set is always a regular file.
                self.add_file(reader, dir_node, &first, Some(exts), skip, dir_path)?;
                continue;
            }
            if rec.flags & FLAG_MULTI_EXTENT != 0 {
                if rec.flags & FLAG_DIRECTORY != 0 {
                    return Err(IsoErrorKind::Corrupt(format!(
                        "directory in /{dir_path} has the multi-extent flag"
                    )));
                }
                let mut exts = Vec::new();
                if rec.len > 0 {
                    exts.push(reader.checked_extent(&rec, dir_path)?);
                }
                pending = Some((rec, exts));
                continue;
            }
            let subdir = if rec.flags & FLAG_DIRECTORY != 0 {
                self.add_dir(reader, dir_node, &rec, skip, dir_path)?
            } else {
                self.add_file(reader, dir_node, &rec, None, skip, dir_path)?
            };
            if let Some((node, lba, len, path)) = subdir {
                queue.push_back(DirToRead {
                    node,
                    lba,
                    len,
                    depth: depth + 1,
                    path,
                });
            }
        }
        if pending.is_some() {
            return Err(IsoErrorKind::Corrupt(format!(
                "multi-extent file in /{dir_path} has no final extent"
            )));
        }
        Ok(())
    }

    /// Adds the directory described by `rec`; returns it to be read unless Rock Ridge
    /// relocated it or it has no usable name.
    fn add_dir(
        &mut self,
        reader: &Reader,
        dir_node: u32,
        rec: &DirRecord,
        skip: usize,
        dir_path: &str,
    ) -> Result<Option<Subdir>, IsoErrorKind> {
        let rr = self.rock_ridge(reader, rec, skip, dir_path)?;
        if rr.relocated {
            // RRIP 4.1.5.2: a relocated directory is reached through its CL entry in the
            // original place; hide it here.
            return Ok(None);
        }
        let Some(name) = self.entry_name(rec, &rr) else {
            return Ok(None);
        };
        let idx = self.insert_dir(dir_node, &name, rec.modified)?;
        Ok(idx.map(|idx| (idx, rec.lba, rec.len, join(dir_path, &name))))
    }

    /// An empty directory node named `name` below `dir_node` (see [`Self::insert`]).
    fn insert_dir(
        &mut self,
        dir_node: u32,
        name: &str,
        modified: Option<SystemTime>,
    ) -> Result<Option<u32>, IsoErrorKind> {
        self.insert(
            dir_node,
            name,
            modified,
            NodeKind::Dir {
                children: HashMap::new(),
                folded: HashMap::new(),
            },
        )
    }

    /// Adds a file, symlink or relocated directory (Rock Ridge CL) described by `rec`.
    /// `extents` holds all extents of a multi-extent file (`rec` is then its first record).
    fn add_file(
        &mut self,
        reader: &Reader,
        dir_node: u32,
        rec: &DirRecord,
        extents: Option<Vec<Extent>>,
        skip: usize,
        dir_path: &str,
    ) -> Result<Option<Subdir>, IsoErrorKind> {
        let rr = self.rock_ridge(reader, rec, skip, dir_path)?;
        let Some(name) = self.entry_name(rec, &rr) else {
            return Ok(None);
        };
        if let Some(lba) = rr.child_link {
            // RRIP 4.1.5.1: a placeholder file whose CL entry points at the real directory,
            // moved by mkisofs to stay within 8 levels. Its size is in its own "." record.
            let path = join(dir_path, &name);
            let first = reader.read_extent(lba, SECTOR, &format!("relocated directory /{path}"))?;
            let dot = DirRecord::parse(&first).ok_or_else(|| {
                IsoErrorKind::Corrupt(format!("relocated directory /{path} has no \".\" record"))
            })?;
            let idx = self.insert_dir(dir_node, &name, rec.modified)?;
            return Ok(idx.map(|idx| (idx, lba, dot.len, path)));
        }
        if let Some(target) = rr.symlink {
            self.insert(dir_node, &name, rec.modified, NodeKind::Symlink { target })?;
            return Ok(None);
        }
        if rec.unit_size != 0 || rec.gap_size != 0 {
            return Err(IsoErrorKind::Corrupt(format!(
                "/{} is recorded in interleaved mode, which is not supported",
                join(dir_path, &name)
            )));
        }
        let extents = match extents {
            Some(e) => e,
            None if rec.len > 0 => vec![reader.checked_extent(rec, dir_path)?],
            None => Vec::new(),
        };
        let len = extents.iter().map(|e| e.len).sum();
        self.insert(
            dir_node,
            &name,
            rec.modified,
            NodeKind::File { extents, len },
        )?;
        Ok(None)
    }

    fn rock_ridge(
        &self,
        reader: &Reader,
        rec: &DirRecord,
        skip: usize,
        dir_path: &str,
    ) -> Result<RockRidge, IsoErrorKind> {
        if self.scheme != NameScheme::RockRidge {
            return Ok(RockRidge::default());
        }
        reader.rock_ridge(rec, skip, dir_path)
    }

    /// The name an entry is indexed under; `None` for names that cannot be a path component.
    fn entry_name(&self, rec: &DirRecord, rr: &RockRidge) -> Option<String> {
        let name = match (self.scheme, &rr.name) {
            (NameScheme::RockRidge, Some(n)) => n.clone(),
            (NameScheme::Joliet, _) => strip_version(&decode_ucs2(&rec.raw_name)).to_string(),
            _ => plain_name(&rec.raw_name),
        };
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains(['/', '\0'])
            || name.len() > 1024
        {
            return None;
        }
        Some(name)
    }

    /// Inserts a child; returns `None` when the exact name already exists (first one wins).
    fn insert(
        &mut self,
        parent: u32,
        name: &str,
        modified: Option<SystemTime>,
        kind: NodeKind,
    ) -> Result<Option<u32>, IsoErrorKind> {
        if self.nodes.len() >= MAX_ENTRIES {
            return Err(IsoErrorKind::Corrupt(format!(
                "more than {MAX_ENTRIES} entries"
            )));
        }
        let idx = self.nodes.len() as u32;
        let NodeKind::Dir { children, folded } = &mut self.nodes[parent as usize].kind else {
            return Err(IsoErrorKind::Corrupt("entry inside a non-directory".into()));
        };
        if children.contains_key(name) {
            return Ok(None);
        }
        children.insert(name.to_string(), idx);
        folded
            .entry(name.to_lowercase())
            .and_modify(|e| *e = None)
            .or_insert(Some(idx));
        self.nodes.push(Node {
            parent,
            modified,
            kind,
        });
        Ok(Some(idx))
    }

    /// The image file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Which names were indexed.
    pub fn scheme(&self) -> NameScheme {
        self.scheme
    }

    /// The volume identifier from the primary descriptor.
    pub fn volume_id(&self) -> &str {
        &self.volume_id
    }

    /// Number of entries indexed (files, directories, symlinks; not the root).
    pub fn entry_count(&self) -> usize {
        self.nodes.len() - 1
    }

    /// Looks a path up: per component the exact name, then a case-insensitive match;
    /// symlinks are followed inside the image (absolute targets from the image root) and a
    /// target that leaves the image is refused.
    fn lookup(&self, path: Option<&CleanPath>) -> Result<u32, ResolveError> {
        let mut queue: VecDeque<String> = path
            .map(|p| p.parts().iter().cloned().collect())
            .unwrap_or_default();
        let mut cur = ROOT;
        let mut hops = 0usize;
        while let Some(part) = queue.pop_front() {
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    if cur == ROOT {
                        return Err(ResolveError::Forbidden(
                            "a symlink points outside the image".into(),
                        ));
                    }
                    cur = self.nodes[cur as usize].parent;
                    continue;
                }
                _ => {}
            }
            let NodeKind::Dir { children, folded } = &self.nodes[cur as usize].kind else {
                return Err(ResolveError::NotFound);
            };
            let folded = || folded.get(&part.to_lowercase()).copied().flatten();
            // Plain ISO 9660 images carry the names their writer mangled: the name a profile
            // or a client uses (`install.amd/vmlinuz`) finds `INSTALL_AMD/VMLINUZ` too.
            let mangled = || {
                (self.scheme == NameScheme::Iso9660)
                    .then(|| level1_names(&part))
                    .into_iter()
                    .flatten()
                    .find_map(|n| children.get(&n).copied())
            };
            let child = match children.get(&part) {
                Some(c) => *c,
                None => folded().or_else(mangled).ok_or(ResolveError::NotFound)?,
            };
            if let NodeKind::Symlink { target } = &self.nodes[child as usize].kind {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(ResolveError::Forbidden(format!(
                        "more than {MAX_SYMLINK_HOPS} symlinks in a chain"
                    )));
                }
                if target.starts_with('/') {
                    cur = ROOT;
                }
                for (i, t) in target.split('/').enumerate() {
                    queue.insert(i, t.to_string());
                }
                continue;
            }
            cur = child;
        }
        Ok(cur)
    }

    /// The content of a file in the image, read by positioned reads of the image file.
    pub fn content(&self, path: &CleanPath) -> Result<Content, ResolveError> {
        let idx = self.lookup(Some(path))?;
        let node = &self.nodes[idx as usize];
        match &node.kind {
            NodeKind::Dir { .. } => Err(ResolveError::IsDirectory),
            NodeKind::Symlink { .. } => Err(ResolveError::NotFound),
            NodeKind::File { extents, .. } => {
                let content = Content::from_extents(self.file.clone(), extents.clone())?;
                // The extents were computed from the file as it was at indexing time; if it
                // changed since (same inode, rewritten in place), they may point at other
                // bytes. Refuse rather than serve a mix.
                if FileStamp::of(&self.file.metadata()?) != self.stamp {
                    return Err(ResolveError::Io(chainboot_content::changed_error()));
                }
                Ok(content.with_modified(node.modified))
            }
        }
    }

    /// Lists a directory (`None` = the image root), sorted by name. Symlinks are shown as
    /// what they resolve to; dangling or escaping ones are left out.
    pub fn list(&self, dir: Option<&CleanPath>) -> Result<Vec<IsoEntry>, ResolveError> {
        let idx = self.lookup(dir)?;
        let NodeKind::Dir { children, .. } = &self.nodes[idx as usize].kind else {
            return Err(ResolveError::NotFound);
        };
        let base: Vec<String> = dir.map(|d| d.parts().to_vec()).unwrap_or_default();
        let mut out = Vec::with_capacity(children.len());
        for (name, &child) in children {
            let target = match &self.nodes[child as usize].kind {
                NodeKind::Symlink { .. } => {
                    let mut parts = base.clone();
                    parts.push(name.clone());
                    let Ok(p) = CleanPath::from_parts(&parts) else {
                        continue;
                    };
                    match self.lookup(Some(&p)) {
                        Ok(t) => t,
                        Err(_) => continue,
                    }
                }
                _ => child,
            };
            let node = &self.nodes[target as usize];
            let (kind, len) = match &node.kind {
                NodeKind::Dir { .. } => (EntryKind::Dir, 0),
                NodeKind::File { len, .. } => (EntryKind::File, *len),
                NodeKind::Symlink { .. } => continue,
            };
            out.push(IsoEntry {
                name: name.clone(),
                kind,
                len,
                modified: node.modified,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Every regular file reachable without following symlinks, with its path (for `check`
    /// and tests).
    pub fn files(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut stack = vec![(ROOT, String::new())];
        while let Some((idx, path)) = stack.pop() {
            if let NodeKind::Dir { children, .. } = &self.nodes[idx as usize].kind {
                for (name, &c) in children {
                    let p = join(&path, name);
                    match &self.nodes[c as usize].kind {
                        NodeKind::Dir { .. } => stack.push((c, p)),
                        NodeKind::File { len, .. } => out.push((p, *len)),
                        NodeKind::Symlink { .. } => {}
                    }
                }
            }
        }
        out.sort();
        out
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

const FLAG_DIRECTORY: u8 = 0x02;
const FLAG_ASSOCIATED: u8 = 0x04;
const FLAG_MULTI_EXTENT: u8 = 0x80;

/// A directory record (ECMA-119 9.1), the fields we use.
#[derive(Debug, Clone)]
struct DirRecord {
    lba: u32,
    len: u64,
    modified: Option<SystemTime>,
    flags: u8,
    unit_size: u8,
    gap_size: u8,
    raw_name: Vec<u8>,
    /// The system use area (SUSP entries), after the name and its padding byte.
    system_use: Vec<u8>,
}

impl DirRecord {
    fn parse(b: &[u8]) -> Option<DirRecord> {
        let rec_len = *b.first()? as usize;
        if rec_len < 34 || rec_len > b.len() {
            return None;
        }
        let name_len = b[32] as usize;
        if 33 + name_len > rec_len {
            return None;
        }
        let su_start = 33 + name_len + (1 - name_len % 2);
        Some(DirRecord {
            lba: le32(&b[2..6]),
            len: le32(&b[10..14]) as u64,
            modified: record_time(&b[18..25]),
            flags: b[25],
            unit_size: b[26],
            gap_size: b[27],
            raw_name: b[33..33 + name_len].to_vec(),
            system_use: b.get(su_start..rec_len).unwrap_or_default().to_vec(),
        })
    }

    /// The "." and ".." records (names 0x00 and 0x01).
    fn is_dot(&self) -> bool {
        self.raw_name.len() == 1 && self.raw_name[0] <= 1
    }
}

/// Splits a directory extent into records. Records never cross a sector boundary; a zero
/// length byte means "the rest of this sector is padding" (ECMA-119 6.8.1.1).
fn parse_directory(data: &[u8], dir_path: &str) -> Result<Vec<DirRecord>, IsoErrorKind> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        let rec_len = data[pos] as usize;
        let sector_end = (pos / SECTOR as usize + 1) * SECTOR as usize;
        if rec_len == 0 {
            pos = sector_end;
            continue;
        }
        if pos + rec_len > sector_end.min(data.len()) {
            return Err(IsoErrorKind::Corrupt(format!(
                "directory /{dir_path}: record at byte {pos} runs over its sector"
            )));
        }
        let rec = DirRecord::parse(&data[pos..pos + rec_len]).ok_or_else(|| {
            IsoErrorKind::Corrupt(format!(
                "directory /{dir_path}: malformed record at byte {pos}"
            ))
        })?;
        out.push(rec);
        pos += rec_len;
    }
    Ok(out)
}

/// Rock Ridge facts of one directory record.
#[derive(Debug, Default)]
struct RockRidge {
    name: Option<String>,
    symlink: Option<String>,
    relocated: bool,
    child_link: Option<u32>,
}

struct Reader<'a> {
    file: &'a File,
    len: u64,
    /// System use bytes read so far (see [`MAX_SYSTEM_USE_BYTES`]).
    system_use: std::cell::Cell<u64>,
}

impl Reader<'_> {
    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, IsoErrorKind> {
        if offset
            .checked_add(len as u64)
            .is_none_or(|end| end > self.len)
        {
            return Err(IsoErrorKind::Truncated(format!(
                "{len} bytes at offset {offset} are past the end of the file ({} bytes)",
                self.len
            )));
        }
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    fn read_extent(&self, lba: u32, len: u64, what: &str) -> Result<Vec<u8>, IsoErrorKind> {
        let offset = lba as u64 * SECTOR;
        if offset + len > self.len {
            return Err(IsoErrorKind::Truncated(format!(
                "{what} (sector {lba}, {len} bytes) lies past the end of the file ({} bytes)",
                self.len
            )));
        }
        self.read(offset, len as usize)
    }

    fn checked_extent(&self, rec: &DirRecord, dir_path: &str) -> Result<Extent, IsoErrorKind> {
        let offset = rec.lba as u64 * SECTOR;
        if offset + rec.len > self.len {
            return Err(IsoErrorKind::Truncated(format!(
                "a file in /{dir_path} (sector {}, {} bytes) lies past the end of the file ({} bytes)",
                rec.lba, rec.len, self.len
            )));
        }
        Ok(Extent {
            offset,
            len: rec.len,
        })
    }

    /// Looks for the SUSP "SP" entry in the root's "." record; returns its skip length.
    fn susp_skip(&self, root: &DirRecord) -> Result<Option<usize>, IsoErrorKind> {
        let first = self.read_extent(root.lba, SECTOR.min(root.len.max(34)), "root directory")?;
        let Some(dot) = DirRecord::parse(&first) else {
            return Err(IsoErrorKind::Corrupt(
                "root directory has no \".\" record".into(),
            ));
        };
        let su = &dot.system_use;
        if su.len() >= 7 && &su[0..2] == b"SP" && su[4] == 0xBE && su[5] == 0xEF {
            return Ok(Some(su[6] as usize));
        }
        Ok(None)
    }

    /// Counts `bytes` of system use data against the image's budget.
    fn charge_system_use(&self, bytes: u64, dir_path: &str) -> Result<(), IsoErrorKind> {
        let total = self.system_use.get() + bytes;
        self.system_use.set(total);
        let limit = MAX_SYSTEM_USE_BYTES.min(self.len);
        if total > limit {
            return Err(IsoErrorKind::Corrupt(format!(
                "Rock Ridge system use data adds up to more than {limit} bytes (at /{dir_path}; \
                 the limit is the image size, at most {MAX_SYSTEM_USE_BYTES}): continuation \
                 areas shared between records?"
            )));
        }
        Ok(())
    }

    /// Parses the SUSP entries of a record, following continuation areas (CE).
    fn rock_ridge(
        &self,
        rec: &DirRecord,
        skip: usize,
        dir_path: &str,
    ) -> Result<RockRidge, IsoErrorKind> {
        let mut rr = RockRidge::default();
        let mut name = Vec::new();
        let mut name_seen = false;
        let mut link = SymlinkBuilder::default();
        let mut area = rec.system_use.get(skip..).unwrap_or_default().to_vec();
        self.charge_system_use(area.len() as u64, dir_path)?;
        let mut hops = 0;
        loop {
            let mut next: Option<(u32, u64, u64)> = None;
            let mut pos = 0usize;
            while pos + 4 <= area.len() {
                let sig = [area[pos], area[pos + 1]];
                let len = area[pos + 2] as usize;
                if len < 4 || pos + len > area.len() {
                    break;
                }
                let e = &area[pos..pos + len];
                match &sig {
                    // Flags 2/4 mean "." / ".." (RRIP 4.1.4): not a real name.
                    b"NM" if len >= 5 && e[4] & 0x06 == 0 => {
                        // Past the longest name indexed it is dropped anyway (`entry_name`);
                        // keep one byte more so that it still reads as too long.
                        let room = (MAX_NAME + 1).saturating_sub(name.len());
                        name.extend_from_slice(&e[5..][..room.min(len - 5)]);
                        name_seen = true;
                    }
                    b"SL" if len >= 5 => link.add(&e[5..]),
                    b"RE" => rr.relocated = true,
                    b"CL" if len >= 12 => rr.child_link = Some(le32(&e[4..8])),
                    b"CE" if len >= 28 => {
                        next = Some((
                            le32(&e[4..8]),
                            le32(&e[12..16]) as u64,
                            le32(&e[20..24]) as u64,
                        ))
                    }
                    b"ST" => break,
                    _ => {}
                }
                pos += len;
            }
            let Some((lba, offset, len)) = next else {
                break;
            };
            hops += 1;
            if hops > MAX_CONTINUATIONS || len > SECTOR || offset >= SECTOR {
                return Err(IsoErrorKind::Corrupt(format!(
                    "Rock Ridge continuation area at sector {lba} is invalid or chained too long"
                )));
            }
            self.charge_system_use(len, dir_path)?;
            area = self.read(lba as u64 * SECTOR + offset, len as usize)?;
        }
        if name_seen {
            rr.name = Some(String::from_utf8_lossy(&name).into_owned());
        }
        rr.symlink = link.finish().map_err(|()| {
            IsoErrorKind::Corrupt(format!(
                "a Rock Ridge symlink in /{dir_path} has a target longer than \
                 {MAX_SYMLINK_TARGET} bytes"
            ))
        })?;
        Ok(rr)
    }
}

/// Assembles an RRIP "SL" symlink target from its component records (RRIP 4.1.3.1), up to
/// [`MAX_SYMLINK_TARGET`] bytes.
#[derive(Default)]
struct SymlinkBuilder {
    target: Option<String>,
    /// The last component had the CONTINUE flag: the next one is glued on without a `/`.
    continuing: bool,
    /// The target grew past the cap: the rest is not assembled.
    too_long: bool,
}

impl SymlinkBuilder {
    fn add(&mut self, mut comps: &[u8]) {
        let target = self.target.get_or_insert_with(String::new);
        while comps.len() >= 2 && !self.too_long {
            let flags = comps[0];
            let len = comps[1] as usize;
            let Some(content) = comps.get(2..2 + len) else {
                break;
            };
            if !self.continuing && !target.is_empty() && !target.ends_with('/') {
                target.push('/');
            }
            match flags & 0x0E {
                0x02 => target.push('.'),
                0x04 => target.push_str(".."),
                0x08 => target.push('/'),
                _ => target.push_str(&String::from_utf8_lossy(content)),
            }
            self.continuing = flags & 0x01 != 0;
            comps = &comps[2 + len..];
            if target.len() > MAX_SYMLINK_TARGET {
                self.too_long = true;
                target.clear();
            }
        }
    }

    /// The target, `Ok(None)` when the record has no SL entry, `Err` when it was too long.
    fn finish(self) -> Result<Option<String>, ()> {
        if self.too_long {
            return Err(());
        }
        Ok(self.target)
    }
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Removes the `;N` version suffix.
fn strip_version(name: &str) -> &str {
    match name.rfind(';') {
        Some(i) if name[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &name[..i],
        _ => name,
    }
}

/// The names writers of plain ISO 9660 images give a POSIX name: upper case, characters other
/// than `A-Z 0-9 _` as `_`, every dot but the last as `_` (all of them in directory names, so
/// both forms are tried), and those cut to 8.3 (level 1: 8 characters, a 3-character
/// extension). `install.amd` -> `INSTALL_AMD`, `INSTALL_`; `vmlinuz-6.1.0` ->
/// `VMLINUZ_6_1.0`, `VMLINUZ_.0`.
fn level1_names(name: &str) -> Vec<String> {
    let mapped: String = name
        .chars()
        .map(|c| match c.to_ascii_uppercase() {
            c @ ('A'..='Z' | '0'..='9' | '_' | '.') => c,
            _ => '_',
        })
        .collect();
    let as_dir = mapped.replace('.', "_");
    let as_file = match mapped.rfind('.') {
        Some(i) => format!("{}.{}", mapped[..i].replace('.', "_"), &mapped[i + 1..]),
        None => mapped.clone(),
    };
    let cut = |n: &str| -> String {
        match n.rfind('.') {
            Some(i) => {
                let base: String = n[..i].chars().take(8).collect();
                let ext: String = n[i + 1..].chars().take(3).collect();
                format!("{base}.{ext}")
            }
            None => n.chars().take(8).collect(),
        }
    };
    let mut out = vec![as_file.clone(), as_dir.clone(), cut(&as_file), cut(&as_dir)];
    out.dedup();
    out
}

/// A plain ISO 9660 name: `README.;1` -> `README`, `VMLINUZ.;1` -> `VMLINUZ`,
/// `INITRD.GZ;1` -> `INITRD.GZ` (ECMA-119 7.5.1 always writes the dot, even without an
/// extension).
fn plain_name(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    strip_version(&s).trim_end_matches('.').to_string()
}

/// Joliet names are UCS-2 big-endian; unpaired surrogates become U+FFFD.
fn decode_ucs2(raw: &[u8]) -> String {
    let units = raw
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]));
    char::decode_utf16(units)
        .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect()
}

/// ECMA-119 9.1.5 recording date: years since 1900, month, day, hour, minute, second, and
/// the offset from GMT in 15-minute units.
fn record_time(b: &[u8]) -> Option<SystemTime> {
    let (y, mo, d, h, mi, s) = (
        b[0] as i64 + 1900,
        b[1] as i64,
        b[2] as i64,
        b[3],
        b[4],
        b[5],
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let offset = b[6] as i8 as i64 * 15 * 60;
    // Days from civil (Howard Hinnant's algorithm).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h as i64 * 3600 + mi as i64 * 60 + s as i64 - offset;
    u64::try_from(secs)
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

impl Reader<'_> {
    /// Reads the volume descriptor set (from sector 16 to its terminator): the primary
    /// descriptor and, if present, a Joliet supplementary one.
    fn volume_descriptors(&self) -> Result<(Vec<u8>, Option<Vec<u8>>), IsoErrorKind> {
        let mut primary: Option<Vec<u8>> = None;
        let mut joliet: Option<Vec<u8>> = None;
        let mut terminated = false;
        for i in 0..MAX_DESCRIPTORS {
            let at = (16 + i) * SECTOR;
            if at + SECTOR > self.len {
                break;
            }
            let vd = self.read(at, SECTOR as usize)?;
            if &vd[1..6] != b"CD001" {
                if i == 0 {
                    return Err(IsoErrorKind::NotIso(
                        "no CD001 volume descriptor at sector 16".into(),
                    ));
                }
                return Err(IsoErrorKind::Corrupt(format!(
                    "volume descriptor {i} has no CD001 signature and no terminator came before it"
                )));
            }
            match vd[0] {
                1 if primary.is_none() => primary = Some(vd),
                // Joliet: a supplementary descriptor whose escape sequence names UCS-2 level
                // 1, 2 or 3 (%/@, %/C, %/E).
                2 if joliet.is_none()
                    && vd[88] == b'%'
                    && vd[89] == b'/'
                    && matches!(vd[90], b'@' | b'C' | b'E') =>
                {
                    joliet = Some(vd)
                }
                255 => {
                    terminated = true;
                    break;
                }
                _ => {}
            }
        }
        let primary =
            primary.ok_or_else(|| IsoErrorKind::NotIso("no primary volume descriptor".into()))?;
        if !terminated {
            return Err(IsoErrorKind::Corrupt(
                "no volume descriptor set terminator".into(),
            ));
        }
        Ok((primary, joliet))
    }
}

/// Checks the primary descriptor's block size and volume size against the file.
fn check_primary(primary: &[u8], file_len: u64) -> Result<(), IsoErrorKind> {
    let block_size = u16::from_le_bytes([primary[128], primary[129]]) as u64;
    if block_size != SECTOR {
        return Err(IsoErrorKind::Corrupt(format!(
            "logical block size {block_size} (only 2048 is supported)"
        )));
    }
    let volume_blocks = le32(&primary[80..84]) as u64;
    if volume_blocks * SECTOR > file_len {
        return Err(IsoErrorKind::Truncated(format!(
            "the volume is {} bytes but the file has only {}",
            volume_blocks * SECTOR,
            file_len
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_lose_versions_and_trailing_dots() {
        assert_eq!(plain_name(b"README.;1"), "README");
        assert_eq!(plain_name(b"INITRD.GZ;1"), "INITRD.GZ");
        assert_eq!(plain_name(b"BOOT"), "BOOT");
        assert_eq!(plain_name(b"A.B;12"), "A.B");
    }

    #[test]
    fn level1_manglings_of_posix_names() {
        assert!(level1_names("install.amd").contains(&"INSTALL_AMD".to_string()));
        assert!(level1_names("install.amd").contains(&"INSTALL_".to_string()));
        assert!(level1_names("vmlinuz-6.1.0-amd64").contains(&"VMLINUZ_6_1.0_AMD64".to_string()));
        assert!(level1_names("README.markdown").contains(&"README.MAR".to_string()));
        assert_eq!(level1_names("vmlinuz")[0], "VMLINUZ");
    }

    #[test]
    fn joliet_names_decode_from_ucs2_be() {
        let raw: Vec<u8> = "Grüße;1"
            .encode_utf16()
            .flat_map(|u| u.to_be_bytes())
            .collect();
        assert_eq!(strip_version(&decode_ucs2(&raw)), "Grüße");
    }

    #[test]
    fn recording_dates_convert_with_their_gmt_offset() {
        // 2024-02-29 12:00:00 at GMT+1 (4 quarter hours) = 11:00:00 UTC.
        let t = record_time(&[124, 2, 29, 12, 0, 0, 4]).unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_709_204_400
        );
        assert!(record_time(&[0, 0, 0, 0, 0, 0, 0]).is_none());
    }

    #[test]
    fn symlink_components_assemble() {
        let mut b = SymlinkBuilder::default();
        // "../dir/fi" + "le" (continued) as RRIP component records.
        b.add(&[0x04, 0, 0, 3, b'd', b'i', b'r', 0x01, 2, b'f', b'i']);
        b.add(&[0, 2, b'l', b'e']);
        assert_eq!(b.finish().unwrap().unwrap(), "../dir/file");
        let mut b = SymlinkBuilder::default();
        b.add(&[0x08, 0, 0, 3, b'u', b's', b'r']);
        assert_eq!(b.finish().unwrap().unwrap(), "/usr");
    }

    #[test]
    fn symlink_targets_stop_at_the_cap() {
        let component = |n: u8| {
            let mut c = vec![0u8, 250];
            c.extend(std::iter::repeat_n(n, 250));
            c
        };
        // 16 components of 250 bytes and their slashes: 4015 bytes, under the cap.
        let mut b = SymlinkBuilder::default();
        for i in 0..16 {
            b.add(&component(b'a' + i));
        }
        assert_eq!(b.finish().unwrap().unwrap().len(), 16 * 251 - 1);
        // One more goes past it: refused, and nothing more is kept while adding.
        let mut b = SymlinkBuilder::default();
        for i in 0..1000 {
            b.add(&component(b'a' + (i % 26) as u8));
            assert!(b
                .target
                .as_ref()
                .is_some_and(|t| t.len() <= MAX_SYMLINK_TARGET + 251));
        }
        assert!(b.finish().is_err());
    }

    #[test]
    fn records_over_a_sector_boundary_are_corrupt() {
        let mut data = vec![0u8; 2 * SECTOR as usize];
        for i in 0..8 {
            data[i * 255] = 255;
            data[i * 255 + 32] = 1;
        }
        assert_eq!(
            parse_directory(&data[..SECTOR as usize], "x")
                .unwrap()
                .len(),
            8
        );
        // A record running over its sector is refused.
        data[2040] = 40;
        data[2040 + 32] = 1;
        assert!(parse_directory(&data, "x").is_err());
        // A zero length byte skips to the next sector.
        assert!(parse_directory(&[0u8; SECTOR as usize], "x")
            .unwrap()
            .is_empty());
    }
}
