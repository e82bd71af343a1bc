//! The TFTP read transfer state machine driven by a hostile client: arbitrary ACKs, garbage,
//! ERRORs and timeouts in any order, then either a silent or a well-behaved client.
//!
//! Invariants: no DATA block lies beyond the content; at most `windowsize` blocks are
//! unacknowledged (one datagram, the OACK, before ACK 0); a block sent twice carries the same
//! bytes; the bytes are the content (netascii: converted); the transfer terminates: a silent
//! client is dropped after `retries` timeouts (`unproven_retries` before its first ACK, and
//! within `max_silence`), a good client completes it with the whole content, in a bounded
//! number of steps.
#![no_main]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chainboot_tftp::proto::{
    self, encode_request, Packet, OP_ACK, OP_DATA, OP_ERROR, OP_OACK, OP_RRQ,
};
use chainboot_tftp::transfer::Handled;
use chainboot_tftp::{Outcome, Transfer, TransferSettings};
use libfuzzer_sys::fuzz_target;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }
}

struct Model {
    t: Transfer,
    now: Instant,
    buf: Vec<u8>,
    content: Vec<u8>,
    /// What the client must end up with (netascii-converted for netascii).
    expected: Vec<u8>,
    blksize: usize,
    window: u64,
    has_oack: bool,
    oack_acked: bool,
    /// Highest block acknowledged (by an ACK the transfer took as progress).
    acked: u64,
    /// Every block seen, by absolute number.
    blocks: BTreeMap<u64, Vec<u8>>,
    highest_sent: u64,
    sends: u64,
}

impl Model {
    /// Absolute block number for a wire number, relative to the acknowledged point.
    fn absolute(&self, wire: u16) -> u64 {
        let base = self.acked + 1;
        base + (wire.wrapping_sub(base as u16) as u64)
    }

    fn poll_all(&mut self) {
        // A window is at most 64 blocks: 70 polls without None is a runaway.
        for i in 0.. {
            assert!(i < 70, "poll_transmit never stops");
            let Some(n) = self
                .t
                .poll_transmit(self.now, &self.content[..], &mut self.buf)
            else {
                break;
            };
            self.sends += 1;
            let dg = &self.buf[..n];
            match proto::parse(dg).expect("server datagram parses") {
                Packet::Oack { .. } => {
                    assert!(self.has_oack, "OACK without options");
                    assert!(!self.oack_acked, "OACK after ACK 0");
                }
                Packet::Data { block, data } => {
                    assert!(
                        !self.has_oack || self.oack_acked,
                        "DATA before the client acknowledged the OACK (amplification)"
                    );
                    let abs = self.absolute(block);
                    assert!(abs >= 1, "DATA 0");
                    assert!(
                        abs - self.acked <= self.window,
                        "block {abs} sent with only {} acknowledged, window {}",
                        self.acked,
                        self.window
                    );
                    assert!(data.len() <= self.blksize, "block longer than blksize");
                    let start = (abs - 1) * self.blksize as u64;
                    assert!(
                        start <= self.expected.len() as u64,
                        "block {abs} starts past the end ({start} > {})",
                        self.expected.len()
                    );
                    let end = (start as usize + self.blksize).min(self.expected.len());
                    assert_eq!(
                        data,
                        &self.expected[start as usize..end],
                        "block {abs} bytes"
                    );
                    if let Some(prev) = self.blocks.insert(abs, data.to_vec()) {
                        assert_eq!(prev, data, "block {abs} resent with other bytes");
                    }
                    self.highest_sent = self.highest_sent.max(abs);
                }
                Packet::Error { .. } => {
                    assert!(self.t.is_done(), "ERROR sent but the transfer goes on");
                }
                other => panic!("server sent {other:?}"),
            }
        }
    }

    fn deliver(&mut self, dg: &[u8]) {
        let ack = match proto::parse(dg) {
            Ok(Packet::Ack { block }) => Some(block),
            _ => None,
        };
        let was_done = self.t.is_done();
        let h = self.t.handle(self.now, dg);
        if was_done {
            assert_eq!(h, Handled::Ignored);
            return;
        }
        if let (Some(w), Handled::Progress | Handled::Ended) = (ack, h) {
            if self.has_oack && !self.oack_acked {
                assert_eq!(w, 0, "progress on ACK {w} before ACK 0");
                self.oack_acked = true;
            } else {
                let abs = self.absolute(w);
                assert!(
                    abs <= self.highest_sent,
                    "ACK {abs} for a block never sent accepted"
                );
                self.acked = abs;
            }
        }
        if h == Handled::Ended && ack.is_some() {
            assert_eq!(self.t.outcome(), Some(&Outcome::Completed));
            let total: Vec<u8> = self.blocks.values().flatten().copied().collect();
            assert_eq!(total, self.expected, "completed with other bytes");
        }
    }

    fn timeout(&mut self) {
        if let Some(d) = self.t.poll_timeout() {
            self.now = self.now.max(d);
        }
        self.now += Duration::from_millis(1);
        self.t.handle_timeout(self.now);
    }
}

fn netascii(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() * 2);
    for &b in src {
        match b {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            b => out.push(b),
        }
    }
    out
}

