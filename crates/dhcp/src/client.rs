//! A DHCP client that speaks like boot firmware, on dhcproto: it builds the packets the kinds
//! of clients in the field send and reads replies. Used by the engine tests, the
//! namespace integration tests and `chainboot explain` (which turns `--arch`/`--user-class`
//! into one of these packets and runs it through the engine).

use std::net::Ipv4Addr;

use dhcproto::v4::{Flags, Message, Opcode};
use dhcproto::{Decodable, Decoder};

use crate::wire::{code, encode_message, MessageType};

/// The kinds of boot clients seen in the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientKind {
    /// Firmware PXE (BIOS or UEFI) with option 93 = `arch`, sending 97.
    Firmware { arch: u16 },
    /// An Intel BIOS ROM that omits option 97 (pixiecore#21).
    IntelNoUuid,
    /// UEFI HTTP Boot ("HTTPClient", arch 15/16/19).
    HttpBoot { arch: u16 },
    /// iPXE: option 175 (with 19 when `http`), user-class "iPXE" unless `user_class` is false
    /// (Mellanox FlexBoot, warewulf3#104).
    Ipxe {
        arch: u16,
        http: bool,
        user_class: bool,
    },
    /// An ordinary DHCP client (no vendor class, no 93).
    Plain,
}

impl ClientKind {
    /// All the kinds the engine matrix covers.
    pub fn matrix() -> Vec<(&'static str, ClientKind)> {
        vec![
            ("bios-pxe", ClientKind::Firmware { arch: 0 }),
            ("uefi-x64-arch7", ClientKind::Firmware { arch: 7 }),
            ("uefi-x64-arch9", ClientKind::Firmware { arch: 9 }),
            ("uefi-ia32", ClientKind::Firmware { arch: 6 }),
            ("uefi-arm64", ClientKind::Firmware { arch: 11 }),
            ("http-boot-x64", ClientKind::HttpBoot { arch: 16 }),
            (
                "ipxe-http",
                ClientKind::Ipxe {
                    arch: 0,
                    http: true,
                    user_class: true,
                },
            ),
            (
                "ipxe-no-http",
                ClientKind::Ipxe {
                    arch: 0,
                    http: false,
                    user_class: true,
                },
            ),
            (
                "flexboot-no-user-class",
                ClientKind::Ipxe {
                    arch: 7,
                    http: true,
                    user_class: false,
                },
            ),
            ("intel-rom-no-97", ClientKind::IntelNoUuid),
        ]
    }
}

/// What to put in one client message.
#[derive(Debug, Clone)]
pub struct ClientMessage {
    pub kind: ClientKind,
    pub msg_type: MessageType,
    pub mac: [u8; 6],
    pub xid: u32,
    pub ciaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub broadcast: bool,
    pub requested_ip: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
    pub relay_info: Option<Vec<u8>>,
    pub client_id: Option<Vec<u8>>,
    /// An iPXE client also advertises HTTPS (option 175.20).
    pub ipxe_https: bool,
}

