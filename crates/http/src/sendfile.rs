//! File bodies sent with `sendfile(2)` on plain TCP connections: page cache to socket, no
//! copy through user space.
//!
//! hyper writes bodies from memory and has no way to hand a file to the kernel, so this is
//! done by hand, without touching hyper: a file chunk travels through hyper as a stand-in
//! (`Bytes` pointing into [`PLACEHOLDER`], a static buffer of zeros, as long as the chunk),
//! and the connection's socket wrapper, seeing a slice of the stand-in among what hyper
//! writes, calls `sendfile` for the file range it stands for instead. hyper keeps doing
//! everything else (framing, Content-Length, keep-alive, counting), and queues the stand-in
//! like any body buffer (the socket reports vectored writes, so hyper never copies bodies
//! into its own buffer).
//!
//! The body and the socket of one connection share a [`Lane`]: the body registers a
//! [`Segment`] (file, offset, length) for each stand-in it yields, the socket consumes them in
//! order. A stand-in slice that does not match the front segment exactly (no segment, wrong
//! length or position) is a bug, and the write fails, closing the connection: the stand-in's
//! zeros are never sent. TLS connections never get a lane (their bytes must be encrypted in
//! user space), and their writer refuses stand-in slices too.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use chainboot_content::{changed_error, Content};
use parking_lot::Mutex;

/// The longest file range one stand-in stands for: what one `sendfile` call may send.
/// The kernel sends as much of it as the socket's buffer takes and returns, so a long range
/// holds nothing back; a short one costs a call, and a part-filled packet pushed to the wire,
/// per range: with 256 KiB ranges a 1000-machine storm sent half again as many packets as
/// nginx sending the same bytes in megabyte calls, and spent about that much more CPU.
pub(crate) const STAND_IN_MAX: usize = 4 * 1024 * 1024;

/// What a file chunk's stand-in points into. Its bytes are never sent (zeros in the
/// executable's zero-initialised data: untouched, they occupy no memory).
static PLACEHOLDER: [u8; STAND_IN_MAX] = [0; STAND_IN_MAX];

/// Segments a lane holds at most. hyper queues at most 16 buffers per connection before it
/// stops polling the body, so more means something is wrong; the body then reads instead.
const MAX_SEGMENTS: usize = 32;

/// Whether `buf` lies inside [`PLACEHOLDER`] (a stand-in's bytes), and at which offset.
fn placeholder_offset(buf: &[u8]) -> Option<usize> {
    let base = PLACEHOLDER.as_ptr() as usize;
    let at = buf.as_ptr() as usize;
    (!buf.is_empty() && at >= base && at < base + STAND_IN_MAX).then(|| at - base)
}

/// Whether any of `bufs` is (part of) a stand-in.
pub(crate) fn any_placeholder(bufs: &[io::IoSlice<'_>]) -> bool {
    bufs.iter().any(|b| placeholder_offset(b).is_some())
}

/// The error of a stand-in slice the writer cannot match to a segment.
fn stray() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "a file chunk's placeholder reached the socket without its file segment",
    )
}

/// A file range a stand-in stands for.
struct Segment {
    id: u64,
    content: Content,
    file: Arc<File>,
    /// Absolute file offset of the next byte to send.
    offset: u64,
    /// Bytes still to send.
    left: usize,
    /// Bytes sent (the stand-in slice hyper writes next starts this far into it).
    sent: usize,
}

#[derive(Default)]
struct Segments {
    queue: VecDeque<Segment>,
    next_id: u64,
}

/// One plain connection's queue of file segments, shared by its response bodies and its
/// socket.
#[derive(Clone, Default)]
pub(crate) struct Lane(Arc<Mutex<Segments>>);

/// A stand-in's owner: its bytes are the placeholder's; when hyper drops it (sent, or the
/// connection ended), the segment goes too if the socket had not consumed it.
struct StandIn {
    len: usize,
    id: u64,
    lane: Lane,
}

impl AsRef<[u8]> for StandIn {
    fn as_ref(&self) -> &[u8] {
        &PLACEHOLDER[..self.len]
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let mut s = self.lane.0.lock();
        s.queue.retain(|seg| seg.id != self.id);
    }
}

