//! The read transfer as a sans-IO state machine (quinn-proto style).
//!
//! The driver feeds it datagrams from the client ([`Transfer::handle`]) and timer expiries
//! ([`Transfer::handle_timeout`]), and drains datagrams to send ([`Transfer::poll_transmit`],
//! which reads the needed bytes through a [`BlockSource`] straight into the send buffer) and the
//! next deadline ([`Transfer::poll_timeout`]). It never touches a socket or a clock, so every
//! decision below is tested with a fake clock in this file.
//!
//! Block numbering: blocks are counted with a `u64` internally and only truncated to the wire's
//! 16 bits when encoded, so wrap-around past 65535 (to 0, as tftp-hpa, iPXE and most clients
//! expect) needs no special cases. Block 0 stands for the OACK: it is "sent" and "acknowledged"
//! (ACK 0, RFC 2347) exactly like a data block.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use crate::proto::{self, ErrorCode, Mode, Packet, Request};

/// Anything a transfer can read blocks from: [`chainboot_content::Content`] in the server, a
/// byte slice in tests.
pub trait BlockSource {
    /// Reads up to `buf.len()` bytes at `offset`; returns 0 at the end.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;

    /// All the bytes, when they are in memory: then reading ahead into a buffer of its own
    /// would only copy them twice.
    fn in_memory(&self) -> Option<&[u8]> {
        None
    }
}

impl BlockSource for chainboot_content::Content {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        chainboot_content::Content::read_at(self, offset, buf)
    }

    fn in_memory(&self) -> Option<&[u8]> {
        self.as_bytes().map(|b| &b[..])
    }
}

impl BlockSource for [u8] {
    fn in_memory(&self) -> Option<&[u8]> {
        Some(self)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        let Some(rest) = self.get(start..) else {
            return Ok(0);
        };
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }
}

/// RFC 2348 bounds of the blksize option.
pub const MIN_BLKSIZE: u16 = 8;
pub const MAX_BLKSIZE: u16 = 65464;
/// RFC 1350's fixed block size, used when no blksize was negotiated.
pub const DEFAULT_BLKSIZE: u16 = 512;
/// Largest windowsize we ever grant. RFC 7440 allows 65535, but past a few dozen blocks a
/// window only fills socket buffers and makes each loss cost more.
pub const MAX_WINDOWSIZE: u16 = 64;

/// Server-side limits and defaults for every transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferSettings {
    /// Retransmission timeout when the client did not negotiate one (RFC 2349 `timeout`), and
    /// always until the client's first ACK: a negotiated timeout only counts once the client
    /// has shown that it receives what is sent to its address.
    pub timeout: Duration,
    /// Retransmissions of the same window before giving up.
    pub retries: u32,
    /// Retransmissions of the first datagram (DATA 1 or the OACK) before giving up on a
    /// client that never acknowledged anything: a spoofed source never will, and each retry
    /// is a slot held for nothing.
    pub unproven_retries: u32,
    /// Longest time without progress (no ACK that moved the transfer on) before giving up,
    /// whatever timeout x retries the client negotiated.
    pub max_silence: Duration,
    /// Cap on the negotiated block size (8..=65464).
    pub max_blksize: u16,
    /// Cap on the negotiated window size (1..=64).
    pub max_windowsize: u16,
}

impl Default for TransferSettings {
    fn default() -> Self {
        TransferSettings {
            timeout: Duration::from_secs(1),
            retries: 5,
            unproven_retries: 2,
            max_silence: Duration::from_secs(30),
            max_blksize: MAX_BLKSIZE,
            max_windowsize: MAX_WINDOWSIZE,
        }
    }
}

/// How a transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The client acknowledged the last block.
    Completed,
    /// The client sent an ERROR packet (e.g. 8 when it refuses our OACK).
    ClientError { code: u16, message: String },
    /// The client went silent: `retries` retransmissions went unanswered (`unproven_retries`
    /// before its first ACK), or no progress for `max_silence`.
    TimedOut,
    /// We ended it with an ERROR packet (read failure, file changed, unsupported mode).
    Failed(String),
    /// The driver ended it (shutdown), after sending an ERROR packet.
    Aborted(String),
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Completed)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Completed => f.write_str("completed"),
            Outcome::ClientError { code, message } => {
                write!(f, "client error {code}: {message}")
            }
            Outcome::TimedOut => f.write_str("timed out"),
            Outcome::Failed(m) => write!(f, "failed: {m}"),
            Outcome::Aborted(m) => write!(f, "aborted: {m}"),
        }
    }
}

/// What [`Transfer::handle`] made of a datagram (for the driver's counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// An ACK that moved the transfer forward.
    Progress,
    /// An ACK for the block already acknowledged: ignored, never answered with a resend
    /// (RFC 1123 4.2.3.1, the Sorcerer's Apprentice bug).
    DuplicateAck,
    /// A valid packet that means nothing here (stale ACK, ACK beyond what was sent, DATA...).
    Ignored,
    /// Not a TFTP packet.
    Malformed,
    /// The transfer is over (last ACK, or the client's ERROR).
    Ended,
}

/// Counters of one transfer, for logs and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferCounters {
    /// Datagrams produced (OACK and DATA, first sends and resends).
    pub sent: u64,
    /// DATA/OACK datagrams sent again after a timeout or a partial-window ACK.
    pub resent: u64,
    pub duplicate_acks: u64,
    pub timeouts: u64,
}

/// Where a block starts in the source: byte offset, and for netascii the second half of a
/// CR LF / CR NUL pair that did not fit in the previous block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pos {
    offset: u64,
    carry: Option<u8>,
}

