//! The system calls behind the crate's API, each wrapped in a safe function. The only
//! `unsafe` code of the crate is here, and each block says why it is sound.
#![allow(unsafe_code)]

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::{RecvMeta, Transmit, MAX_BATCH};

/// A socket address as the kernel reads and writes it: either family, in the space of the
/// larger. The family field is the first of both structs, so it can be read through either.
#[repr(C)]
#[derive(Clone, Copy)]
union RawAddr {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

impl RawAddr {
    const LEN: libc::socklen_t = size_of::<RawAddr>() as libc::socklen_t;

    fn empty() -> RawAddr {
        RawAddr {
            v6: libc::sockaddr_in6 {
                sin6_family: libc::AF_UNSPEC as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: [0; 16] },
                sin6_scope_id: 0,
            },
        }
    }

    /// The one conversion from a std address to the kernel's, with its length.
    fn from_std(addr: SocketAddr) -> (RawAddr, libc::socklen_t) {
        match addr {
            SocketAddr::V4(a) => (
                RawAddr {
                    v4: libc::sockaddr_in {
                        sin_family: libc::AF_INET as libc::sa_family_t,
                        sin_port: a.port().to_be(),
                        sin_addr: in_addr(*a.ip()),
                        sin_zero: [0; 8],
                    },
                },
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ),
            SocketAddr::V6(a) => (
                RawAddr {
                    v6: libc::sockaddr_in6 {
                        sin6_family: libc::AF_INET6 as libc::sa_family_t,
                        sin6_port: a.port().to_be(),
                        sin6_flowinfo: a.flowinfo(),
                        sin6_addr: libc::in6_addr {
                            s6_addr: a.ip().octets(),
                        },
                        sin6_scope_id: a.scope_id(),
                    },
                },
                size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            ),
        }
    }

