//! Who a booting machine is.
//!
//! DHCP learns a client's architecture from option 93, iPXE tells it over HTTP as
//! `${platform}`/`${buildarch}`, the config and CLI name it (`efi-x64`). All of them meet here so
//! that one table decides what each value means .

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// A client's firmware architecture, by the names chainboot uses everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    /// x86 PC BIOS (option 93 value 0).
    Bios,
    /// 32-bit x86 UEFI (6).
    EfiIa32,
    /// 64-bit x86 UEFI (7, and 9 because RFC 4578 swapped them; iPXE x64 sends 7).
    EfiX64,
    /// 32-bit ARM UEFI (10).
    EfiArm32,
    /// 64-bit ARM UEFI (11).
    EfiArm64,
    /// 64-bit RISC-V UEFI (27; 25 is the 32-bit variant, mapped here too, there is no
    /// separate first stage for it in distribution packages).
    EfiRiscv64,
}

/// How a client boots: the classic PXE/TFTP path or UEFI HTTP Boot (vendor class
/// "HTTPClient", arch 15/16/19), which must get an http:// URL instead of a TFTP file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BootTransport {
    Pxe,
    HttpBoot,
}

/// The meaning of an option 93 value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientArch {
    pub arch: Arch,
    pub transport: BootTransport,
}

impl Arch {
    /// Every architecture, in the order the docs list them.
    pub const ALL: [Arch; 6] = [
        Arch::Bios,
        Arch::EfiIa32,
        Arch::EfiX64,
        Arch::EfiArm32,
        Arch::EfiArm64,
        Arch::EfiRiscv64,
    ];

    /// The name used in config, templates, logs and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Bios => "bios",
            Arch::EfiIa32 => "efi-ia32",
            Arch::EfiX64 => "efi-x64",
            Arch::EfiArm32 => "efi-arm32",
            Arch::EfiArm64 => "efi-arm64",
            Arch::EfiRiscv64 => "efi-riscv64",
        }
    }

    /// Interprets a DHCP option 93 (client system architecture, RFC 4578 and the IANA
    /// registry) value. `None` for values chainboot has no first stage for: the DHCP side
    /// answers nothing and logs the value.
    pub fn from_option93(value: u16) -> Option<ClientArch> {
        use Arch::*;
        use BootTransport::*;
        let (arch, transport) = match value {
            0 => (Bios, Pxe),
            6 => (EfiIa32, Pxe),
            7 | 9 => (EfiX64, Pxe),
            10 => (EfiArm32, Pxe),
            11 => (EfiArm64, Pxe),
            15 => (EfiIa32, HttpBoot),
            16 => (EfiX64, HttpBoot),
            18 => (EfiArm32, HttpBoot),
            19 => (EfiArm64, HttpBoot),
            25 | 27 => (EfiRiscv64, Pxe),
            26 | 28 => (EfiRiscv64, HttpBoot),
            _ => return None,
        };
        Some(ClientArch { arch, transport })
    }

    /// The canonical option 93 value for this architecture over PXE (what `explain` sends).
    pub fn option93(self) -> u16 {
        match self {
            Arch::Bios => 0,
            Arch::EfiIa32 => 6,
            Arch::EfiX64 => 7,
            Arch::EfiArm32 => 10,
            Arch::EfiArm64 => 11,
            Arch::EfiRiscv64 => 27,
        }
    }

    /// Interprets iPXE's `${platform}` and `${buildarch}` as sent in the chain URL
    /// (pcbios → bios; efi + x86_64 → efi-x64; efi + i386 → efi-ia32; efi + arm64 → efi-arm64).
    pub fn from_ipxe(platform: &str, buildarch: &str) -> Option<Arch> {
        match (platform, buildarch) {
            ("pcbios", _) => Some(Arch::Bios),
            ("efi", "x86_64") => Some(Arch::EfiX64),
            ("efi", "i386") => Some(Arch::EfiIa32),
            ("efi", "arm64") => Some(Arch::EfiArm64),
            ("efi", "arm32") | ("efi", "arm") => Some(Arch::EfiArm32),
            ("efi", "riscv64") => Some(Arch::EfiRiscv64),
            _ => None,
        }
    }

    /// Parses a name (`efi-x64`) or an option 93 number (`7`), as the CLI's `--arch` accepts.
    pub fn parse_name_or_number(s: &str) -> Result<ClientArch, ArchError> {
        if let Ok(n) = s.trim().parse::<u16>() {
            return Arch::from_option93(n).ok_or(ArchError::UnknownNumber(n));
        }
        let arch = s.parse::<Arch>()?;
        Ok(ClientArch {
            arch,
            transport: BootTransport::Pxe,
        })
    }
}

/// An architecture name or number chainboot does not know.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ArchError {
    #[error("unknown architecture `{0}` (expected one of bios, efi-ia32, efi-x64, efi-arm32, efi-arm64, efi-riscv64, or an option 93 number)")]
    UnknownName(String),
    #[error("option 93 value {0} is not an architecture chainboot can boot")]
    UnknownNumber(u16),
}

impl FromStr for Arch {
    type Err = ArchError;
    fn from_str(s: &str) -> Result<Arch, ArchError> {
        Arch::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ArchError::UnknownName(s.to_string()))
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Arch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Arch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Arch, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The chain of boot programs a UEFI machine is handed before the boot policy takes over.
/// Firmware with Secure Boot on refuses an unsigned first stage (the distributions' iPXE is
/// unsigned), so such machines need a chain signed by a key their firmware trusts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Loader {
    /// The distribution's iPXE (unsigned): the whole policy, over HTTP.
    #[default]
    Ipxe,
    /// The distribution's signed shim, then its signed GRUB (network build), which reads a
    /// per-machine config and the kernel over TFTP; the kernel must be signed too.
    Grub,
    /// iPXE's own signed shim and the upstream-signed iPXE it loads from beside itself.
    IpxeShim,
}

