//! Access log, counters, and the observer hook for later metrics and event work.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use chainboot_content::{CleanPath, Served, What};
use http::{Method, StatusCode, Uri};

use crate::AccessLog;
use http_body::Frame;

/// Counters kept for `/metrics`. All relaxed atomics: they are statistics, not
/// synchronisation.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Responses by status class: index 0 = 1xx ... 4 = 5xx.
    pub responses_by_class: [AtomicU64; 5],
    /// Body bytes sent (what actually left, not what was promised).
    pub bytes_sent: AtomicU64,
    /// Responses whose body ended early (client went away, or a read failed).
    pub aborted: AtomicU64,
    /// Connections open now.
    pub active_connections: AtomicU64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Connections closed at once because their client address already had
    /// `max_connections_per_client` open.
    pub connections_refused_per_client: AtomicU64,
    /// Connections closed for being idle or slow (headers, `request_timeout`,
    /// `send_timeout`).
    pub connections_timed_out: AtomicU64,
    /// Requests answered 408/503 because `request_timeout` ran out (also in
    /// `connections_timed_out`).
    pub request_timeouts: AtomicU64,
    /// Connections reset because the client accepted no bytes for `send_timeout` (also in
    /// `connections_timed_out`).
    pub send_timeouts: AtomicU64,
    /// Body bytes sent with `sendfile` (file chunks the page cache held, on plain HTTP),
    /// also counted in `bytes_sent`.
    pub sendfile_bytes: AtomicU64,
    /// TLS handshakes completed.
    pub tls_handshakes: AtomicU64,
    /// TLS handshakes that failed or did not finish within `header_read_timeout` (the latter
    /// also in `connections_timed_out`).
    pub tls_handshake_failures: AtomicU64,
}

impl HttpStats {
    /// Responses with status `class`xx (1..=5).
    pub fn responses(&self, class: u16) -> u64 {
        match class {
            1..=5 => self.responses_by_class[class as usize - 1].load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// All responses.
    pub fn requests(&self) -> u64 {
        (1..=5).map(|c| self.responses(c)).sum()
    }
}

/// A file a static route served, as the route resolved it (not as the URL spelled it): what
/// an observer compares with a machine's boot decision to tell its kernel from any file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticFile {
    /// The ISO image it came from; `None`: under `[http] root`.
    pub iso: Option<String>,
    pub path: CleanPath,
}

/// One finished response, as logged.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    pub client: SocketAddr,
    pub method: Method,
    /// The request's URI as sent (still percent-encoded); shares the request's bytes.
    pub uri: Uri,
    pub status: StatusCode,
    /// Body bytes sent.
    pub bytes: u64,
    /// From the request arriving to the last body byte handed to the socket (or the abort).
    pub duration: Duration,
    /// False when the body did not complete.
    pub complete: bool,
    /// What the route said it served ([`Served`] in the response's extensions); `other` when
    /// it said nothing. An observer may make it more precise (a file that is a machine's
    /// kernel), and the access log shows what it ends up as.
    pub served: Served,
    /// The file, when a static route served one ([`StaticFile`] in the extensions).
    pub file: Option<StaticFile>,
}

impl AccessRecord {
    /// The request path (still percent-encoded), without the query.
    pub fn path(&self) -> &str {
        self.uri.path()
    }

    /// Takes what the route said it served out of a response's extensions.
    pub(crate) fn take_served(&mut self, ext: &mut http::Extensions) {
        if let Some(file) = ext.remove::<StaticFile>() {
            self.served = Served::new(if file.iso.is_some() {
                What::IsoFile
            } else {
                What::File
            });
            self.file = Some(file);
        } else if let Some(served) = ext.remove::<Served>() {
            self.served = served;
        }
    }
}

/// Hook for events and metrics work (boot timelines, dashboards). Every method has a no-op
/// default; implementations must be cheap (they run on the serving path).
pub trait HttpObserver: Send + Sync + 'static {
    /// A response finished (or was aborted). The observer may refine `record.served` (the
    /// access-log line written after it shows the result).
    fn on_response(&self, _record: &mut AccessRecord) {}
    /// A connection was accepted.
    fn on_connection(&self, _peer: SocketAddr) {}
}

/// The observer used when none is set.
#[derive(Debug, Default)]
pub struct NoObserver;
impl HttpObserver for NoObserver {}

/// Wraps a response body: counts bytes and, when the body ends or is dropped, calls the
/// observer, updates the counters and writes the access log line. Logging at the end (not
/// when the handler returns) gives true byte counts and durations for large files.
pub(crate) struct LoggedBody {
    inner: Body,
    record: Option<AccessRecord>,
    started: Instant,
    stats: Arc<HttpStats>,
    observer: Arc<dyn HttpObserver>,
    access_log: AccessLog,
    done: bool,
    /// Dropped with the body (the connection's in-flight count).
    _guard: Option<crate::server::InFlight>,
}