fn ack(block: u16) -> Vec<u8> {
    let mut v = OP_ACK.to_be_bytes().to_vec();
    v.extend_from_slice(&block.to_be_bytes());
    v
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let flags = inp.byte();
    let blksize = match inp.byte() % 6 {
        0 => None,
        1 => Some("8"),
        2 => Some("9"),
        3 => Some("512"),
        4 => Some("1428"),
        _ => Some("70000"),
    };
    let windowsize = match inp.byte() % 5 {
        0 => None,
        1 => Some("1"),
        2 => Some("4"),
        3 => Some("64"),
        _ => Some("65535"),
    };
    let len = (inp.u16() % 4096) as usize;
    let netascii_mode = flags & 1 != 0;
    let content: Vec<u8> = (0..len)
        .map(|i| match (i * 7 + flags as usize) % 13 {
            0 => b'\n',
            1 => b'\r',
            n => b'a' + n as u8,
        })
        .collect();
    let mut opts: Vec<(&str, &str)> = Vec::new();
    if let Some(b) = blksize {
        opts.push(("blksize", b));
    }
    if let Some(w) = windowsize {
        opts.push(("windowsize", w));
    }
    if flags & 2 != 0 {
        opts.push(("tsize", "0"));
    }
    if flags & 4 != 0 {
        opts.push(("timeout", "3"));
    }
    let raw = encode_request(
        OP_RRQ,
        "f",
        if netascii_mode { "netascii" } else { "octet" },
        &opts,
    );
    let Ok(Packet::Rrq(req)) = proto::parse(&raw) else {
        panic!("our own RRQ does not parse");
    };
    let settings = TransferSettings {
        timeout: Duration::from_secs(1),
        retries: 3,
        unproven_retries: 2,
        max_silence: Duration::from_secs(30),
        max_blksize: 65464,
        max_windowsize: if flags & 8 != 0 { 8 } else { 64 },
    };
    let now = Instant::now();
    let t = Transfer::new(&req, len as u64, now, &settings);
    let blk = t.blksize();
    let window = t.windowsize() as u64;
    assert!((1..=settings.max_windowsize as u64).contains(&window));
    assert!((8..=65464).contains(&blk));
    let has_oack = !t.acknowledged_options().is_empty();
    let buf = vec![0u8; t.datagram_capacity()];
    let expected = if netascii_mode {
        netascii(&content)
    } else {
        content.clone()
    };
    let mut m = Model {
        t,
        now,
        buf,
        content,
        expected,
        blksize: blk,
        window,
        has_oack,
        oack_acked: false,
        acked: 0,
        blocks: BTreeMap::new(),
        highest_sent: 0,
        sends: 0,
    };

    // The hostile phase.
    for _ in 0..200 {
        if inp.0.is_empty() || m.t.is_done() {
            break;
        }
        match inp.byte() % 8 {
            0 | 1 => m.poll_all(),
            2 => m.timeout(),
            3 => {
                // An ACK near what was sent (likely meaningful).
                let d = inp.byte() as u64 % 80;
                let w = (m.acked + d).wrapping_sub(8) as u16;
                m.deliver(&ack(w));
            }
            4 => {
                let w = inp.u16();
                m.deliver(&ack(w));
            }
            5 => {
                let n = inp.byte() as usize % 32;
                let mut dg = match inp.byte() % 4 {
                    0 => OP_DATA.to_be_bytes().to_vec(),
                    1 => OP_OACK.to_be_bytes().to_vec(),
                    2 => OP_ERROR.to_be_bytes().to_vec(),
                    _ => Vec::new(),
                };
                dg.extend(inp.bytes(n));
                m.deliver(&dg);
            }
            6 => {
                if inp.byte() % 16 == 0 {
                    m.t.abort("fuzz");
                }
            }
            _ => m.poll_all(),
        }
    }

    // The end: a silent client, or a good one.
    let blocks_total = m.expected.len() as u64 / blk as u64 + 1;
    if flags & 16 != 0 {
        m.poll_all();
        for _ in 0..=settings.retries + 1 {
            m.timeout();
            m.poll_all();
        }
        assert!(m.t.is_done(), "a silent client was not dropped");
    } else {
        let mut rounds = 0u64;
        while !m.t.is_done() {
            rounds += 1;
            assert!(
                rounds <= blocks_total + 10,
                "a good client did not finish in {rounds} rounds"
            );
            m.poll_all();
            if m.t.is_done() {
                break;
            }
            if m.has_oack && !m.oack_acked {
                m.deliver(&ack(0));
                continue;
            }
            // ACK the highest contiguous block the client holds.
            let mut have = m.acked;
            while m.blocks.contains_key(&(have + 1)) {
                have += 1;
            }
            if have == m.acked {
                m.timeout();
            } else {
                m.deliver(&ack(have as u16));
            }
        }
        if let Some(o) = m.t.outcome() {
            if matches!(o, Outcome::Completed) {
                assert!(m.t.bytes_acked() == m.expected.len() as u64, "bytes_acked");
            }
        }
    }
    let _ = m.sends;
});
