//! `[[iso]]` entries of the config file.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// One `[[iso]]` table: an image served under `/iso/NAME/` (HTTP), `iso/NAME/` (TFTP) and
/// referenced as `iso:NAME/path` by profiles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsoConfig {
    /// Name in URLs and `iso:` references.
    pub name: String,
    /// The image file.
    pub path: PathBuf,
    /// When true, a missing or broken image stops the server from starting; otherwise the
    /// server starts without it and reports the error.
    #[serde(default)]
    pub required: bool,
}

/// A config value that cannot work, with the key it came from.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("iso.{key}: {message}")]
pub struct IsoConfigError {
    /// The key inside `[[iso]]` (`name`, `path`).
    pub key: &'static str,
    /// What is wrong, for the operator.
    pub message: String,
}

impl IsoConfig {
    /// Checks what can be checked without opening the image (the image itself is checked by
    /// [`crate::IsoImage::open`], whose errors name the file).
    pub fn validate(&self) -> Result<(), IsoConfigError> {
        let name = &self.name;
        if name.is_empty() || name.len() > 64 {
            return Err(IsoConfigError {
                key: "name",
                message: format!("{name:?} must be 1 to 64 characters"),
            });
        }
        // The name is a URL path component and a TFTP path component: keep it to characters
        // that need no escaping anywhere and cannot be `.`/`..`.
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || name.starts_with('.')
        {
            return Err(IsoConfigError {
                key: "name",
                message: format!(
                    "{name:?} may only contain letters, digits, '-', '_' and '.' (not first)"
                ),
            });
        }
        if self.path.as_os_str().is_empty() {
            return Err(IsoConfigError {
                key: "path",
                message: format!("image path for {name:?} is empty"),
            });
        }
        Ok(())
    }

    /// Validates a whole `[[iso]]` list: each entry, and names unique (case-insensitively,
    /// since lookups fall back to case-insensitive matching).
    pub fn validate_all(list: &[IsoConfig]) -> Result<(), IsoConfigError> {
        let mut seen = std::collections::HashSet::new();
        for c in list {
            c.validate()?;
            if !seen.insert(c.name.to_ascii_lowercase()) {
                return Err(IsoConfigError {
                    key: "name",
                    message: format!("{:?} is used by more than one [[iso]]", c.name),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<IsoConfig, toml::de::Error> {
        toml::from_str(s)
    }

    #[test]
    fn required_defaults_to_false_and_unknown_keys_are_refused() {
        let c = parse("name = \"debian-12\"\npath = \"/srv/d.iso\"").unwrap();
        assert!(!c.required);
        c.validate().unwrap();
        assert!(parse("name = \"a\"\npath = \"/x\"\nrequird = true").is_err());
    }

    #[test]
    fn bad_names_are_refused_with_the_key() {
        for bad in ["", "..", ".hidden", "a/b", "a b", "é"] {
            let c = IsoConfig {
                name: bad.into(),
                path: "/x.iso".into(),
                required: false,
            };
            let e = c.validate().unwrap_err();
            assert_eq!(e.key, "name", "{bad}");
            assert!(e.to_string().starts_with("iso.name:"));
        }
    }

    #[test]
    fn duplicate_names_are_refused() {
        let a = IsoConfig {
            name: "deb".into(),
            path: "/a.iso".into(),
            required: false,
        };
        let mut b = a.clone();
        b.name = "DEB".into();
        assert!(IsoConfig::validate_all(std::slice::from_ref(&a)).is_ok());
        assert!(IsoConfig::validate_all(&[a, b]).is_err());
    }
}
