//! Finding the first-stage iPXE binaries that PXE firmware is handed over TFTP (and UEFI HTTP
//! Boot clients over HTTP).
//!
//! Distribution packages put them in different places (Debian/Ubuntu: /usr/lib/ipxe, some
//! symlinked into /boot), so `[ipxe] dir = "auto"` searches the usual folders. Each name is
//! resolved once at start to a canonical file path; requests can then only ever open one of
//! those files, whatever path they ask for.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use chainboot_config::{Issue, Validate};
use chainboot_content::{Content, Request, ResolveError, Resolver, Served, What};
use chainboot_dhcp::boot::EfiX64Binary;
use serde::Deserialize;

/// `[ipxe]`: where the first-stage iPXE binaries come from.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct IpxeConfig {
    /// "auto" (the distribution's folders) or a folder of the user's.
    pub dir: String,
    /// The x86-64 UEFI first stage: "snponly.efi" (default) or "ipxe.efi".
    pub efi_x64: EfiX64Binary,
}

impl Default for IpxeConfig {
    fn default() -> Self {
        IpxeConfig {
            dir: "auto".into(),
            efi_x64: EfiX64Binary::default(),
        }
    }
}

impl IpxeConfig {
    /// The folders searched, in order.
    pub fn search_dirs(&self) -> Vec<PathBuf> {
        if self.dir == "auto" {
            vec![
                PathBuf::from("/usr/lib/ipxe"),
                PathBuf::from("/usr/share/ipxe"),
                PathBuf::from("/usr/local/share/ipxe"),
            ]
        } else {
            vec![PathBuf::from(&self.dir)]
        }
    }

    /// The file name of the x86-64 UEFI first stage.
    pub fn efi_x64_name(&self) -> &'static str {
        chainboot_dhcp::boot::first_stage_name(chainboot_machine::Arch::EfiX64, self.efi_x64)
    }
}

impl Validate for IpxeConfig {
    fn validate(&self) -> Vec<Issue> {
        let mut out = Vec::new();
        if self.dir != "auto" && !PathBuf::from(&self.dir).is_dir() {
            out.push(Issue::new(
                vec!["dir".into()],
                format!(
                    "`{}` is not a folder (use \"auto\" for the distribution's)",
                    self.dir
                ),
            ));
        }
        out
    }
}

/// A first-stage binary chainboot knows how to hand out.
#[derive(Debug, Clone, Copy)]
pub struct Known {
    /// The file name, also the TFTP path and the name under `/ipxe-bin/`.
    pub name: &'static str,
    /// Who gets it.
    pub for_whom: &'static str,
    /// How to get it when missing, as a sentence (`install the Debian/Ubuntu package ...`).
    pub package: &'static str,
}

/// Every binary chainboot may hand out, and where it comes from.
pub const KNOWN: &[Known] = &[
    Known {
        name: "undionly.kpxe",
        for_whom: "BIOS PXE firmware (iPXE over the ROM's UNDI driver)",
        package: "install the Debian/Ubuntu package `ipxe`",
    },
    Known {
        name: "ipxe.pxe",
        for_whom: "BIOS iPXE ROMs that cannot chainload undionly.kpxe",
        package: "install the Debian/Ubuntu package `ipxe`",
    },
    Known {
        name: "ipxe.efi",
        for_whom: "x86-64 UEFI firmware when [ipxe] efi_x64 = \"ipxe.efi\"",
        package: "install the Debian/Ubuntu package `ipxe`",
    },
    Known {
        name: "snponly.efi",
        for_whom: "x86-64 UEFI firmware (default [ipxe] efi_x64)",
        package: "install the Debian/Ubuntu package `ipxe`",
    },
    Known {
        name: "ipxe-i386.efi",
        for_whom: "32-bit x86 UEFI firmware",
        package: "not packaged by Debian; build bin-i386-efi/ipxe.efi from iPXE's source",
    },
    Known {
        name: "ipxe-arm64.efi",
        for_whom: "ARM64 UEFI firmware",
        package: "install the Debian package `ipxe` on an arm64 system, or build bin-arm64-efi/ipxe.efi from iPXE's source",
    },
    Known {
        name: "ipxe-arm32.efi",
        for_whom: "32-bit ARM UEFI firmware",
        package: "not packaged by Debian; build bin-arm32-efi/snp.efi from iPXE's source",
    },
    Known {
        name: "ipxe-riscv64.efi",
        for_whom: "RISC-V 64 UEFI firmware",
        package: "not packaged by Debian; build bin-riscv64-efi/ipxe.efi from iPXE's source",
    },
];

