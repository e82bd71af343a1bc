//! Turning a [`Content`] into an HTTP response: validators, conditional requests, single
//! ranges, and a body streamed by positioned reads.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use chainboot_content::{changed_error, Content};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use http_body::Frame;
use parking_lot::Mutex;

use crate::sendfile::LaneSlot;
use tokio::task::JoinHandle;

/// Bytes read per positioned read while streaming. Large enough that the per-read costs (a
/// blocking-pool hop and the content fingerprint check) vanish next to the copy; small enough
/// that 64 clients streaming at once hold a few MiB, not their files.
pub const CHUNK: usize = 256 * 1024;

/// Smallest chunk when many bodies stream at once.
const MIN_CHUNK: usize = 16 * 1024;
/// Memory all streaming bodies together aim to hold in chunks. During a boot storm hundreds of
/// machines fetch kernels and initrds at once; at [`CHUNK`] each, 1000 downloads would hold
/// 250 MiB of buffers. Chunks shrink as streams grow in number so the total stays near this.
const CHUNK_BUDGET: usize = 32 * 1024 * 1024;

/// Bodies streaming now (for the chunk size).
static STREAMING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The chunk size for the next read: [`CHUNK`] when few bodies stream, down to [`MIN_CHUNK`]
/// when many do, a multiple of 4 KiB (page-aligned reads).
fn chunk_size() -> usize {
    chunk_size_for(STREAMING.load(std::sync::atomic::Ordering::Relaxed))
}

fn chunk_size_for(streams: usize) -> usize {
    (CHUNK_BUDGET / streams.max(1)).clamp(MIN_CHUNK, CHUNK) & !4095
}

/// Answers GET or HEAD for `content` with everything iPXE and curl expect: Content-Length
/// always (iPXE needs it, pixiecore#10), `Accept-Ranges`, `ETag` and `Last-Modified`;
/// `If-None-Match` / `If-Modified-Since` -> 304, `If-Match` / `If-Unmodified-Since` -> 412
/// (RFC 9110 13.2.2 order), one `Range` (incl. suffix ranges) -> 206, an unsatisfiable one
/// -> 416 with `Content-Range: bytes */len`, `If-Range` honoured. Several ranges in one
/// request get the whole content (RFC 9110 14.2 lets a server ignore Range), which every
/// boot client handles. The body is read in [`CHUNK`]s as it is sent, never whole; if a read
/// fails mid-way (the file changed or vanished), the body errors and the connection is
/// aborted, so the client sees a short transfer instead of wrong bytes.
///
/// Usable for generated content too (`Content::from_bytes`).
pub fn content_response(
    method: &Method,
    headers: &HeaderMap,
    content: Content,
    content_type: &'static str,
) -> Response {
    respond(method, headers, &content, None, content_type)
}

/// Files up to this size are read whole in the blocking task that opened them
/// ([`prefetch_small`]), so a small file costs one trip to the blocking pool, not two.
pub(crate) const PREFETCH_MAX: u64 = 64 * 1024;

/// Reads a small file-backed content whole (call on the blocking pool, right after opening).
pub(crate) fn prefetch_small(content: &Content) -> io::Result<Option<Bytes>> {
    if content.as_bytes().is_some() || content.len() > PREFETCH_MAX || content.is_empty() {
        return Ok(None);
    }
    let mut buf = BytesMut::zeroed(content.len() as usize);
    let n = content.read_at(0, &mut buf)?;
    if n != buf.len() {
        return Err(changed_error());
    }
    Ok(Some(buf.freeze()))
}

/// [`content_response`] with the content's bytes possibly already read.
pub(crate) fn respond(
    method: &Method,
    headers: &HeaderMap,
    content: &Content,
    prefetched: Option<Bytes>,
    content_type: &'static str,
) -> Response {
    respond_with(
        method,
        headers,
        content,
        prefetched,
        content_type,
        Validators::of(content),
    )
}

