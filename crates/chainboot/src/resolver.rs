//! The TFTP namespace: what a path asked over TFTP names. One place, so that `check`, the logs
//! and the docs agree on the order:
//! 1. generated per-machine files (boot policy: `boot.ipxe`, `pxelinux.cfg/...`);
//! 2. the first-stage iPXE binaries by name (`undionly.kpxe`, `ipxe.efi`, ...);
//! 3. `iso/NAME/path`: files inside ISO images;
//! 4. files under `[tftp] root`.

use std::sync::Arc;

use chainboot_content::{Content, Request, ResolveError, Resolver, Root};

use crate::ipxe::IpxeBinaries;

pub struct TftpNamespace {
    pub generated: Vec<Arc<dyn Resolver>>,
    pub ipxe: Arc<IpxeBinaries>,
    pub isos: Option<Arc<dyn Resolver>>,
    pub root: Option<Arc<Root>>,
}

impl Resolver for TftpNamespace {
    fn resolve(&self, req: &Request<'_>) -> Result<Content, ResolveError> {
        for gen in &self.generated {
            match gen.resolve(req) {
                Err(ResolveError::NotFound) => {}
                other => return other,
            }
        }
        if req.path.parts().len() == 1 {
            match self.ipxe.resolve(req) {
                Err(ResolveError::NotFound) => {}
                other => return other,
            }
        }
        if req.path.first() == "iso" {
            if let Some(isos) = &self.isos {
                let inner = req.path.strip_prefix(1).ok_or(ResolveError::IsDirectory)?;
                return isos.resolve(&Request {
                    path: &inner,
                    ..req.clone()
                });
            }
        }
        match &self.root {
            Some(root) => root.open(req.path),
            None => Err(ResolveError::NotFound),
        }
    }
}
