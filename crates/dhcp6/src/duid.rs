//! Who a DHCPv6 client is: the MAC behind its DUID, so that policy, boot-once and timelines
//! see one machine whether it booted over IPv4 or IPv6.
//!
//! The same machine shows several DUIDs: OVMF uses DUID-LLT without an SMBIOS UUID and
//! DUID-UUID with one, iPXE always DUID-UUID (all zeros without an SMBIOS UUID), and the two
//! encode the UUID's bytes differently. So the MAC comes, in this order, from a relay's
//! option 79 (RFC 6939: what the relay saw on the wire), a DUID-LL/LLT of Ethernet type, or
//! the EUI-64 interface identifier of the client's link-local source address (RFC 4291
//! appendix A); a DUID-UUID only names the SMBIOS UUID.

use std::net::Ipv6Addr;

use chainboot_machine::Mac;

/// DUID types (RFC 8415 §11, RFC 6355).
const DUID_LLT: u16 = 1;
const DUID_LL: u16 = 3;
const DUID_UUID: u16 = 4;
/// Hardware type Ethernet (RFC 826).
const HW_ETHERNET: u16 = 1;

/// Where a client's MAC was learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MacSource {
    /// Option 79 of the relay closest to the client.
    RelayOption79,
    /// A DUID-LL or DUID-LLT of Ethernet type.
    Duid,
    /// The EUI-64 interface identifier of the client's link-local address.
    LinkLocal,
}

impl MacSource {
    pub fn as_str(self) -> &'static str {
        match self {
            MacSource::RelayOption79 => "relay option 79",
            MacSource::Duid => "DUID",
            MacSource::LinkLocal => "link-local address",
        }
    }
}

/// The Ethernet address inside a DUID-LL or DUID-LLT.
pub fn duid_mac(duid: &[u8]) -> Option<Mac> {
    let ty = u16::from_be_bytes(duid.get(0..2)?.try_into().ok()?);
    let hw = u16::from_be_bytes(duid.get(2..4)?.try_into().ok()?);
    if hw != HW_ETHERNET {
        return None;
    }
    let addr = match ty {
        DUID_LLT => duid.get(8..)?,
        DUID_LL => duid.get(4..)?,
        _ => return None,
    };
    if addr.len() == 6 {
        Mac::from_slice(addr)
    } else {
        None
    }
}

/// The 16 bytes of a DUID-UUID (RFC 6355), as sent.
pub fn duid_uuid(duid: &[u8]) -> Option<[u8; 16]> {
    let ty = u16::from_be_bytes(duid.get(0..2)?.try_into().ok()?);
    if ty != DUID_UUID {
        return None;
    }
    duid.get(2..).and_then(|u| <[u8; 16]>::try_from(u).ok())
}

/// The MAC behind a modified EUI-64 interface identifier of a link-local address
/// (`fe80::5054:ff:fe12:3456` → `52:54:00:12:34:56`); `None` for privacy or stable-random
/// identifiers, which lack the `ff:fe` in the middle.
pub fn link_local_mac(addr: Ipv6Addr) -> Option<Mac> {
    let o = addr.octets();
    let link_local = o[0] == 0xfe && (o[1] & 0xc0) == 0x80;
    if !link_local || o[11] != 0xff || o[12] != 0xfe {
        return None;
    }
    Some(Mac([o[8] ^ 0x02, o[9], o[10], o[13], o[14], o[15]]))
}

/// The link-local address a client with `mac` forms from it (modified EUI-64, RFC 4291
/// appendix A): the inverse of [`link_local_mac`].
pub fn eui64_link_local(mac: Mac) -> Ipv6Addr {
    let m = mac.0;
    let mut o = [0u8; 16];
    o[0] = 0xfe;
    o[1] = 0x80;
    o[8..].copy_from_slice(&[m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]]);
    Ipv6Addr::from(o)
}

/// Option 79's payload: link-layer type and address.
pub fn option79_mac(b: &[u8]) -> Option<Mac> {
    let hw = u16::from_be_bytes(b.get(0..2)?.try_into().ok()?);
    let addr = b.get(2..)?;
    if hw == HW_ETHERNET && addr.len() == 6 {
        Mac::from_slice(addr)
    } else {
        None
    }
}

/// The client's MAC and where it came from: option 79 of the first relay, the DUID, or the
/// link-local source (of the packet when it came directly, of the first relay's peer address
/// otherwise).
pub fn client_mac(
    duid: &[u8],
    option79: Option<&[u8]>,
    client_addr: Ipv6Addr,
) -> Option<(Mac, MacSource)> {
    if let Some(m) = option79.and_then(option79_mac) {
        return Some((m, MacSource::RelayOption79));
    }
    if let Some(m) = duid_mac(duid) {
        return Some((m, MacSource::Duid));
    }
    link_local_mac(client_addr).map(|m| (m, MacSource::LinkLocal))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = Mac([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

    #[test]
    fn mac_comes_from_duid_ll_and_llt_of_ethernet_only() {
        let ll = [0, 3, 0, 1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        assert_eq!(duid_mac(&ll), Some(MAC));
        let llt = [0, 1, 0, 1, 1, 2, 3, 4, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        assert_eq!(duid_mac(&llt), Some(MAC));
        let mut not_ethernet = ll;
        not_ethernet[3] = 6;
        assert_eq!(duid_mac(&not_ethernet), None);
        assert_eq!(duid_mac(&ll[..9]), None);
        assert_eq!(duid_mac(&[0, 3]), None);
        let uuid = [[0u8, 4].as_slice(), &[7u8; 16]].concat();
        assert_eq!(duid_mac(&uuid), None);
        assert_eq!(duid_uuid(&uuid), Some([7u8; 16]));
        assert_eq!(duid_uuid(&uuid[..10]), None);
    }

    #[test]
    fn a_macs_link_local_address_reads_back_as_that_mac() {
        let mac = Mac([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
        let ll = eui64_link_local(mac);
        assert_eq!(ll, "fe80::5054:ff:fe12:3456".parse::<Ipv6Addr>().unwrap());
        assert_eq!(link_local_mac(ll), Some(mac));
    }

    #[test]
    fn mac_comes_from_an_eui64_link_local_address() {
        let a: Ipv6Addr = "fe80::5054:ff:fe12:3456".parse().unwrap();
        assert_eq!(link_local_mac(a), Some(MAC));
        let random: Ipv6Addr = "fe80::1c2d:3e4f:5a6b:7c8d".parse().unwrap();
        assert_eq!(link_local_mac(random), None);
        let global: Ipv6Addr = "2001:db8::5054:ff:fe12:3456".parse().unwrap();
        assert_eq!(link_local_mac(global), None);
    }

    #[test]
    fn option79_wins_over_the_duid_and_the_address() {
        let other_ll = [0, 3, 0, 1, 2, 2, 2, 2, 2, 2];
        let o79 = [0, 1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        assert_eq!(
            client_mac(&other_ll, Some(&o79), Ipv6Addr::UNSPECIFIED),
            Some((MAC, MacSource::RelayOption79))
        );
        let uuid = [[0u8, 4].as_slice(), &[0u8; 16]].concat();
        assert_eq!(
            client_mac(&uuid, None, "fe80::5054:ff:fe12:3456".parse().unwrap()),
            Some((MAC, MacSource::LinkLocal))
        );
        assert_eq!(
            client_mac(&uuid, Some(&[0, 1, 2]), Ipv6Addr::UNSPECIFIED),
            None
        );
    }
}
