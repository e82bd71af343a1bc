//! `[[iso]]` entries of the config file.

use std::path::PathBuf;

use chainboot_config::Issue;
use serde::{Deserialize, Serialize};

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

impl IsoConfig {
    /// Checks what can be checked without opening the image (the image itself is checked by
    /// [`crate::IsoImage::open`], whose errors name the file): every problem, keys inside
    /// the `[[iso]]` entry.
    pub fn validate(&self) -> Vec<Issue> {
        let mut out = Vec::new();
        let name = &self.name;
        if name.is_empty() || name.len() > 64 {
            out.push(Issue::at(
                &["name"],
                format!("{name:?} must be 1 to 64 characters"),
            ));
        } else if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || name.starts_with('.')
        {
            // The name is a URL path component and a TFTP path component: keep it to
            // characters that need no escaping anywhere and cannot be `.`/`..`.
            out.push(Issue::at(
                &["name"],
                format!("{name:?} may only contain letters, digits, '-', '_' and '.' (not first)"),
            ));
        }
        if self.path.as_os_str().is_empty() {
            out.push(Issue::at(
                &["path"],
                format!("image path for {name:?} is empty"),
            ));
        }
        out
    }

    /// Validates a whole `[[iso]]` list: each entry (paths `N.key`), and names unique
    /// (case-insensitively, since lookups fall back to case-insensitive matching).
    pub fn validate_all(list: &[IsoConfig]) -> Vec<Issue> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, c) in list.iter().enumerate() {
            let idx = i.to_string();
            out.extend(chainboot_config::under(&[&idx], c.validate()));
            if !seen.insert(c.name.to_ascii_lowercase()) {
                out.push(Issue::at(
                    &[&idx, "name"],
                    format!("{:?} is used by more than one [[iso]]", c.name),
                ));
            }
        }
        out
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
        assert_eq!(c.validate(), vec![]);
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
            let e = c.validate();
            assert_eq!(e.len(), 1, "{bad}");
            assert_eq!(e[0].path, vec!["name"], "{bad}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let c = IsoConfig {
            name: "a b".into(),
            path: "".into(),
            required: false,
        };
        let keys: Vec<Vec<String>> = c.validate().into_iter().map(|i| i.path).collect();
        assert_eq!(
            keys,
            vec![vec!["name".to_string()], vec!["path".to_string()]]
        );
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
        assert!(IsoConfig::validate_all(std::slice::from_ref(&a)).is_empty());
        assert_eq!(
            IsoConfig::validate_all(&[a, b]),
            vec![Issue::at(
                &["1", "name"],
                "\"DEB\" is used by more than one [[iso]]"
            )]
        );
    }
}