/// One read transfer (RRQ) from request to outcome.
#[derive(Debug)]
pub struct Transfer {
    mode: Mode,
    blksize: usize,
    windowsize: u64,
    /// The negotiated (or default) retransmission timeout, in force once proven.
    timeout: Duration,
    max_retries: u32,
    /// Timeout and retries before the client's first ACK.
    unproven_timeout: Duration,
    unproven_retries: u32,
    max_silence: Duration,
    /// Since when nothing moved the transfer forward (start, or the last progressing ACK).
    silent_since: Instant,
    /// The client acknowledged something (ACK 0 of the OACK, or ACK 1).
    proven: bool,
    /// Options to acknowledge in the OACK (block 0), in the client's order.
    oack: Vec<(&'static str, String)>,
    /// Oldest unacknowledged block.
    base: u64,
    /// Next block to send; blocks `base..next` are in flight.
    next: u64,
    /// One past the highest block ever sent, to tell resends from first sends.
    high_water: u64,
    /// `positions[i]` is where block `max(base, 1) + i` starts; holds every block in flight
    /// plus the next one, so a partial-window ACK can resume at any of them.
    positions: VecDeque<Pos>,
    /// The final block (shorter than blksize), once it has been produced.
    last_block: Option<u64>,
    last_len: usize,
    deadline: Option<Instant>,
    retries_used: u32,
    /// An ERROR we owe the client before ending.
    pending_error: Option<(ErrorCode, String, Outcome)>,
    outcome: Option<Outcome>,
    /// Netascii conversion input buffer (empty for octet).
    scratch: Vec<u8>,
    counters: TransferCounters,
}

impl Transfer {
    /// Starts a read transfer of `content_len` bytes for `request`, negotiating its options
    /// against `settings`. Nothing is sent until the driver polls.
    pub fn new(
        request: &Request,
        content_len: u64,
        now: Instant,
        settings: &TransferSettings,
    ) -> Transfer {
        let max_blksize = settings.max_blksize.clamp(MIN_BLKSIZE, MAX_BLKSIZE);
        let max_windowsize = settings.max_windowsize.clamp(1, MAX_WINDOWSIZE);
        let mut blksize = DEFAULT_BLKSIZE;
        let mut windowsize = 1u16;
        let mut timeout = settings.timeout;
        let mut oack: Vec<(&'static str, String)> = Vec::new();
        for (name, value) in &request.options {
            // A repeated option: the first one counts (RFC 2347 does not say; tftp-hpa does so).
            if oack.iter().any(|(n, _)| n == name) {
                continue;
            }
            match name.as_str() {
                // RFC 2348: 8..=65464; a server may answer with a smaller value.
                "blksize" => {
                    if let Some(v) = number(value).filter(|v| (8..=65464).contains(v)) {
                        blksize = (v as u16).min(max_blksize);
                        oack.push(("blksize", blksize.to_string()));
                    }
                }
                // RFC 2349: the size in bytes. For netascii the converted size is not known
                // without reading the whole file, so, like tftp-hpa, we leave the option out.
                "tsize" if request.mode == Mode::Octet => {
                    oack.push(("tsize", content_len.to_string()));
                }
                // RFC 2349: 1..=255 seconds; the server must accept it as is or not at all.
                "timeout" => {
                    if let Some(v) = number(value).filter(|v| (1..=255).contains(v)) {
                        timeout = Duration::from_secs(v);
                        oack.push(("timeout", v.to_string()));
                    }
                }
                // RFC 7440: 1..=65535; the server may answer with a smaller value.
                "windowsize" => {
                    if let Some(v) = number(value).filter(|v| (1..=65535).contains(v)) {
                        windowsize = (v.min(max_windowsize as u64)) as u16;
                        oack.push(("windowsize", windowsize.to_string()));
                    }
                }
                // RFC 2347: options the server does not know are left out of the OACK.
                _ => {}
            }
        }
        // No known option: a plain RFC 1350 transfer starting with DATA 1 (RFC 2347: an OACK
        // with nothing in it would confuse old clients).
        let first = if oack.is_empty() { 1 } else { 0 };
        let mut t = Transfer {
            mode: request.mode,
            blksize: blksize as usize,
            windowsize: windowsize as u64,
            timeout,
            max_retries: settings.retries,
            unproven_timeout: settings.timeout,
            // Never more retries before the first ACK than after it, and silence never ends
            // a transfer before one of the server's own timeouts.
            unproven_retries: settings.unproven_retries.min(settings.retries),
            max_silence: settings.max_silence.max(settings.timeout),
            silent_since: now,
            proven: false,
            oack,
            base: first,
            next: first,
            high_water: first,
            positions: VecDeque::from([Pos {
                offset: 0,
                carry: None,
            }]),
            last_block: None,
            last_len: 0,
            deadline: None,
            retries_used: 0,
            pending_error: None,
            outcome: None,
            scratch: Vec::new(),
            counters: TransferCounters::default(),
        };
        match request.mode {
            Mode::Octet => {}
            Mode::Netascii => t.scratch = vec![0; t.blksize],
            // RFC 1350 deprecates mail; answering it with an error is the only safe reading.
            Mode::Mail => t.fail(ErrorCode::IllegalOperation, "mail mode is not supported"),
        }
        t
    }

    /// Negotiated block size.
    pub fn blksize(&self) -> usize {
        self.blksize
    }

    /// Negotiated window size.
    pub fn windowsize(&self) -> u16 {
        self.windowsize as u16
    }

    /// Retransmission timeout in use now: the server's own until the client's first ACK,
    /// then the negotiated one.
    pub fn timeout(&self) -> Duration {
        if self.proven {
            self.timeout
        } else {
            self.unproven_timeout
        }
    }

    /// Whether the client has acknowledged anything yet: only then is its source address
    /// known to be real (an RRQ's can be forged).
    pub fn is_proven(&self) -> bool {
        self.proven
    }

    fn retry_budget(&self) -> u32 {
        if self.proven {
            self.max_retries
        } else {
            self.unproven_retries
        }
    }

    /// Buffer size [`Transfer::poll_transmit`] needs: one DATA datagram.
    pub fn datagram_capacity(&self) -> usize {
        proto::DATA_HEADER + self.blksize.max(DEFAULT_BLKSIZE as usize)
    }

    /// The options the OACK acknowledges (empty when there is no OACK).
    pub fn acknowledged_options(&self) -> &[(&'static str, String)] {
        &self.oack
    }

    pub fn counters(&self) -> TransferCounters {
        self.counters
    }

    /// How it ended, once it has.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    pub fn is_done(&self) -> bool {
        self.outcome.is_some()
    }

    /// Payload bytes the client has acknowledged (after netascii conversion).
    pub fn bytes_acked(&self) -> u64 {
        if self.outcome == Some(Outcome::Completed) {
            if let Some(last) = self.last_block {
                return (last - 1) * self.blksize as u64 + self.last_len as u64;
            }
        }
        self.base.saturating_sub(1) * self.blksize as u64
    }

    /// Ends the transfer from the driver's side (shutdown): the next poll yields an ERROR.
    pub fn abort(&mut self, message: &str) {
        if self.outcome.is_none() {
            self.pending_error = Some((
                ErrorCode::NotDefined,
                message.to_string(),
                Outcome::Aborted(message.to_string()),
            ));
        }
    }

    fn fail(&mut self, code: ErrorCode, message: &str) {
        self.pending_error = Some((code, message.to_string(), Outcome::Failed(message.into())));
    }

    fn finish(&mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
        self.deadline = None;
    }

    /// First block the `positions` queue describes.
    fn first_content_block(&self) -> u64 {
        self.base.max(1)
    }

    fn may_send(&self) -> bool {
        // Before ACK 0 the client has not proven it is there (the source address of an RRQ
        // can be forged): exactly one datagram, the OACK, may be outstanding. Without options
        // the window is 1 anyway. This is the "no amplification" rule.
        let window = if self.base == 0 { 1 } else { self.windowsize };
        self.next < self.base + window && self.last_block.is_none_or(|last| self.next <= last)
    }

    /// Writes the next datagram to send into `buf` and returns its length, or `None` when
    /// nothing may be sent now. Call repeatedly until `None`: with a window, several blocks
    /// are due at once. `buf` must hold [`Transfer::datagram_capacity`] bytes.
    pub fn poll_transmit<S: BlockSource + ?Sized>(
        &mut self,
        now: Instant,
        source: &S,
        buf: &mut [u8],
    ) -> Option<usize> {
        if self.outcome.is_some() {
            return None;
        }
        if let Some((code, message, outcome)) = self.pending_error.take() {
            let n = proto::put_error(buf, code, &message);
            self.finish(outcome);
            return Some(n);
        }
        if !self.may_send() {
            return None;
        }
        if buf.len() < self.datagram_capacity() {
            // A driver bug, not a client's doing; end the transfer rather than send a block
            // that the client would take for the last one.
            self.finish(Outcome::Failed("send buffer smaller than a block".into()));
            return None;
        }
        let block = self.next;
        let n = if block == 0 {
            match proto::put_oack(buf, &self.oack) {
                Some(n) => n,
                None => {
                    self.finish(Outcome::Failed("OACK does not fit".into()));
                    return None;
                }
            }
        } else {
            let idx = (block - self.first_content_block()) as usize;
            let Some(&start) = self.positions.get(idx) else {
                self.finish(Outcome::Failed("lost track of block positions".into()));
                return None;
            };
            let payload = &mut buf[proto::DATA_HEADER..proto::DATA_HEADER + self.blksize];
            let produced = match self.mode {
                Mode::Netascii => fill_netascii(source, start, payload, &mut self.scratch),
                _ => fill_octet(source, start, payload),
            };
            let (len, end) = match produced {
                Ok(r) => r,
                Err(e) => {
                    // Includes a file changed under us: stop rather than send mixed bytes.
                    let msg = format!("read error: {e}");
                    let n = proto::put_error(buf, ErrorCode::NotDefined, &msg);
                    self.finish(Outcome::Failed(msg));
                    return Some(n);
                }
            };
            self.positions.truncate(idx + 1);
            self.positions.push_back(end);
            if len < self.blksize {
                self.last_block = Some(block);
                self.last_len = len;
            }
            proto::put_data_header(buf, block as u16);
            proto::DATA_HEADER + len
        };
        self.next += 1;
        if block < self.high_water {
            self.counters.resent += 1;
        } else {
            self.high_water = block + 1;
        }
        self.counters.sent += 1;
        self.deadline = Some((now + self.timeout()).min(self.silent_since + self.max_silence));
        Some(n)
    }

    /// When [`Transfer::handle_timeout`] should be called next (`None`: nothing is in flight,
    /// poll transmit, or the transfer is over).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.outcome.is_some() {
            None
        } else {
            self.deadline
        }
    }

