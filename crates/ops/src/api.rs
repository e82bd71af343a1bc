//! The operator's side of API v1 (the machine side lives in chainboot-policy): leases,
//! events (list and live stream), timelines, server info; and `/metrics`, `/healthz`, the
//! dashboard.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chainboot_api::ApiAuth;
use chainboot_dhcp::engine::{Counters, Engine, LeaseStatus};
use chainboot_events::EventLog;
use chainboot_http::HttpStats;
use chainboot_machine::Mac;
use chainboot_policy::paging::{json_page, page_query, Items, PageSource};
use chainboot_ra::RaStats;
use chainboot_store::events::{self, EventFilter};
use chainboot_store::Store;
use chainboot_tftp::TftpStats;
use futures::StreamExt;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::json;
use tokio_stream::wrappers::BroadcastStream;

use crate::metrics::Writer;
use crate::observe::Metrics;
use crate::timelines::machine_timeline;

/// What the operator routes read. Servers that are not running are `None`.
#[derive(Clone)]
pub struct OpsState {
    pub store: Arc<Store>,
    pub events: Arc<EventLog>,
    pub metrics: Arc<Metrics>,
    pub dhcp_counters: Option<Arc<Counters>>,
    pub dhcp_engine: Option<Arc<Mutex<Engine>>>,
    /// The DHCPv6 engine's counters (family ipv6), when `[dhcp6]` is on.
    pub dhcp6_counters: Option<Arc<chainboot_dhcp6::Counters6>>,
    pub tftp: Option<Arc<TftpStats>>,
    pub http: Option<Arc<HttpStats>>,
    pub ra: Option<Arc<RaStats>>,
    pub info: Arc<serde_json::Value>,
    pub started: Instant,
    /// A server whose heartbeat is older is not live (`[store] peer_timeout`).
    pub peer_timeout: Duration,
    /// Who may read (and, through the policy's routes, write).
    pub auth: ApiAuth,
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

impl OpsState {
    fn check_read(&self, headers: &HeaderMap) -> Result<(), Response> {
        self.auth
            .check_read(headers)
            .map_err(IntoResponse::into_response)
    }
}

/// The routes.
pub fn routes(state: OpsState) -> Router {
    let router = Router::new()
        .route("/api/v1/leases", get(leases))
        .route("/api/v1/events", get(list_events))
        .route("/api/v1/events/stream", get(stream_events))
        .route("/api/v1/machines/{mac}/timeline", get(timeline))
        .route("/api/v1/info", get(info))
        .route("/api/v1/servers", get(servers))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/", get(crate::dashboard::index))
        .route("/dashboard/{file}", get(crate::dashboard::asset))
        .with_state(state);
    chainboot_http::serving(router, chainboot_content::What::Api)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("task failed: {e}"),
        )
    })
}

/// The servers sharing this server's store (the fleet, with PostgreSQL), with the age of their
/// last heartbeat and whether that makes them live (the peers DHCP clients are shared with),
/// and which one is this.
async fn servers(State(st): State<OpsState>, headers: HeaderMap) -> Response {
    if let Err(r) = st.check_read(&headers) {
        return r;
    }
    let store = st.store.clone();
    let timeout_ms = i64::try_from(st.peer_timeout.as_millis()).unwrap_or(i64::MAX);
    match blocking(move || {
        chainboot_store::servers::all(&store).map(|list| (list, store.server_name().to_string()))
    })
    .await
    {
        Ok(Ok((list, me))) => {
            let list: Vec<serde_json::Value> = list
                .into_iter()
                .map(|s| {
                    let live = s.is_live(timeout_ms);
                    let mut v = json!(s);
                    if let Some(o) = v.as_object_mut() {
                        o.insert("live".into(), json!(live));
                    }
                    v
                })
                .collect();
            Json(json!({ "this": me, "peer_timeout_ms": timeout_ms, "servers": list }))
                .into_response()
        }
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(r) => r,
    }
}

/// Leases listed when a request names no limit, and at most.
pub const MAX_LEASES_PAGE: usize = 1000;