impl LoggedBody {
    pub(crate) fn new(
        inner: Body,
        record: AccessRecord,
        started: Instant,
        stats: Arc<HttpStats>,
        observer: Arc<dyn HttpObserver>,
        access_log: AccessLog,
    ) -> LoggedBody {
        LoggedBody {
            inner,
            record: Some(record),
            started,
            stats,
            observer,
            access_log,
            done: false,
            _guard: None,
        }
    }

    pub(crate) fn with_guard(mut self, guard: crate::server::InFlight) -> LoggedBody {
        self._guard = Some(guard);
        self
    }

    fn finish(&mut self) {
        let Some(mut rec) = self.record.take() else {
            return;
        };
        rec.duration = self.started.elapsed();
        rec.complete = self.done;
        let class = (rec.status.as_u16() / 100).clamp(1, 5) as usize;
        self.stats.responses_by_class[class - 1].fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_sent
            .fetch_add(rec.bytes, Ordering::Relaxed);
        if !rec.complete {
            self.stats.aborted.fetch_add(1, Ordering::Relaxed);
        }
        self.observer.on_response(&mut rec);
        access_line(&rec, self.access_log);
    }
}

/// Whether `rec` is logged at `info` under `mode` (else at `debug`). `boot`: a step of a
/// known machine's boot (what its timeline shows: the route or the observer named the
/// machine), or a failure.
pub(crate) fn logged_at_info(rec: &AccessRecord, mode: AccessLog) -> bool {
    match mode {
        AccessLog::All => true,
        AccessLog::Off => false,
        AccessLog::Boot => {
            let step = rec.served.what.is_boot_step() && rec.served.mac.is_some();
            step || rec.status.as_u16() >= 400
        }
    }
}

/// The access-log line (target `chainboot::http::access`): the fields only, no message
/// repeating them.
fn access_line(rec: &AccessRecord, mode: AccessLog) {
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(
                target: "chainboot::http::access",
                client = %rec.client,
                method = %rec.method,
                path = %chainboot_content::shown_path(rec.path()),
                status = rec.status.as_u16(),
                bytes = rec.bytes,
                ms = rec.duration.as_micros() as f64 / 1000.0,
                what = rec.served.what.as_str(),
                mac = rec.served.mac.map(tracing::field::display),
                complete = rec.complete,
            )
        };
    }
    if logged_at_info(rec, mode) {
        line!(info);
    } else {
        line!(debug);
    }
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(d), Some(rec)) = (frame.data_ref(), this.record.as_mut()) {
                    rec.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) => {
                this.done = true;
                this.finish();
            }
            Poll::Ready(Some(Err(_))) => this.finish(),
            Poll::Pending => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // hyper may drop an empty or fully-sent body without polling it to the end.
        if http_body::Body::is_end_stream(&self.inner) {
            self.done = true;
        }
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainboot_content::Served;

    fn record(what: What, mac: bool, status: u16) -> AccessRecord {
        AccessRecord {
            client: SocketAddr::from(([198, 18, 0, 7], 40000)),
            method: Method::GET,
            uri: Uri::from_static("/x"),
            status: StatusCode::from_u16(status).unwrap(),
            bytes: 0,
            duration: Duration::ZERO,
            complete: true,
            served: Served {
                what,
                mac: mac.then(|| "52:54:00:00:00:01".parse().unwrap()),
            },
            file: None,
        }
    }

    #[test]
    fn boot_mode_logs_a_known_machines_boot_steps_and_failures_at_info_only() {
        let boot = AccessLog::Boot;
        assert!(logged_at_info(&record(What::Kernel, true, 200), boot));
        assert!(logged_at_info(&record(What::Script, true, 200), boot));
        assert!(!logged_at_info(&record(What::Script, false, 200), boot));
        assert!(!logged_at_info(&record(What::File, true, 200), boot));
        assert!(!logged_at_info(&record(What::IsoFile, false, 206), boot));
        assert!(!logged_at_info(&record(What::Api, false, 200), boot));
        assert!(logged_at_info(&record(What::File, false, 404), boot));
        assert!(logged_at_info(&record(What::Other, false, 500), boot));
        assert!(logged_at_info(
            &record(What::File, false, 200),
            AccessLog::All
        ));
        assert!(!logged_at_info(
            &record(What::Kernel, true, 500),
            AccessLog::Off
        ));
    }
}
