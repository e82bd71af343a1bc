//! The TFTP namespace: what a path asked over TFTP names. One place, so that `check`, the logs
//! and the docs agree on the order:
//! 1. generated per-machine files (boot policy: `boot.ipxe`, `pxelinux.cfg/...`);
//!    and `grub/...` for the signed GRUB);
//! 2. the first stages: iPXE binaries by name (`undionly.kpxe`, `snponly.efi`, ...) and the signed
//!    chains' files in `secureboot/`;
//! 3. `iso/NAME/path`: files inside ISO images;
//! 4. files under `[tftp] root`.

use std::sync::Arc;

use chainboot_content::{Content, Request, ResolveError, Resolver, Root, Served, What};
use chainboot_dhcp::boot::first_stage_names;
use chainboot_policy::AssetRef;

use crate::config::signed::SignedBinaries;
use crate::ipxe::IpxeBinaries;

pub struct TftpNamespace {
    pub generated: Vec<Arc<dyn Resolver>>,
    pub first_stages: Arc<FirstStages>,
    pub isos: Option<Arc<dyn Resolver>>,
    pub root: Option<Arc<Root>>,
}

/// The first stages over TFTP and `/ipxe-bin/` over HTTP: iPXE's binaries at the top, the
/// signed chains' files in `secureboot/`.
pub struct FirstStages {
    pub ipxe: Arc<IpxeBinaries>,
    pub signed: Arc<SignedBinaries>,
}

impl Resolver for FirstStages {
    fn resolve(&self, req: &Request<'_>) -> Result<Content, ResolveError> {
        match req.path.parts().len() {
            1 => self.ipxe.resolve(req),
            2 => self.signed.resolve(req),
            _ => Err(ResolveError::NotFound),
        }
    }
}

/// The files GRUB loads a profile's kernel and initrds from: `[http] root` and the ISO
/// images (GRUB fetches only over TFTP, so they come through its `grub/boot/...` names).
pub struct GrubAssets {
    pub files: Option<Arc<Root>>,
    pub isos: Arc<dyn Resolver>,
}

impl chainboot_policy::tftp::AssetFiles for GrubAssets {
    fn open(&self, asset: &AssetRef) -> Result<Content, ResolveError> {
        match asset {
            AssetRef::Files(path) => match &self.files {
                Some(root) => root.open(path),
                None => Err(ResolveError::NotFound),
            },
            AssetRef::Iso { name, path } => {
                let mut parts = vec![name.clone()];
                parts.extend(path.parts().iter().cloned());
                let inner = chainboot_content::CleanPath::from_parts(parts)
                    .map_err(|_| ResolveError::NotFound)?;
                self.isos.resolve(&Request {
                    path: &inner,
                    client: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                    transport: chainboot_content::Transport::Tftp,
                })
            }
            _ => Err(ResolveError::NotFound),
        }
    }
}

impl Resolver for TftpNamespace {
    fn resolve(&self, req: &Request<'_>) -> Result<Content, ResolveError> {
        for gen in &self.generated {
            match gen.resolve(req) {
                Err(ResolveError::NotFound) => {}
                other => return other,
            }
        }
        if req.path.parts().len() <= 2 {
            match self.first_stages.resolve(req) {
                Err(ResolveError::NotFound) => {}
                other => return other,
            }
        }
        if req.path.first() == "iso" {
            if let Some(isos) = &self.isos {
                let inner = req.path.strip_prefix(1).ok_or(ResolveError::IsDirectory)?;
                let content = isos.resolve(&Request {
                    path: &inner,
                    ..req.clone()
                })?;
                return Ok(content.served_as(Served::new(What::IsoFile)));
            }
        }
        let content = match &self.root {
            Some(root) => root.open(req.path)?,
            None => return Err(ResolveError::NotFound),
        };
        // An iPXE build of the operator's own under a first-stage name (the name DHCP hands
        // out) is a first stage too: its fetches count towards a chainload loop.
        let first_stage = match req.path.parts() {
            [name] => first_stage_names()
                .iter()
                .chain(&["ipxe.pxe"])
                .any(|n| n.eq_ignore_ascii_case(name)),
            _ => false,
        };
        Ok(if first_stage {
            content.served_as(Served::new(What::FirstStage))
        } else {
            content
        })
    }
}

/// The boot policy's answer to the DHCP engine's question "which chain does this firmware
/// start?" (groups' and profiles' `loader`, `[boot] loader`), reading the live config; and
/// `[boot] secure_boot_fallback` for a machine whose firmware was seen refusing the unsigned
/// first stage (proven from its own address), unless the config already gives it a signed
/// chain.
pub struct PolicyLoader {
    pub policy: Arc<chainboot_policy::Policy>,
    /// The running server's event log, which remembers refusals (`None` in `explain`, which
    /// runs apart from it and reads the store's record of the machine instead).
    pub events: Option<Arc<chainboot_events::EventLog>>,
}

impl PolicyLoader {
    /// Whether `mac`'s firmware was seen refusing the unsigned first stage, proven.
    fn refused(&self, mac: chainboot_machine::Mac) -> bool {
        match &self.events {
            Some(events) => events.refused_by_secure_boot(mac),
            None => self
                .policy
                .store()
                .machine(mac)
                .ok()
                .flatten()
                .and_then(|m| m.firmware.secure_boot)
                .is_some_and(|mark| mark.proven),
        }
    }
}

impl chainboot_dhcp::ChooseLoader for PolicyLoader {
    fn loader(
        &self,
        facts: &chainboot_dhcp::PacketFacts,
        arch: chainboot_machine::Arch,
    ) -> Option<(chainboot_machine::Loader, String)> {
        let mac = facts.mac?;
        let chosen = self.policy.loader_for(&firmware_facts(facts, arch)?);
        if chosen.as_ref().is_some_and(|(l, _)| l.is_signed()) {
            return chosen;
        }
        match self.policy.secure_boot_fallback() {
            Some(fallback) if self.refused(mac) => {
                Some((
                fallback,
                    "its firmware refused the unsigned first stage (probably Secure Boot): [boot] secure_boot_fallback".into(),
                ))
            }
            _ => chosen,
        }
    }

    fn https_boot(
        &self,
        facts: &chainboot_dhcp::PacketFacts,
        arch: chainboot_machine::Arch,
    ) -> Option<(bool, String)> {
        self.policy.https_boot_for(&firmware_facts(facts, arch)?)
    }
}

/// What the policy may go by at a firmware's DHCP: the MAC, the architecture and the hostname
/// (uuid, serial and labels selectors do not match for a choice made here).
fn firmware_facts(
    facts: &chainboot_dhcp::PacketFacts,
    arch: chainboot_machine::Arch,
) -> Option<chainboot_policy::ClientFacts> {
    let raw = chainboot_policy::RawFacts {
        arch: Some(arch),
        hostname: facts.hostname.as_deref(),
        ..Default::default()
    };
    Some(chainboot_policy::ClientFacts::from_raw(facts.mac?, &raw))
}