/// `GET /api/v1/leases?limit=N&after=IP`: one page of both families' leases, each with its
/// `family`: first the DHCPv4 engine's table (what it hands out and holds right now) in
/// address order, then the DHCPv6 leases in the store (DUID + IAID, the MAC when it was
/// learned, the server that bound them: in a fleet, every server's) in the order of their
/// address text. The cursor is the last address of a page, whichever family: an IPv4 one
/// continues in the IPv4 table (and then the IPv6 leases), an IPv6 one among the IPv6 leases.
async fn leases(
    State(st): State<OpsState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = st.check_read(&headers) {
        return r;
    }
    match page_query::<IpAddr>(&q, MAX_LEASES_PAGE) {
        Ok((limit, after)) => {
            let pages = LeasePages {
                engine: st.dhcp_engine.clone(),
                store: st.store.clone(),
            };
            json_page(pages, after, limit).await
        }
        Err(e) => e.into_response(),
    }
}

/// Both families' leases, IPv4 first, the cursor being the address.
struct LeasePages {
    engine: Option<Arc<Mutex<Engine>>>,
    store: Arc<Store>,
}

impl PageSource for LeasePages {
    type Cursor = IpAddr;
    fn fetch(&self, cursor: Option<IpAddr>, n: usize) -> Items<IpAddr> {
        let (mut out, after6) = match cursor {
            None => (self.leases4(None, n)?, None),
            Some(IpAddr::V4(a)) => (self.leases4(Some(a), n)?, None),
            Some(IpAddr::V6(a)) => (Vec::new(), Some(a)),
        };
        if out.len() < n {
            for l in leases6(&self.store, after6, n - out.len())? {
                out.push((IpAddr::V6(l.ip), json_bytes(lease6_json(&self.store, l))?));
            }
        }
        Ok(out)
    }
}

impl LeasePages {
    /// Up to `n` of the DHCPv4 engine's leases after `after`: the engine's lock is held while
    /// one page is copied, never while it is serialised.
    fn leases4(&self, after: Option<Ipv4Addr>, n: usize) -> Items<IpAddr> {
        let Some(engine) = &self.engine else {
            return Ok(Vec::new());
        };
        let page = engine.lock().leases_after(after, n);
        page.into_iter()
            .map(|l| Ok((IpAddr::V4(l.ip), json_bytes(lease4_json(l))?)))
            .collect()
    }
}

fn json_bytes(v: serde_json::Value) -> Result<Vec<u8>, String> {
    serde_json::to_vec(&v).map_err(|e| e.to_string())
}

fn lease4_json(l: chainboot_dhcp::engine::Lease) -> serde_json::Value {
    json!({
        "family": "ipv4",
        "ip": l.ip.to_string(),
        "mac": l.mac.to_string(),
        "hostname": l.hostname,
        "state": match l.status {
            LeaseStatus::Offered => "offered",
            LeaseStatus::Bound => "bound",
            LeaseStatus::Released => "released",
            LeaseStatus::Declined => "declined",
        },
        "expires": l.expires,
    })
}

/// Up to `n` stored DHCPv6 leases after `after` (in a fleet, every server's).
fn leases6(
    store: &Store,
    after: Option<std::net::Ipv6Addr>,
    n: usize,
) -> Result<Vec<chainboot_store::leases6::Lease6Record>, String> {
    chainboot_store::leases6::page(store, after, n).map_err(|e| e.to_string())
}

/// One DHCPv6 lease with the server that bound it (a row written before servers were
/// recorded is this server's: it was alone).
fn lease6_json(store: &Store, l: chainboot_store::leases6::Lease6Record) -> serde_json::Value {
    json!({
        "family": "ipv6",
        "ip": l.ip.to_string(),
        "duid": duid_text(&l.duid),
        "iaid": l.iaid,
        "mac": l.mac,
        "state": l.state.as_str(),
        "expires": l.expires,
        "server": l.server.as_deref().unwrap_or(store.server_name()),
    })
}