    /// A datagram arrived from the client's TID.
    pub fn handle(&mut self, now: Instant, datagram: &[u8]) -> Handled {
        if self.outcome.is_some() {
            return Handled::Ignored;
        }
        match proto::parse(datagram) {
            Err(_) => Handled::Malformed,
            Ok(Packet::Error { code, message }) => {
                self.finish(Outcome::ClientError {
                    code: code.as_u16(),
                    message,
                });
                Handled::Ended
            }
            Ok(Packet::Ack { block }) => {
                let handled = self.on_ack(block);
                if matches!(handled, Handled::Progress | Handled::Ended) {
                    self.proven = true;
                    self.silent_since = now;
                }
                handled
            }
            Ok(_) => Handled::Ignored,
        }
    }

    fn on_ack(&mut self, wire: u16) -> Handled {
        if self.base == 0 {
            return if wire == 0 && self.next == 1 {
                self.base = 1;
                self.retries_used = 0;
                self.deadline = None;
                Handled::Progress
            } else {
                Handled::Ignored
            };
        }
        // Acknowledgeable blocks are base-1 (already acknowledged) up to next-1 (last sent);
        // the window is at most 64 blocks, so the 16-bit number maps to one of them.
        let acked = self.base - 1;
        let in_flight = self.next - self.base;
        let diff = wire.wrapping_sub(acked as u16) as u64;
        if diff == 0 {
            self.counters.duplicate_acks += 1;
            return Handled::DuplicateAck;
        }
        if diff > in_flight {
            // An ACK for a block we never sent, or a stale one from long ago.
            return Handled::Ignored;
        }
        let block = acked + diff;
        let advanced = block + 1 - self.first_content_block();
        self.base = block + 1;
        for _ in 0..advanced {
            self.positions.pop_front();
        }
        self.retries_used = 0;
        self.deadline = None;
        if Some(block) == self.last_block {
            self.finish(Outcome::Completed);
            return Handled::Ended;
        }
        if self.next > self.base {
            // RFC 7440 section 4: an ACK inside the window means the client lost the block
            // after it; continue from there.
            self.next = self.base;
            self.positions.truncate(1);
        }
        Handled::Progress
    }