impl ClientMessage {
    pub fn new(kind: ClientKind, msg_type: MessageType, mac: [u8; 6]) -> ClientMessage {
        ClientMessage {
            kind,
            msg_type,
            mac,
            xid: u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]) ^ 0x5a5a_0000,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            broadcast: true,
            requested_ip: None,
            server_id: None,
            relay_info: None,
            client_id: None,
            ipxe_https: false,
        }
    }

    /// The message as bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut m = Message::new_with_id(
            self.xid,
            self.ciaddr,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            self.giaddr,
            &self.mac,
        );
        m.set_opcode(Opcode::BootRequest);
        let mut f = Flags::default();
        if self.broadcast {
            f = f.set_broadcast();
        }
        m.set_flags(f);
        let mut opts: Vec<(u8, Vec<u8>)> = Vec::new();
        let mut raw = |c: u8, d: Vec<u8>| opts.push((c, d));
        raw(code::MESSAGE_TYPE, vec![self.msg_type.as_u8()]);
        raw(
            code::PARAMETER_LIST,
            vec![1, 3, 6, 12, 15, 28, 42, 43, 60, 66, 67, 97, 175],
        );
        raw(code::MAX_SIZE, 1472u16.to_be_bytes().to_vec());
        let uuid = {
            let mut u = vec![0u8];
            u.extend_from_slice(&[0x11; 10]);
            u.extend_from_slice(&self.mac);
            u
        };
        let pxe = |arch: u16| format!("PXEClient:Arch:{arch:05}:UNDI:002001").into_bytes();
        match &self.kind {
            ClientKind::Firmware { arch } => {
                raw(code::VENDOR_CLASS, pxe(*arch));
                raw(code::CLIENT_ARCH, arch.to_be_bytes().to_vec());
                raw(code::CLIENT_NDI, vec![1, 2, 1]);
                raw(code::CLIENT_UUID, uuid);
            }
            ClientKind::IntelNoUuid => {
                raw(code::VENDOR_CLASS, pxe(0));
                raw(code::CLIENT_ARCH, vec![0, 0]);
                raw(code::CLIENT_NDI, vec![1, 2, 1]);
            }
            ClientKind::HttpBoot { arch } => {
                raw(
                    code::VENDOR_CLASS,
                    format!("HTTPClient:Arch:{arch:05}:UNDI:003001").into_bytes(),
                );
                raw(code::CLIENT_ARCH, arch.to_be_bytes().to_vec());
                raw(code::CLIENT_UUID, uuid);
            }
            ClientKind::Ipxe {
                arch,
                http,
                user_class,
            } => {
                // iPXE sends 60 "PXEClient" even after a chainload (ipxe#1527).
                raw(code::VENDOR_CLASS, pxe(*arch));
                raw(code::CLIENT_ARCH, arch.to_be_bytes().to_vec());
                raw(code::CLIENT_UUID, uuid);
                let mut feat = vec![16, 1, 1, 21, 1, 1, 24, 1, 1, 39, 1, 1];
                if *http {
                    feat.extend_from_slice(&[19, 1, 1]);
                }
                if self.ipxe_https {
                    feat.extend_from_slice(&[20, 1, 1]);
                }
                feat.extend_from_slice(&[235, 4, 1, 0, 0, 0]);
                raw(code::IPXE, feat);
                if *user_class {
                    raw(code::USER_CLASS, b"iPXE".to_vec());
                }
            }
            ClientKind::Plain => {}
        }
        if let Some(ip) = self.requested_ip {
            raw(code::REQUESTED_IP, ip.octets().to_vec());
        }
        if let Some(ip) = self.server_id {
            raw(code::SERVER_ID, ip.octets().to_vec());
        }
        if let Some(ri) = &self.relay_info {
            raw(code::RELAY_AGENT, ri.clone());
        }
        if let Some(id) = &self.client_id {
            raw(code::CLIENT_ID, id.clone());
        }
        // Encoding a message we built ourselves only fails on an impossible state.
        encode_message(&mut m, &opts).unwrap_or_default()
    }
}

/// A server reply as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyView {
    pub msg_type: Option<MessageType>,
    pub xid: u32,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub ciaddr: Ipv4Addr,
    pub broadcast: bool,
    pub file: String,
    pub len: usize,
    options: Vec<(u8, Vec<u8>)>,
}

impl ReplyView {
    /// Decodes a reply; `None` if it is not a BOOTREPLY.
    pub fn parse(bytes: &[u8]) -> Option<ReplyView> {
        let m = Message::decode(&mut Decoder::new(bytes)).ok()?;
        if m.opcode() != Opcode::BootReply {
            return None;
        }
        // Raw option scan (dhcproto's typed view drops unknown encodings).
        let mut options = Vec::new();
        let area = bytes.get(240..)?;
        let mut i = 0;
        while i < area.len() && area[i] != 255 {
            if area[i] == 0 {
                i += 1;
                continue;
            }
            let len = *area.get(i + 1)? as usize;
            options.push((area[i], area.get(i + 2..i + 2 + len)?.to_vec()));
            i += 2 + len;
        }
        let msg_type = options
            .iter()
            .find(|(c, _)| *c == code::MESSAGE_TYPE)
            .and_then(|(_, v)| MessageType::from_u8(*v.first()?));
        Some(ReplyView {
            msg_type,
            xid: m.xid(),
            yiaddr: m.yiaddr(),
            siaddr: m.siaddr(),
            ciaddr: m.ciaddr(),
            broadcast: m.flags().broadcast(),
            file: m
                .fname()
                .map(|f| {
                    let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
                    String::from_utf8_lossy(&f[..end]).into_owned()
                })
                .unwrap_or_default(),
            len: bytes.len(),
            options,
        })
    }

    pub fn opt(&self, c: u8) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|(k, _)| *k == c)
            .map(|(_, v)| v.as_slice())
    }

    pub fn opt_str(&self, c: u8) -> Option<String> {
        self.opt(c).map(|b| String::from_utf8_lossy(b).into_owned())
    }

    pub fn opt_ip(&self, c: u8) -> Option<Ipv4Addr> {
        let b: [u8; 4] = self.opt(c)?.try_into().ok()?;
        Some(b.into())
    }

    /// Option codes in the order they appear.
    pub fn codes(&self) -> Vec<u8> {
        self.options.iter().map(|(c, _)| *c).collect()
    }
}
