//! The policy's HTTP routes; the binary merges [`routes`] with the static ones.
//!
//! | route | what |
//! |---|---|
//! | `GET /boot.ipxe` | stub chaining to `/ipxe` with iPXE's facts |
//! | `GET /ipxe?mac=&uuid=&arch=&platform=&buildarch=&serial=&...&profile=` | the machine's script |
//! | `GET /boot/MAC/kernel`, `/initrd/N`, `/url/N`, `/loader` | a decision's assets: records boot-once kernel fetches, then redirects (302) or serves local files / relays pixiecore API URLs |
//! | `GET /config/MAC/NAME` | `templates/<profile>/NAME` or `templates/NAME` rendered for the machine |
//! | `GET /pxelinux.cfg/NAME` | PXELINUX config, PXELINUX's lookup names |
//! | `/api/v1/machines...`, `/api/v1/profiles`, `/api/v1/groups` | API v1 (PRODUCT.md §5) |
//!
//! `/ipxe` always answers 200 with a valid iPXE script, even when something is wrong: an
//! HTTP error would leave the operator with iPXE's own terse message; the script says why
//! and retries (PROTOCOL.md, "HTTP from iPXE").

// Early-exit helpers return the finished error response; it is built once per failed request,
// so its size does not matter and boxing would only add noise.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chainboot_machine::{Arch, Mac};
use serde::Deserialize;

use crate::config::{ApiConfig, AssetRef};
use crate::facts::{valid_label, ClientFacts, RawFacts};
use crate::policy::{AssetSlot, Decision, Policy};
use crate::render::{self, HttpBase};

/// What the rest of chainboot adds to the machine routes: the event log records machines'
/// own events, and a machine's JSON carries its last boot timeline (both owned by other
/// crates, hence a hook rather than a dependency). Both default to nothing.
pub trait MachineHooks: Send + Sync + 'static {
    /// A machine reported an event (`installed`, or anything else an installer sends).
    fn machine_event(&self, _mac: Mac, _event: &str, _body: &serde_json::Value) {}
    /// The machine's last boot, as JSON, for `GET /api/v1/machines/MAC`.
    fn last_boot(&self, _mac: Mac) -> Option<serde_json::Value> {
        None
    }
}

struct NoHooks;
impl MachineHooks for NoHooks {}

/// Shared state of the policy routes.
#[derive(Clone)]
pub struct PolicyState {
    pub policy: Arc<Policy>,
    hooks: Arc<dyn MachineHooks>,
    token: Arc<String>,
    read_requires_token: bool,
    /// Used when a request has no usable Host header.
    fallback_base: HttpBase,
    relay: reqwest::Client,
}