/// A DUID as colon-separated hex bytes (`00:03:00:01:52:54:00:12:34:56`), as Kea and
/// dhclient write them.
fn duid_text(duid: &[u8]) -> String {
    duid.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[derive(Debug, Deserialize)]
struct EventQuery {
    mac: Option<String>,
    /// Unix milliseconds, or seconds ago with an `s`/`m`/`h` suffix (`since=10m`).
    since: Option<String>,
    kind: Option<String>,
    after: Option<i64>,
    before: Option<i64>,
    limit: Option<usize>,
}

fn parse_since(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let n: i64 = num
        .parse()
        .map_err(|_| format!("`{s}`: since takes Unix milliseconds or e.g. 10m, 2h, 30s"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("`{s}`: unit must be s, m, h or d")),
    };
    Ok(chainboot_events::now_ms() - secs * 1000)
}

fn filter_of(q: &EventQuery) -> Result<EventFilter, Response> {
    let mac = match &q.mac {
        Some(m) => Some(
            m.parse::<Mac>()
                .map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?,
        ),
        None => None,
    };
    let since_ms = match &q.since {
        Some(s) => Some(parse_since(s).map_err(|e| error(StatusCode::BAD_REQUEST, e))?),
        None => None,
    };
    Ok(EventFilter {
        mac,
        since_ms,
        after_id: q.after,
        before_id: q.before,
        kind: q.kind.clone(),
        limit: q.limit,
    })
}

async fn list_events(
    State(st): State<OpsState>,
    headers: HeaderMap,
    Query(q): Query<EventQuery>,
) -> Response {
    if let Err(r) = st.check_read(&headers) {
        return r;
    }
    let filter = match filter_of(&q) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let limit = filter
        .limit
        .unwrap_or(events::DEFAULT_PAGE)
        .min(events::MAX_PAGE);
    let first = filter.before_id;
    let pages = EventPages {
        store: st.store.clone(),
        filter,
    };
    json_page(pages, first, limit).await
}

/// Events newest first, the cursor being the id (the next chunk is `before_id` it).
struct EventPages {
    store: Arc<Store>,
    filter: EventFilter,
}

impl PageSource for EventPages {
    type Cursor = i64;
    fn fetch(&self, cursor: Option<i64>, n: usize) -> Items<i64> {
        let filter = EventFilter {
            before_id: cursor,
            limit: Some(n),
            ..self.filter.clone()
        };
        let list = events::list(&self.store, &filter).map_err(|e| e.to_string())?;
        list.into_iter()
            .map(|e| Ok((e.id, serde_json::to_vec(&e).map_err(|e| e.to_string())?)))
            .collect()
    }
}

async fn stream_events(
    State(st): State<OpsState>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    Query(q): Query<EventQuery>,
) -> Response {
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(p)| *p);
    if let Err(r) = st.check_read(&headers) {
        return r;
    }
    let filter = match filter_of(&q) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Some(slot) = peer.and_then(|p| st.events.stream_slot(p.ip())) else {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "this address holds {} event streams already ([events] streams_per_ip)",
                st.events.settings().streams_per_ip
            ),
        );
    };
    let lifetime = st.events.settings().stream_max_lifetime;
    let stats = st.events.stats().clone();
    let rx = st.events.subscribe();
    // The reader's own pace decides: a stream that fell LIVE_CAPACITY events behind gets one
    // `lagged` message and ends (its client reconnects with `after=`), so nobody holds events
    // in memory for a reader that does not read.
    let stream = BroadcastStream::new(rx)
        .scan(false, move |ended, item| {
            let out = match (*ended, item) {
                (true, _) => None,
                (false, Ok(e)) => Some(Some(e)),
                (false, Err(_lagged)) => {
                    *ended = true;
                    stats.streams_lagged.fetch_add(1, Ordering::Relaxed);
                    Some(None)
                }
            };
            futures::future::ready(out)
        })
        .filter_map(move |item| {
            let filter = filter.clone();
            async move {
                let Some(e) = item else {
                    return Some(Ok::<_, Infallible>(
                        SseEvent::default().event("lagged").data("{}"),
                    ));
                };
                if filter.mac.is_some_and(|m| e.mac != Some(m))
                    || filter.kind.as_ref().is_some_and(|k| &e.kind != k)
                {
                    return None;
                }
                Some(Ok(SseEvent::default()
                    .id(e.id.to_string())
                    .event("event")
                    .data(&*e.json)))
            }
        })
        .take_until(tokio::time::sleep(lifetime))
        .chain(futures::stream::once(async move {
            // Held until the stream ends, whichever way: the address's share is given back.
            drop(slot);
            Ok(SseEvent::default().event("end").data("{}"))
        }));
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