    /// The deadline from [`Transfer::poll_timeout`] passed: resend from the oldest
    /// unacknowledged block (RFC 7440 section 4), or give up after `retries` attempts.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(deadline) = self.deadline else {
            return;
        };
        if self.outcome.is_some() || now < deadline {
            return;
        }
        self.counters.timeouts += 1;
        self.retries_used += 1;
        if self.retries_used > self.retry_budget() || now >= self.silent_since + self.max_silence {
            self.finish(Outcome::TimedOut);
            return;
        }
        self.next = self.base;
        self.positions.truncate(1);
        self.deadline = None;
    }
}

/// A strict decimal number (no sign, no spaces), as RFC 2347 option values are.
fn number(value: &str) -> Option<u64> {
    if value.is_empty() || value.len() > 10 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

fn fill_octet<S: BlockSource + ?Sized>(
    source: &S,
    start: Pos,
    out: &mut [u8],
) -> io::Result<(usize, Pos)> {
    let mut n = 0;
    while n < out.len() {
        let got = source.read_at(start.offset + n as u64, &mut out[n..])?;
        if got == 0 {
            break;
        }
        n += got;
    }
    Ok((
        n,
        Pos {
            offset: start.offset + n as u64,
            carry: None,
        },
    ))
}

/// Netascii (RFC 764 as used by RFC 1350): LF goes out as CR LF and a bare CR as CR NUL, so a
/// block ends wherever the converted stream reaches blksize, possibly between the two bytes of
/// a pair; `Pos::carry` holds the second byte for the next block.
fn fill_netascii<S: BlockSource + ?Sized>(
    source: &S,
    start: Pos,
    out: &mut [u8],
    scratch: &mut [u8],
) -> io::Result<(usize, Pos)> {
    let mut pos = start;
    let mut n = 0;
    if let Some(b) = pos.carry.take() {
        out[0] = b;
        n = 1;
    }
    while n < out.len() {
        // Each input byte gives at least one output byte: never read more than fits.
        let want = (out.len() - n).min(scratch.len());
        let got = source.read_at(pos.offset, &mut scratch[..want])?;
        if got == 0 {
            break;
        }
        for &b in &scratch[..got] {
            pos.offset += 1;
            let pair = match b {
                b'\n' => Some(b'\n'),
                b'\r' => Some(0),
                _ => None,
            };
            match pair {
                None => {
                    out[n] = b;
                    n += 1;
                }
                Some(second) => {
                    out[n] = b'\r';
                    n += 1;
                    if n < out.len() {
                        out[n] = second;
                        n += 1;
                    } else {
                        pos.carry = Some(second);
                    }
                }
            }
            if n == out.len() {
                break;
            }
        }
    }
    Ok((n, pos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{encode_request, OP_RRQ};

    /// A transfer with a fake clock, driven like a client would, printing every datagram as a
    /// line of a packet trace.
    struct Trace {
        t: Transfer,
        now: Instant,
        data: Vec<u8>,
        buf: Vec<u8>,
    }

    fn start(mode: &str, options: &[(&str, &str)], data: Vec<u8>) -> Trace {
        start_with(mode, options, data, TransferSettings::default())
    }

    fn start_with(
        mode: &str,
        options: &[(&str, &str)],
        data: Vec<u8>,
        settings: TransferSettings,
    ) -> Trace {
        let raw = encode_request(OP_RRQ, "f", mode, options);
        let Ok(Packet::Rrq(req)) = proto::parse(&raw) else {
            panic!("bad request in test")
        };
        let now = Instant::now();
        let t = Transfer::new(&req, data.len() as u64, now, &settings);
        let buf = vec![0; t.datagram_capacity()];
        Trace { t, now, data, buf }
    }

    impl Trace {
        /// Everything the server sends now, one line per datagram.
        fn sends(&mut self) -> Vec<String> {
            let mut out = Vec::new();
            for _ in 0..1000 {
                let Some(n) = self
                    .t
                    .poll_transmit(self.now, &self.data[..], &mut self.buf)
                else {
                    return out;
                };
                out.push(describe(&self.buf[..n]));
            }
            panic!("more than 1000 datagrams at once");
        }
        fn ack(&mut self, block: u16) -> Handled {
            let mut b = [0u8; 4];
            proto::put_ack(&mut b, block);
            self.t.handle(self.now, &b)
        }
        fn wait(&mut self, d: Duration) {
            self.now += d;
            self.t.handle_timeout(self.now);
        }
        /// Fetches everything as a well-behaved client acking each window; returns the bytes.
        fn run_to_end(&mut self) -> Vec<u8> {
            let mut got = Vec::new();
            for _ in 0..1_000_000 {
                let mut last = None;
                while let Some(n) = self
                    .t
                    .poll_transmit(self.now, &self.data[..], &mut self.buf)
                {
                    match proto::parse(&self.buf[..n]).unwrap() {
                        Packet::Data { block, data } => {
                            got.extend_from_slice(data);
                            last = Some(block);
                        }
                        Packet::Oack { .. } => last = Some(0),
                        p => panic!("unexpected {p:?}"),
                    }
                }
                match last {
                    Some(b) => {
                        self.ack(b);
                    }
                    None => return got,
                }
                if self.t.is_done() {
                    return got;
                }
            }
            panic!("transfer did not end");
        }
    }

    fn describe(p: &[u8]) -> String {
        match proto::parse(p).unwrap() {
            Packet::Data { block, data } => format!("DATA {block} ({})", data.len()),
            Packet::Oack { options } => {
                let o: Vec<String> = options.iter().map(|(n, v)| format!("{n}={v}")).collect();
                format!("OACK {}", o.join(" "))
            }
            Packet::Error { code, message } => format!("ERROR {} {message}", code.as_u16()),
            p => format!("{p:?}"),
        }
    }

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn plain_rrq_sends_one_block_at_a_time_and_ends_on_last_ack() {
        let mut tr = start("octet", &[], bytes(1000));
        assert_eq!(tr.sends(), ["DATA 1 (512)"]);
        assert_eq!(tr.sends(), Vec::<String>::new(), "one block before ACK");
        assert_eq!(tr.ack(1), Handled::Progress);
        assert_eq!(tr.sends(), ["DATA 2 (488)"]);
        assert_eq!(tr.ack(2), Handled::Ended);
        assert_eq!(tr.t.outcome(), Some(&Outcome::Completed));
        assert_eq!(tr.t.bytes_acked(), 1000);
        assert_eq!(tr.t.poll_timeout(), None);
    }

    #[test]
    fn exact_multiple_of_blksize_ends_with_an_empty_block() {
        let mut tr = start("octet", &[], bytes(1024));
        assert_eq!(tr.sends(), ["DATA 1 (512)"]);
        tr.ack(1);
        assert_eq!(tr.sends(), ["DATA 2 (512)"]);
        tr.ack(2);
        assert_eq!(tr.sends(), ["DATA 3 (0)"]);
        assert_eq!(tr.ack(3), Handled::Ended);
        assert_eq!(tr.t.bytes_acked(), 1024);
    }

    #[test]
    fn empty_file_is_one_empty_block() {
        let mut tr = start("octet", &[], vec![]);
        assert_eq!(tr.sends(), ["DATA 1 (0)"]);
        assert_eq!(tr.ack(1), Handled::Ended);
        assert_eq!(tr.t.bytes_acked(), 0);
    }

    #[test]
    fn options_are_acknowledged_in_order_and_data_waits_for_ack_0() {
        let mut tr = start(
            "octet",
            &[
                ("tsize", "0"),
                ("blksize", "1468"),
                ("timeout", "3"),
                ("windowsize", "4"),
            ],
            bytes(10_000),
        );
        assert_eq!(
            tr.sends(),
            ["OACK tsize=10000 blksize=1468 timeout=3 windowsize=4"]
        );
        assert_eq!(tr.sends(), Vec::<String>::new(), "no DATA before ACK 0");
        assert_eq!(
            tr.ack(1),
            Handled::Ignored,
            "ACK 1 before anything was sent"
        );
        assert_eq!(tr.ack(0), Handled::Progress);
        assert_eq!(
            tr.sends(),
            [
                "DATA 1 (1468)",
                "DATA 2 (1468)",
                "DATA 3 (1468)",
                "DATA 4 (1468)"
            ]
        );
        assert_eq!(tr.t.poll_timeout(), Some(tr.now + Duration::from_secs(3)));
    }

    #[test]
    fn option_matrix() {
        let settings = TransferSettings {
            max_blksize: 1468,
            max_windowsize: 16,
            ..TransferSettings::default()
        };
        // (options asked, OACK expected or "" for none, blksize, windowsize)
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, usize, u16);
        let cases: &[Case] = &[
            (&[], "", 512, 1),
            (&[("foo", "bar")], "", 512, 1),
            (&[("blksize", "7")], "", 512, 1),
            (&[("blksize", "8")], "OACK blksize=8", 8, 1),
            (&[("blksize", "65464")], "OACK blksize=1468", 1468, 1),
            (&[("blksize", "65465")], "", 512, 1),
            (&[("blksize", "+512")], "", 512, 1),
            (&[("blksize", "")], "", 512, 1),
            (&[("blksize", "99999999999")], "", 512, 1),
            (&[("windowsize", "0")], "", 512, 1),
            (&[("windowsize", "1")], "OACK windowsize=1", 512, 1),
            (&[("windowsize", "64")], "OACK windowsize=16", 512, 16),
            (&[("windowsize", "65536")], "", 512, 1),
            (&[("timeout", "0")], "", 512, 1),
            (&[("timeout", "255")], "OACK timeout=255", 512, 1),
            (&[("timeout", "256")], "", 512, 1),
            (&[("tsize", "0")], "OACK tsize=3000", 512, 1),
            (
                &[
                    ("blksize", "1024"),
                    ("blksize", "8"),
                    ("x", "1"),
                    ("tsize", "9"),
                ],
                "OACK blksize=1024 tsize=3000",
                1024,
                1,
            ),
            (&[("multicast", ""), ("utimeout", "100")], "", 512, 1),
        ];
        for (opts, oack, blksize, windowsize) in cases {
            let mut tr = start_with("octet", opts, bytes(3000), settings.clone());
            let first = tr.sends();
            if oack.is_empty() {
                assert_eq!(first, ["DATA 1 (512)"], "{opts:?}");
            } else {
                assert_eq!(first, [*oack], "{opts:?}");
            }
            assert_eq!(tr.t.blksize(), *blksize, "{opts:?}");
            assert_eq!(tr.t.windowsize(), *windowsize, "{opts:?}");
            let mut fresh = start_with("octet", opts, bytes(3000), settings.clone());
            assert_eq!(fresh.run_to_end(), bytes(3000), "{opts:?}");
        }
    }

    #[test]
    fn netascii_converts_line_ends_and_leaves_tsize_out() {
        let src = b"a\nb\rc\r\n".to_vec();
        let mut tr = start("netascii", &[("tsize", "0"), ("blksize", "8")], src);
        assert_eq!(tr.sends(), ["OACK blksize=8"]);
        tr.ack(0);
        assert_eq!(tr.run_to_end(), b"a\r\nb\r\0c\r\0\r\n");
    }

    #[test]
    fn netascii_pair_split_across_blocks_and_resent_identically() {
        // "1234567\n" converts to 9 bytes: the CR ends block 1, the LF starts block 2.
        let mut tr = start(
            "netascii",
            &[("blksize", "8"), ("windowsize", "2")],
            b"1234567\nxy".to_vec(),
        );
        tr.sends();
        tr.ack(0);
        assert_eq!(tr.sends(), ["DATA 1 (8)", "DATA 2 (3)"]);
        // Block 2 lost: the client acks 1 and we resend block 2 from the carried LF.
        assert_eq!(tr.ack(1), Handled::Progress);
        let n =
            tr.t.poll_transmit(tr.now, &tr.data[..], &mut tr.buf)
                .unwrap();
        assert_eq!(&tr.buf[..n], b"\x00\x03\x00\x02\nxy");
        assert_eq!(tr.ack(2), Handled::Ended);
        assert_eq!(tr.t.bytes_acked(), 11);
    }

    #[test]
    fn netascii_round_trips_any_mix() {
        let src: Vec<u8> = (0..5000u32)
            .map(|i| match i % 7 {
                0 => b'\n',
                3 => b'\r',
                _ => b'a' + (i % 26) as u8,
            })
            .collect();
        let mut expected = Vec::new();
        for &b in &src {
            match b {
                b'\n' => expected.extend_from_slice(b"\r\n"),
                b'\r' => expected.extend_from_slice(b"\r\0"),
                b => expected.push(b),
            }
        }
        for blksize in ["8", "9", "512", "1468"] {
            let mut tr = start(
                "NetASCII",
                &[("blksize", blksize), ("windowsize", "3")],
                src.clone(),
            );
            assert_eq!(tr.run_to_end(), expected, "blksize {blksize}");
        }
    }

    #[test]
    fn window_is_sent_whole_and_acked_by_its_last_block() {
        let mut tr = start("octet", &[("windowsize", "3")], bytes(512 * 7 + 10));
        assert_eq!(tr.sends(), ["OACK windowsize=3"]);
        tr.ack(0);
        assert_eq!(tr.sends(), ["DATA 1 (512)", "DATA 2 (512)", "DATA 3 (512)"]);
        assert_eq!(tr.ack(3), Handled::Progress);
        assert_eq!(tr.sends(), ["DATA 4 (512)", "DATA 5 (512)", "DATA 6 (512)"]);
        assert_eq!(tr.ack(6), Handled::Progress);
        assert_eq!(
            tr.sends(),
            ["DATA 7 (512)", "DATA 8 (10)"],
            "window stops at the last block"
        );
        assert_eq!(tr.ack(8), Handled::Ended);
        assert_eq!(tr.t.counters().resent, 0);
    }

    #[test]
    fn ack_inside_the_window_resumes_after_it() {
        let mut tr = start("octet", &[("windowsize", "4")], bytes(512 * 10));
        tr.sends();
        tr.ack(0);
        assert_eq!(tr.sends().len(), 4);
        // The client got 1 and 2, lost 3: it acks 2 (RFC 7440 section 4).
        assert_eq!(tr.ack(2), Handled::Progress);
        assert_eq!(
            tr.sends(),
            [
                "DATA 3 (512)",
                "DATA 4 (512)",
                "DATA 5 (512)",
                "DATA 6 (512)"
            ]
        );
        assert_eq!(tr.t.counters().resent, 2);
    }

    #[test]
    fn timeout_resends_from_the_oldest_unacked_block() {
        let mut tr = start("octet", &[("windowsize", "4")], bytes(512 * 10));
        tr.sends();
        tr.ack(0);
        tr.sends();
        tr.ack(2);
        assert_eq!(tr.sends().len(), 4);
        tr.wait(Duration::from_millis(999));
        assert_eq!(tr.sends(), Vec::<String>::new(), "not yet");
        tr.wait(Duration::from_millis(1));
        assert_eq!(
            tr.sends(),
            [
                "DATA 3 (512)",
                "DATA 4 (512)",
                "DATA 5 (512)",
                "DATA 6 (512)"
            ]
        );
        assert_eq!(tr.t.counters().timeouts, 1);
    }

    #[test]
    fn lost_oack_is_resent_on_timeout() {
        let mut tr = start("octet", &[("blksize", "1024")], bytes(100));
        assert_eq!(tr.sends(), ["OACK blksize=1024"]);
        tr.wait(Duration::from_secs(1));
        assert_eq!(tr.sends(), ["OACK blksize=1024"]);
        tr.ack(0);
        assert_eq!(tr.sends(), ["DATA 1 (100)"]);
    }

    #[test]
    fn duplicate_acks_never_trigger_sends() {
        let mut tr = start("octet", &[], bytes(2000));
        assert_eq!(tr.sends(), ["DATA 1 (512)"]);
        tr.ack(1);
        assert_eq!(tr.sends(), ["DATA 2 (512)"]);
        // The Sorcerer's Apprentice: ACK 1 arrives again (delayed duplicate). Answering it with
        // DATA 2 again would double every later block.
        for _ in 0..10 {
            assert_eq!(tr.ack(1), Handled::DuplicateAck);
            assert_eq!(tr.sends(), Vec::<String>::new());
        }
        assert_eq!(tr.ack(2), Handled::Progress);
        assert_eq!(tr.sends(), ["DATA 3 (512)"]);
        assert_eq!(tr.t.counters().duplicate_acks, 10);
        assert_eq!(tr.t.counters().resent, 0);
    }

    #[test]
    fn ack_beyond_what_was_sent_is_ignored() {
        let mut tr = start("octet", &[("windowsize", "2")], bytes(5000));
        tr.sends();
        tr.ack(0);
        assert_eq!(tr.sends().len(), 2);
        assert_eq!(tr.ack(3), Handled::Ignored);
        assert_eq!(tr.ack(9), Handled::Ignored);
        assert_eq!(
            tr.ack(65535),
            Handled::Ignored,
            "stale, from before block 1"
        );
        assert_eq!(tr.sends(), Vec::<String>::new());
        assert_eq!(tr.ack(2), Handled::Progress);
    }

    #[test]
    fn retries_are_bounded_then_the_transfer_times_out() {
        let settings = TransferSettings {
            retries: 3,
            ..TransferSettings::default()
        };
        let mut tr = start_with("octet", &[], bytes(2000), settings);
        assert_eq!(tr.sends(), ["DATA 1 (512)"]);
        tr.ack(1);
        assert_eq!(tr.sends(), ["DATA 2 (512)"]);
        for _ in 0..3 {
            tr.wait(Duration::from_secs(1));
            assert_eq!(tr.sends(), ["DATA 2 (512)"]);
        }
        tr.wait(Duration::from_secs(1));
        assert_eq!(tr.sends(), Vec::<String>::new());
        assert_eq!(tr.t.outcome(), Some(&Outcome::TimedOut));
        assert_eq!(tr.t.poll_timeout(), None);
    }

    #[test]
    fn before_the_first_ack_a_negotiated_timeout_does_not_apply_and_retries_are_few() {
        // The lock-out: an RRQ asking `timeout 255` from a source that never answers would
        // hold its slot for 255 s x (1 + retries). Until ACK 0 the server's own 1 s and two
        // retries apply: the OACK goes out three times and the slot is free after 3 s.
        let mut tr = start("octet", &[("timeout", "255")], bytes(2000));
        assert_eq!(tr.sends(), ["OACK timeout=255"]);
        assert!(!tr.t.is_proven());
        assert_eq!(tr.t.timeout(), Duration::from_secs(1));
        assert_eq!(tr.t.poll_timeout(), Some(tr.now + Duration::from_secs(1)));
        for _ in 0..2 {
            tr.wait(Duration::from_secs(1));
            assert_eq!(tr.sends(), ["OACK timeout=255"]);
        }
        tr.wait(Duration::from_secs(1));
        assert_eq!(tr.sends(), Vec::<String>::new());
        assert_eq!(tr.t.outcome(), Some(&Outcome::TimedOut));
        assert_eq!(tr.t.counters().sent, 3);
    }

    #[test]
    fn a_plain_request_is_unproven_until_ack_1() {
        let mut tr = start("octet", &[], bytes(2000));
        assert_eq!(tr.sends(), ["DATA 1 (512)"]);
        for _ in 0..2 {
            tr.wait(Duration::from_secs(1));
            assert_eq!(tr.sends(), ["DATA 1 (512)"]);
        }
        assert!(!tr.t.is_proven());
        assert_eq!(tr.ack(1), Handled::Progress);
        assert!(tr.t.is_proven());
        assert_eq!(tr.sends(), ["DATA 2 (512)"]);
        // Proven: the full budget of 5 retries now.
        for _ in 0..5 {
            tr.wait(Duration::from_secs(1));
            assert_eq!(tr.sends(), ["DATA 2 (512)"]);
        }
        tr.wait(Duration::from_secs(1));
        assert_eq!(tr.t.outcome(), Some(&Outcome::TimedOut));
    }

    #[test]
    fn the_negotiated_timeout_applies_once_ack_0_proves_the_client() {
        let mut tr = start("octet", &[("timeout", "5")], bytes(2000));
        assert_eq!(tr.sends(), ["OACK timeout=5"]);
        tr.wait(Duration::from_secs(1));
        assert_eq!(tr.sends(), ["OACK timeout=5"], "server's 1 s before ACK 0");
        assert_eq!(tr.ack(0), Handled::Progress);
        assert!(tr.t.is_proven());
        assert_eq!(tr.sends(), ["DATA 1 (512)"]);
        assert_eq!(tr.t.poll_timeout(), Some(tr.now + Duration::from_secs(5)));
        tr.wait(Duration::from_secs(4));
        assert_eq!(tr.sends(), Vec::<String>::new(), "not yet");
        tr.wait(Duration::from_secs(1));
        assert_eq!(tr.sends(), ["DATA 1 (512)"]);
    }

    #[test]
    fn total_silence_is_capped_whatever_the_client_negotiated() {
        // timeout 255 x 6 sends would be 25 minutes of silence; the cap ends it at 30 s.
        let mut tr = start("octet", &[("timeout", "255")], bytes(2000));
        tr.sends();
        tr.ack(0);
        assert_eq!(tr.sends(), ["DATA 1 (512)"]);
        assert_eq!(
            tr.t.poll_timeout(),
            Some(tr.now + Duration::from_secs(30)),
            "the deadline is the silence cap, not 255 s"
        );
        tr.wait(Duration::from_secs(29));
        assert!(!tr.t.is_done());
        tr.wait(Duration::from_secs(1));
        assert_eq!(tr.sends(), Vec::<String>::new());
        assert_eq!(tr.t.outcome(), Some(&Outcome::TimedOut));
    }

    #[test]
    fn progress_restarts_the_silence_clock_and_duplicates_do_not() {
        let settings = TransferSettings {
            max_silence: Duration::from_secs(10),
            retries: 100,
            ..TransferSettings::default()
        };
        let mut tr = start_with("octet", &[], bytes(5000), settings);
        tr.sends();
        tr.ack(1);
        tr.sends();
        // 9 s of timeouts, then progress: the clock starts again.
        for _ in 0..9 {
            tr.wait(Duration::from_secs(1));
            tr.sends();
        }
        assert_eq!(tr.ack(2), Handled::Progress);
        tr.sends();
        for _ in 0..9 {
            tr.wait(Duration::from_secs(1));
            tr.sends();
            // A client repeating its last ACK proves nothing new.
            assert_eq!(tr.ack(2), Handled::DuplicateAck);
        }
        assert!(!tr.t.is_done());
        tr.wait(Duration::from_secs(1));
        assert_eq!(tr.t.outcome(), Some(&Outcome::TimedOut));
    }

    #[test]
    fn progress_resets_the_retry_budget() {
        let settings = TransferSettings {
            retries: 1,
            ..TransferSettings::default()
        };
        let mut tr = start_with("octet", &[], bytes(2000), settings);
        for block in 1..=3u16 {
            assert_eq!(tr.sends().len(), 1);
            tr.wait(Duration::from_secs(1));
            assert_eq!(tr.sends().len(), 1, "one resend allowed for block {block}");
            tr.ack(block);
        }
        assert!(!tr.t.is_done());
    }

    #[test]
    fn client_error_ends_the_transfer_even_during_oack() {
        let mut tr = start("octet", &[("blksize", "1468")], bytes(10));
        tr.sends();
        let mut b = [0u8; 64];
        let n = proto::put_error(&mut b, ErrorCode::OptionRefused, "no thanks");
        assert_eq!(tr.t.handle(tr.now, &b[..n]), Handled::Ended);
        assert_eq!(
            tr.t.outcome(),
            Some(&Outcome::ClientError {
                code: 8,
                message: "no thanks".into()
            })
        );
        assert_eq!(tr.sends(), Vec::<String>::new());
    }

    #[test]
    fn malformed_and_unexpected_packets_change_nothing() {
        let mut tr = start("octet", &[], bytes(2000));
        tr.sends();
        assert_eq!(tr.t.handle(tr.now, b"\x00"), Handled::Malformed);
        assert_eq!(
            tr.t.handle(tr.now, b"\x00\x03\x00\x01abc"),
            Handled::Ignored
        );
        assert_eq!(
            tr.t.handle(tr.now, &encode_request(OP_RRQ, "f", "octet", &[])),
            Handled::Ignored
        );
        assert_eq!(tr.sends(), Vec::<String>::new());
        assert_eq!(tr.ack(1), Handled::Progress);
    }

    #[test]
    fn mail_mode_is_refused_with_an_error() {
        let mut tr = start("mail", &[], bytes(10));
        assert_eq!(tr.sends(), ["ERROR 4 mail mode is not supported"]);
        assert!(matches!(tr.t.outcome(), Some(Outcome::Failed(_))));
    }

    #[test]
    fn abort_sends_one_error_and_ends() {
        let mut tr = start("octet", &[], bytes(2000));
        tr.sends();
        tr.t.abort("server shutting down");
        assert_eq!(tr.sends(), ["ERROR 0 server shutting down"]);
        assert_eq!(tr.sends(), Vec::<String>::new());
        assert!(matches!(tr.t.outcome(), Some(Outcome::Aborted(_))));
    }

    struct Failing;
    impl BlockSource for Failing {
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
            if offset >= 512 {
                Err(io::Error::other("file changed on disk"))
            } else {
                buf.fill(1);
                Ok(buf.len())
            }
        }
    }

    #[test]
    fn read_failure_sends_an_error_and_fails() {
        let raw = encode_request(OP_RRQ, "f", "octet", &[]);
        let Ok(Packet::Rrq(req)) = proto::parse(&raw) else {
            panic!()
        };
        let now = Instant::now();
        let mut t = Transfer::new(&req, 5000, now, &TransferSettings::default());
        let mut buf = vec![0; t.datagram_capacity()];
        let n = t.poll_transmit(now, &Failing, &mut buf).unwrap();
        assert_eq!(describe(&buf[..n]), "DATA 1 (512)");
        t.handle(now, b"\x00\x04\x00\x01");
        let n = t.poll_transmit(now, &Failing, &mut buf).unwrap();
        assert_eq!(
            describe(&buf[..n]),
            "ERROR 0 read error: file changed on disk"
        );
        assert!(matches!(t.outcome(), Some(Outcome::Failed(_))));
    }

    #[test]
    fn block_numbers_wrap_past_65535_to_0() {
        let blocks = 65536 + 3;
        let mut tr = start(
            "octet",
            &[("blksize", "8"), ("windowsize", "4")],
            bytes(8 * blocks - 1),
        );
        tr.sends();
        tr.ack(0);
        let mut acked: u64 = 0;
        while acked < 65532 {
            let s = tr.sends();
            acked += s.len() as u64;
            tr.ack(acked as u16);
        }
        assert_eq!(
            tr.sends(),
            [
                "DATA 65533 (8)",
                "DATA 65534 (8)",
                "DATA 65535 (8)",
                "DATA 0 (8)"
            ]
        );
        // A duplicate of ACK 65532 and a wrapped ACK mid-window both map correctly.
        assert_eq!(tr.ack(65532), Handled::DuplicateAck);
        assert_eq!(tr.ack(65535), Handled::Progress);
        assert_eq!(
            tr.sends(),
            ["DATA 0 (8)", "DATA 1 (8)", "DATA 2 (8)", "DATA 3 (7)"]
        );
        assert_eq!(tr.ack(3), Handled::Ended);
        assert_eq!(tr.t.bytes_acked(), (8 * blocks - 1) as u64);
    }

    #[test]
    fn whole_file_arrives_intact_for_many_sizes_and_options() {
        for len in [0, 1, 511, 512, 513, 1024, 4095, 70_000] {
            for opts in [
                &[][..],
                &[("blksize", "1468")][..],
                &[("blksize", "1468"), ("windowsize", "16")][..],
                &[("blksize", "8192"), ("windowsize", "7"), ("tsize", "0")][..],
            ] {
                let mut tr = start("octet", opts, bytes(len));
                assert_eq!(tr.run_to_end(), bytes(len), "len {len} {opts:?}");
                assert_eq!(tr.t.outcome(), Some(&Outcome::Completed));
                assert_eq!(tr.t.bytes_acked(), len as u64);
            }
        }
    }
}