    /// The one conversion back: `None` for a family other than IPv4 and IPv6, or an address
    /// shorter than its family needs.
    fn to_std(self, len: libc::socklen_t) -> Option<SocketAddr> {
        let len = len as usize;
        // SAFETY: both union members start with the family field, and every bit pattern is a
        // valid `sa_family_t`.
        let family = unsafe { self.v4.sin_family } as libc::c_int;
        match family {
            libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
                // SAFETY: the family says the kernel wrote a sockaddr_in; any bits are valid.
                let a = unsafe { self.v4 };
                Some(SocketAddr::V4(SocketAddrV4::new(
                    from_in_addr(a.sin_addr),
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
                // SAFETY: the family says the kernel wrote a sockaddr_in6; any bits are valid.
                let a = unsafe { self.v6 };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

fn in_addr(ip: Ipv4Addr) -> libc::in_addr {
    libc::in_addr {
        s_addr: u32::from(ip).to_be(),
    }
}

fn from_in_addr(a: libc::in_addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be(a.s_addr))
}

/// Room for the control messages of one received datagram: an in_pktinfo (32 bytes with its
/// header on 64-bit Linux) and an in6_pktinfo (40), which a dual-stack socket may both
/// deliver. u64 elements align it like a `cmsghdr`.
type RecvControl = [u64; 16];
/// Room for the one control message of a sent datagram (the larger, in6_pktinfo: 40 bytes).
type SendControl = [u64; 5];

fn zeroed_mmsghdr() -> libc::mmsghdr {
    // SAFETY: mmsghdr is a plain C struct of integers and raw pointers, for which all-zero
    // (null pointers, zero lengths) is a valid value.
    unsafe { std::mem::zeroed() }
}

/// One `recvmmsg` into `bufs` (at most [`MAX_BATCH`] of them), each datagram's facts pushed
/// to `metas` (cleared first). Returns how many datagrams arrived.
pub(crate) fn recv_mmsg<'b>(
    fd: BorrowedFd<'_>,
    bufs: impl Iterator<Item = &'b mut [u8]>,
    metas: &mut Vec<RecvMeta>,
    flags: libc::c_int,
) -> io::Result<usize> {
    metas.clear();
    let mut iovs: Vec<libc::iovec> = bufs
        .take(MAX_BATCH)
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    let count = iovs.len();
    let mut names = vec![RawAddr::empty(); count];
    let mut controls: Vec<RecvControl> = vec![[0; 16]; count];
    let mut msgs: Vec<libc::mmsghdr> = (0..count).map(|_| zeroed_mmsghdr()).collect();
    for (i, m) in msgs.iter_mut().enumerate() {
        let h = &mut m.msg_hdr;
        h.msg_name = (&mut names[i] as *mut RawAddr).cast();
        h.msg_namelen = RawAddr::LEN;
        h.msg_iov = &mut iovs[i];
        h.msg_iovlen = 1;
        h.msg_control = controls[i].as_mut_ptr().cast();
        h.msg_controllen = size_of::<RecvControl>() as _;
    }
    // SAFETY: each header points at a live iovec over a buffer borrowed mutably for this call,
    // at its own name and control buffer of the sizes it declares; none of them moves or is
    // dropped before the call returns (the vectors are fully built above).
    let n = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            msgs.as_mut_ptr(),
            count as libc::c_uint,
            flags,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    for (m, name) in msgs.iter().zip(&names).take(n as usize) {
        metas.push(decode(m, name));
    }
    Ok(n as usize)
}

/// What the kernel said about one received datagram.
fn decode(m: &libc::mmsghdr, name: &RawAddr) -> RecvMeta {
    let h = &m.msg_hdr;
    let mut meta = RecvMeta {
        len: m.msg_len as usize,
        source: name
            .to_std(h.msg_namelen)
            .unwrap_or(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))),
        destination: None,
        local: None,
        ifindex: None,
        truncated: h.msg_flags & libc::MSG_TRUNC != 0,
    };
    // SAFETY: the CMSG_* functions walk the control buffer the kernel filled, bounded by the
    // msg_controllen it set; each header they return lies inside that buffer, and each payload
    // is read unaligned as the type its level and type say it is.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            let (level, kind) = ((*c).cmsg_level, (*c).cmsg_type);
            if level == libc::IPPROTO_IP && kind == libc::IP_PKTINFO {
                let info: libc::in_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                meta.destination = Some(IpAddr::V4(from_in_addr(info.ipi_addr)));
                meta.local = Some(IpAddr::V4(from_in_addr(info.ipi_spec_dst)));
                meta.ifindex = Some(info.ipi_ifindex as u32);
            } else if level == libc::IPPROTO_IPV6 && kind == libc::IPV6_PKTINFO {
                let info: libc::in6_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                let ip = IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr));
                meta.destination = Some(ip);
                meta.local = Some(ip);
                meta.ifindex = Some(info.ipi6_ifindex);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    meta
}

/// One `sendmmsg` of up to [`MAX_BATCH`] of `transmits`, never waiting for buffer space.
/// Returns how many were sent (at least one), or the error of the first.
pub(crate) fn send_mmsg(fd: BorrowedFd<'_>, transmits: &[Transmit<'_>]) -> io::Result<usize> {
    let transmits = &transmits[..transmits.len().min(MAX_BATCH)];
    if transmits.is_empty() {
        return Ok(0);
    }
    let names: Vec<(RawAddr, libc::socklen_t)> = transmits
        .iter()
        .map(|t| RawAddr::from_std(t.destination))
        .collect();
    let mut iovs: Vec<libc::iovec> = transmits
        .iter()
        .map(|t| libc::iovec {
            // The kernel only reads through this pointer (sendmmsg).
            iov_base: t.contents.as_ptr() as *mut libc::c_void,
            iov_len: t.contents.len(),
        })
        .collect();
    let mut controls: Vec<SendControl> = vec![[0; 5]; transmits.len()];
    let mut msgs: Vec<libc::mmsghdr> = transmits.iter().map(|_| zeroed_mmsghdr()).collect();
    for (i, t) in transmits.iter().enumerate() {
        let h = &mut msgs[i].msg_hdr;
        h.msg_name = &names[i].0 as *const RawAddr as *mut libc::c_void;
        h.msg_namelen = names[i].1;
        h.msg_iov = &mut iovs[i];
        h.msg_iovlen = 1;
        if t.source.is_some() || t.ifindex != 0 {
            h.msg_control = controls[i].as_mut_ptr().cast();
            h.msg_controllen = size_of::<SendControl>() as _;
            put_pktinfo(h, t);
        }
    }
    // SAFETY: each header points at its destination, an iovec over bytes borrowed from the
    // caller and (when set) its control buffer, all alive and unmoved until the call returns;
    // the kernel only reads them.
    let sent = unsafe {
        libc::sendmmsg(
            fd.as_raw_fd(),
            msgs.as_mut_ptr(),
            msgs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// Writes the pktinfo control message (source address, outgoing interface) of `t` into the
/// control buffer of `h`, in the destination's family, and sets its length to what it holds.
fn put_pktinfo(h: &mut libc::msghdr, t: &Transmit<'_>) {
    let ifindex = t.ifindex;
    match t.destination {
        SocketAddr::V4(_) => {
            let source = match t.source {
                Some(IpAddr::V4(s)) => s,
                Some(IpAddr::V6(s)) => s.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
                None => Ipv4Addr::UNSPECIFIED,
            };
            let info = libc::in_pktinfo {
                ipi_ifindex: ifindex as libc::c_int,
                ipi_spec_dst: in_addr(source),
                ipi_addr: in_addr(Ipv4Addr::UNSPECIFIED),
            };
            put_cmsg(h, libc::IPPROTO_IP, libc::IP_PKTINFO, info);
        }
        SocketAddr::V6(_) => {
            let source = match t.source {
                Some(IpAddr::V6(s)) => s,
                Some(IpAddr::V4(s)) => s.to_ipv6_mapped(),
                None => Ipv6Addr::UNSPECIFIED,
            };
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: source.octets(),
                },
                ipi6_ifindex: ifindex,
            };
            put_cmsg(h, libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, info);
        }
    }
}

fn put_cmsg<T: Copy>(h: &mut libc::msghdr, level: libc::c_int, kind: libc::c_int, value: T) {
    let len = size_of::<T>() as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(len) } as usize;
    assert!(
        space <= size_of::<SendControl>(),
        "control buffer too small"
    );
    // SAFETY: msg_control points at a zeroed, cmsghdr-aligned SendControl of msg_controllen
    // bytes (checked to hold CMSG_SPACE of the value), so CMSG_FIRSTHDR is non-null and the header and the
    // CMSG_DATA payload written here lie inside the buffer.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(h);
        (*c).cmsg_level = level;
        (*c).cmsg_type = kind;
        (*c).cmsg_len = libc::CMSG_LEN(len) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<T>(), value);
    }
    h.msg_controllen = space as _;
}

