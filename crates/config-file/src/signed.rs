//! `[secure_boot]`: the signed first stages for machines whose firmware has Secure Boot on,
//! served as they are (chainboot never modifies or re-signs them) in the `secureboot/` folder
//! of TFTP and of `/ipxe-bin/` over HTTP.
//!
//! - shim → GRUB: the distribution's signed shim (`shimx64.efi`, signed by Microsoft's UEFI CA,
//!   carrying the distribution's CA) loads `grubx64.efi` from beside itself: the
//!   distribution's signed network GRUB;
//! - iPXE's signed shim (iPXE 2.0 and later) loads `ipxe.efi` (or `snponly.efi`) from beside
//!   itself by dropping `-shimx64` from its own name: both come from `ipxe_dir`.
//!
//! Each file is resolved once at start to a canonical path, like the iPXE binaries, so a
//! request can only ever open one of them.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use chainboot_config::{Issue, Validate};
use chainboot_content::{Content, Request, ResolveError, Resolver};
use chainboot_dhcp::boot::SIGNED_DIR;
use serde::Deserialize;

/// Debian's signed shim (package shim-signed).
pub const DEBIAN_SHIM: &str = "/usr/lib/shim/shimx64.efi.signed";
/// Debian's signed network GRUB (package grub-efi-amd64-signed).
pub const DEBIAN_GRUB: &str = "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed";

/// The names iPXE's signed release puts side by side.
const IPXE_SIGNED: [&str; 4] = [
    "ipxe-shimx64.efi",
    "ipxe.efi",
    "snponly-shimx64.efi",
    "snponly.efi",
];

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SecureBootConfig {
    /// The shim served as `secureboot/shimx64.efi`.
    pub shim: PathBuf,
    /// The GRUB served as `secureboot/grubx64.efi`, where shim looks for it.
    pub grub: PathBuf,
    /// A folder with iPXE's signed files (`ipxe-shimx64.efi` + `ipxe.efi`, and/or
    /// `snponly-shimx64.efi` + `snponly.efi`).
    pub ipxe_dir: Option<PathBuf>,
}

impl Default for SecureBootConfig {
    fn default() -> Self {
        SecureBootConfig {
            shim: PathBuf::from(DEBIAN_SHIM),
            grub: PathBuf::from(DEBIAN_GRUB),
            ipxe_dir: None,
        }
    }
}

impl Validate for SecureBootConfig {
    fn validate(&self) -> Vec<Issue> {
        match &self.ipxe_dir {
            Some(d) if !d.is_dir() => vec![Issue::new(
                vec!["ipxe_dir".into()],
                format!("`{}` is not a folder", d.display()),
            )],
            _ => Vec::new(),
        }
    }
}

/// The signed binaries found, by their name in `secureboot/`.
#[derive(Debug, Clone, Default)]
pub struct SignedBinaries {
    found: BTreeMap<&'static str, PathBuf>,
    /// Names that were looked for and not found, with where.
    pub missing: Vec<(&'static str, PathBuf)>,
}

impl SignedBinaries {
    pub fn locate(cfg: &SecureBootConfig) -> SignedBinaries {
        let mut wanted: Vec<(&'static str, PathBuf)> = vec![
            ("shimx64.efi", cfg.shim.clone()),
            ("grubx64.efi", cfg.grub.clone()),
        ];
        if let Some(dir) = &cfg.ipxe_dir {
            wanted.extend(IPXE_SIGNED.iter().map(|n| (*n, dir.join(n))));
        }
        let mut out = SignedBinaries::default();
        for (name, path) in wanted {
            match std::fs::canonicalize(&path) {
                Ok(real) if real.is_file() => {
                    out.found.insert(name, real);
                }
                _ => out.missing.push((name, path)),
            }
        }
        out
    }

    /// Binaries with their files.
    pub fn found(&self) -> impl Iterator<Item = (&'static str, &Path)> {
        self.found.iter().map(|(n, p)| (*n, p.as_path()))
    }

    /// Whether `secureboot/NAME` is available.
    pub fn has(&self, name: &str) -> bool {
        self.found.contains_key(name)
    }
}

impl Resolver for SignedBinaries {
    fn resolve(&self, req: &Request<'_>) -> Result<Content, ResolveError> {
        let [dir, name] = req.path.parts() else {
            return Err(ResolveError::NotFound);
        };
        if !dir.eq_ignore_ascii_case(SIGNED_DIR) {
            return Err(ResolveError::NotFound);
        }
        let path = self
            .found
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, p)| p)
            .ok_or(ResolveError::NotFound)?;
        Ok(Content::from_file(File::open(path)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainboot_content::{CleanPath, Transport};

    #[test]
    fn signed_files_are_served_only_from_their_folder_by_their_fixed_names() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("shim.signed"), b"shim").unwrap();
        std::fs::write(p("grub.signed"), b"grubgrub").unwrap();
        std::fs::write(p("ipxe-shimx64.efi"), b"ishim").unwrap();
        std::fs::write(p("ipxe.efi"), b"signed-ipxe").unwrap();
        let b = SignedBinaries::locate(&SecureBootConfig {
            shim: p("shim.signed"),
            grub: p("grub.signed"),
            ipxe_dir: Some(dir.path().to_path_buf()),
        });
        let get = |path: &str| {
            let path = CleanPath::parse(path).unwrap();
            b.resolve(&Request {
                path: &path,
                client: "127.0.0.1:1".parse().unwrap(),
                transport: Transport::Tftp,
            })
        };
        assert_eq!(get("secureboot/shimx64.efi").unwrap().len(), 4);
        assert_eq!(get("SecureBoot/GRUBX64.EFI").unwrap().len(), 8);
        assert_eq!(get("secureboot/ipxe.efi").unwrap().len(), 11);
        assert!(matches!(get("shimx64.efi"), Err(ResolveError::NotFound)));
        assert!(matches!(
            get("secureboot/shim.signed"),
            Err(ResolveError::NotFound)
        ));
        assert!(matches!(
            get("secureboot/snponly.efi"),
            Err(ResolveError::NotFound)
        ));
        assert!(b.missing.iter().any(|(n, _)| *n == "snponly-shimx64.efi"));
    }
}
