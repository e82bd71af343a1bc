//! chainboot-udp: the UDP plumbing every chainboot server shares, once.
//!
//! - Batch receive ([`RecvBatch`], `recvmmsg`): each datagram with its source, the address
//!   it was sent to, the local address the kernel would answer from and the interface it
//!   came in on ([`RecvMeta`], from IP_PKTINFO / IPV6_PKTINFO, see [`enable_pktinfo`]).
//! - Batch send ([`send`], `sendmmsg`): each datagram ([`Transmit`]) with its own destination,
//!   source address and outgoing interface.
//! - Socket options: [`set_receive_buffer`] (SO_RCVBUFFORCE, else SO_RCVBUF) and
//!   [`enable_pktinfo`]; [`set_arp_entry`] (SIOCSARP) for DHCP replies to clients that
//!   cannot answer ARP yet.
//!
//! IPv4 and IPv6 alike. The `unsafe` system calls and the one conversion between std and
//! kernel socket addresses live in `sys.rs`; the rest of the crate has no `unsafe`.
//!
//! Why not quinn-udp, which does this job for QUIC: its `Transmit` carries a source address
//! but no outgoing interface, and DHCP must send a broadcast out of the interface the request
//! came in on (a server with several interfaces, no address on the client's yet); it sends one
//! `sendmsg` per transmit (batching only same-destination segments through GSO), where the
//! DHCP server sends a burst of replies to many clients in one `sendmmsg`; and it expects
//! non-blocking sockets, where the DHCP receive threads block in `recvmmsg` with
//! MSG_WAITFORONE. What it adds (ECN, GSO/GRO) DHCP and TFTP do not use. nix's
//! `recvmmsg`/`sendmmsg` would cover the calls but not IPv6 pktinfo on send.

mod sys;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;

/// Most datagrams one receive or send system call takes (a TFTP window of the largest size
/// granted, two bursts of DHCP requests).
pub const MAX_BATCH: usize = 64;

/// What the kernel said about one received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    /// Bytes in the buffer (at most its size).
    pub len: usize,
    /// Who sent it (0.0.0.0:0 when the kernel named no source, which UDP always does).
    pub source: SocketAddr,
    /// The address the datagram was sent to (its IP header's destination: a broadcast
    /// address for a broadcast); `None` without pktinfo.
    pub destination: Option<IpAddr>,
    /// The local address the kernel would answer from: for a broadcast, the receiving
    /// interface's address (IPv4 `ipi_spec_dst`; for IPv6 the same as `destination`).
    pub local: Option<IpAddr>,
    /// The interface it came in on; `None` without pktinfo.
    pub ifindex: Option<u32>,
    /// The datagram was longer than the buffer and was cut.
    pub truncated: bool,
}

/// One datagram to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit<'a> {
    pub destination: SocketAddr,
    /// The source address to send from (must be local); `None`: the socket's or the route's.
    pub source: Option<IpAddr>,
    /// The interface to leave by; 0: the routing table decides.
    pub ifindex: u32,
    pub contents: &'a [u8],
}

impl Transmit<'_> {
    /// A placeholder to fill arrays with (sends nothing anywhere useful).
    pub const EMPTY: Transmit<'static> = Transmit {
        destination: SocketAddr::V4(std::net::SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
        source: None,
        ifindex: 0,
        contents: &[],
    };
}

