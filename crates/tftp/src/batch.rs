//! Sending a window in one system call (`sendmmsg`): with windowsize 16 a window is 16
//! datagrams, and one `sendto` each is most of the server's CPU time at small block sizes.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use crate::socket::TransferSocket;

/// Most datagrams per `sendmmsg` (the largest window granted).
const MAX_BATCH: usize = 64;
/// Upper bound on one transfer's batch buffer, so a thousand transfers at blksize 65464 and
/// windowsize 64 cannot ask for gigabytes.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Up to `slots` datagrams of at most `slot_len` bytes, back to back in one buffer.
pub struct Batch {
    buf: Vec<u8>,
    slot_len: usize,
    slots: usize,
    lens: Vec<usize>,
}

impl Batch {
    /// A batch for windows of `windowsize` datagrams of up to `slot_len` bytes.
    pub fn new(windowsize: usize, slot_len: usize) -> Batch {
        let slots = windowsize
            .clamp(1, MAX_BATCH)
            .min((MAX_BATCH_BYTES / slot_len.max(1)).max(1));
        Batch {
            buf: vec![0; slots * slot_len],
            slot_len,
            slots,
            lens: Vec::with_capacity(slots),
        }
    }

    pub fn clear(&mut self) {
        self.lens.clear();
    }

    pub fn is_full(&self) -> bool {
        self.lens.len() == self.slots
    }

    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// The buffer for the next datagram; call [`Batch::commit`] with its length once filled.
    pub fn next_slot(&mut self) -> &mut [u8] {
        let i = self.lens.len().min(self.slots - 1);
        &mut self.buf[i * self.slot_len..(i + 1) * self.slot_len]
    }

    pub fn commit(&mut self, len: usize) {
        if !self.is_full() {
            self.lens.push(len.min(self.slot_len));
        }
    }

    /// Sends every datagram of the batch to `to`, in order.
    pub async fn send(&self, socket: &TransferSocket, to: SocketAddr) -> io::Result<()> {
        let mut sent = 0;
        while sent < self.lens.len() {
            sent += socket
                .send_with(|socket| self.sendmmsg(socket, to, sent))
                .await?;
        }
        Ok(())
    }

    fn sendmmsg(
        &self,
        socket: &std::net::UdpSocket,
        to: SocketAddr,
        from: usize,
    ) -> io::Result<usize> {
        let (addr, addr_len) = sockaddr(to);
        let count = self.lens.len() - from;
        // SAFETY: all-zero is a valid value for these plain C structs.
        let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
        for k in 0..count {
            let i = from + k;
            iovs[k] = libc::iovec {
                iov_base: self.buf[i * self.slot_len..].as_ptr() as *mut libc::c_void,
                iov_len: self.lens[i],
            };
            msgs[k].msg_hdr.msg_name = &addr as *const libc::sockaddr_storage as *mut libc::c_void;
            msgs[k].msg_hdr.msg_namelen = addr_len;
            msgs[k].msg_hdr.msg_iov = &mut iovs[k];
            msgs[k].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `msgs[..count]` point at live iovecs over `self.buf` and at `addr`, all of
        // which outlive the call; the kernel only reads them.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                count as libc::c_uint,
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe {
                std::ptr::write(
                    &mut storage as *mut libc::sockaddr_storage as *mut libc::sockaddr_in,
                    sin,
                )
            };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe {
                std::ptr::write(
                    &mut storage as *mut libc::sockaddr_storage as *mut libc::sockaddr_in6,
                    sin6,
                )
            };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes_are_bounded_by_window_and_bytes() {
        assert_eq!(Batch::new(16, 516).slots, 16);
        assert_eq!(Batch::new(1, 516).slots, 1);
        assert_eq!(Batch::new(64, 65468).slots, 4);
        assert_eq!(Batch::new(0, 516).slots, 1);
    }

    #[tokio::test]
    async fn a_batch_arrives_whole_and_in_order() {
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.set_nonblocking(true).unwrap();
        let tx = TransferSocket::new(tx).unwrap();
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let mut b = Batch::new(8, 100);
        for i in 0..8u8 {
            let slot = b.next_slot();
            slot[..3].copy_from_slice(&[i, i, i]);
            b.commit(3 + i as usize % 2);
        }
        assert!(b.is_full());
        b.send(&tx, rx.local_addr().unwrap()).await.unwrap();
        let mut buf = [0u8; 200];
        for i in 0..8u8 {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(n, 3 + i as usize % 2);
            assert_eq!(buf[0], i);
        }
    }
}
