//! A transfer's socket, registered with the reactor for readability only.
//!
//! Why not tokio's `UdpSocket`: it registers every socket for reading *and* writing, and on
//! Linux every datagram sent makes a UDP socket "writable" again, an edge-triggered event that
//! wakes the reactor for nothing. In a lock-step transfer (windowsize 1, what every PXE ROM
//! does) that doubled the reactor wake-ups per block: strace showed two `epoll_wait` per block,
//! one of them only `EPOLLOUT`. A UDP socket is almost always writable; when its send buffer is
//! full (a big window on a slow link), a short pause replaces waiting for writability.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Pause before retrying a send that found the socket's send buffer full.
const SEND_PAUSE: Duration = Duration::from_millis(1);
/// Sends retried that many times (about 100 ms) before the window counts as lost; the
/// retransmission timer then resends it like any lost window.
const SEND_ATTEMPTS: usize = 100;

pub struct TransferSocket {
    fd: AsyncFd<std::net::UdpSocket>,
}

impl TransferSocket {
    /// Wraps a bound, non-blocking socket.
    // tokio's registration is `unsafe` (its safe constructors are deprecated).
    #[allow(unsafe_code)]
    pub fn new(socket: std::net::UdpSocket) -> io::Result<TransferSocket> {
        // SAFETY: a std `UdpSocket` owns its descriptor: it is open and the same one for as
        // long as the `AsyncFd` (its only owner from here on) lives.
        let fd = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(TransferSocket { fd })
    }

    /// The socket itself, no longer registered with the reactor (still non-blocking).
    pub fn into_std(self) -> std::net::UdpSocket {
        self.fd.into_inner()
    }

    #[cfg(test)]
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.fd.get_ref().local_addr()
    }

    /// Waits for one datagram.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        loop {
            let mut ready = self.fd.readable().await?;
            match ready.try_io(|fd| fd.get_ref().recv_from(buf)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Runs `send` (one non-blocking send system call, returning what it sent), pausing and
    /// retrying while the send buffer is full.
    pub async fn send_with(
        &self,
        mut send: impl FnMut(&std::net::UdpSocket) -> io::Result<usize>,
    ) -> io::Result<usize> {
        for _ in 0..SEND_ATTEMPTS {
            match send(self.fd.get_ref()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tokio::time::sleep(SEND_PAUSE).await;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                result => return result,
            }
        }
        Err(io::ErrorKind::WouldBlock.into())
    }

    pub async fn send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.send_with(|socket| socket.send_to(datagram, to)).await
    }
}

/// Receives one datagram on a blocking socket, first polling it for up to `budget` (see
/// `busy_poll.rs` for why). Also says whether a datagram came while polling; after that the
/// call blocks as `recv_from` does (until the socket's read timeout). An error ends the poll
/// early (not an answer: a client whose datagrams bounce is not worth polling for).
pub fn recv_polling(
    socket: &std::net::UdpSocket,
    buf: &mut [u8],
    budget: Duration,
) -> (io::Result<(usize, SocketAddr)>, bool) {
    let until = Instant::now() + budget;
    loop {
        match chainboot_udp::try_recv_from(socket, buf) {
            Ok(received) => return (Ok(received), true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (Err(e), false),
        }
        if Instant::now() >= until {
            return (socket.recv_from(buf), false);
        }
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn datagrams_go_both_ways() {
        let std = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        std.set_nonblocking(true).unwrap();
        let socket = TransferSocket::new(std).unwrap();
        let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = peer.local_addr().unwrap();
        assert_eq!(socket.send_to(b"data", to).await.unwrap(), 4);
        let mut buf = [0u8; 16];
        let (n, from) = peer.recv_from(&mut buf).await.unwrap();
        assert_eq!(
            (&buf[..n], from),
            (&b"data"[..], socket.local_addr().unwrap())
        );
        peer.send_to(b"ack", from).await.unwrap();
        let (n, from) = socket.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..n], from), (&b"ack"[..], to));
    }

    #[tokio::test]
    async fn a_send_that_keeps_blocking_gives_up() {
        let std = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        std.set_nonblocking(true).unwrap();
        let socket = TransferSocket::new(std).unwrap();
        let mut calls = 0;
        let r = socket
            .send_with(|_| {
                calls += 1;
                Err(io::ErrorKind::WouldBlock.into())
            })
            .await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert_eq!(calls, SEND_ATTEMPTS);
    }

    #[test]
    fn polling_finds_a_waiting_datagram_and_sleeps_when_there_is_none() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buf = [0u8; 16];

        // Nothing comes: the poll runs out, then the blocking receive times out.
        let started = Instant::now();
        let (r, answered) = recv_polling(&socket, &mut buf, Duration::from_micros(50));
        assert!(!answered);
        let kind = r.unwrap_err().kind();
        assert!(
            matches!(kind, io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut),
            "{kind:?}"
        );
        assert!(started.elapsed() >= Duration::from_millis(20));

        // A datagram already queued is found by the poll, with its source.
        peer.send_to(b"ack", socket.local_addr().unwrap()).unwrap();
        let (r, answered) = recv_polling(&socket, &mut buf, Duration::from_millis(100));
        let (n, from) = r.unwrap();
        assert!(answered);
        assert_eq!((&buf[..n], from), (&b"ack"[..], peer.local_addr().unwrap()));

        // A zero budget still receives what is there.
        peer.send_to(b"again", socket.local_addr().unwrap())
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let (r, _) = recv_polling(&socket, &mut buf, Duration::ZERO);
        assert_eq!(&buf[..r.unwrap().0], b"again");
    }
}