impl PolicyState {
    /// `token` is the API bearer token (see [`ApiConfig::load_or_create_token`]);
    /// `fallback_base` the URL machines reach this server at when a request carries no Host
    /// header (scripts otherwise use the Host the client used, which is always reachable).
    pub fn new(
        policy: Arc<Policy>,
        token: String,
        api: &ApiConfig,
        fallback_base: HttpBase,
    ) -> PolicyState {
        PolicyState {
            policy,
            hooks: Arc::new(NoHooks),
            token: Arc::new(token),
            read_requires_token: api.read_requires_token,
            fallback_base,
            relay: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    /// Attaches the hooks (event log, timelines).
    pub fn with_hooks(mut self, hooks: Arc<dyn MachineHooks>) -> PolicyState {
        self.hooks = hooks;
        self
    }

    fn base(&self, headers: &HeaderMap) -> HttpBase {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(HttpBase::from_host_header)
            .unwrap_or_else(|| self.fallback_base.clone())
    }

    fn is_admin(&self, headers: &HeaderMap) -> bool {
        bearer(headers).is_some_and(|t| ct_eq(t, &self.token))
    }

    fn check_read(&self, headers: &HeaderMap) -> Result<(), Response> {
        if self.read_requires_token && !self.is_admin(headers) {
            return Err(unauthorized());
        }
        Ok(())
    }

    fn check_write(&self, headers: &HeaderMap) -> Result<(), Response> {
        if !self.is_admin(headers) {
            return Err(unauthorized());
        }
        Ok(())
    }

    /// The machine a write request names, once the request may write (token first, so a
    /// caller without one learns nothing from the MAC's validation).
    fn writable_machine(&self, headers: &HeaderMap, mac: &str) -> Result<Mac, Response> {
        self.check_write(headers)?;
        parse_mac(mac)
    }

    /// Creates the machine's record if needed, applies `change` to it, and answers with the
    /// record as stored (the decision cache forgets the machine: its next boot decides anew).
    async fn update_machine<R>(
        &self,
        mac: Mac,
        change: impl FnOnce(&chainboot_store::Store) -> Result<R, chainboot_store::StoreError>
            + Send
            + 'static,
    ) -> Response {
        let policy = self.policy.clone();
        let r = blocking(move || {
            let store = policy.store();
            store.machine_ensure(mac, crate::now_ms(), &crate::random_hex(16))?;
            change(store)?;
            store.machine(mac)
        })
        .await;
        self.policy.forget_recent(mac);
        machine_result(r, mac)
    }
}

/// A JSON body, or a 400 that says what was `expected`.
fn json_body<T>(
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
    expected: &str,
) -> Result<T, Response> {
    body.map(|Json(b)| b)
        .map_err(|e| json_error(StatusCode::BAD_REQUEST, format!("expected {expected}: {e}")))
}

/// The policy's routes.
pub fn routes(state: PolicyState) -> Router {
    Router::new()
        .route("/boot.ipxe", get(boot_ipxe))
        .route("/ipxe", get(ipxe))
        .route("/boot/{mac}/{*slot}", get(boot_asset))
        .route("/config/{mac}/{name}", get(config_file))
        .route("/pxelinux.cfg/{name}", get(pxelinux_cfg))
        .route("/api/v1/machines", get(list_machines))
        .route(
            "/api/v1/machines/{mac}",
            get(show_machine).delete(forget_machine),
        )
        .route("/api/v1/machines/{mac}/profile", put(set_profile))
        .route("/api/v1/machines/{mac}/rearm", post(rearm))
        .route("/api/v1/machines/{mac}/labels", put(set_labels))
        .route("/api/v1/machines/{mac}/events", post(machine_event))
        .route("/api/v1/profiles", get(list_profiles))
        .route("/api/v1/groups", get(list_groups))
        .with_state(state)
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compares secrets in time independent of where they differ.
pub fn ct_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() || b.is_empty() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(serde_json::json!({"error": "missing or wrong bearer token"})),
    )
        .into_response()
}

fn json_error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({"error": msg.into()}))).into_response()
}

fn text(body: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

fn parse_mac(s: &str) -> Result<Mac, Response> {
    s.parse::<Mac>()
        .map_err(|e| json_error(StatusCode::BAD_REQUEST, e.to_string()))
}

fn store_error(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "state store");
    json_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("state store: {e}"),
    )
}

/// Runs blocking store work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| store_error(format!("task failed: {e}")))
}

async fn boot_ipxe(State(st): State<PolicyState>, headers: HeaderMap) -> Response {
    text(render::stub_script(&st.base(&headers)))
}

/// Reads the facts in `/ipxe`'s query string (untrusted; sanitised by `ClientFacts`).
pub fn facts_from_query(
    q: &HashMap<String, String>,
    peer: Option<SocketAddr>,
) -> Result<ClientFacts, String> {
    let mac_raw = q.get("mac").map(|s| s.as_str()).unwrap_or("");
    let mac: Mac = mac_raw.parse().map_err(|_| {
        "the request carries no valid mac= (is the chain URL from /boot.ipxe?)".to_string()
    })?;
    let platform = q.get("platform").map(|s| s.as_str()).unwrap_or("");
    let buildarch = q.get("buildarch").map(|s| s.as_str()).unwrap_or("");
    // `arch=` may be a chainboot name (efi-x64) or, as PRODUCT.md §1's stub writes it,
    // iPXE's ${buildarch} (x86_64), which needs ${platform} to mean anything.
    let arch = match q.get("arch").filter(|s| !s.is_empty()) {
        Some(a) => a
            .parse::<Arch>()
            .ok()
            .or_else(|| Arch::from_ipxe(platform, a)),
        None => Arch::from_ipxe(platform, buildarch),
    };
    let g = |k: &str| q.get(k).map(|s| s.as_str());
    let mut facts = ClientFacts::from_raw(
        mac,
        &RawFacts {
            arch,
            uuid: g("uuid"),
            hostname: g("hostname"),
            serial: g("serial"),
            manufacturer: g("manufacturer"),
            product: g("product"),
            ip: g("ip"),
        },
    );
    if facts.ip.is_none() {
        facts.ip = peer.map(|p| p.ip());
    }
    Ok(facts)
}