async fn timeline(
    State(st): State<OpsState>,
    headers: HeaderMap,
    Path(mac): Path<String>,
) -> Response {
    if let Err(r) = st.check_read(&headers) {
        return r;
    }
    let mac: Mac = match mac.parse() {
        Ok(m) => m,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e}")),
    };
    let store = st.store.clone();
    // The boots, and apart from them what operators changed (no part of any boot).
    let history = blocking(move || {
        Ok::<_, String>((
            machine_timeline(&store, mac)?,
            crate::timelines::operator_actions(&store, mac)?,
        ))
    });
    match history.await {
        Ok(Ok((boots, operator))) => {
            Json(json!({ "mac": mac, "boots": boots, "operator": operator })).into_response()
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(r) => r,
    }
}

async fn info(State(st): State<OpsState>, headers: HeaderMap) -> Response {
    if let Err(r) = st.check_read(&headers) {
        return r;
    }
    let mut v = (*st.info).clone();
    if let Some(o) = v.as_object_mut() {
        o.insert("uptime_s".into(), json!(st.started.elapsed().as_secs()));
        o.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
    }
    Json(v).into_response()
}

async fn healthz(State(st): State<OpsState>) -> Response {
    // Healthy when the store answers: every server depends on it.
    let store = st.store.clone();
    match blocking(move || store.ping()).await {
        Ok(Ok(_)) => (StatusCode::OK, format!("ok\n{}", health_warnings(&st))).into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}\n")).into_response(),
        Err(r) => r,
    }
}

/// What works but slows every boot, one `warning:` line each (the server still answers 200).
fn health_warnings(st: &OpsState) -> String {
    let Some(ra) = &st.ra else {
        return String::new();
    };
    let interfaces = ra.interfaces.lock().map(|l| l.clone()).unwrap_or_default();
    interfaces
        .iter()
        .filter_map(|i| chainboot_ra::ipv6_state(i).problem(i))
        .map(|p| format!("warning: {p}\n"))
        .collect()
}

async fn metrics(State(st): State<OpsState>, headers: HeaderMap) -> Response {
    if let Err(r) = st.check_read(&headers) {
        return r;
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render_metrics(&st),
    )
        .into_response()
}

/// The Prometheus text exposition of every server's counters, one section per server.
pub fn render_metrics(st: &OpsState) -> String {
    let mut w = Writer::new();
    w.gauge(
        "chainboot_uptime_seconds",
        "Seconds since start.",
        st.started.elapsed().as_secs_f64(),
    );
    write_dhcp(&mut w, st);
    write_dhcp6(&mut w, st);
    write_tftp(&mut w, st);
    write_http(&mut w, st);
    write_ra(&mut w, st);
    write_events(&mut w, st);
    w.finish()
}

/// DHCPv6: the engine's counters (`chainboot_dhcp6_*`, the IPv6 family's).
fn write_dhcp6(w: &mut Writer, st: &OpsState) {
    if let Some(c) = &st.dhcp6_counters {
        for (name, v) in c.snapshot() {
            w.counter(
                &format!("chainboot_dhcp6_{name}"),
                "DHCPv6 engine counter (see docs/api.md).",
                v,
            );
        }
    }
}