impl Loader {
    /// The name used in config, logs and `explain`.
    pub fn name(self) -> &'static str {
        match self {
            Loader::Ipxe => "ipxe",
            Loader::Grub => "grub",
            Loader::IpxeShim => "ipxe-shim",
        }
    }

    /// Whether the chain starts with a binary a Secure Boot firmware can verify.
    pub fn is_signed(self) -> bool {
        self != Loader::Ipxe
    }

    /// The architectures the signed chains exist for (the signed shim, GRUB and iPXE that
    /// Debian and iPXE publish are x86-64 UEFI builds).
    pub fn available_for(self, arch: Arch) -> bool {
        self == Loader::Ipxe || arch == Arch::EfiX64
    }
}

impl fmt::Display for Loader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An Ethernet MAC address. Displayed as lower-case `aa:bb:cc:dd:ee:ff`, the form used in
/// URLs, the store and the API; parsed from colons, hyphens (iPXE's `${mac:hexhyp}`), dots
/// or bare hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

/// A string that is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("`{0}` is not a MAC address (expected six hex bytes, e.g. 52:54:00:12:34:56)")]
pub struct MacError(pub String);

impl Mac {
    /// From the first six bytes of a DHCP chaddr; `None` when shorter.
    pub fn from_slice(b: &[u8]) -> Option<Mac> {
        let arr: [u8; 6] = b.get(..6)?.try_into().ok()?;
        Some(Mac(arr))
    }

    /// `01-aa-bb-cc-dd-ee-ff`, the name PXELINUX looks up first in pxelinux.cfg/.
    pub fn pxelinux_name(&self) -> String {
        let hex: Vec<String> = self.0.iter().map(|b| format!("{b:02x}")).collect();
        format!("01-{}", hex.join("-"))
    }

    /// `aa-bb-cc-dd-ee-ff`.
    pub fn hyphenated(&self) -> String {
        let hex: Vec<String> = self.0.iter().map(|b| format!("{b:02x}")).collect();
        hex.join("-")
    }
}

impl FromStr for Mac {
    type Err = MacError;
    fn from_str(s: &str) -> Result<Mac, MacError> {
        let err = || MacError(s.chars().take(64).collect());
        let hex: String = s
            .trim()
            .chars()
            .filter(|c| !matches!(c, ':' | '-' | '.'))
            .collect();
        if hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(err());
        }
        let mut out = [0u8; 6];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).map_err(|_| err())?;
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Mac, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option93_table_matches_protocol_md() {
        let pxe = |v| Arch::from_option93(v).map(|c| (c.arch, c.transport));
        assert_eq!(pxe(0), Some((Arch::Bios, BootTransport::Pxe)));
        assert_eq!(pxe(6), Some((Arch::EfiIa32, BootTransport::Pxe)));
        assert_eq!(pxe(7), Some((Arch::EfiX64, BootTransport::Pxe)));
        assert_eq!(pxe(9), Some((Arch::EfiX64, BootTransport::Pxe)));
        assert_eq!(pxe(11), Some((Arch::EfiArm64, BootTransport::Pxe)));
        assert_eq!(pxe(16), Some((Arch::EfiX64, BootTransport::HttpBoot)));
        assert_eq!(pxe(19), Some((Arch::EfiArm64, BootTransport::HttpBoot)));
        assert_eq!(pxe(1), None);
        assert_eq!(pxe(0xffff), None);
    }

    #[test]
    fn ipxe_platform_names_map() {
        assert_eq!(Arch::from_ipxe("pcbios", "i386"), Some(Arch::Bios));
        assert_eq!(Arch::from_ipxe("pcbios", "x86_64"), Some(Arch::Bios));
        assert_eq!(Arch::from_ipxe("efi", "x86_64"), Some(Arch::EfiX64));
        assert_eq!(Arch::from_ipxe("efi", "i386"), Some(Arch::EfiIa32));
        assert_eq!(Arch::from_ipxe("efi", "arm64"), Some(Arch::EfiArm64));
        assert_eq!(Arch::from_ipxe("efi", "mips"), None);
    }

    #[test]
    fn names_and_numbers_parse() {
        assert_eq!(
            Arch::parse_name_or_number("efi-x64").unwrap().arch,
            Arch::EfiX64
        );
        assert_eq!(Arch::parse_name_or_number("9").unwrap().arch, Arch::EfiX64);
        assert!(Arch::parse_name_or_number("amiga").is_err());
        for a in Arch::ALL {
            assert_eq!(a.name().parse::<Arch>().unwrap(), a);
            assert_eq!(Arch::from_option93(a.option93()).unwrap().arch, a);
        }
    }

    #[test]
    fn macs_parse_in_every_common_form() {
        let m: Mac = "52:54:00:12:34:56".parse().unwrap();
        assert_eq!("52-54-00-12-34-56".parse::<Mac>().unwrap(), m);
        assert_eq!("525400123456".parse::<Mac>().unwrap(), m);
        assert_eq!("5254.0012.3456".parse::<Mac>().unwrap(), m);
        assert_eq!(m.to_string(), "52:54:00:12:34:56");
        assert_eq!(m.pxelinux_name(), "01-52-54-00-12-34-56");
        assert!("52:54:00:12:34".parse::<Mac>().is_err());
        assert!("zz:54:00:12:34:56".parse::<Mac>().is_err());
    }
}