/// Facts older than this are refreshed in the store even when unchanged (last seen).
const SEEN_REFRESH_MS: i64 = 60_000;

async fn ipxe(
    State(st): State<PolicyState>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
    parts: http::request::Parts,
) -> Response {
    let base = st.base(&headers);
    let retry = st.policy.retry_secs();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => {
            tracing::warn!(error = %e, "bad /ipxe query");
            return text(render::error_script(
                None,
                "malformed request",
                &base,
                retry,
            ));
        }
    };
    let facts = match facts_from_query(&q, peer) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(peer = ?peer, "{e}");
            return text(render::error_script(None, &e, &base, retry));
        }
    };
    let mac = facts.mac;
    let chosen = q
        .get("profile")
        .map(|s| s.as_str())
        .filter(|s| !s.is_empty());
    // Fast path: the same machine asking again with the same facts gets the script it was
    // just given, without touching the store (every write path drops the remembered decision).
    if chosen.is_none() {
        if let Some(d) = st.policy.recent(mac).filter(|d| d.fresh_for(&facts)) {
            tracing::debug!(%mac, profile = %d.profile, "boot script (remembered decision)");
            return text(d.cached_script(&base, retry));
        }
    }
    let record = {
        let policy = st.policy.clone();
        let facts = facts.clone();
        blocking(move || -> Result<_, chainboot_store::StoreError> {
            let store = policy.store();
            let now = crate::now_ms();
            let existing = store.machine(facts.mac)?;
            let wanted = facts.to_store();
            if let Some(r) = existing {
                let merged = chainboot_store::machines::MachineFacts {
                    arch: wanted.arch.clone().or(r.facts.arch.clone()),
                    uuid: wanted.uuid.clone().or(r.facts.uuid.clone()),
                    hostname: wanted.hostname.clone().or(r.facts.hostname.clone()),
                    serial: wanted.serial.clone().or(r.facts.serial.clone()),
                    manufacturer: wanted.manufacturer.clone().or(r.facts.manufacturer.clone()),
                    product: wanted.product.clone().or(r.facts.product.clone()),
                    ip: wanted.ip.clone().or(r.facts.ip.clone()),
                };
                // Skip the durable write when nothing changed recently: per-machine scripts
                // are a hot path and every commit is an fsync.
                if merged == r.facts && now - r.last_seen_ms < SEEN_REFRESH_MS {
                    return Ok(r);
                }
            }
            store.machine_seen(facts.mac, &wanted, now, &crate::random_hex(16))
        })
        .await
    };
    let record = match record {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::error!(%mac, error = %e, "state store");
            return text(render::error_script(
                Some(&mac.to_string()),
                "state store error (see the server log)",
                &base,
                retry,
            ));
        }
        Err(resp) => return resp,
    };
    match st.policy.decide(&facts, Some(&record), chosen).await {
        Ok(d) => {
            let d = if chosen.is_none() {
                d.answered(facts)
            } else {
                d
            };
            let d = st.policy.remember(&d);
            let script = d.cached_script(&base, retry);
            tracing::info!(%mac, profile = %d.profile, source = %d.source, "boot script");
            if record.last_profile.as_deref() != Some(d.profile.as_str()) {
                let policy = st.policy.clone();
                let profile = d.profile.clone();
                let _ = blocking(move || {
                    if let Err(e) = policy.store().machine_set_last_profile(mac, &profile) {
                        tracing::error!(%mac, error = %e, "state store");
                    }
                })
                .await;
            }
            text(script)
        }
        Err(e) => {
            tracing::warn!(%mac, reason = %e, "machine cannot boot");
            text(render::error_script(
                Some(&mac.to_string()),
                &e.0,
                &base,
                retry,
            ))
        }
    }
}