/// DHCP: the engine's counters, exchanges, decision times, pool usage.
fn write_dhcp(w: &mut Writer, st: &OpsState) {
    if let Some(c) = &st.dhcp_counters {
        for (name, v) in c.snapshot() {
            w.counter(
                &format!("chainboot_dhcp_{name}_total"),
                "DHCP engine counter (see docs/api.md).",
                v,
            );
        }
    }
    w.labeled(
        "chainboot_dhcp_exchanges_total",
        "DHCP requests by message type, client kind and outcome.",
        &st.metrics.dhcp_exchanges,
    );
    w.histogram(
        "chainboot_dhcp_decision_seconds",
        "Time from a DHCP request's arrival to its reply being queued.",
        &st.metrics.dhcp_decision_seconds,
    );
    if let Some(engine) = &st.dhcp_engine {
        let usage = engine.lock().pool_usage();
        let label =
            |p: &chainboot_dhcp::engine::PoolUsage| format!("pool=\"{}-{}\"", p.start, p.end);
        let used: Vec<(String, f64)> = usage.iter().map(|p| (label(p), p.in_use as f64)).collect();
        let free: Vec<(String, f64)> = usage
            .iter()
            .map(|p| (label(p), p.size.saturating_sub(p.in_use) as f64))
            .collect();
        w.family(
            "chainboot_dhcp_leases_in_use",
            "gauge",
            "Addresses bound, offered or quarantined, per pool.",
            &used,
        );
        w.family(
            "chainboot_dhcp_leases_free",
            "gauge",
            "Addresses free, per pool.",
            &free,
        );
    }
}

/// TFTP: transfers, refusals, busy polling.
fn write_tftp(w: &mut Writer, st: &OpsState) {
    if let Some(t) = &st.tftp {
        let s = t.snapshot();
        w.counter(
            "chainboot_tftp_transfers_started_total",
            "TFTP transfers that began sending.",
            s.started,
        );
        w.counter(
            "chainboot_tftp_transfers_finished_total",
            "TFTP transfers completed.",
            s.finished,
        );
        w.counter(
            "chainboot_tftp_transfers_failed_total",
            "TFTP transfers that began but did not complete.",
            s.failed,
        );
        w.family(
            "chainboot_tftp_requests_dropped_total",
            "counter",
            "TFTP requests and datagrams refused or dropped, by reason.",
            &[
                ("reason=\"refused_path\"".into(), s.refused as f64),
                ("reason=\"not_found\"".into(), s.not_found as f64),
                ("reason=\"busy\"".into(), s.busy as f64),
                ("reason=\"busy_prefix\"".into(), s.busy_prefix as f64),
                ("reason=\"busy_unproven\"".into(), s.busy_unproven as f64),
                ("reason=\"write_request\"".into(), s.writes_refused as f64),
                ("reason=\"malformed\"".into(), s.malformed as f64),
                ("reason=\"unknown_tid\"".into(), s.unknown_tid as f64),
                (
                    "reason=\"duplicate_request\"".into(),
                    s.duplicate_requests as f64,
                ),
            ],
        );
        w.counter(
            "chainboot_tftp_bytes_total",
            "TFTP payload bytes acknowledged.",
            s.bytes,
        );
        w.gauge(
            "chainboot_tftp_active_transfers",
            "TFTP transfers running now.",
            s.active as f64,
        );
        w.gauge(
            "chainboot_tftp_unproven_transfers",
            "TFTP transfers admitted whose client has not acknowledged anything yet.",
            s.unproven as f64,
        );
        w.counter(
            "chainboot_tftp_leased_over_prefix_total",
            "TFTP requests admitted over [tftp] max_per_prefix because their address is a booting machine's (a bound lease of this server's DHCP).",
            s.leased_over_prefix,
        );
        w.counter(
            "chainboot_tftp_unproven_timeouts_total",
            "TFTP transfers given up before their client acknowledged anything.",
            s.unproven_timeouts,
        );
        w.family(
            "chainboot_tftp_busy_polls_total",
            "counter",
            "Waits for an ACK that polled first ([tftp] busy_poll), by whether the ACK came while polling.",
            &[
                (
                    "outcome=\"answered\"".into(),
                    s.busy_polls_answered as f64,
                ),
                (
                    "outcome=\"slept\"".into(),
                    // Two loads, not one moment: never let "answered" read later wrap this.
                    s.busy_polls.saturating_sub(s.busy_polls_answered) as f64,
                ),
            ],
        );
    }
    w.histogram(
        "chainboot_tftp_transfer_seconds",
        "TFTP transfer durations.",
        &st.metrics.tftp_transfer_seconds,
    );
    w.labeled(
        "chainboot_tftp_transfers_total",
        "TFTP transfers by what was fetched and outcome.",
        &st.metrics.tftp_transfers,
    );
}