/// Sends up to [`MAX_BATCH`] of `transmits` with one `sendmmsg`, in order, never waiting for
/// send buffer space (a full buffer is `WouldBlock`: retry, or count the datagram as lost).
/// Returns how many were sent, at least one; an error is the first datagram's (the caller
/// decides whether to skip it or retry).
pub fn send(socket: &impl AsFd, transmits: &[Transmit<'_>]) -> io::Result<usize> {
    sys::send_mmsg(socket.as_fd(), transmits)
}

/// Buffers for one `recvmmsg`, and what it received.
pub struct RecvBatch {
    buf: Vec<u8>,
    slot_len: usize,
    metas: Vec<RecvMeta>,
}

impl RecvBatch {
    /// Room for `slots` datagrams (1 to [`MAX_BATCH`]) of up to `slot_len` bytes each.
    pub fn new(slots: usize, slot_len: usize) -> RecvBatch {
        let slots = slots.clamp(1, MAX_BATCH);
        let slot_len = slot_len.max(1);
        RecvBatch {
            buf: vec![0; slots * slot_len],
            slot_len,
            metas: Vec::with_capacity(slots),
        }
    }

    /// Waits as the socket does (blocking, up to its receive timeout; or not at all when it
    /// is non-blocking) for one datagram, then takes whatever else has queued without waiting
    /// (MSG_WAITFORONE). Returns how many arrived.
    pub fn recv(&mut self, socket: &impl AsFd) -> io::Result<usize> {
        sys::recv_mmsg(
            socket.as_fd(),
            self.buf.chunks_mut(self.slot_len),
            &mut self.metas,
            libc::MSG_WAITFORONE,
        )
    }

    pub fn len(&self) -> usize {
        self.metas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.metas.is_empty()
    }

    /// The datagrams of the last [`recv`](RecvBatch::recv), in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &RecvMeta)> {
        self.buf
            .chunks(self.slot_len)
            .zip(&self.metas)
            .map(|(b, m)| (&b[..m.len.min(b.len())], m))
    }
}

/// Receives one datagram into `buf` (as the socket waits: a non-blocking socket answers
/// `WouldBlock` when nothing is queued).
pub fn recv(socket: &impl AsFd, buf: &mut [u8]) -> io::Result<RecvMeta> {
    let mut metas = Vec::with_capacity(1);
    sys::recv_mmsg(socket.as_fd(), std::iter::once(buf), &mut metas, 0)?;
    metas
        .pop()
        .ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))
}

/// One `recvfrom` that never waits (MSG_DONTWAIT), whatever the socket's mode.
pub fn try_recv_from(socket: &impl AsFd, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    sys::recv_from_dontwait(socket.as_fd(), buf)
}

/// Asks the kernel to report each datagram's destination address and interface
/// ([`RecvMeta`]): IP_PKTINFO, or IPV6_RECVPKTINFO on an IPv6 socket, which then also asks
/// for IP_PKTINFO so that IPv4 clients of a dual-stack socket are reported too (best effort:
/// an IPv6-only socket refuses it).
pub fn enable_pktinfo(socket: &impl AsFd, ipv6: bool) -> io::Result<()> {
    let fd = socket.as_fd();
    if ipv6 {
        sys::set_int_option(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
        let _ = sys::set_int_option(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1);
        Ok(())
    } else {
        sys::set_int_option(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)
    }
}

/// Asks for a receive buffer of `size` bytes: SO_RCVBUFFORCE first (allowed with
/// CAP_NET_ADMIN, which a server on a privileged port has; it may exceed net.core.rmem_max,
/// only 208 KiB by default), else SO_RCVBUF (silently capped at rmem_max). An error only
/// means the buffer stayed smaller; callers may ignore it.
pub fn set_receive_buffer(socket: &impl AsFd, size: usize) -> io::Result<()> {
    let size = size.min(i32::MAX as usize) as libc::c_int;
    let fd = socket.as_fd();
    sys::set_int_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size)
        .or_else(|_| sys::set_int_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, size))
}

/// Inserts a complete ARP entry `ip` → `mac` on the interface named `ifname` (SIOCSARP, as
/// dnsmasq does), so that a unicast reaches a client that does not answer ARP yet. Needs
/// CAP_NET_ADMIN.
pub fn set_arp_entry(
    socket: &impl AsFd,
    ifname: &str,
    ip: Ipv4Addr,
    mac: [u8; 6],
) -> io::Result<()> {
    sys::set_arp(socket.as_fd(), ifname, ip, mac)
}

/// The hardware address of the complete ARP entry for `ip` on the interface named `ifname`
/// (SIOCGARP: one entry, no table walk), `None` when there is none.
pub fn arp_entry(socket: &impl AsFd, ifname: &str, ip: Ipv4Addr) -> io::Result<Option<[u8; 6]>> {
    sys::get_arp(socket.as_fd(), ifname, ip)
}

#[cfg(test)]
mod tests;
