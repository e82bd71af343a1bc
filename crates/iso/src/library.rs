//! The configured images by name, re-indexed when their files change.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use chainboot_content::{CleanPath, Content, Request, ResolveError, Resolver};
use parking_lot::Mutex;

use crate::image::FileStamp;
use crate::{IsoConfig, IsoEntry, IsoError, IsoImage, NameScheme};

struct Slot {
    config: IsoConfig,
    state: Mutex<State>,
}

struct State {
    image: Result<Arc<IsoImage>, Arc<IsoError>>,
    /// The file as it was when `image` was produced (`None` when it could not be stat'ed).
    stamp: Option<FileStamp>,
}

/// How one configured image stands, for `check`, the start-up log and the dashboard.
#[derive(Debug, Clone)]
pub struct IsoStatus {
    pub name: String,
    pub path: PathBuf,
    pub required: bool,
    /// The names used and the number of entries, or the error (names the file).
    pub result: Result<(NameScheme, usize), String>,
}

/// The `[[iso]]` images by name. Images that failed to open are kept (with their error) so
/// that the rest are served; each access re-checks the image file (one `stat`) and
/// re-indexes it when its size, mtime or inode changed. Readers that already hold a
/// [`Content`] keep the old index: their reads fail through the content fingerprint when the
/// file was rewritten in place, and keep reading the old inode when it was replaced by a
/// rename, so no response ever mixes bytes of two images.
///
/// All methods are synchronous (the TFTP resolver calls them directly; async callers should
/// use `spawn_blocking`, since a re-index reads the image's directories).
pub struct IsoLibrary {
    slots: HashMap<String, Slot>,
}

impl std::fmt::Debug for IsoLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IsoLibrary")
            .field("names", &self.names())
            .finish()
    }
}

fn stamp_of(path: &std::path::Path) -> io::Result<FileStamp> {
    std::fs::metadata(path).map(|m| FileStamp::of(&m))
}

fn load(path: &std::path::Path) -> State {
    // Stamp first: if the file changes while being indexed, the next access sees a newer
    // stamp and indexes again.
    let stamp = stamp_of(path).ok();
    let image = IsoImage::open(path).map(Arc::new).map_err(Arc::new);
    State { image, stamp }
}

impl IsoLibrary {
    /// Indexes every configured image. Never fails: broken images are kept with their error
    /// (see [`IsoLibrary::status`] and [`IsoLibrary::open`]).
    pub fn new(configs: &[IsoConfig]) -> IsoLibrary {
        let slots = configs
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    Slot {
                        config: c.clone(),
                        state: Mutex::new(load(&c.path)),
                    },
                )
            })
            .collect();
        IsoLibrary { slots }
    }

    /// Like [`IsoLibrary::new`], but fails with the first error of an image marked
    /// `required = true`.
    pub fn open(configs: &[IsoConfig]) -> Result<IsoLibrary, Arc<IsoError>> {
        let lib = IsoLibrary::new(configs);
        for c in configs.iter().filter(|c| c.required) {
            if let Some(slot) = lib.slots.get(&c.name) {
                if let Err(e) = &slot.state.lock().image {
                    return Err(e.clone());
                }
            }
        }
        Ok(lib)
    }

    /// An empty library (no `[[iso]]`).
    pub fn empty() -> IsoLibrary {
        IsoLibrary {
            slots: HashMap::new(),
        }
    }

    /// Configured names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self.slots.keys().cloned().collect();
        n.sort();
        n
    }

    /// The state of every image, sorted by name (does not re-check the files).
    pub fn status(&self) -> Vec<IsoStatus> {
        let mut out: Vec<IsoStatus> = self
            .slots
            .values()
            .map(|s| {
                let st = s.state.lock();
                IsoStatus {
                    name: s.config.name.clone(),
                    path: s.config.path.clone(),
                    required: s.config.required,
                    result: match &st.image {
                        Ok(i) => Ok((i.scheme(), i.entry_count())),
                        Err(e) => Err(e.to_string()),
                    },
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn slot(&self, name: &str) -> Option<&Slot> {
        self.slots.get(name).or_else(|| {
            self.slots
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
    }

    /// The current index of an image, re-indexed first if the file changed.
    pub fn image(&self, name: &str) -> Result<Arc<IsoImage>, ResolveError> {
        let slot = self.slot(name).ok_or(ResolveError::NotFound)?;
        let mut st = slot.state.lock();
        let now = stamp_of(&slot.config.path).ok();
        if now != st.stamp || now.is_none() {
            *st = load(&slot.config.path);
        }
        match &st.image {
            Ok(img) => Ok(img.clone()),
            Err(e) => Err(ResolveError::Io(io::Error::other(e.to_string()))),
        }
    }

    /// A file inside image `name`.
    pub fn content(&self, name: &str, path: &CleanPath) -> Result<Content, ResolveError> {
        let img = self.image(name)?;
        match img.content(path) {
            // The file changed between the stamp check and the open: index again once.
            Err(ResolveError::Io(_)) => self.image(name)?.content(path),
            other => other,
        }
    }

    /// A directory inside image `name` (`None` = its root).
    pub fn list(&self, name: &str, dir: Option<&CleanPath>) -> Result<Vec<IsoEntry>, ResolveError> {
        self.image(name)?.list(dir)
    }
}

/// Paths are `NAME/path/in/image` (the binary strips its `iso/` prefix before asking).
impl Resolver for IsoLibrary {
    fn resolve(&self, req: &Request<'_>) -> Result<Content, ResolveError> {
        let rest = req.path.strip_prefix(1).ok_or(ResolveError::IsDirectory)?;
        self.content(req.path.first(), &rest)
    }
}