/// The binaries found.
#[derive(Debug, Clone, Default)]
pub struct IpxeBinaries {
    /// Served name -> canonical file.
    found: BTreeMap<&'static str, PathBuf>,
    /// Served name -> the path in the searched folder (often a symlink, e.g. Debian's
    /// /usr/lib/ipxe/ipxe.efi -> /boot/ipxe.efi).
    listed: BTreeMap<&'static str, PathBuf>,
    /// Folders searched, in order.
    pub searched: Vec<PathBuf>,
}

impl IpxeBinaries {
    /// Searches the configured folders. For "auto", the first folder that has a given name
    /// wins; a user folder is the only one searched.
    pub fn locate(cfg: &IpxeConfig) -> IpxeBinaries {
        let searched = cfg.search_dirs();
        let mut found = BTreeMap::new();
        let mut listed = BTreeMap::new();
        for known in KNOWN {
            for dir in &searched {
                let candidate = dir.join(known.name);
                if let Ok(real) = std::fs::canonicalize(&candidate) {
                    if real.is_file() {
                        found.insert(known.name, real);
                        listed.insert(known.name, candidate);
                        break;
                    }
                }
            }
        }
        IpxeBinaries {
            found,
            listed,
            searched,
        }
    }

    /// Binaries with their files.
    pub fn found(&self) -> impl Iterator<Item = (&'static str, &Path)> {
        self.found.iter().map(|(n, p)| (*n, p.as_path()))
    }

    /// Binaries with the path found in the searched folder and the file it resolves to.
    pub fn found_with_links(&self) -> impl Iterator<Item = (&'static str, &Path, &Path)> {
        self.found.iter().map(|(n, real)| {
            let listed = self.listed.get(n).map_or(real.as_path(), |p| p.as_path());
            (*n, listed, real.as_path())
        })
    }

    /// Known binaries that were not found.
    pub fn missing(&self) -> impl Iterator<Item = &'static Known> + '_ {
        KNOWN.iter().filter(|k| !self.found.contains_key(k.name))
    }

    /// Whether a binary is available.
    pub fn has(&self, name: &str) -> bool {
        self.found.contains_key(name)
    }

    fn file_for(&self, name: &str) -> Option<&Path> {
        self.found
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, p)| p.as_path())
    }
}

impl Resolver for IpxeBinaries {
    fn resolve(&self, req: &Request<'_>) -> Result<Content, ResolveError> {
        let [name] = req.path.parts() else {
            return Err(ResolveError::NotFound);
        };
        let path = self.file_for(name).ok_or(ResolveError::NotFound)?;
        let file = File::open(path)?;
        Ok(Content::from_file(file)?.served_as(Served::new(What::FirstStage)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainboot_content::{CleanPath, Transport};

    #[test]
    fn every_name_the_dhcp_decision_hands_out_is_known() {
        for name in chainboot_dhcp::boot::first_stage_names() {
            assert!(KNOWN.iter().any(|k| k.name == name), "{name}");
        }
    }

    #[test]
    fn a_user_folder_is_searched_and_only_known_names_are_served() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("undionly.kpxe"), b"kpxe").unwrap();
        std::fs::write(dir.path().join("other.bin"), b"x").unwrap();
        let cfg = IpxeConfig {
            dir: dir.path().to_string_lossy().into(),
            ..IpxeConfig::default()
        };
        let b = IpxeBinaries::locate(&cfg);
        assert!(b.has("undionly.kpxe"));
        assert!(!b.has("ipxe.efi"));
        assert!(b.missing().any(|k| k.name == "ipxe.efi"));
        let get = |p: &str| {
            let path = CleanPath::parse(p).unwrap();
            b.resolve(&Request {
                path: &path,
                client: "127.0.0.1:1".parse().unwrap(),
                transport: Transport::Tftp,
            })
        };
        assert_eq!(get("UNDIONLY.KPXE").unwrap().len(), 4);
        assert!(matches!(get("other.bin"), Err(ResolveError::NotFound)));
        assert!(matches!(
            get("x/undionly.kpxe"),
            Err(ResolveError::NotFound)
        ));
    }
}
