//! Files straight out of ISO 9660 images, without mounting, copying or temp files.
//!
//! An image is indexed once when opened ([`IsoImage::open`]): the volume descriptors are read,
//! one directory tree is walked (Rock Ridge names when present, else Joliet, else plain 8.3
//! names), and every entry is kept in a per-directory name map (exact names, plus a
//! case-folded map for firmware and users that ask for `VMLINUZ` or `install.AMD`). A file is a
//! list of [`chainboot_content::Extent`]s in the image, so serving it is positioned reads of the
//! image file ([`chainboot_content::Content`]); TFTP and HTTP share that path.
//!
//! [`IsoLibrary`] holds the configured images by name (`[[iso]]`), including those that failed
//! to open (so the server starts the rest unless an image is `required`), and re-indexes an
//! image when its file's size, mtime or inode changes.
//!
//! # Why a hand-written reader
//! The crates available when this was written each miss something network boot needs:
//! hadris-iso trips on trailing-dot 8.3 names (`README.;1`, common on plain ISO 9660 images)
//! and does not decode Joliet names for listing; cdfs truncates files over 4 GiB (it ignores
//! the multi-extent flag, which is how ISO 9660 stores them, and installer DVD images carry
//! such files). The subset of ECMA-119 / SUSP / RRIP / Joliet needed to read is small, and
//! owning it lets every corrupt-image case be a clear error instead of a panic or a hang.
//!
//! # Defences
//! Corrupt or hostile images are bounded: directory loops (an extent visited twice),
//! extents past the end of the image, directory sizes and entry counts beyond sane limits,
//! nesting deeper than [`MAX_DEPTH`], symlink chains longer than [`MAX_SYMLINK_HOPS`] and
//! Rock Ridge continuation chains are all refused with an [`IsoError`] naming the file.

mod config;
mod image;
mod library;

pub use config::IsoConfig;
pub use image::{
    EntryKind, IsoEntry, IsoError, IsoErrorKind, IsoImage, NameScheme, MAX_DEPTH, MAX_DIR_BYTES,
    MAX_ENTRIES, MAX_SYMLINK_HOPS, MAX_SYMLINK_TARGET, MAX_SYSTEM_USE_BYTES, SECTOR,
};
pub use library::{IsoLibrary, IsoStatus};