/// The decision for `mac`: the one `/ipxe` last made, or a fresh one from stored facts.
async fn decision_for(st: &PolicyState, mac: Mac) -> Result<Arc<Decision>, Response> {
    if let Some(d) = st.policy.recent(mac) {
        return Ok(d);
    }
    let policy = st.policy.clone();
    let stored = blocking(move || policy.store().machine(mac))
        .await?
        .map_err(store_error)?;
    let d = st
        .policy
        .decide(&ClientFacts::new(mac), stored.as_ref(), None)
        .await
        .map_err(|e| json_error(StatusCode::NOT_FOUND, e.0))?;
    Ok(st.policy.remember(&d))
}

fn parse_slot(s: &str) -> Option<AssetSlot> {
    let parts: Vec<&str> = s.split('/').collect();
    match parts.as_slice() {
        ["kernel"] => Some(AssetSlot::Kernel),
        ["loader"] => Some(AssetSlot::Loader),
        ["initrd", n] => n.parse().ok().map(AssetSlot::Initrd),
        ["url", n] => n.parse().ok().map(AssetSlot::Url),
        _ => None,
    }
}

async fn boot_asset(
    State(st): State<PolicyState>,
    method: Method,
    headers: HeaderMap,
    Path((mac, slot)): Path<(String, String)>,
) -> Response {
    let mac = match parse_mac(&mac) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let Some(slot) = parse_slot(&slot) else {
        return json_error(StatusCode::NOT_FOUND, "no such boot asset");
    };
    let d = match decision_for(&st, mac).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let Some(asset) = d.asset(slot) else {
        return json_error(
            StatusCode::NOT_FOUND,
            format!("profile {} has no such asset", d.profile),
        );
    };
    if slot == AssetSlot::Kernel && method == Method::GET {
        if let Some(group) = d.once_group.clone() {
            // Boot-once: the kernel fetch is the point of no return; the next boot of this
            // machine goes to the local disk (issue 5).
            let policy = st.policy.clone();
            let reason = format!("fetched the kernel of profile {}", d.profile);
            match blocking(move || {
                policy
                    .store()
                    .machine_mark_installed(mac, crate::now_ms(), &reason)
            })
            .await
            {
                Ok(Ok(_)) => {
                    st.policy.forget_recent(mac);
                    tracing::info!(%mac, %group, "boot-once: kernel fetched, next boot is local disk")
                }
                Ok(Err(e)) => return store_error(e),
                Err(r) => return r,
            }
        }
    }
    let base = st.base(&headers);
    serve_asset(&st, &asset, &base, slot, mac).await
}

async fn serve_asset(
    st: &PolicyState,
    asset: &AssetRef,
    base: &HttpBase,
    slot: AssetSlot,
    mac: Mac,
) -> Response {
    match asset {
        AssetRef::Files(_) | AssetRef::Iso { .. } | AssetRef::Url(_) => {
            let url = render::asset_url(asset, base, &slot.path(mac), false);
            match HeaderValue::from_str(&url) {
                Ok(v) => (StatusCode::FOUND, [(header::LOCATION, v)]).into_response(),
                Err(_) => json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "asset URL is not a valid header",
                ),
            }
        }
        AssetRef::Local(path) => {
            let file = match tokio::fs::File::open(path).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "boot asset");
                    return json_error(StatusCode::NOT_FOUND, format!("{}: {e}", path.display()));
                }
            };
            let len = match file.metadata().await {
                Ok(m) if m.is_file() => m.len(),
                _ => {
                    return json_error(
                        StatusCode::NOT_FOUND,
                        format!("{} is not a file", path.display()),
                    )
                }
            };
            let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
                file,
                256 * 1024,
            ));
            (
                [
                    (header::CONTENT_LENGTH, HeaderValue::from(len)),
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    ),
                ],
                body,
            )
                .into_response()
        }
        AssetRef::Proxy(url) => {
            let resp = match st.relay.get(url).send().await {
                Ok(r) if r.status().is_success() => r,
                Ok(r) => {
                    tracing::warn!(%url, status = %r.status(), "relayed boot asset");
                    return json_error(
                        StatusCode::BAD_GATEWAY,
                        format!("{url}: HTTP {}", r.status()),
                    );
                }
                Err(e) => {
                    tracing::warn!(%url, error = %e, "relayed boot asset");
                    return json_error(StatusCode::BAD_GATEWAY, format!("{url}: {e}"));
                }
            };
            let len = resp.content_length();
            let mut r = Body::from_stream(resp.bytes_stream()).into_response();
            if let Some(len) = len {
                // iPXE needs Content-Length (pixiecore#10).
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
            r
        }
    }
}