/// One non-blocking `recvfrom` (MSG_DONTWAIT, whatever the socket's mode).
pub(crate) fn recv_from_dontwait(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr)> {
    let mut name = RawAddr::empty();
    let mut len = RawAddr::LEN;
    // SAFETY: `buf`, `name` and `len` are live for the call and their sizes are what the
    // kernel is told; it writes at most that many bytes into each.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            (&mut name as *mut RawAddr).cast(),
            &mut len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let from = name
        .to_std(len)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))?;
    Ok((n as usize, from))
}

/// `setsockopt` with an `int` value.
pub(crate) fn set_int_option(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the value is a live int and its size is what the kernel is told.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// SIOCSARP: a complete ARP entry `ip` → `mac` on the interface named `ifname`.
pub(crate) fn set_arp(
    fd: BorrowedFd<'_>,
    ifname: &str,
    ip: Ipv4Addr,
    mac: [u8; 6],
) -> io::Result<()> {
    let mut req = arp_request(ifname, ip);
    req.arp_ha.sa_family = libc::ARPHRD_ETHER;
    for (d, s) in req.arp_ha.sa_data.iter_mut().zip(mac) {
        *d = s as libc::c_char;
    }
    req.arp_flags = libc::ATF_COM;
    // SAFETY: `fd` is an open socket and `req` a fully initialised arpreq that outlives the
    // call; the kernel only reads it.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCSARP as _, &req) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The arpreq for `ip` on the interface named `ifname` (at most 15 bytes, keeping the
/// terminating NUL of IFNAMSIZ 16), hardware address and flags empty.
fn arp_request(ifname: &str, ip: Ipv4Addr) -> libc::arpreq {
    // SAFETY: arpreq is a plain C struct of integers and byte arrays; all-zero is valid.
    let mut req: libc::arpreq = unsafe { std::mem::zeroed() };
    let (pa, _) = RawAddr::from_std(SocketAddr::V4(SocketAddrV4::new(ip, 0)));
    // SAFETY: written as a sockaddr_in just above; sockaddr_in and sockaddr are both 16 bytes
    // on Linux.
    req.arp_pa = unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(pa.v4) };
    for (d, s) in req
        .arp_dev
        .iter_mut()
        .zip(ifname.as_bytes().iter().take(15))
    {
        *d = *s as libc::c_char;
    }
    req
}

/// SIOCGARP: the hardware address of the complete ARP entry for `ip` on `ifname`, if any.
pub(crate) fn get_arp(
    fd: BorrowedFd<'_>,
    ifname: &str,
    ip: Ipv4Addr,
) -> io::Result<Option<[u8; 6]>> {
    let mut req = arp_request(ifname, ip);
    // SAFETY: `fd` is an open socket and `req` an initialised arpreq that outlives the call;
    // SIOCGARP reads and writes exactly that one struct.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGARP as _, &mut req) };
    if r < 0 {
        let e = io::Error::last_os_error();
        // ENXIO: no entry for that address on that interface.
        return if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    if req.arp_flags & libc::ATF_COM == 0 {
        return Ok(None);
    }
    let mut mac = [0u8; 6];
    for (o, b) in mac.iter_mut().zip(req.arp_ha.sa_data.iter()) {
        *o = *b as u8;
    }
    Ok(Some(mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_survive_the_round_trip_through_the_kernel_form() {
        for a in [
            "198.18.0.1:67",
            "0.0.0.0:0",
            "[2001:db8::1]:69",
            "[fe80::1%7]:547",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            let (raw, len) = RawAddr::from_std(a);
            assert_eq!(raw.to_std(len), Some(a));
        }
        assert_eq!(RawAddr::empty().to_std(RawAddr::LEN), None);
        let (raw, _) = RawAddr::from_std("[::1]:1".parse().unwrap());
        assert_eq!(raw.to_std(8), None, "a short name is not read past its end");
    }
}