/// [`respond`] with the content's validators already built (a kept small file carries its own:
/// formatting them per request cost more than the rest of its headers together).
pub(crate) fn respond_with(
    method: &Method,
    headers: &HeaderMap,
    content: &Content,
    prefetched: Option<Bytes>,
    content_type: &'static str,
    validators: Validators,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        let mut r = status_only(StatusCode::METHOD_NOT_ALLOWED);
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let len = content.len();
    let modified = content.modified().map(whole_seconds);
    let etag = content.etag();

    // Set on every answer below, the 304s and 412s included.
    if let Some(status) = preconditions(headers, etag, modified) {
        return with_headers(status_only(status), validators);
    }
    // Range handling is defined for GET only (RFC 9110 14.2).
    let range = if method == Method::GET {
        requested_range(headers, etag, modified, len)
    } else {
        RangeSpec::Ignore
    };
    let (status, start, end) = match range {
        RangeSpec::Ignore => (StatusCode::OK, 0, len),
        RangeSpec::Range(start, end) => (StatusCode::PARTIAL_CONTENT, start, end),
        RangeSpec::Unsatisfiable => {
            let mut resp = status_only(StatusCode::RANGE_NOT_SATISFIABLE);
            let h = resp.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            return with_headers(resp, validators);
        }
    };
    let mut slot = None;
    let body = if method == Method::HEAD || start == end {
        Body::empty()
    } else if let Some(bytes) = content.as_bytes() {
        Body::from(bytes.slice(start as usize..end as usize))
    } else if let Some(bytes) = prefetched.filter(|b| b.len() as u64 == len) {
        Body::from(bytes.slice(start as usize..end as usize))
    } else {
        let body = ContentBody::new(content.clone(), start, end);
        slot = Some(body.lane.clone());
        Body::new(body)
    };
    let mut resp = Response::new(body);
    if let Some(slot) = slot {
        // The server fills it with the connection's lane when the connection is plain TCP.
        resp.extensions_mut().insert(slot);
    }
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    // A static string: the header value shares it instead of copying it per response.
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from_static(content_type.as_bytes())) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {}-{}/{}", start, end - 1, len)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    with_headers(resp, validators)
}

/// What the conditional headers answer instead of the content (412 or 304), in RFC 9110
/// 13.2.2's order: If-Match, else If-Unmodified-Since; then If-None-Match, else
/// If-Modified-Since. `None`: go on (If-Range is the range's business).
fn preconditions(
    headers: &HeaderMap,
    etag: &str,
    modified: Option<SystemTime>,
) -> Option<StatusCode> {
    if let Some(im) = header_str(headers, header::IF_MATCH) {
        if !etag_list_matches(im, etag, true) {
            return Some(StatusCode::PRECONDITION_FAILED);
        }
    } else if let (Some(ius), Some(m)) =
        (header_date(headers, header::IF_UNMODIFIED_SINCE), modified)
    {
        if m > ius {
            return Some(StatusCode::PRECONDITION_FAILED);
        }
    }
    if let Some(inm) = header_str(headers, header::IF_NONE_MATCH) {
        if etag_list_matches(inm, etag, false) {
            return Some(StatusCode::NOT_MODIFIED);
        }
    } else if let (Some(ims), Some(m)) = (header_date(headers, header::IF_MODIFIED_SINCE), modified)
    {
        if m <= ims {
            return Some(StatusCode::NOT_MODIFIED);
        }
    }
    None
}

/// The `Range` of a GET, when there is one and `If-Range` (if sent) still names this content.
fn requested_range(
    headers: &HeaderMap,
    etag: &str,
    modified: Option<SystemTime>,
    len: u64,
) -> RangeSpec {
    let Some(r) = header_str(headers, header::RANGE) else {
        return RangeSpec::Ignore;
    };
    let if_range_ok = match header_str(headers, header::IF_RANGE) {
        None => true,
        // A strong ETag compares strongly; a date must equal Last-Modified exactly.
        Some(v) if v.starts_with('"') => v == etag,
        Some(v) => match (httpdate::parse_http_date(v).ok(), modified) {
            (Some(d), Some(m)) => d == m,
            _ => false,
        },
    };
    if if_range_ok {
        parse_range(r, len)
    } else {
        RangeSpec::Ignore
    }
}