/// HTTP: connections, timeouts, responses, refused identities.
fn write_http(w: &mut Writer, st: &OpsState) {
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    if let Some(h) = &st.http {
        let classes: Vec<(String, f64)> = (1..=5)
            .map(|c| (format!("code=\"{c}xx\""), h.responses(c) as f64))
            .collect();
        w.family(
            "chainboot_http_responses_by_class_total",
            "counter",
            "HTTP responses by status class.",
            &classes,
        );
        w.counter(
            "chainboot_http_bytes_sent_total",
            "HTTP body bytes sent.",
            g(&h.bytes_sent),
        );
        w.counter(
            "chainboot_http_responses_aborted_total",
            "HTTP responses whose body ended early.",
            g(&h.aborted),
        );
        w.gauge(
            "chainboot_http_active_connections",
            "HTTP connections open now.",
            g(&h.active_connections) as f64,
        );
        w.counter(
            "chainboot_http_connections_total",
            "HTTP connections accepted.",
            g(&h.connections_total),
        );
        w.counter(
            "chainboot_http_connections_refused_per_client_total",
            "HTTP connections closed at once: their client address had [http] max_connections_per_client open.",
            g(&h.connections_refused_per_client),
        );
        w.counter(
            "chainboot_http_connections_timed_out_total",
            "HTTP connections closed as idle or slow.",
            g(&h.connections_timed_out),
        );
        w.counter(
            "chainboot_http_request_timeouts_total",
            "HTTP requests answered 408/503 because [http] request_timeout ran out.",
            g(&h.request_timeouts),
        );
        w.counter(
            "chainboot_http_send_timeouts_total",
            "HTTP connections reset because the client accepted no bytes for [http] send_timeout.",
            g(&h.send_timeouts),
        );
        w.counter(
            "chainboot_http_sendfile_bytes_total",
            "HTTP body bytes sent from the page cache with sendfile (plain HTTP; also in the bytes sent).",
            g(&h.sendfile_bytes),
        );
        w.counter(
            "chainboot_http_tls_handshakes_total",
            "TLS handshakes completed on the boot listener's tls_listen.",
            g(&h.tls_handshakes),
        );
        w.counter(
            "chainboot_http_tls_handshake_failures_total",
            "TLS handshakes that failed or took longer than [http] header_read_timeout.",
            g(&h.tls_handshake_failures),
        );
    }
    w.histogram(
        "chainboot_http_request_seconds",
        "HTTP request durations (to the last body byte).",
        &st.metrics.http_request_seconds,
    );
    w.by_what(
        "chainboot_http_responses_total",
        "HTTP responses by what was fetched and status class.",
        &st.metrics.http_responses,
    );
    w.by_what(
        "chainboot_http_bytes_total",
        "HTTP body bytes by what was fetched.",
        &st.metrics.http_bytes,
    );
    w.labeled(
        "chainboot_refused_identity_total",
        "Requests refused because they could not prove they came from the machine they named.",
        &st.metrics.refused_identity,
    );
}

/// IPv6 router advertisements.
fn write_ra(w: &mut Writer, st: &OpsState) {
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    if let Some(r) = &st.ra {
        w.counter(
            "chainboot_ipv6_router_solicitations_total",
            "IPv6 router solicitations received.",
            g(&r.solicitations),
        );
        w.counter(
            "chainboot_ipv6_router_advertisements_sent_total",
            "Empty router advertisements sent.",
            g(&r.advertisements_sent),
        );
        w.counter(
            "chainboot_ipv6_routers_heard_total",
            "Advertisements heard from real IPv6 routers.",
            g(&r.routers_heard),
        );
    }
}

