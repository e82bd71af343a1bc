//! Who answers DHCP on a segment: one DHCPDISCOVER, sent as BIOS PXE firmware would send it
//! (so a proxyDHCP server answers too) from a random locally administered MAC, broadcast out of
//! one named interface, and every OFFER for it heard within a wait.
//!
//! The probe never requests anything: a DHCP server only reserves an address for its offer
//! time, and the random MAC never comes back. It is sent only on an interface the caller was
//! given by the user.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use chainboot_dhcp::client::{ClientKind, ClientMessage, ReplyView};
use chainboot_dhcp::wire::{code, MessageType};
use socket2::{Domain, Protocol, Socket, Type};

/// Answers kept at most (one per server; a segment with more is broken anyway).
const MAX_ANSWERS: usize = 16;

/// What kind of server answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// Offered an address.
    Dhcp,
    /// Offered no address, only boot information (yiaddr 0.0.0.0).
    ProxyDhcp,
}

/// One server that answered the probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub kind: ServerKind,
    /// Its server identifier (option 54), else the reply's source address.
    pub server: Ipv4Addr,
    /// The address offered (DHCP servers only).
    pub offered: Option<Ipv4Addr>,
    /// Subnet mask and router it gave (DHCP servers only).
    pub mask: Option<Ipv4Addr>,
    pub router: Option<Ipv4Addr>,
    /// It also handed out a boot file or PXE vendor information: PXE firmware on this
    /// segment already gets boot answers from it.
    pub boot_info: bool,
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            ServerKind::Dhcp => {
                write!(f, "DHCP server {}", self.server)?;
                if let Some(ip) = self.offered {
                    write!(f, " offered {ip}")?;
                }
                if self.boot_info {
                    f.write_str(" with boot information")?;
                }
                Ok(())
            }
            ServerKind::ProxyDhcp => write!(f, "proxyDHCP server {}", self.server),
        }
    }
}

/// A MAC no real machine has: random, with the locally administered bit set and the
/// multicast bit clear.
pub fn random_mac() -> [u8; 6] {
    let mut mac: [u8; 6] = rand::random();
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// Sends one DISCOVER out of `interface` and collects the OFFERs for it until `wait` has
/// passed. Needs root for port 68 (and, before Linux 5.7, for SO_BINDTODEVICE).
pub fn probe(interface: &str, wait: Duration) -> io::Result<Vec<Answer>> {
    let ifindex = nix::net::if_::if_nametoindex(interface).map_err(|e| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface {interface}: {e}"),
        )
    })?;
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // A DHCP client on this host may hold port 68 too; both get the broadcast replies.
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    socket.bind_device(Some(interface.as_bytes()))?;
    chainboot_udp::enable_pktinfo(&socket, false)?;
    socket
        .bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)).into())
        .map_err(|e| io::Error::new(e.kind(), format!("binding UDP port 68: {e}")))?;
    let mut msg = ClientMessage::new(
        ClientKind::Firmware { arch: 0 },
        MessageType::Discover,
        random_mac(),
    );
    msg.xid = rand::random();
    let bytes = msg.encode();
    chainboot_udp::send(
        &socket,
        &[chainboot_udp::Transmit {
            destination: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::BROADCAST, 67)),
            source: None,
            ifindex,
            contents: &bytes,
        }],
    )?;
    let deadline = Instant::now() + wait;
    let mut answers: Vec<Answer> = Vec::new();
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || answers.len() >= MAX_ANSWERS {
            break;
        }
        socket.set_read_timeout(Some(left))?;
        let meta = match chainboot_udp::recv(&socket, &mut buf) {
            Ok(m) => m,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if meta.ifindex.is_some_and(|i| i != ifindex) || meta.truncated {
            continue;
        }
        let Some(answer) = answer_to(&buf[..meta.len], msg.xid, meta.source) else {
            continue;
        };
        if !answers.iter().any(|a| a.server == answer.server) {
            answers.push(answer);
        }
    }
    Ok(answers)
}

/// Reads an OFFER for our transaction; anything else is `None`.
fn answer_to(bytes: &[u8], xid: u32, source: SocketAddr) -> Option<Answer> {
    let reply = ReplyView::parse(bytes)?;
    if reply.xid != xid || reply.msg_type != Some(MessageType::Offer) {
        return None;
    }
    let source_ip = match source.ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    };
    let server = reply.opt_ip(code::SERVER_ID).unwrap_or(source_ip);
    let pxe = reply
        .opt(code::VENDOR_CLASS)
        .is_some_and(|v| v.starts_with(b"PXEClient"));
    let boot_info = pxe || !reply.file.is_empty() || reply.opt(67).is_some();
    if reply.yiaddr.is_unspecified() {
        return Some(Answer {
            kind: ServerKind::ProxyDhcp,
            server,
            offered: None,
            mask: None,
            router: None,
            boot_info: true,
        });
    }
    Some(Answer {
        kind: ServerKind::Dhcp,
        server,
        offered: Some(reply.yiaddr),
        mask: reply.opt_ip(1),
        router: reply.opt_ip(3),
        boot_info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_macs_are_locally_administered_unicast() {
        for _ in 0..64 {
            let mac = random_mac();
            assert_eq!(mac[0] & 0x03, 0x02, "{mac:02x?}");
        }
    }

    fn offer(xid: u32, yiaddr: Ipv4Addr, opts: &[(u8, Vec<u8>)]) -> Vec<u8> {
        use dhcproto::v4::{Message, Opcode};
        let mut m = Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            yiaddr,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &[2, 0, 0, 0, 0, 1],
        );
        m.set_opcode(Opcode::BootReply);
        let mut all = vec![(code::MESSAGE_TYPE, vec![MessageType::Offer.as_u8()])];
        all.extend_from_slice(opts);
        chainboot_dhcp::wire::encode_message(&mut m, &all).expect("encodes")
    }

    fn from(ip: [u8; 4]) -> SocketAddr {
        SocketAddr::from((ip, 67))
    }

    #[test]
    fn an_offer_with_an_address_is_a_dhcp_server() {
        let bytes = offer(
            7,
            Ipv4Addr::new(198, 18, 0, 150),
            &[
                (code::SERVER_ID, vec![198, 18, 0, 2]),
                (1, vec![255, 255, 255, 0]),
            ],
        );
        let a = answer_to(&bytes, 7, from([198, 18, 0, 9])).expect("an answer");
        assert_eq!(a.kind, ServerKind::Dhcp);
        assert_eq!(a.server, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(a.offered, Some(Ipv4Addr::new(198, 18, 0, 150)));
        assert_eq!(a.mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert!(!a.boot_info);
    }

    #[test]
    fn an_offer_without_an_address_is_a_proxy_dhcp_server() {
        let bytes = offer(
            7,
            Ipv4Addr::UNSPECIFIED,
            &[(code::VENDOR_CLASS, b"PXEClient".to_vec())],
        );
        let a = answer_to(&bytes, 7, from([198, 18, 0, 3])).expect("an answer");
        assert_eq!(a.kind, ServerKind::ProxyDhcp);
        assert_eq!(a.server, Ipv4Addr::new(198, 18, 0, 3));
    }

    #[test]
    fn offers_for_another_transaction_and_other_messages_are_ignored() {
        let bytes = offer(8, Ipv4Addr::new(198, 18, 0, 150), &[]);
        assert_eq!(answer_to(&bytes, 7, from([198, 18, 0, 2])), None);
        assert_eq!(answer_to(b"not dhcp", 7, from([198, 18, 0, 2])), None);
    }
}