fn status_only(status: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

/// `ETag` and `Last-Modified` of the content answered for, as header values. Cloning them
/// shares their bytes (a reference count), so values built once serve any number of answers.
#[derive(Clone)]
pub(crate) struct Validators {
    etag: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
}

impl Validators {
    /// The content's `ETag` and its modification time as an HTTP date (whole seconds).
    pub(crate) fn of(content: &Content) -> Validators {
        Validators {
            etag: HeaderValue::from_str(content.etag()).ok(),
            last_modified: content
                .modified()
                .map(whole_seconds)
                .and_then(|m| HeaderValue::from_str(&httpdate::fmt_http_date(m)).ok()),
        }
    }
}

fn with_headers(mut r: Response, v: Validators) -> Response {
    let h = r.headers_mut();
    if let Some(e) = v.etag {
        h.insert(header::ETAG, e);
    }
    if let Some(m) = v.last_modified {
        h.insert(header::LAST_MODIFIED, m);
    }
    r
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

fn header_date(h: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    header_str(h, name).and_then(|v| httpdate::parse_http_date(v).ok())
}

/// HTTP dates have whole seconds; comparisons must use the same precision.
fn whole_seconds(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => UNIX_EPOCH,
    }
}

/// `*` or a comma-separated list of entity tags. Weak comparison (If-None-Match) ignores the
/// `W/` prefix; strong comparison (If-Match) never matches a weak tag.
fn etag_list_matches(list: &str, etag: &str, strong: bool) -> bool {
    if list == "*" {
        return true;
    }
    list.split(',').map(str::trim).any(|t| {
        if let Some(weak) = t.strip_prefix("W/") {
            !strong && weak == etag
        } else {
            t == etag
        }
    })
}

#[derive(Debug, PartialEq, Eq)]
enum RangeSpec {
    /// Not a single byte range we serve: send the whole content.
    Ignore,
    /// 416.
    Unsatisfiable,
    /// `[start, end)`.
    Range(u64, u64),
}

/// RFC 9110 14.1.2 byte ranges: `bytes=a-b`, `bytes=a-`, `bytes=-n`.
fn parse_range(v: &str, len: u64) -> RangeSpec {
    let Some(spec) = v.strip_prefix("bytes=") else {
        return RangeSpec::Ignore;
    };
    let spec = spec.trim();
    if spec.contains(',') {
        return RangeSpec::Ignore;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeSpec::Ignore;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    if a.is_empty() {
        // Suffix range: the last n bytes.
        let Some(n) = num(b) else {
            return RangeSpec::Ignore;
        };
        if n == 0 || len == 0 {
            return RangeSpec::Unsatisfiable;
        }
        return RangeSpec::Range(len - n.min(len), len);
    }
    let Some(start) = num(a) else {
        return RangeSpec::Ignore;
    };
    let end = if b.is_empty() {
        len
    } else {
        match num(b) {
            Some(e) if e >= start => e.saturating_add(1).min(len),
            _ => return RangeSpec::Ignore,
        }
    };
    if start >= len {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Range(start, end)
}

/// A body that reads `[pos, end)` of a content in chunks ([`chunk_size`]), one at a time:
/// memory per response is one chunk in flight. A chunk the page cache holds is read inline on
/// the async worker ([`Content::read_cached_at`]: no blocking-pool hop, which in a boot storm
/// cost more CPU than the copy, since thousands of machines fetch the same cached kernel); only
/// a chunk that would wait for the disk goes to the blocking pool.
///
/// Between two inline chunks the body yields once to the scheduler: a read from the page cache
/// never waits, so without it one connection would fill its socket (megabytes) in a single
/// poll while a thousand others, and new machines' small requests, wait for the worker. The
/// yield keeps the round-robin per chunk that the blocking-pool hop used to give, for the
/// cost of a requeue instead of two thread wake-ups.
///
/// On a plain TCP connection the server gives the body its connection's lane
/// ([`crate::sendfile`]): a chunk the page cache holds wholly then goes out with `sendfile`
/// and the body yields only a stand-in for it; a chunk not (wholly) cached is read as below,
/// which also brings it into the cache.
///
/// Chunks are read into buffers the body lends to hyper ([`Lent`]): once hyper has sent a
/// chunk and dropped it, its buffer comes back to the body and the next chunk is read into it.
/// A fresh buffer per chunk cost an allocation and zeroing 256 KiB before the read overwrote
/// them: a third of the bytes the server touched per chunk (zero, read, send) where nginx's
/// `sendfile` touches none.
struct ContentBody {
    content: Content,
    pos: u64,
    end: u64,
    pending: Option<JoinHandle<io::Result<Bytes>>>,
    /// The last poll yielded: this one reads.
    yielded: bool,
    /// The buffer of a sent chunk, back from hyper.
    spare: Arc<Mutex<Option<Vec<u8>>>>,
    /// The connection's lane for `sendfile`, once the server has said it has one.
    lane: LaneSlot,
}

/// A chunk's buffer as the bytes of a frame: when hyper drops the frame, the buffer goes back
/// to its body's `spare` slot (if the body has none already), still allocated and initialised.
struct Lent {
    buf: Vec<u8>,
    len: usize,
    home: Arc<Mutex<Option<Vec<u8>>>>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let mut spare = self.home.lock();
        if spare.is_none() {
            *spare = Some(buf);
        }
    }
}

/// `got` bytes of `buf` as a frame's bytes, lent ([`Lent`]).
fn lend(buf: Vec<u8>, got: usize, home: Arc<Mutex<Option<Vec<u8>>>>) -> Bytes {
    Bytes::from_owner(Lent {
        len: got.min(buf.len()),
        buf,
        home,
    })
}

impl Drop for ContentBody {
    fn drop(&mut self) {
        STREAMING.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl ContentBody {
    fn new(content: Content, pos: u64, end: u64) -> ContentBody {
        STREAMING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ContentBody {
            content,
            pos,
            end,
            pending: None,
            yielded: false,
            spare: Arc::new(Mutex::new(None)),
            lane: LaneSlot::default(),
        }
    }

    /// A buffer of `n` initialised bytes: the spare one when hyper has given it back and it is
    /// not much larger than `n` (chunks shrink when many bodies stream, and a body keeping a
    /// full-size buffer would hold more than its share), else a new one.
    fn buffer(&self, n: usize) -> Vec<u8> {
        match self.spare.lock().take() {
            Some(mut buf) if buf.capacity() <= 2 * n => {
                // Shrinking keeps the bytes; growing zeroes only what is added.
                buf.resize(n, 0);
                buf
            }
            _ => vec![0; n],
        }
    }

    /// On a plain connection, the next chunk as a stand-in the socket sends with `sendfile`
    /// ([`crate::sendfile`]), when the page cache holds all of it (`sendfile` must not wait for
    /// the disk on the async worker). Up to [`crate::sendfile::STAND_IN_MAX`], not a
    /// [`CHUNK`]: a stand-in holds no memory, so it need not shrink when many bodies stream,
    /// and each one is a `sendfile` call. `None`: read the chunk instead.
    fn stand_in(&self) -> Option<Bytes> {
        let lane = self.lane.0.get()?;
        let n = (self.end - self.pos).min(crate::sendfile::STAND_IN_MAX as u64);
        let (file, at) = self.content.cached_file_range(self.pos, n)?;
        lane.stand_in(&self.content, file, at, n as usize)
    }

    /// Poisons the body: an error ends it, and hyper aborts the connection, so the client sees
    /// a short transfer instead of wrong bytes.
    fn fail(&mut self, e: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.pos = self.end;
        Poll::Ready(Some(Err(e)))
    }
}

impl http_body::Body for ContentBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if this.pos >= this.end {
            return Poll::Ready(None);
        }
        if this.pending.is_none() {
            if !this.yielded {
                this.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            this.yielded = false;
            if let Some(bytes) = this.stand_in() {
                this.pos += bytes.len() as u64;
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            let n = (this.end - this.pos).min(chunk_size() as u64) as usize;
            let mut buf = this.buffer(n);
            match this.content.read_cached_at(this.pos, &mut buf) {
                Ok(Some(got)) if got > 0 => {
                    this.pos += got as u64;
                    let bytes = lend(buf, got, this.spare.clone());
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                // Nothing before the promised end: the file shrank.
                Ok(Some(_)) => return this.fail(changed_error()),
                Ok(None) => {}
                Err(e) => return this.fail(e),
            }
            let (content, pos, home) = (this.content.clone(), this.pos, this.spare.clone());
            this.pending = Some(tokio::task::spawn_blocking(move || {
                let got = content.read_at(pos, &mut buf)?;
                if got != n {
                    // The content promised more bytes than the file now has.
                    return Err(changed_error());
                }
                Ok(lend(buf, got, home))
            }));
        }
        let Some(pending) = this.pending.as_mut() else {
            return Poll::Ready(None);
        };
        let res = ready!(Pin::new(pending).poll(cx));
        this.pending = None;
        match res {
            Ok(Ok(bytes)) => {
                this.pos += bytes.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Ok(Err(e)) => this.fail(e),
            Err(join) => this.fail(io::Error::other(join)),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.end
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.end.saturating_sub(self.pos))
    }
}

use std::future::Future as _;

#[cfg(test)]
mod tests {

    #[test]
    fn chunks_shrink_as_streams_grow_and_stay_page_aligned() {
        assert!(chunk_size() <= CHUNK);
        assert_eq!(chunk_size_for(1), CHUNK);
        let many = chunk_size_for(1000);
        assert!(many * 1000 <= CHUNK_BUDGET + MIN_CHUNK * 1000, "{many}");
        assert!(many >= MIN_CHUNK && many.is_multiple_of(4096), "{many}");
        assert_eq!(chunk_size_for(1_000_000), MIN_CHUNK);
    }
    use super::*;

    async fn next_chunk(body: &mut ContentBody) -> Bytes {
        std::future::poll_fn(|cx| http_body::Body::poll_frame(Pin::new(&mut *body), cx))
            .await
            .expect("a frame")
            .expect("read")
            .into_data()
            .expect("data")
    }

    #[tokio::test]
    async fn a_sent_chunks_buffer_is_read_into_again() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let bytes: Vec<u8> = (0..3 * CHUNK as u32)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        let path = dir.path().join("three-chunks.bin");
        // Just written: the page cache holds it, so every chunk is read inline.
        std::fs::write(&path, &bytes).unwrap();
        let c = Content::from_file(std::fs::File::open(&path).unwrap()).unwrap();
        let mut body = ContentBody::new(c, 0, bytes.len() as u64);
        let first = next_chunk(&mut body).await;
        assert_eq!(first.len(), CHUNK);
        let mut got = first.to_vec();
        let at = first.as_ptr();
        drop(first);
        let second = next_chunk(&mut body).await;
        assert_eq!(
            second.as_ptr(),
            at,
            "the sent chunk's buffer is read into again"
        );
        // Still held (not sent yet): the next chunk needs a buffer of its own.
        let third = next_chunk(&mut body).await;
        assert_ne!(third.as_ptr(), second.as_ptr());
        got.extend_from_slice(&second);
        got.extend_from_slice(&third);
        assert_eq!(got, bytes);
        assert!(http_body::Body::is_end_stream(&body));
    }

    #[tokio::test]
    async fn on_a_plain_connection_a_cached_file_goes_in_stand_ins_of_up_to_four_mib() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let len = crate::sendfile::STAND_IN_MAX + CHUNK;
        let path = dir.path().join("big.bin");
        // Just written: the page cache holds it.
        std::fs::write(&path, vec![7u8; len]).unwrap();
        let c = Content::from_file(std::fs::File::open(&path).unwrap()).unwrap();
        let mut body = ContentBody::new(c, 0, len as u64);
        let lane = crate::sendfile::Lane::default();
        assert!(body.lane.0.set(lane.clone()).is_ok());
        let first = next_chunk(&mut body).await;
        assert_eq!(
            first.len(),
            crate::sendfile::STAND_IN_MAX,
            "one sendfile call's range"
        );
        let second = next_chunk(&mut body).await;
        assert_eq!(second.len(), CHUNK, "the rest");
        assert_eq!(lane.pending(), 2, "both are file ranges, not read bytes");
        assert!(http_body::Body::is_end_stream(&body));
    }

    /// A file on disk, written, synced and dropped from the page cache.
    fn uncached_file(dir: &std::path::Path, bytes: &[u8]) -> std::fs::File {
        use std::io::Write;
        let path = dir.join("uncached.bin");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(bytes).unwrap();
        f.sync_all().unwrap();
        let f = std::fs::File::open(&path).unwrap();
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        f
    }

    async fn stream(c: Content) -> io::Result<Bytes> {
        let len = c.len();
        axum::body::to_bytes(Body::new(ContentBody::new(c, 0, len)), usize::MAX)
            .await
            .map_err(io::Error::other)
    }

    #[tokio::test]
    async fn bodies_stream_the_same_bytes_from_the_page_cache_and_from_the_disk() {
        let bytes: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i * 31 + i / 4099) as u8)
            .collect();
        // In the crate's directory, not /tmp: a tmpfs has no disk to drop pages to.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let f = uncached_file(dir.path(), &bytes);
        let c = Content::from_file(f).unwrap();
        let mut probe = [0u8; 4096];
        assert_eq!(
            c.read_cached_at(0, &mut probe).unwrap(),
            None,
            "dropped from the page cache: the first chunk goes to the blocking pool"
        );
        assert_eq!(
            stream(c.clone()).await.unwrap(),
            bytes,
            "read from the disk"
        );
        assert!(c.read_cached_at(0, &mut probe).unwrap().is_some());
        assert_eq!(stream(c).await.unwrap(), bytes, "read from the page cache");
    }

    #[tokio::test]
    async fn a_file_cut_short_fails_the_body_on_either_path() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        for cached in [true, false] {
            let f = uncached_file(dir.path(), &[5u8; 1 << 20]);
            let c = Content::from_file(f).unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(dir.path().join("uncached.bin"))
                .unwrap()
                .set_len(1000)
                .unwrap();
            if cached {
                use std::os::unix::fs::FileExt;
                let mut b = [0u8; 1000];
                let _ = std::fs::File::open(dir.path().join("uncached.bin"))
                    .unwrap()
                    .read_exact_at(&mut b, 0);
            }
            assert!(stream(c).await.is_err(), "cached: {cached}");
        }
    }

    #[test]
    fn ranges_parse_per_rfc_9110() {
        use RangeSpec::*;
        assert_eq!(parse_range("bytes=0-0", 10), Range(0, 1));
        assert_eq!(parse_range("bytes=2-5", 10), Range(2, 6));
        assert_eq!(parse_range("bytes=2-", 10), Range(2, 10));
        assert_eq!(parse_range("bytes=5-100", 10), Range(5, 10));
        assert_eq!(parse_range("bytes=-3", 10), Range(7, 10));
        assert_eq!(parse_range("bytes=-30", 10), Range(0, 10));
        assert_eq!(parse_range("bytes=10-", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-2", 10), Ignore);
        assert_eq!(parse_range("bytes=0-1,3-4", 10), Ignore);
        assert_eq!(parse_range("items=0-1", 10), Ignore);
        assert_eq!(parse_range("bytes=a-b", 10), Ignore);
        assert_eq!(parse_range("bytes=+1-2", 10), Ignore);
        assert_eq!(parse_range("bytes=99999999999999999999999-", 10), Ignore);
    }

    #[test]
    fn random_range_headers_never_escape_the_content() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet = b"bytes=-,0123456789 ";
        for _ in 0..100_000 {
            let n = (next() % 24) as usize;
            let mut v = String::from(if next() % 4 == 0 { "" } else { "bytes=" });
            for _ in 0..n {
                v.push(alphabet[(next() % alphabet.len() as u64) as usize] as char);
            }
            let len = next() % 50;
            match parse_range(&v, len) {
                RangeSpec::Range(a, b) => assert!(a < b && b <= len, "{v:?} len {len}: {a}-{b}"),
                RangeSpec::Unsatisfiable | RangeSpec::Ignore => {}
            }
        }
    }

    #[test]
    fn etag_lists_compare_weak_and_strong() {
        assert!(etag_list_matches("*", "\"a\"", true));
        assert!(etag_list_matches("\"b\", \"a\"", "\"a\"", true));
        assert!(etag_list_matches("W/\"a\"", "\"a\"", false));
        assert!(!etag_list_matches("W/\"a\"", "\"a\"", true));
        assert!(!etag_list_matches("\"b\"", "\"a\"", false));
    }

    fn req(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn generated_content_answers_conditionals_and_ranges() {
        let c = Content::from_bytes(&b"0123456789"[..]);
        let etag = c.etag().to_string();
        let r = content_response(&Method::GET, &HeaderMap::new(), c.clone(), "text/plain");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "10");
        assert_eq!(r.headers()[header::ETAG], etag.as_str());
        let r = content_response(
            &Method::GET,
            &req(&[(header::IF_NONE_MATCH, &etag)]),
            c.clone(),
            "x",
        );
        assert_eq!(r.status(), 304);
        let r = content_response(
            &Method::GET,
            &req(&[(header::IF_MATCH, "\"other\"")]),
            c.clone(),
            "x",
        );
        assert_eq!(r.status(), 412);
        let r = content_response(
            &Method::GET,
            &req(&[(header::RANGE, "bytes=-4")]),
            c.clone(),
            "x",
        );
        assert_eq!(r.status(), 206);
        assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes 6-9/10");
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "4");
        let r = content_response(
            &Method::GET,
            &req(&[
                (header::RANGE, "bytes=0-1"),
                (header::IF_RANGE, "\"stale\""),
            ]),
            c.clone(),
            "x",
        );
        assert_eq!(r.status(), 200, "If-Range mismatch sends everything");
        let r = content_response(
            &Method::GET,
            &req(&[(header::RANGE, "bytes=10-")]),
            c.clone(),
            "x",
        );
        assert_eq!(r.status(), 416);
        assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes */10");
        let r = content_response(
            &Method::HEAD,
            &req(&[(header::RANGE, "bytes=0-1")]),
            c.clone(),
            "x",
        );
        assert_eq!(r.status(), 200, "Range is defined for GET only");
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "10");
        let r = content_response(&Method::POST, &HeaderMap::new(), c, "x");
        assert_eq!(r.status(), 405);
    }
}