async fn config_file(
    State(st): State<PolicyState>,
    headers: HeaderMap,
    Path((mac, name)): Path<(String, String)>,
) -> Response {
    let mac = match parse_mac(&mac) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let Some(dir) = st.policy.templates_dir() else {
        return json_error(
            StatusCode::NOT_FOUND,
            "no [boot] templates folder configured",
        );
    };
    let d = match decision_for(&st, mac).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let base = st.base(&headers);
    let result = blocking(move || d.config_file(&dir, &name, &base)).await;
    match result {
        Ok(Ok(Some(body))) => text(body),
        Ok(Ok(None)) => json_error(StatusCode::NOT_FOUND, "no such template"),
        Ok(Err(e)) => {
            tracing::warn!(%mac, error = %e, "config template");
            json_error(StatusCode::INTERNAL_SERVER_ERROR, e.0)
        }
        Err(r) => r,
    }
}

async fn pxelinux_cfg(
    State(st): State<PolicyState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let base = st.base(&headers);
    match crate::tftp::pxelinux_lookup(&st.policy, None, &name, &base).await {
        Ok(Some(body)) => text(body),
        Ok(None) => json_error(StatusCode::NOT_FOUND, "no pxelinux config by that name"),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.0),
    }
}

async fn list_machines(State(st): State<PolicyState>, headers: HeaderMap) -> Response {
    if let Err(r) = st.check_read(&headers) {
        return r;
    }
    let policy = st.policy.clone();
    match blocking(move || policy.store().machines()).await {
        Ok(Ok(list)) => Json(list).into_response(),
        Ok(Err(e)) => store_error(e),
        Err(r) => r,
    }
}

async fn show_machine(
    State(st): State<PolicyState>,
    headers: HeaderMap,
    Path(mac): Path<String>,
) -> Response {
    if let Err(r) = st.check_read(&headers) {
        return r;
    }
    let mac = match parse_mac(&mac) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let policy = st.policy.clone();
    let hooks = st.hooks.clone();
    match blocking(move || {
        policy
            .store()
            .machine(mac)
            .map(|m| m.map(|m| (m, hooks.last_boot(mac))))
    })
    .await
    {
        Ok(Ok(Some((m, last_boot)))) => {
            let mut v = serde_json::to_value(&m).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert(
                    "last_boot".into(),
                    last_boot.unwrap_or(serde_json::Value::Null),
                );
            }
            Json(v).into_response()
        }
        Ok(Ok(None)) => json_error(StatusCode::NOT_FOUND, format!("machine {mac} not known")),
        Ok(Err(e)) => store_error(e),
        Err(r) => r,
    }
}