/// What the event log concluded about machines: chainload loops, Secure Boot refusals, machine
/// records made from DHCP.
fn write_machine_watch(w: &mut Writer, es: &chainboot_events::EventStats) {
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    w.counter(
        "chainboot_chainload_loops_total",
        "Chainload loops detected (first stage fetched repeatedly without reaching HTTP).",
        g(&es.chainload_loops),
    );
    w.counter(
        "chainboot_secure_boot_refusals_total",
        "UEFI machines that took the unsigned first stage from their own address and never ran it (probably refused by Secure Boot).",
        g(&es.secure_boot_refusals),
    );
    w.counter(
        "chainboot_secure_boot_unproven_total",
        "The same pattern where a fetch did not come from the machine's own address (recorded, never acted on).",
        g(&es.secure_boot_unproven),
    );
    w.counter(
        "chainboot_machines_sightings_refused_total",
        "Boot clients' DHCP requests the new-machine limiter kept from making a machine record.",
        g(&es.sightings_refused),
    );
    w.counter(
        "chainboot_machines_write_errors_total",
        "Batches of machine updates (records from DHCP, stages, refusals) the store failed to take.",
        g(&es.machine_write_errors),
    );
}

/// The event log and the store.
fn write_events(w: &mut Writer, st: &OpsState) {
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let es = st.events.stats();
    write_machine_watch(w, es);
    w.counter(
        "chainboot_events_recorded_total",
        "Events recorded.",
        g(&es.recorded),
    );
    w.counter(
        "chainboot_events_dropped_total",
        "Events dropped because the writer fell behind.",
        g(&es.dropped),
    );
    w.counter(
        "chainboot_events_write_errors_total",
        "Events whose write the store refused or could not take (held ones count at each try).",
        g(&es.write_errors),
    );
    w.counter(
        "chainboot_events_refused_dropped_total",
        "Events of refused requests dropped by [events] refused_per_second.",
        g(&es.refused_dropped),
    );
    w.counter(
        "chainboot_events_truncated_total",
        "Event details replaced by a note of their size (over 4.5 KiB).",
        g(&es.truncated),
    );
    w.counter(
        "chainboot_events_pruned_total",
        "Events deleted by retention (max_events, max_age, max_bytes, max_unattributed).",
        g(&es.pruned),
    );
    w.gauge(
        "chainboot_events_stored_bytes",
        "Bytes of the events' pages in the store (table and indexes), as of the last pruning.",
        g(&es.stored_bytes) as f64,
    );
    w.gauge(
        "chainboot_events_held",
        "Events held by the writer while the store does not answer, written when it does.",
        g(&es.held) as f64,
    );
    w.counter(
        "chainboot_events_relayed_total",
        "Events other servers of the fleet wrote, handed to this server's live streams.",
        g(&es.relayed),
    );
    w.gauge(
        "chainboot_store_degraded",
        "1 while the fleet's database did not answer at its last use (PostgreSQL), else 0.",
        if st.store.degraded() { 1.0 } else { 0.0 },
    );
    let journals = st.store.lease_journals();
    w.family(
        "chainboot_store_journal_pending",
        "gauge",
        "Renewals answered while the fleet's database did not, in the local journal until it is told, by family.",
        &journals.map(|(f, j)| (format!("family=\"{f}\""), j.pending as f64)),
    );
    w.family(
        "chainboot_store_journal_refused_total",
        "counter",
        "Journaled renewals the fleet's database refused when they were replayed (the address had changed hands), by family.",
        &journals.map(|(f, j)| (format!("family=\"{f}\""), j.refused as f64)),
    );
    w.gauge(
        "chainboot_store_disk_bytes",
        "Bytes of the state store on disk (database and write-ahead log).",
        st.store.disk_bytes() as f64,
    );
    w.family(
        "chainboot_event_streams_closed_total",
        "counter",
        "Live event streams closed or refused by a limit, by reason.",
        &[
            ("reason=\"lagged\"".into(), g(&es.streams_lagged) as f64),
            ("reason=\"per_ip\"".into(), g(&es.streams_refused) as f64),
        ],
    );
    let batches = g(&es.write_batches);
    w.counter(
        "chainboot_store_event_batches_total",
        "Event batches written (one transaction each, with what they tell about machines).",
        batches,
    );
    w.counter(
        "chainboot_store_event_write_seconds_total",
        "Time spent writing event batches (store latency: divide by batches).",
        g(&es.write_micros_total) / 1_000_000,
    );
}
