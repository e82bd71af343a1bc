//! The content layer shared by chainboot's TFTP and HTTP servers.
//!
//! A request path goes through three steps, the same for both transports:
//! 1. [`CleanPath::parse`] normalises it (backslashes, leading slashes) and refuses `..`,
//!    control bytes and absurd lengths;
//! 2. a [`Resolver`] (composed by the binary: iPXE binaries, the TFTP/HTTP root, ISO images,
//!    generated per-machine files) maps it to a [`Content`];
//! 3. the server reads the content with positioned reads ([`Content::read_at`]), which fail
//!    instead of returning mixed bytes if the backing file changes underneath.

// cachestat(2), which no crate wraps yet.
#[allow(unsafe_code)]
mod cache;
mod case_index;
mod content;
mod path;
// openat2 (RESOLVE_BENEATH) and O_PATH descriptors, which std does not offer.
#[allow(unsafe_code)]
mod root;
mod served;

use std::net::SocketAddr;

pub use content::{changed_error, Content, Extent, FileState, SETTLE};

/// Takes the entry of `map` used longest ago (`used`: its last use, as a counter or a time),
/// for the caches that keep contents in memory within a bound; `None` when `map` is empty.
pub fn remove_least_recent<K, V>(
    map: &mut std::collections::HashMap<K, V>,
    used: impl Fn(&V) -> u64,
) -> Option<V>
where
    K: Clone + Eq + std::hash::Hash,
{
    let oldest = map
        .iter()
        .min_by_key(|(_, v)| used(v))
        .map(|(k, _)| k.clone())?;
    map.remove(&oldest)
}
pub use path::{CleanPath, PathError, MAX_COMPONENTS, MAX_PATH_LEN};
pub use root::Root;
pub use served::{Served, What};

/// Bytes of a requested path shown at most in events and log lines: a stranger's 16 KiB path
/// must not become 16 KiB per log line.
pub const MAX_SHOWN_PATH: usize = 256;

/// `path` as events and log lines show it: cut to [`MAX_SHOWN_PATH`] bytes (at a character
/// boundary) with a marker giving its real length; shorter paths unchanged.
pub fn shown_path(path: &str) -> std::borrow::Cow<'_, str> {
    if path.len() <= MAX_SHOWN_PATH {
        return path.into();
    }
    let mut end = MAX_SHOWN_PATH;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...[{} bytes]", &path[..end], path.len()).into()
}

use thiserror::Error;

/// Why a path could not be turned into content.
#[derive(Debug, Error)]
pub enum ResolveError {
    /// The path was refused before touching the file system.
    #[error("bad path: {0}")]
    BadPath(#[from] PathError),
    /// Nothing by that name.
    #[error("not found")]
    NotFound,
    /// It names a directory.
    #[error("is a directory")]
    IsDirectory,
    /// It exists but must not be served (escapes its root, not a regular file, ...).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Generating the content failed (template error, store error); the message is for logs.
    #[error("generation failed: {0}")]
    Generate(String),
    /// The file system said no.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl ResolveError {
    /// True for refusals that are worth counting as possible attacks (traversal, escapes).
    pub fn is_refusal(&self) -> bool {
        matches!(self, ResolveError::BadPath(_) | ResolveError::Forbidden(_))
    }
}

/// Which server is asking; resolvers may differ slightly (e.g. generated content may need to
/// know whether links should be `tftp://` or `http://`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tftp,
    Http,
}

/// One request for content.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The normalised path.
    pub path: &'a CleanPath,
    /// Who asked.
    pub client: SocketAddr,
    /// Over what.
    pub transport: Transport,
}

/// Maps request paths to content. Implemented by the binary's composition of roots, ISO
/// images and generators; servers only see this trait.
pub trait Resolver: Send + Sync + 'static {
    fn resolve(&self, req: &Request<'_>) -> Result<Content, ResolveError>;
}

/// A resolver over one directory, handy for tests and for `[tftp] root` alone.
impl Resolver for Root {
    fn resolve(&self, req: &Request<'_>) -> Result<Content, ResolveError> {
        self.open(req.path)
    }
}

#[cfg(test)]
mod shown_path_tests {
    use super::*;

    #[test]
    fn long_paths_are_cut_at_a_character_boundary_with_their_length() {
        let long = "é".repeat(8000);
        let cut = shown_path(&long);
        assert!(cut.len() <= MAX_SHOWN_PATH + 20, "{}", cut.len());
        assert!(cut.ends_with("...[16000 bytes]"), "{cut}");
        assert_eq!(shown_path("undionly.kpxe"), "undionly.kpxe");
    }
}
