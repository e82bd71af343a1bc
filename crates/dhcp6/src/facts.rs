//! What a DHCPv6 request tells about its client: identity (DUID, IAIDs, the MAC behind it)
//! and the boot facts (options 16, 15, 61) in the shape the one boot decision takes.

use std::net::Ipv6Addr;

use chainboot_dhcp::PacketFacts;
use chainboot_machine::Mac;

use crate::duid::{client_mac, duid_uuid, MacSource};
use crate::wire::{code, opaque_list, IaNa, Received, MAX_IAS};

/// The IANA enterprise number of the PXE and HTTP Boot vendor classes (Intel, 343): what
/// edk2 sends in option 16 and checks in the reply.
pub const PXE_ENTERPRISE: u32 = 343;

/// Everything known about the client of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts6 {
    /// Option 1 (empty for an Information-Request without one).
    pub duid: Vec<u8>,
    pub mac: Option<(Mac, MacSource)>,
    /// The SMBIOS UUID as the DUID-UUID carries it.
    pub uuid: Option<[u8; 16]>,
    /// Option 16's enterprise number.
    pub vendor_enterprise: Option<u32>,
    /// IA_NAs, at most [`MAX_IAS`] of them (the rest are counted in `ias_beyond_limit`).
    pub ias: Vec<IaNa>,
    pub ias_beyond_limit: usize,
    /// Option 14 present.
    pub rapid_commit: bool,
    /// The client's link as a relay named it (first relay's link-address), if relayed.
    pub relay_link: Option<Ipv6Addr>,
    /// The boot facts in the DHCPv4 engine's shape (for `chainboot_dhcp::decide`).
    pub boot: PacketFacts,
}

impl Facts6 {
    /// The facts of `r`, which came from `src` (the client's own address when not relayed).
    pub fn of(r: &Received, src: Ipv6Addr) -> Facts6 {
        let o = &r.msg.options;
        let duid = o.get(code::CLIENTID).unwrap_or_default().to_vec();
        let first = r.first_relay();
        let client_addr = first.map_or(src, |h| h.peer);
        let mac = client_mac(
            &duid,
            first.and_then(|h| h.client_link_layer.as_deref()),
            client_addr,
        );
        let vendor = o.get(code::VENDOR_CLASS);
        let vendor_enterprise = vendor
            .and_then(|v| v.get(0..4))
            .map(|e| u32::from_be_bytes([e[0], e[1], e[2], e[3]]));
        let vendor_class = vendor
            .and_then(|v| v.get(4..))
            .and_then(|l| opaque_list(l).first().copied())
            .map(|s| String::from_utf8_lossy(s).into_owned());
        let user_class = o.get(code::USER_CLASS);
        let is_ipxe = user_class.is_some_and(|u| opaque_list(u).contains(&&b"iPXE"[..]));
        let arch_code = o
            .get(code::CLIENT_ARCH)
            .and_then(|b| b.get(0..2))
            .map(|b| u16::from_be_bytes([b[0], b[1]]));
        let all_ias: Vec<IaNa> = o.all(code::IA_NA).filter_map(IaNa::parse).collect();
        let ias_beyond_limit = all_ias.len().saturating_sub(MAX_IAS);
        let uuid = duid_uuid(&duid);
        Facts6 {
            mac,
            uuid,
            vendor_enterprise,
            ias: all_ias.into_iter().take(MAX_IAS).collect(),
            ias_beyond_limit,
            rapid_commit: o.has(code::RAPID_COMMIT),
            relay_link: first.map(|h| h.link).filter(|l| !l.is_unspecified()),
            boot: PacketFacts {
                mac: mac.map(|(m, _)| m),
                vendor_class,
                arch_code,
                is_ipxe,
                // DHCPv6 has no option 175: iPXE cannot say which protocols it was built
                // with. HTTP is in iPXE's default build configuration (and in every binary
                // chainboot serves), HTTPS is not, so v6 iPXE gets http://.
                ipxe_http: is_ipxe,
                ipxe_https: false,
                // Option 97's shape (type 0 + UUID), so policy sees the same fact as on v4.
                uuid: uuid.map(|u| [[0u8].as_slice(), &u].concat()),
                user_class: user_class.map(<[u8]>::to_vec),
                ..PacketFacts::default()
            },
            duid,
        }
    }
}
