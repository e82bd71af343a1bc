//! Sending a window in one system call (`sendmmsg`): with windowsize 16 a window is 16
//! datagrams, and one `sendto` each is most of the server's CPU time at small block sizes.
//! The system call itself is `chainboot_udp::send`.

use std::io;
use std::net::SocketAddr;

use chainboot_udp::{Transmit, MAX_BATCH};

use crate::socket::TransferSocket;

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
        let mut transmits = [Transmit::EMPTY; MAX_BATCH];
        for (i, (t, len)) in transmits.iter_mut().zip(&self.lens).enumerate() {
            let start = i * self.slot_len;
            *t = Transmit {
                destination: to,
                source: None,
                ifindex: 0,
                contents: &self.buf[start..start + len],
            };
        }
        let transmits = &transmits[..self.lens.len()];
        let mut sent = 0;
        while sent < transmits.len() {
            sent += socket
                .send_with(|socket| chainboot_udp::send(socket, &transmits[sent..]))
                .await?;
        }
        Ok(())
    }
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