impl Lane {
    /// Registers `[offset, offset+len)` of `file` (the absolute range of a content's bytes)
    /// and returns its stand-in, or `None` when the lane is full or `len` is not in
    /// `1..=STAND_IN_MAX`.
    pub(crate) fn stand_in(
        &self,
        content: &Content,
        file: &Arc<File>,
        offset: u64,
        len: usize,
    ) -> Option<Bytes> {
        if len == 0 || len > STAND_IN_MAX {
            return None;
        }
        let id = {
            let mut s = self.0.lock();
            if s.queue.len() >= MAX_SEGMENTS {
                return None;
            }
            let id = s.next_id;
            s.next_id += 1;
            s.queue.push_back(Segment {
                id,
                content: content.clone(),
                file: file.clone(),
                offset,
                left: len,
                sent: 0,
            });
            id
        };
        Some(Bytes::from_owner(StandIn {
            len,
            id,
            lane: self.clone(),
        }))
    }

    /// Segments waiting (for tests).
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.0.lock().queue.len()
    }

    /// Writes what `bufs` holds up to its first stand-in slice with `write(bufs, more)` (a
    /// vectored write of ordinary bytes; `more`: a file range follows, so the kernel may hold
    /// a response head back to send it in one segment with the file's first bytes), or, when `bufs` starts with a stand-in slice, sends the front
    /// segment's file range with `send(file, offset, len)`. Either returns the bytes written.
    /// A stand-in slice that does not continue the front segment exactly fails.
    pub(crate) fn write(
        &self,
        bufs: &[io::IoSlice<'_>],
        write: impl FnOnce(&[io::IoSlice<'_>], bool) -> io::Result<usize>,
        send: impl FnOnce(&File, &mut u64, usize) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let first = bufs.iter().position(|b| placeholder_offset(b).is_some());
        let (at, slice) = match first {
            None => return write(bufs, false),
            Some(i) if i > 0 => return write(&bufs[..i], true),
            Some(i) => match placeholder_offset(&bufs[i]) {
                Some(at) => (at, bufs[i].len()),
                None => return Err(stray()),
            },
        };
        let (id, file, mut offset, left) = {
            let s = self.0.lock();
            let Some(seg) = s.queue.front() else {
                return Err(stray());
            };
            if seg.sent != at || seg.left != slice {
                return Err(stray());
            }
            (seg.id, seg.file.clone(), seg.offset, seg.left)
        };
        let n = send(&file, &mut offset, left)?;
        if n == 0 {
            // End of file before the promised end: the file shrank.
            return Err(changed_error());
        }
        let n = n.min(left);
        let mut s = self.0.lock();
        let Some(seg) = s.queue.front_mut().filter(|seg| seg.id == id) else {
            return Err(stray());
        };
        // As a read checks after reading: a file replaced while it was being sent fails the
        // transfer (the client sees it cut short) instead of completing with mixed bytes.
        seg.content.check_unchanged()?;
        seg.offset += n as u64;
        seg.left -= n;
        seg.sent += n;
        if seg.left == 0 {
            s.queue.pop_front();
        }
        Ok(n)
    }
}

/// Where a response body learns whether its connection can take stand-ins: the body keeps
/// one handle and the response carries another in its extensions; the server fills it with
/// the connection's lane when the connection is plain TCP.
#[derive(Clone, Default)]
pub(crate) struct LaneSlot(pub(crate) Arc<OnceLock<Lane>>);

/// `sendfile` from `file` at `offset` (advanced by what was sent) to `sock`, at most `len`
/// bytes.
pub(crate) fn sendfile(
    sock: &impl std::os::fd::AsFd,
    file: &File,
    offset: &mut u64,
    len: usize,
) -> io::Result<usize> {
    loop {
        match rustix::fs::sendfile(sock, file, Some(offset), len) {
            Err(rustix::io::Errno::INTR) => continue,
            r => return r.map_err(io::Error::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(dir: &std::path::Path) -> (Content, Arc<File>) {
        let path = dir.join("f");
        std::fs::write(&path, (0..10_000u32).map(|i| i as u8).collect::<Vec<_>>()).unwrap();
        let c = Content::from_file(File::open(&path).unwrap()).unwrap();
        let f = c.file_range(0, 1).unwrap().0.clone();
        (c, f)
    }

    fn fake_send(
        sent: &mut Vec<(u64, usize)>,
        max: usize,
    ) -> impl FnMut(&File, &mut u64, usize) -> io::Result<usize> + '_ {
        move |_f, off, len| {
            let n = len.min(max);
            sent.push((*off, n));
            *off += n as u64;
            Ok(n)
        }
    }

    #[test]
    fn a_stand_in_is_sent_as_its_file_range_in_parts_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (c, f) = content(dir.path());
        let lane = Lane::default();
        let a = lane.stand_in(&c, &f, 100, 3000).unwrap();
        let b = lane.stand_in(&c, &f, 5000, 10).unwrap();
        let head = b"HTTP/1.1 200 OK\r\n\r\n";
        let mut sent = Vec::new();
        let mut a_left = a.clone();
        // Headers first, written as bytes, up to the stand-in.
        let bufs = [
            io::IoSlice::new(head),
            io::IoSlice::new(&a_left),
            io::IoSlice::new(&b),
        ];
        let n = lane
            .write(
                &bufs,
                |b, more| {
                    assert!(more, "the stand-in follows");
                    Ok(b.iter().map(|s| s.len()).sum())
                },
                |_, _, _| unreachable!(),
            )
            .unwrap();
        assert_eq!(n, head.len());
        // Then the first segment, in two parts (a full socket).
        for _ in 0..2 {
            let bufs = [io::IoSlice::new(&a_left), io::IoSlice::new(&b)];
            let n = lane
                .write(&bufs, |_, _| unreachable!(), fake_send(&mut sent, 2000))
                .unwrap();
            bytes::Buf::advance(&mut a_left, n);
        }
        assert_eq!(sent, [(100, 2000), (2100, 1000)]);
        assert!(a_left.is_empty());
        drop((a, a_left));
        let n = lane
            .write(
                &[io::IoSlice::new(&b)],
                |_, _| unreachable!(),
                fake_send(&mut sent, 1 << 20),
            )
            .unwrap();
        assert_eq!((n, *sent.last().unwrap()), (10, (5000, 10)));
        drop(b);
        assert_eq!(lane.pending(), 0);
    }

    #[test]
    fn a_placeholder_without_its_segment_fails_instead_of_sending_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let (c, f) = content(dir.path());
        let lane = Lane::default();
        let never = |_: &File, _: &mut u64, _: usize| -> io::Result<usize> {
            panic!("nothing may be sent")
        };
        // Bytes of the placeholder no segment was registered for.
        let stray_bytes = Bytes::from_static(&PLACEHOLDER[..100]);
        assert!(lane
            .write(
                &[io::IoSlice::new(&stray_bytes)],
                |_, _| unreachable!(),
                never
            )
            .is_err());
        // A second stand-in written before the first one.
        let a = lane.stand_in(&c, &f, 0, 100).unwrap();
        let b = lane.stand_in(&c, &f, 100, 50).unwrap();
        assert!(lane
            .write(&[io::IoSlice::new(&b)], |_, _| unreachable!(), never)
            .is_err());
        // The right one, but not where the segment says its unsent part starts.
        assert!(lane
            .write(&[io::IoSlice::new(&a[10..])], |_, _| unreachable!(), never)
            .is_err());
        // A stand-in dropped unsent takes its segment with it.
        drop((a, b));
        assert_eq!(lane.pending(), 0);
        assert!(any_placeholder(&[io::IoSlice::new(&stray_bytes)]));
        assert!(!any_placeholder(&[io::IoSlice::new(&[0u8; 10])]));
    }

    #[test]
    fn a_full_lane_or_an_oversized_range_gets_no_stand_in() {
        let dir = tempfile::tempdir().unwrap();
        let (c, f) = content(dir.path());
        let lane = Lane::default();
        assert!(lane.stand_in(&c, &f, 0, STAND_IN_MAX + 1).is_none());
        assert!(lane.stand_in(&c, &f, 0, 0).is_none());
        let held: Vec<_> = (0..MAX_SEGMENTS)
            .map(|_| lane.stand_in(&c, &f, 0, 1).unwrap())
            .collect();
        assert!(lane.stand_in(&c, &f, 0, 1).is_none());
        drop(held);
        assert!(lane.stand_in(&c, &f, 0, 1).is_some());
    }
}
