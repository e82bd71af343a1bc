//! DHCPv6 client messages the way boot firmware builds them (OVMF's PXEv6 and HTTPv6 clients,
//! iPXE): for the engine's tests, `chainboot explain --ipv6` and the fuzz seeds.

use std::net::Ipv6Addr;

use crate::facts::PXE_ENTERPRISE;
use crate::wire::{code, message, msg, Writer};

/// A client: its DUID, one IA_NA, and what it says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client6 {
    pub duid: Vec<u8>,
    pub iaid: u32,
    /// Option 16's first string (sent with enterprise number 343).
    pub vendor: Option<String>,
    /// Option 61.
    pub arch: Option<u16>,
    /// Option 15's one string ("iPXE").
    pub user_class: Option<String>,
}

impl Client6 {
    /// Firmware of architecture `arch` (option 61 numbers): "HTTPClient" for the HTTP Boot
    /// architectures (16, 19, ...), "PXEClient" otherwise, as edk2 sends them.
    pub fn firmware(duid: Vec<u8>, arch: u16, http_boot: bool) -> Client6 {
        let class = if http_boot { "HTTPClient" } else { "PXEClient" };
        Client6 {
            duid,
            iaid: 1,
            vendor: Some(format!("{class}:Arch:{arch:05}:UNDI:003000")),
            arch: Some(arch),
            user_class: None,
        }
    }

    /// A message of type `t` with ORO 59/60/23, the client's classes, an IA_NA (naming `addr`
    /// when given; none in an Information-Request), and whatever `extra` adds.
    pub fn msg(&self, t: u8, extra: impl FnOnce(&mut Writer), addr: Option<Ipv6Addr>) -> Vec<u8> {
        let mut w = Writer::new();
        w.opt(code::CLIENTID, &self.duid);
        w.opt(code::ORO, &[0, 59, 0, 60, 0, 23]);
        if let Some(v) = &self.vendor {
            let mut d = PXE_ENTERPRISE.to_be_bytes().to_vec();
            d.extend_from_slice(&(v.len() as u16).to_be_bytes());
            d.extend_from_slice(v.as_bytes());
            w.opt(code::VENDOR_CLASS, &d);
        }
        if let Some(a) = self.arch {
            w.opt(code::CLIENT_ARCH, &a.to_be_bytes());
        }
        if let Some(u) = &self.user_class {
            let mut d = (u.len() as u16).to_be_bytes().to_vec();
            d.extend_from_slice(u.as_bytes());
            w.opt(code::USER_CLASS, &d);
        }
        if t != msg::INFORMATION_REQUEST {
            let mut ia = self.iaid.to_be_bytes().to_vec();
            ia.extend_from_slice(&[0; 8]);
            if let Some(a) = addr {
                let mut inner = Writer::new();
                let mut d = a.octets().to_vec();
                d.extend_from_slice(&[0; 8]);
                inner.opt(code::IAADDR, &d);
                ia.extend_from_slice(&inner.buf);
            }
            w.opt(code::IA_NA, &ia);
        }
        extra(&mut w);
        message(t, [0xab, 0xcd, 0xef], &w.buf)
    }

    pub fn solicit(&self) -> Vec<u8> {
        self.msg(msg::SOLICIT, |_| {}, None)
    }

    /// A message naming `server` (Request, Renew, Release, Decline) about `addr`.
    pub fn with_server(&self, t: u8, server: &[u8], addr: Ipv6Addr) -> Vec<u8> {
        self.msg(
            t,
            |w| {
                w.opt(code::SERVERID, server);
            },
            Some(addr),
        )
    }
}
