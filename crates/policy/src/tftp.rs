//! The policy's files over TFTP, and PXELINUX's config lookup shared with HTTP.
//!
//! Over TFTP: `boot.ipxe` (for an iPXE built without HTTP, or a DHCP setup that hands out a
//! TFTP path) chains to `ipxe/${mac:hexhyp}` relative to itself, which is the machine's script;
//! `pxelinux.cfg/NAME` is PXELINUX's config (pxelinux.0 without HTTP); `grub/...` is what the
//! signed GRUB of the shim → GRUB chain reads (its config stub, the machine's config, its menu
//! choices, and the kernel and initrds of its profile; see [`crate::grub`]).
//!
//! PXELINUX asks, in order, for `pxelinux.cfg/<uuid>`, `01-<mac>`, the client IP in hex with
//! one digit fewer each time (`C612000A`, `C612000`, ..., `C`), then `default`. A request
//! answers for the machine with that MAC (or the machine last seen with that exact IP) when its
//! profile is a PXELINUX profile; anything else is a static file in `templates/pxelinux.cfg/`,
//! or not found so that PXELINUX tries the next name.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use chainboot_content::{Content, Request, ResolveError, Resolver, Served, What};
use chainboot_machine::Mac;

use crate::config::AssetRef;
use crate::facts::ClientFacts;
use crate::peers::PeerBases;
use crate::pixiecore::ApiBoot;
use crate::policy::{AssetSlot, BootApiQuestion, BootError, Decided, Decision, Policy};
use crate::render::HttpBase;

/// Opens the files of a profile's assets that live in the binary's other namespaces
/// (`[http] root`, ISO images), for GRUB, which can only fetch them over TFTP.
pub trait AssetFiles: Send + Sync {
    fn open(&self, asset: &AssetRef) -> Result<Content, ResolveError>;
}

/// `pxelinux.cfg/NAME` for PXELINUX, over HTTP or TFTP. `Ok(None)`: not found. Reads the
/// store (callers on an async runtime run it as blocking work); needs no other I/O: a machine
/// whose decision would come from the pixiecore API boots what the API says, never a
/// PXELINUX profile, so it has no per-machine config here.
///
/// `requester` is the client's address: a per-machine name (`01-MAC`, or the hex of an
/// address) is answered only for a requester that proves it is that machine; anyone else
/// gets not-found and PXELINUX moves on to the next name, ending at the static `default`.
pub fn pxelinux_lookup(
    policy: &Policy,
    name: &str,
    base: &HttpBase,
    requester: Option<IpAddr>,
) -> Result<Option<String>, BootError> {
    let lower = name.to_ascii_lowercase();
    let store_err = |e: chainboot_store::StoreError| BootError(e.to_string());
    let machine = if let Some(mac) = lower
        .strip_prefix("01-")
        .and_then(|m| m.parse::<Mac>().ok())
    {
        if policy.verify(mac, requester, None).is_err() {
            return Ok(None);
        }
        Some((mac, policy.store().machine(mac).map_err(store_err)?))
    } else if lower.len() == 8 && lower.chars().all(|c| c.is_ascii_hexdigit()) {
        let ip = u32::from_str_radix(&lower, 16).map_err(|e| BootError(e.to_string()))?;
        let ip = IpAddr::V4(Ipv4Addr::from(ip)).to_string();
        policy
            .store()
            .machine_by_ip(&ip)
            .map_err(store_err)?
            .filter(|r| policy.verify(r.mac, requester, None).is_ok())
            .map(|r| (r.mac, Some(r)))
    } else {
        None
    };
    if let Some((mac, rec)) = machine {
        let facts = ClientFacts::new(mac);
        if let Ok(Decided::Done(d)) = policy.decide_now(&facts, rec.as_ref(), None, None) {
            if let Some(cfg) = d.pxelinux_cfg(base)? {
                policy.remember(&d);
                return Ok(Some(cfg));
            }
        }
    }
    // Static files: `templates/pxelinux.cfg/NAME`, names as PXELINUX sends them.
    let Some(dir) = policy.templates_dir() else {
        return Ok(None);
    };
    if !crate::config::valid_name(name) {
        return Ok(None);
    }
    let path = dir.join("pxelinux.cfg").join(name);
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(BootError(format!("{}: {e}", path.display()))),
    }
}

/// Serves `boot.ipxe`, `ipxe/MAC` and `pxelinux.cfg/NAME` over TFTP; everything else is
/// `NotFound`, so the binary can try its other resolvers. Called on TFTP's own threads and
/// tasks; the decision is made in place, and only a machine whose decision needs the
/// pixiecore API costs more (see [`TftpResolver::ask`]).
pub struct TftpResolver {
    policy: Arc<Policy>,
    base: HttpBase,
    assets: Option<Arc<dyn AssetFiles>>,
    /// The live fleet peers' boot listeners, alternatives in the iPXE scripts it serves.
    peers: PeerBases,
}

