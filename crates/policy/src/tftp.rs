//! The policy's files over TFTP, and PXELINUX's config lookup shared with HTTP.
//!
//! Over TFTP: `boot.ipxe` (for an iPXE built without HTTP, or a DHCP setup that hands out a
//! TFTP path) chains to `ipxe/${mac:hexhyp}` relative to itself, which is the machine's script;
//! `pxelinux.cfg/NAME` is PXELINUX's config (pxelinux.0 without HTTP).
//!
//! PXELINUX asks, in order, for `pxelinux.cfg/<uuid>`, `01-<mac>`, the client IP in hex with
//! one digit fewer each time (`C612000A`, `C612000`, ..., `C`), then `default`. A request
//! answers for the machine with that MAC (or the machine last seen with that exact IP) when its
//! profile is a PXELINUX profile; anything else is a static file in `templates/pxelinux.cfg/`,
//! or not found so that PXELINUX tries the next name.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use chainboot_content::{Content, Request, ResolveError, Resolver};
use chainboot_machine::Mac;

use crate::facts::ClientFacts;
use crate::pixiecore::ApiBoot;
use crate::policy::{BootApiQuestion, BootError, Decided, Policy};
use crate::render::HttpBase;

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
}

impl TftpResolver {
    /// `base` is the HTTP URL that scripts and configs point assets at.
    pub fn new(policy: Arc<Policy>, base: HttpBase) -> std::io::Result<TftpResolver> {
        Ok(TftpResolver { policy, base })
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

    /// The machine's script for `ipxe/MAC`, or a script saying why it cannot have one.
    fn script(&self, mac: Mac, requester: IpAddr) -> Result<String, BootError> {
        let retry = self.policy.retry_secs();
        let error = |reason: &str| {
            crate::render::error_script(Some(&mac.to_string()), reason, &self.base, retry)
        };
        if let Err(r) = self.policy.verify(mac, Some(requester), None) {
            return Ok(error(&r.0));
        }
        let rec = self
            .policy
            .store()
            .machine(mac)
            .map_err(|e| BootError(e.to_string()))?;
        let facts = ClientFacts::new(mac);
        let decided = match self.policy.decide_now(&facts, rec.as_ref(), None, None) {
            Ok(Decided::NeedsBootApi(q)) => self.ask(&q).and_then(|answer| {
                self.policy
                    .decide_now(&facts, rec.as_ref(), None, Some(answer))
            }),
            other => other,
        };
        Ok(match decided {
            Ok(Decided::Done(d)) => {
                let cap = self.policy.capability(mac, None);
                let d = self.policy.remember(&d.with_capability(cap));
                d.script(&self.base, retry)
            }
            Ok(Decided::NeedsBootApi(_)) => error("the boot API's answer was not used"),
            Err(e) => error(&e.0),
        })
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
            _ => Ok(None),
        }
    }
}

impl Resolver for TftpResolver {
    fn resolve(&self, req: &Request<'_>) -> Result<Content, ResolveError> {
        match self.lookup(req.path.parts(), req.client.ip()) {
            Ok(Some(text)) => Ok(Content::from_bytes(text.into_bytes())),
            Ok(None) => Err(ResolveError::NotFound),
            Err(e) => Err(ResolveError::Generate(e.0)),
        }
    }
}
