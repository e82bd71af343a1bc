//! The content layer shared by chainboot's TFTP and HTTP servers.
//!
//! A request path goes through three steps, the same for both transports:
//! 1. [`CleanPath::parse`] normalises it (backslashes, leading slashes) and refuses `..`,
//!    control bytes and absurd lengths;
//! 2. a [`Resolver`] (composed by the binary: iPXE binaries, the TFTP/HTTP root, ISO images,
//!    generated per-machine files) maps it to a [`Content`];
//! 3. the server reads the content with positioned reads ([`Content::read_at`]), which fail
//!    instead of returning mixed bytes if the backing file changes underneath.

mod case_index;
mod content;
mod path;
mod root;

use std::net::SocketAddr;

pub use content::{changed_error, Content, Extent};
pub use path::{CleanPath, PathError, MAX_COMPONENTS, MAX_PATH_LEN};
pub use root::Root;

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