impl TftpResolver {
    /// `base` is the HTTP URL that scripts and configs point assets at.
    pub fn new(policy: Arc<Policy>, base: HttpBase) -> std::io::Result<TftpResolver> {
        Ok(TftpResolver {
            policy,
            base,
            assets: None,
            peers: PeerBases::default(),
        })
    }

    /// The handle through which the fleet loop hands over the live peers' boot listeners.
    pub fn with_peer_bases(mut self, peers: PeerBases) -> TftpResolver {
        self.peers = peers;
        self
    }

    /// Where GRUB's kernels and initrds under `[http] root` and in ISO images are opened
    /// (without it only `file:///` assets are served to GRUB).
    pub fn with_assets(mut self, assets: Arc<dyn AssetFiles>) -> TftpResolver {
        self.assets = Some(assets);
        self
    }

    /// The pixiecore API's answer, on a thread of its own with a runtime and a client of its
    /// own: the caller may be a runtime worker, maybe the only one, which must not wait on
    /// the runtime it is blocking. Rare (no group matched, `[boot] api` set, over TFTP), so
    /// the ~1 ms of setup does not matter.
    fn ask(&self, q: &BootApiQuestion) -> Result<ApiBoot, BootError> {
        let fetch = || -> Result<ApiBoot, BootError> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| BootError(format!("boot API: {e}")))?;
            let client = reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(5))
                .build()
                .map_err(|e| BootError(format!("boot API: {e}")))?;
            rt.block_on(q.fetch(&client))
        };
        std::thread::scope(|s| {
            s.spawn(fetch)
                .join()
                .unwrap_or_else(|_| Err(BootError("boot API request panicked".into())))
        })
    }

    /// The decision for `mac` asked by `requester` (`chosen`: a menu choice), or why there is
    /// none: the requester is not that machine, the store failed, the policy refused.
    fn decided(
        &self,
        mac: Mac,
        requester: IpAddr,
        chosen: Option<&str>,
    ) -> Result<Decision, BootError> {
        if let Err(r) = self.policy.verify(mac, Some(requester), None) {
            return Err(BootError(r.0));
        }
        let rec = self
            .policy
            .store()
            .machine(mac)
            .map_err(|e| BootError(e.to_string()))?;
        let facts = ClientFacts::new(mac);
        let decided = match self.policy.decide_now(&facts, rec.as_ref(), chosen, None) {
            Ok(Decided::NeedsBootApi(q)) => self.ask(&q).and_then(|answer| {
                self.policy
                    .decide_now(&facts, rec.as_ref(), chosen, Some(answer))
            }),
            other => other,
        };
        match decided? {
            Decided::Done(d) => Ok(*d),
            Decided::NeedsBootApi(_) => Err(BootError("the boot API's answer was not used".into())),
        }
    }

    /// The machine's script for `ipxe/MAC`, or a script saying why it cannot have one.
    fn script(&self, mac: Mac, requester: IpAddr) -> Result<String, BootError> {
        let retry = self.policy.retry_secs();
        let base = self.base.clone().with_peers(&self.peers.current());
        let error = |reason: &str| {
            crate::render::error_script(Some(&mac.to_string()), reason, &base, retry)
        };
        Ok(match self.decided(mac, requester, None) {
            Ok(d) => {
                let cap = self.policy.capability(mac, None);
                let d = self.policy.remember(&d.with_capability(cap));
                d.script(&base, retry)
            }
            Err(e) => error(&e.0),
        })
    }

    /// The machine's GRUB config for `grub/mac/MAC.cfg` (`menu`: for
    /// `grub/menu/MAC/INDEX.cfg`, the config of that menu entry), or one saying why it
    /// cannot have one.
    fn grub_cfg(&self, mac: Mac, requester: IpAddr, menu: Option<usize>) -> String {
        let retry = self.policy.retry_secs();
        let d = self.decided(mac, requester, None).and_then(|d| match menu {
            None => Ok(Arc::unwrap_or_clone(self.policy.remember(&d))),
            Some(i) => {
                let name = d
                    .menu_choice(i)
                    .ok_or_else(|| BootError(format!("the menu has no entry {i}")))?;
                self.decided(mac, requester, Some(&name))
            }
        });
        match d {
            Ok(d) => d.grub_cfg(retry, &self.base),
            Err(e) => crate::grub::error_config(&mac.to_string(), &e.0, retry),
        }
    }

    /// A kernel or initrd of the machine's profile, for GRUB.
    fn grub_asset(
        &self,
        mac: Mac,
        slot: AssetSlot,
        requester: IpAddr,
    ) -> Result<Content, ResolveError> {
        let d = match self.policy.recent(mac) {
            Some(d) if self.policy.verify(mac, Some(requester), None).is_ok() => d,
            _ => Arc::new(
                self.decided(mac, requester, None)
                    .map_err(|e| ResolveError::Generate(e.0))?,
            ),
        };
        let asset = d.asset(slot).ok_or(ResolveError::NotFound)?;
        let content = match &asset {
            AssetRef::Local(path) => Content::from_file(std::fs::File::open(path)?)?,
            AssetRef::Url(_) | AssetRef::Proxy(_) => {
                return Err(ResolveError::Generate(format!(
                    "profile {}: GRUB cannot fetch a URL asset over TFTP",
                    d.profile
                )))
            }
            other => match &self.assets {
                Some(files) => files.open(other)?,
                None => return Err(ResolveError::NotFound),
            },
        };
        if slot == AssetSlot::Kernel {
            if let Some(group) = &d.once_group {
                // Boot-once: the kernel fetch is the point of no return, as over HTTP.
                let reason = format!("fetched the kernel of profile {} (GRUB)", d.profile);
                match self
                    .policy
                    .store()
                    .machine_mark_installed(mac, crate::now_ms(), &reason)
                {
                    Ok(_) => {
                        tracing::info!(%mac, %group, "boot-once: kernel fetched, next boot is local disk")
                    }
                    Err(e) => {
                        tracing::warn!(%mac, %group, error = %e, "boot-once: cannot record the kernel fetch")
                    }
                }
                self.policy.stale_recent(mac);
            }
        }
        Ok(content)
    }

    fn lookup(&self, parts: &[String], requester: IpAddr) -> Result<Option<String>, BootError> {
        match parts {
            [f] if f.eq_ignore_ascii_case("boot.ipxe") => Ok(Some(
                "#!ipxe\nchain --replace --autofree ipxe/${mac:hexhyp}\n".to_string(),
            )),
            [d, mac] if d.eq_ignore_ascii_case("ipxe") => match mac.parse::<Mac>() {
                Ok(mac) => self.script(mac, requester).map(Some),
                Err(_) => Ok(None),
            },
            [d, name] if d.eq_ignore_ascii_case("pxelinux.cfg") => {
                pxelinux_lookup(&self.policy, name, &self.base, Some(requester))
            }
            [g, rest @ ..] if g.eq_ignore_ascii_case(crate::grub::PREFIX_DIR) => {
                Ok(self.grub_lookup(rest, requester))
            }
            _ => Ok(None),
        }
    }

    /// `grub/...` configs: the stub under both names the signed GRUB tries, a machine's
    /// config, a menu choice. Names are matched case-insensitively like every TFTP name.
    fn grub_lookup(&self, parts: &[String], requester: IpAddr) -> Option<String> {
        let lower: Vec<String> = parts.iter().map(|p| p.to_ascii_lowercase()).collect();
        let cfg_mac = |name: &str| {
            name.strip_suffix(".cfg")
                .and_then(|m| m.parse::<Mac>().ok())
        };
        match lower
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["x86_64-efi", "grub.cfg"] | ["grub.cfg"] => {
                Some(crate::grub::stub_config(self.policy.retry_secs()))
            }
            ["mac", name] => cfg_mac(name).map(|mac| self.grub_cfg(mac, requester, None)),
            ["menu", mac, entry] => {
                let mac = mac.parse::<Mac>().ok()?;
                let i = entry.strip_suffix(".cfg")?.parse::<usize>().ok()?;
                Some(self.grub_cfg(mac, requester, Some(i)))
            }
            _ => None,
        }
    }

    /// `grub/boot/MAC/kernel`, `grub/boot/MAC/initrd/N`: `None` for any other path.
    fn grub_asset_path(parts: &[String]) -> Option<(Mac, AssetSlot)> {
        let [g, b, mac, slot @ ..] = parts else {
            return None;
        };
        if !g.eq_ignore_ascii_case(crate::grub::PREFIX_DIR) || !b.eq_ignore_ascii_case("boot") {
            return None;
        }
        let mac = mac.parse::<Mac>().ok()?;
        let slot = match slot {
            [k] if k.eq_ignore_ascii_case("kernel") => AssetSlot::Kernel,
            [i, n] if i.eq_ignore_ascii_case("initrd") => AssetSlot::Initrd(n.parse().ok()?),
            _ => return None,
        };
        Some((mac, slot))
    }
}

impl Resolver for TftpResolver {
    fn resolve(&self, req: &Request<'_>) -> Result<Content, ResolveError> {
        if let Some((mac, slot)) = Self::grub_asset_path(req.path.parts()) {
            let what = match slot {
                AssetSlot::Kernel => What::Kernel,
                _ => What::Initrd,
            };
            // Served only to the machine itself (its decision is asked for it).
            let content = self.grub_asset(mac, slot, req.client.ip())?;
            return Ok(content.served_as(Served::of(what, mac)));
        }
        // Everything else generated here is a script: iPXE's, PXELINUX's and GRUB's configs.
        let script = Served::new(What::Script);
        match self.lookup(req.path.parts(), req.client.ip()) {
            Ok(Some(text)) => Ok(Content::from_bytes(text.into_bytes()).served_as(script)),
            Ok(None) => Err(ResolveError::NotFound),
            Err(e) => Err(ResolveError::Generate(e.0)),
        }
    }
}