async fn forget_machine(
    State(st): State<PolicyState>,
    headers: HeaderMap,
    Path(mac): Path<String>,
) -> Result<Response, Response> {
    let mac = st.writable_machine(&headers, &mac)?;
    let policy = st.policy.clone();
    Ok(
        match blocking(move || policy.store().machine_forget(mac)).await? {
            Ok(true) => StatusCode::NO_CONTENT.into_response(),
            Ok(false) => json_error(StatusCode::NOT_FOUND, format!("machine {mac} not known")),
            Err(e) => store_error(e),
        },
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetProfile {
    profile: Option<String>,
}

async fn set_profile(
    State(st): State<PolicyState>,
    headers: HeaderMap,
    Path(mac): Path<String>,
    body: Result<Json<SetProfile>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Response> {
    let mac = st.writable_machine(&headers, &mac)?;
    let body = json_body(body, "{\"profile\": \"NAME\" or null}")?;
    if let Some(p) = &body.profile {
        if !st.policy.has_profile(p) {
            return Err(json_error(
                StatusCode::BAD_REQUEST,
                format!("unknown profile `{}`", render::echo_text(p)),
            ));
        }
    }
    Ok(st
        .update_machine(mac, move |store| {
            store.machine_set_profile(mac, body.profile.as_deref())
        })
        .await)
}

fn machine_result(
    r: Result<
        Result<Option<chainboot_store::machines::MachineRecord>, chainboot_store::StoreError>,
        Response,
    >,
    mac: Mac,
) -> Response {
    match r {
        Ok(Ok(Some(m))) => Json(m).into_response(),
        Ok(Ok(None)) => json_error(StatusCode::NOT_FOUND, format!("machine {mac} not known")),
        Ok(Err(e)) => store_error(e),
        Err(r) => r,
    }
}

async fn rearm(
    State(st): State<PolicyState>,
    headers: HeaderMap,
    Path(mac): Path<String>,
) -> Result<Response, Response> {
    let mac = st.writable_machine(&headers, &mac)?;
    let policy = st.policy.clone();
    let r = blocking(move || {
        let store = policy.store();
        if !store.machine_rearm(mac)? {
            return Ok(None);
        }
        store.machine(mac)
    })
    .await;
    st.policy.forget_recent(mac);
    Ok(machine_result(r, mac))
}

async fn set_labels(
    State(st): State<PolicyState>,
    headers: HeaderMap,
    Path(mac): Path<String>,
    body: Result<Json<BTreeMap<String, String>>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Response> {
    let mac = st.writable_machine(&headers, &mac)?;
    let labels = json_body(body, "{\"key\": \"value\", ...}")?;
    if labels.len() > 64 {
        return Err(json_error(StatusCode::BAD_REQUEST, "at most 64 labels"));
    }
    if let Some((k, v)) = labels.iter().find(|(k, v)| !valid_label(k, v)) {
        return Err(json_error(
            StatusCode::BAD_REQUEST,
            format!(
                "label `{}` = `{}`: keys and values are up to 64 characters of letters, digits and . _ - : + , /",
                render::echo_text(k),
                render::echo_text(v)
            ),
        ));
    }
    Ok(st
        .update_machine(mac, move |store| store.machine_set_labels(mac, &labels))
        .await)
}

async fn machine_event(
    State(st): State<PolicyState>,
    headers: HeaderMap,
    Path(mac): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Result<Json<serde_json::Value>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let mac = match parse_mac(&mac) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let policy = st.policy.clone();
    let stored = match blocking(move || policy.store().machine(mac)).await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => return store_error(e),
        Err(r) => return r,
    };
    // The API token, or this machine's own secret (Bearer or ?secret= for installers that
    // cannot set headers). A secret never works for another machine.
    let presented = bearer(&headers).or(q.get("secret").map(|s| s.as_str()));
    let own_secret = match (&stored, presented) {
        (Some(m), Some(p)) => ct_eq(p, &m.secret),
        _ => false,
    };
    if !st.is_admin(&headers) && !own_secret {
        return unauthorized();
    }
    let Some(_) = stored else {
        return json_error(StatusCode::NOT_FOUND, format!("machine {mac} not known"));
    };
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"event\": \"installed\", ...}}: {e}"),
            )
        }
    };
    let Some(event) = body.get("event").and_then(|e| e.as_str()) else {
        return json_error(StatusCode::BAD_REQUEST, "missing \"event\"");
    };
    let event = render::echo_text(event);
    tracing::info!(%mac, %event, "machine event");
    st.hooks.machine_event(mac, &event, &body);
    if event == "installed" {
        let policy = st.policy.clone();
        let r = blocking(move || {
            let store = policy.store();
            store.machine_mark_installed(mac, crate::now_ms(), "reported installed")?;
            store.machine(mac)
        })
        .await;
        st.policy.forget_recent(mac);
        return machine_result(r, mac);
    }
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"event": event})),
    )
        .into_response()
}

async fn list_profiles(State(st): State<PolicyState>, headers: HeaderMap) -> Response {
    if let Err(r) = st.check_read(&headers) {
        return r;
    }
    Json(st.policy.config().profiles).into_response()
}

async fn list_groups(State(st): State<PolicyState>, headers: HeaderMap) -> Response {
    if let Err(r) = st.check_read(&headers) {
        return r;
    }
    Json(st.policy.config().groups).into_response()
}
