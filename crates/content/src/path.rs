//! Normalising the paths clients ask for.
//!
//! TFTP clients send DOS-style paths (`\pxelinux.cfg\default`), leading slashes and odd case;
//! HTTP clients send percent-encoded paths. Both end up here, after any transport decoding, so
//! that TFTP and HTTP apply exactly the same rules (one place decides).

use thiserror::Error;

/// Longest request path accepted, in bytes. PXE firmware paths are short; anything near this is
/// an attack or a bug, and refusing it early keeps later work bounded.
pub const MAX_PATH_LEN: usize = 1024;
/// Deepest directory nesting accepted.
pub const MAX_COMPONENTS: usize = 64;

/// Why a requested path was refused before touching the file system.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    #[error("path has more than {MAX_COMPONENTS} components")]
    TooDeep,
    #[error("path contains a NUL or control byte")]
    ControlByte,
    #[error("path contains a `..` component")]
    ParentComponent,
    #[error("path names a drive or device (`{0}`)")]
    Drive(String),
}

/// A request path reduced to plain components: no empty parts, no `.`, no `..`, no separators.
/// Joining it under a root can only name something under that root (symlinks aside, which
/// [`crate::Root`] handles when opening).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CleanPath {
    parts: Vec<String>,
}

impl CleanPath {
    /// Normalises a raw request path: backslashes fold to slashes (as dnsmasq does for Windows
    /// and PXE clients), leading slashes are dropped, `.` and empty components vanish, and any
    /// `..`, control byte or drive prefix (`C:`) refuses the whole path rather than being
    /// silently removed, so that an attack is visible in the logs as an attack.
    pub fn parse(raw: &str) -> Result<CleanPath, PathError> {
        if raw.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        if raw.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(PathError::ControlByte);
        }
        let mut parts = Vec::new();
        for part in raw.split(['/', '\\']) {
            match part {
                "" | "." => continue,
                ".." => return Err(PathError::ParentComponent),
                p => {
                    // `C:` style prefixes mean nothing on this server and have been used to
                    // probe Windows TFTP servers; refuse rather than guess.
                    if parts.is_empty() && p.len() == 2 && p.ends_with(':') {
                        return Err(PathError::Drive(p.to_string()));
                    }
                    parts.push(p.to_string());
                }
            }
            if parts.len() > MAX_COMPONENTS {
                return Err(PathError::TooDeep);
            }
        }
        if parts.is_empty() {
            return Err(PathError::Empty);
        }
        Ok(CleanPath { parts })
    }

    /// Components in order.
    pub fn parts(&self) -> &[String] {
        &self.parts
    }

    /// The path joined with `/`.
    pub fn as_string(&self) -> String {
        self.parts.join("/")
    }

    /// The first component, used to route `iso/NAME/...`, `pxelinux.cfg/...` and so on.
    pub fn first(&self) -> &str {
        &self.parts[0]
    }

    /// The last component (the file's name).
    pub fn last(&self) -> &str {
        self.parts.last().map(String::as_str).unwrap_or("")
    }

    /// Everything after the first `n` components, or `None` when nothing is left.
    pub fn strip_prefix(&self, n: usize) -> Option<CleanPath> {
        if self.parts.len() <= n {
            return None;
        }
        Some(CleanPath {
            parts: self.parts[n..].to_vec(),
        })
    }

    /// Builds a path from components that are already known to be clean (for callers that
    /// compose paths themselves). Components are re-checked.
    pub fn from_parts<I, S>(parts: I) -> Result<CleanPath, PathError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let joined: Vec<String> = parts.into_iter().map(|s| s.as_ref().to_string()).collect();
        CleanPath::parse(&joined.join("/"))
    }
}

impl std::fmt::Display for CleanPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        CleanPath::parse(raw).expect(raw).as_string()
    }

    #[test]
    fn backslashes_and_leading_slashes_fold() {
        assert_eq!(ok("\\pxelinux.cfg\\default"), "pxelinux.cfg/default");
        assert_eq!(ok("///undionly.kpxe"), "undionly.kpxe");
        assert_eq!(ok("a//b/./c/"), "a/b/c");
    }

    #[test]
    fn parent_components_refuse_the_whole_path() {
        for raw in ["../etc/passwd", "a/../../b", "..\\..\\x", "a/..", "/.."] {
            assert_eq!(
                CleanPath::parse(raw),
                Err(PathError::ParentComponent),
                "{raw}"
            );
        }
        // `...` and `..foo` are ordinary names.
        assert_eq!(ok("a/.../..foo"), "a/.../..foo");
    }

    #[test]
    fn control_bytes_long_and_empty_paths_are_refused() {
        assert_eq!(CleanPath::parse("a\0b"), Err(PathError::ControlByte));
        assert_eq!(CleanPath::parse("a\nb"), Err(PathError::ControlByte));
        assert_eq!(
            CleanPath::parse(&"a".repeat(MAX_PATH_LEN + 1)),
            Err(PathError::TooLong)
        );
        assert_eq!(
            CleanPath::parse(&"a/".repeat(MAX_COMPONENTS + 1)),
            Err(PathError::TooDeep)
        );
        assert_eq!(CleanPath::parse("/"), Err(PathError::Empty));
        assert_eq!(CleanPath::parse(""), Err(PathError::Empty));
        assert!(matches!(
            CleanPath::parse("C:\\boot.ini"),
            Err(PathError::Drive(_))
        ));
    }

    #[test]
    fn prefix_helpers() {
        let p = CleanPath::parse("iso/debian/install.amd/vmlinuz").unwrap();
        assert_eq!(p.first(), "iso");
        assert_eq!(
            p.strip_prefix(2).unwrap().as_string(),
            "install.amd/vmlinuz"
        );
        assert!(p.strip_prefix(4).is_none());
    }
}
