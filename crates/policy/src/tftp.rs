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
use crate::policy::{BootError, Policy};
use crate::render::HttpBase;

/// `pxelinux.cfg/NAME` for PXELINUX, over HTTP or TFTP. `Ok(None)`: not found.
///
/// `requester` is the client's address: a per-machine name (`01-MAC`, or the hex of an
/// address) is answered only for a requester that proves it is that machine; anyone else
/// gets not-found and PXELINUX moves on to the next name, ending at the static `default`.
pub async fn pxelinux_lookup(
    policy: &Policy,
    client: Option<&reqwest::Client>,
    name: &str,
    base: &HttpBase,
    requester: Option<IpAddr>,
) -> Result<Option<String>, BootError> {
    let lower = name.to_ascii_lowercase();
    let machine = if let Some(mac) = lower
        .strip_prefix("01-")
        .and_then(|m| m.parse::<Mac>().ok())
    {
        if policy.verify(mac, requester, None).is_err() {
            return Ok(None);
        }
        let store = policy.store().clone();
        let rec = tokio::task::spawn_blocking(move || store.machine(mac))
            .await
            .map_err(|e| BootError(e.to_string()))?
            .map_err(|e| BootError(e.to_string()))?;
        Some((mac, rec))
    } else if lower.len() == 8 && lower.chars().all(|c| c.is_ascii_hexdigit()) {
        let ip = u32::from_str_radix(&lower, 16).map_err(|e| BootError(e.to_string()))?;
        let ip = IpAddr::V4(Ipv4Addr::from(ip)).to_string();
        let store = policy.store().clone();
        let rec = tokio::task::spawn_blocking(move || store.machine_by_ip(&ip))
            .await
            .map_err(|e| BootError(e.to_string()))?
            .map_err(|e| BootError(e.to_string()))?;
        rec.filter(|r| policy.verify(r.mac, requester, None).is_ok())
            .map(|r| (r.mac, Some(r)))
    } else {
        None
    };
    if let Some((mac, rec)) = machine {
        let facts = ClientFacts::new(mac);
        let d = match client {
            Some(c) => policy.decide_with(c, &facts, rec.as_ref(), None).await,
            None => policy.decide(&facts, rec.as_ref(), None).await,
        };
        if let Ok(d) = d {
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
/// `NotFound`, so the binary can try its other resolvers.
pub struct TftpResolver {
    policy: Arc<Policy>,
    base: HttpBase,
    /// The resolver is called synchronously from TFTP's threads; decisions may need the
    /// pixiecore API (async), so it owns a small runtime of its own and a client bound to it.
    /// `Option` only so that `Drop` can take it out (see there).
    rt: Option<tokio::runtime::Runtime>,
    client: reqwest::Client,
}

impl Drop for TftpResolver {
    fn drop(&mut self) {
        // Dropping a runtime inside an async context panics in tokio; shutting it down in the
        // background is allowed anywhere, so the resolver can be dropped from any thread.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl TftpResolver {
    /// `base` is the HTTP URL that scripts and configs point assets at.
    pub fn new(policy: Arc<Policy>, base: HttpBase) -> std::io::Result<TftpResolver> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(TftpResolver {
            policy,
            base,
            rt: Some(rt),
            client,
        })
    }

    async fn lookup(
        &self,
        parts: &[String],
        requester: IpAddr,
    ) -> Result<Option<String>, BootError> {
        match parts {
            [f] if f.eq_ignore_ascii_case("boot.ipxe") => Ok(Some(
                "#!ipxe\nchain --replace --autofree ipxe/${mac:hexhyp}\n".to_string(),
            )),
            [d, mac] if d.eq_ignore_ascii_case("ipxe") => {
                let Ok(mac) = mac.parse::<Mac>() else {
                    return Ok(None);
                };
                let retry = self.policy.retry_secs();
                if let Err(r) = self.policy.verify(mac, Some(requester), None) {
                    return Ok(Some(crate::render::error_script(
                        Some(&mac.to_string()),
                        &r.0,
                        &self.base,
                        retry,
                    )));
                }
                let store = self.policy.store().clone();
                let rec = tokio::task::spawn_blocking(move || store.machine(mac))
                    .await
                    .map_err(|e| BootError(e.to_string()))?
                    .map_err(|e| BootError(e.to_string()))?;
                let facts = ClientFacts::new(mac);
                Ok(Some(
                    match self
                        .policy
                        .decide_with(&self.client, &facts, rec.as_ref(), None)
                        .await
                    {
                        Ok(d) => {
                            self.policy.remember(&d);
                            d.script(&self.base, retry)
                        }
                        Err(e) => crate::render::error_script(
                            Some(&mac.to_string()),
                            &e.0,
                            &self.base,
                            retry,
                        ),
                    },
                ))
            }
            [d, name] if d.eq_ignore_ascii_case("pxelinux.cfg") => {
                pxelinux_lookup(
                    &self.policy,
                    Some(&self.client),
                    name,
                    &self.base,
                    Some(requester),
                )
                .await
            }
            _ => Ok(None),
        }
    }
}

impl Resolver for TftpResolver {
    fn resolve(&self, req: &Request<'_>) -> Result<Content, ResolveError> {
        let parts = req.path.parts();
        // Decide cheaply whether the path is ours: the binary asks this resolver first for
        // every TFTP request (hundreds of clients fetching undionly.kpxe at once), and those
        // must not pay for a thread.
        let ours = match parts {
            [f] => f.eq_ignore_ascii_case("boot.ipxe"),
            [d, _] => d.eq_ignore_ascii_case("ipxe") || d.eq_ignore_ascii_case("pxelinux.cfg"),
            _ => false,
        };
        if !ours {
            return Err(ResolveError::NotFound);
        }
        let parts = parts.to_vec();
        let requester = req.client.ip();
        // A scoped thread runs the lookup on the resolver's own runtime, so this works whether
        // or not the caller is itself inside a tokio runtime.
        let Some(rt) = &self.rt else {
            return Err(ResolveError::NotFound);
        };
        let out = std::thread::scope(|s| {
            s.spawn(|| rt.block_on(self.lookup(&parts, requester)))
                .join()
                .map_err(|_| ResolveError::Generate("policy lookup panicked".into()))
        })?;
        match out {
            Ok(Some(text)) => Ok(Content::from_bytes(text.into_bytes())),
            Ok(None) => Err(ResolveError::NotFound),
            Err(e) => Err(ResolveError::Generate(e.0)),
        }
    }
}
