//! The policy's HTTP routes; the binary puts [`boot_routes`] on the boot listener and
//! [`operator_routes`] on the management listener.
//!
//! | route | what |
//! |---|---|
//! | `GET /boot.ipxe` | stub chaining to `/ipxe` with iPXE's facts |
//! | `GET /ipxe?mac=&uuid=&arch=&platform=&buildarch=&serial=&...&profile=` | the machine's script |
//! | `GET /boot/MAC/kernel`, `/initrd/N`, `/url/N`, `/loader` | a decision's assets: records boot-once kernel fetches, then redirects (302) or serves local files / relays pixiecore API URLs |
//! | `GET /config/MAC/NAME` | `templates/<profile>/NAME` or `templates/NAME` rendered for the machine |
//! | `GET /pxelinux.cfg/NAME` | PXELINUX config, PXELINUX's lookup names |
//! | `POST /api/v1/machines/MAC/events` | a machine's own report (its secret, or the token) |
//! | `/api/v1/machines...`, `/api/v1/profiles`, `/api/v1/groups` | the operator's API (token) |
//!
//! Every route that names a MAC acts for that machine only when the request proves it comes
//! from it ([`crate::access`]); others are refused and say why.
//!
//! `/ipxe` always answers 200 with a valid iPXE script, even when something is wrong: an
//! HTTP error would leave the operator with iPXE's own terse message; the script says why
//! and retries.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRef, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chainboot_api::{blocking, ApiAuth, ApiError, Operator, Reader};
use chainboot_content::{Served, What};
use chainboot_http::tls::Scheme;
use chainboot_machine::{Arch, Mac};
use serde::Deserialize;

use chainboot_store::events::NewEvent;
use chainboot_store::machines::{MachineRecord, OperatorChange, OperatorChanged};

use crate::access::{Proof, Refusal};
use crate::config::AssetRef;
use crate::facts::{valid_label, ClientFacts, RawFacts};
use crate::peers::PeerBases;
use crate::policy::{AssetSlot, Decision, Policy};
use crate::render::{self, HttpBase};

/// What the rest of chainboot adds to the machine routes: the event log records machines'
/// own events and refused requests, and a machine's JSON carries its last boot timeline (both
/// owned by other crates, hence a hook rather than a dependency). All default to nothing.
pub trait MachineHooks: Send + Sync + 'static {
    /// A machine reported an event (`installed`, or anything else an installer sends).
    fn machine_event(&self, _mac: Mac, _event: &str, _body: &serde_json::Value) {}
    /// The machine's last boot, as JSON, for `GET /api/v1/machines/MAC`.
    fn last_boot(&self, _mac: Mac) -> Option<serde_json::Value> {
        None
    }
    /// A request named `mac` and could not prove it came from it (counted; not a machine
    /// event, since anyone can name any MAC).
    fn refused(&self, _mac: Mac, _peer: Option<IpAddr>, _route: &'static str) {}
    /// A request from `ip` proved it came from `mac` (its later TFTP and HTTP requests from
    /// that address can be filed under the machine); `by_address` when the address itself is
    /// the proof (a lease or the neighbour table), not a capability or a trusted network.
    fn verified(&self, _mac: Mac, _ip: IpAddr, _by_address: bool) {}
    /// The machine's newest operator changes, as JSON, for `GET /api/v1/machines/MAC`.
    fn operator_actions(&self, _mac: Mac) -> Option<serde_json::Value> {
        None
    }
    /// An operator's change was stored with its event (`id`): the live stream shows it.
    fn operator_changed(&self, _id: i64, _event: chainboot_store::events::NewEvent) {}
}

struct NoHooks;
impl MachineHooks for NoHooks {}

/// Shared state of the policy routes. Handlers get a copy per request: one reference count
/// (a copy of every field cost a tenth of a script request's time).
#[derive(Clone)]
pub struct PolicyState(Arc<PolicyShared>);

/// What [`PolicyState`] shares.
#[derive(Clone)]
pub struct PolicyShared {
    pub policy: Arc<Policy>,
    hooks: Arc<dyn MachineHooks>,
    auth: ApiAuth,
    /// Used when a request has no usable Host header.
    fallback_base: HttpBase,
    /// The boot listener's TLS port, if it has one: templates' `{{ https }}`.
    https_port: Option<u16>,
    relay: reqwest::Client,
    /// Admits new machine records (none: every verified machine is recorded).
    limiter: Option<Arc<chainboot_store::limit::NewMachineLimiter>>,
    /// The live fleet peers' boot listeners, named in scripts as alternatives to this
    /// server's URLs (none alone).
    peers: PeerBases,
    /// `/boot.ipxe` as rendered per scheme and Host header, for the peers it was rendered
    /// with: it depends on nothing else, and every machine of a network asks with the same few.
    stubs: Arc<parking_lot::Mutex<Stubs>>,
}

/// The kept `/boot.ipxe` stubs and the peers they name (when those change, all are dropped).
#[derive(Default)]
struct Stubs {
    peers: Arc<Vec<HttpBase>>,
    by_key: HashMap<StubKey, bytes::Bytes>,
}

/// What `/boot.ipxe` depends on: whether it came over TLS, and its Host header.
type StubKey = (bool, Option<HeaderValue>);

/// Rendered `/boot.ipxe` stubs kept at most (a request's Host is the client's to choose: when
/// strangers send more, the kept ones are dropped and rendered again as asked).
const MAX_STUBS: usize = 64;

/// The Host header of a request, alone (a `HeaderMap` argument copies every header).
pub struct HostHeader(pub Option<HeaderValue>);

impl<S: Send + Sync> FromRequestParts<S> for HostHeader {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(HostHeader(parts.headers.get(header::HOST).cloned()))
    }
}

impl std::ops::Deref for PolicyState {
    type Target = PolicyShared;
    fn deref(&self) -> &PolicyShared {
        &self.0
    }
}

impl FromRef<PolicyState> for ApiAuth {
    fn from_ref(st: &PolicyState) -> ApiAuth {
        st.auth.clone()
    }
}

/// The client address of a request (the HTTP server attaches it to every request).
pub struct Peer(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

impl PolicyState {
    /// `auth` checks the operator's token; `fallback_base` is the URL machines reach this
    /// server at when a request carries no Host header (scripts otherwise use the Host the
    /// client used, which is always reachable).
    pub fn new(policy: Arc<Policy>, auth: ApiAuth, fallback_base: HttpBase) -> PolicyState {
        PolicyState(Arc::new(PolicyShared {
            policy,
            hooks: Arc::new(NoHooks),
            auth,
            https_port: None,
            fallback_base,
            relay: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            limiter: None,
            peers: PeerBases::default(),
            stubs: Arc::default(),
        }))
    }

    /// For the builder methods, at set-up: copies the shared part when it is shared already.
    fn shared_mut(&mut self) -> &mut PolicyShared {
        Arc::make_mut(&mut self.0)
    }

    /// Bounds how many new machines are recorded, per source and in all.
    pub fn with_limiter(
        mut self,
        limiter: Arc<chainboot_store::limit::NewMachineLimiter>,
    ) -> PolicyState {
        self.shared_mut().limiter = Some(limiter);
        self
    }

    /// Attaches the hooks (event log, timelines).
    pub fn with_hooks(mut self, hooks: Arc<dyn MachineHooks>) -> PolicyState {
        self.shared_mut().hooks = hooks;
        self
    }

    /// The port of the boot listener's TLS listener (as bound), for templates that ask for
    /// `{{ https }}`; without one they are refused.
    pub fn with_https_port(mut self, port: Option<u16>) -> PolicyState {
        let shared = self.shared_mut();
        shared.https_port = port;
        shared.fallback_base = shared.fallback_base.clone().with_https_port(port);
        self
    }

    /// The handle through which the fleet loop hands over the live peers' boot listeners.
    pub fn with_peer_bases(mut self, peers: PeerBases) -> PolicyState {
        self.shared_mut().peers = peers;
        self
    }

    /// The same state with another access rule (the operator routes on the boot listener
    /// need the token for reads too).
    pub fn with_auth(mut self, auth: ApiAuth) -> PolicyState {
        self.shared_mut().auth = auth;
        self
    }

    /// The base URL for a request: its Host, with the scheme it came over (a client that
    /// fetched over https:// stays on https://).
    fn base(&self, headers: &HeaderMap, scheme: Scheme) -> HttpBase {
        self.base_for_host(headers.get(header::HOST), scheme)
    }

    /// [`PolicyState::base`] from the Host header alone.
    fn base_for_host(&self, host: Option<&HeaderValue>, scheme: Scheme) -> HttpBase {
        self.base_with_peers(host, scheme, &self.peers.current())
    }

    /// [`PolicyState::base_for_host`] naming `peers` as alternatives.
    fn base_with_peers(
        &self,
        host: Option<&HeaderValue>,
        scheme: Scheme,
        peers: &[HttpBase],
    ) -> HttpBase {
        let base = host
            .and_then(|h| h.to_str().ok())
            .and_then(|h| HttpBase::new(&format!("{}://{h}", scheme.as_str())).ok())
            .map(|b| b.with_https_port(self.https_port))
            .unwrap_or_else(|| self.fallback_base.clone());
        if peers.is_empty() {
            return base;
        }
        base.with_peers(peers)
    }

    /// `/boot.ipxe` for a request with `host` over `scheme`: rendered once per pair (and
    /// again when the live peers change).
    fn stub(&self, host: Option<HeaderValue>, scheme: Scheme) -> bytes::Bytes {
        let key = (scheme.https, host);
        let peers = self.peers.current();
        {
            let mut kept = self.stubs.lock();
            if !Arc::ptr_eq(&kept.peers, &peers) {
                kept.by_key.clear();
                kept.peers = peers.clone();
            }
            if let Some(stub) = kept.by_key.get(&key) {
                return stub.clone();
            }
        }
        let script = bytes::Bytes::from(render::stub_script(&self.base_with_peers(
            key.1.as_ref(),
            scheme,
            &peers,
        )));
        let mut kept = self.stubs.lock();
        if !Arc::ptr_eq(&kept.peers, &peers) {
            // The peers changed while this one was rendered: it is not kept.
            return script;
        }
        if kept.by_key.len() >= MAX_STUBS {
            kept.by_key.clear();
        }
        kept.by_key.insert(key, script.clone());
        script
    }

    /// Whether the request may act for `mac`; a refusal is counted and logged (bounded: the
    /// hook rate-limits what it records).
    fn verify(
        &self,
        mac: Mac,
        peer: Option<IpAddr>,
        cap: Option<&str>,
        route: &'static str,
    ) -> Result<Proof, Refusal> {
        self.policy.verify(mac, peer, cap).inspect_err(|r| {
            tracing::debug!(%mac, ?peer, route, reason = %r, "request refused");
            self.hooks.refused(mac, peer, route);
        })
    }

    /// Applies an operator's change to a machine and stores its event (the action, the old
    /// and new value where short, the client's address; the server is the event's) in the
    /// same transaction. With `create` an unknown machine is recorded first; without, it
    /// changes nothing (`None`). Answers with what was done and the record after it (none
    /// once forgotten); the decision cache forgets the machine: its next boot decides anew.
    async fn operator_change(
        &self,
        mac: Mac,
        change: OperatorChange,
        create: bool,
        client: Option<IpAddr>,
    ) -> Result<Option<(OperatorChanged, Option<MachineRecord>)>, ApiError> {
        let policy = self.policy.clone();
        let done = blocking(move || {
            let store = policy.store();
            let now = crate::now_ms();
            let secret = create.then(|| crate::random_hex(16));
            let forget = change == OperatorChange::Forget;
            let what = change.clone();
            let event = move |before: &MachineRecord| NewEvent {
                at_ms: now,
                mac: Some(mac),
                kind: chainboot_store::events::OPERATOR.into(),
                detail: operator_detail(before, &what, client),
            };
            let Some(done) =
                store.machine_operator_change(mac, now, secret.as_deref(), change, event)?
            else {
                return Ok(None);
            };
            let after = if forget { None } else { store.machine(mac)? };
            Ok::<_, chainboot_store::StoreError>(Some((done, after)))
        })
        .await?
        .map_err(store_error)?;
        self.policy.forget_recent(mac);
        if let Some((d, _)) = &done {
            tracing::info!(%mac, detail = %d.event.detail, "operator change");
            self.hooks.operator_changed(d.event_id, d.event.clone());
        }
        Ok(done)
    }
}

/// Labels' JSON kept whole in an operator event up to this size (64 labels of 64-character
/// keys and values would be 8 KiB); a larger set is recorded as its count.
const OPERATOR_LABELS_BYTES: usize = 1024;

/// What an operator event says of a change: the action, the old and new value where short,
/// and the client's address. The API's only client identity is its one bearer token, shared
/// by every operator, so no name is recorded; the token itself never is.
fn operator_detail(
    before: &MachineRecord,
    change: &OperatorChange,
    client: Option<IpAddr>,
) -> serde_json::Value {
    let labels = |l: &BTreeMap<String, String>| {
        let v = serde_json::to_value(l).unwrap_or_default();
        if v.to_string().len() <= OPERATOR_LABELS_BYTES {
            v
        } else {
            serde_json::json!({ "count": l.len() })
        }
    };
    let (action, old, new) = match change {
        OperatorChange::Profile(p) => (
            "profile",
            serde_json::json!(before.pinned_profile),
            serde_json::json!(p),
        ),
        OperatorChange::Labels(l) => ("labels", labels(&before.labels), labels(l)),
        OperatorChange::Rearm => (
            "rearm",
            serde_json::json!(before.installed_reason),
            serde_json::Value::Null,
        ),
        OperatorChange::Forget => ("forget", serde_json::Value::Null, serde_json::Value::Null),
    };
    serde_json::json!({
        "action": action,
        "old": old,
        "new": new,
        "client": client.map(|c| c.to_string()),
    })
}

/// A JSON body, or a 400 that says what was `expected`.
fn json_body<T>(
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
    expected: &str,
) -> Result<T, ApiError> {
    body.map(|Json(b)| b)
        .map_err(|e| ApiError::bad_request(format!("expected {expected}: {e}")))
}

/// The routes a booting machine uses (the boot listener).
pub fn boot_routes(state: PolicyState) -> Router {
    Router::new()
        .route("/boot.ipxe", get(boot_ipxe))
        .route("/ipxe", get(ipxe))
        .route("/boot/{mac}/{*slot}", get(boot_asset))
        .route("/config/{mac}/{name}", get(config_file))
        .route("/pxelinux.cfg/{name}", get(pxelinux_cfg))
        .route("/api/v1/machines/{mac}/events", post(machine_event))
        .with_state(state)
}

/// The operator's machine API (the management listener).
pub fn operator_routes(state: PolicyState) -> Router {
    let router = Router::new()
        .route("/api/v1/machines", get(list_machines))
        .route(
            "/api/v1/machines/{mac}",
            get(show_machine).delete(forget_machine),
        )
        .route("/api/v1/machines/{mac}/profile", put(set_profile))
        .route("/api/v1/machines/{mac}/rearm", post(rearm))
        .route("/api/v1/machines/{mac}/labels", put(set_labels))
        .route("/api/v1/profiles", get(list_profiles))
        .route("/api/v1/groups", get(list_groups))
        .with_state(state);
    chainboot_http::serving(router, What::Api)
}

/// Both, on one router (tests, and single-listener setups).
pub fn routes(state: PolicyState) -> Router {
    boot_routes(state.clone()).merge(operator_routes(state))
}

fn text(body: impl Into<Body>) -> Response {
    let mut r = Response::new(body.into());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The response, saying what it served and for which machine (only a MAC the request proved
/// it may act for: anyone can type one).
fn served(resp: impl IntoResponse, what: What, mac: Option<Mac>) -> Response {
    chainboot_http::served_as(resp.into_response(), Served { what, mac })
}

fn parse_mac(s: &str) -> Result<Mac, ApiError> {
    s.parse::<Mac>()
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

fn store_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal("state store", e)
}

/// The query parameter that carries a boot capability.
#[derive(Deserialize, Default)]
struct CapQuery {
    cap: Option<String>,
}

async fn boot_ipxe(
    State(st): State<PolicyState>,
    HostHeader(host): HostHeader,
    scheme: Scheme,
) -> Response {
    served(text(st.stub(host, scheme)), What::Script, None)
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
    // `arch=` may be a chainboot name (efi-x64) or, as the usual chain URL writes it,
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
    Peer(peer): Peer,
    headers: HeaderMap,
    scheme: Scheme,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (script, mac) = ipxe_script(&st, peer, &headers, scheme, query).await;
    served(script, What::Script, mac)
}

/// `/ipxe`'s script, and the machine it is for when the request proved it is that machine.
async fn ipxe_script(
    st: &PolicyState,
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    scheme: Scheme,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> (Response, Option<Mac>) {
    let base = st.base(headers, scheme);
    let retry = st.policy.retry_secs();
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => {
            tracing::warn!(error = %e, "bad /ipxe query");
            let script = render::error_script(None, "malformed request", &base, retry);
            return (text(script), None);
        }
    };
    let peer_addr = peer.map(|ip| SocketAddr::new(ip, 0));
    let facts = match facts_from_query(&q, peer_addr) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(?peer, "{e}");
            return (text(render::error_script(None, &e, &base, retry)), None);
        }
    };
    let mac = facts.mac;
    let cap = q.get("cap").map(String::as_str);
    match st.verify(mac, peer, cap, "ipxe") {
        Ok(proof) => {
            if let Some(ip) = peer {
                let by_address = matches!(proof, Proof::Lease | Proof::Neighbour);
                st.hooks.verified(mac, ip, by_address);
            }
        }
        Err(r) => {
            let script = render::error_script(Some(&mac.to_string()), &r.0, &base, retry);
            return (text(script), None);
        }
    }
    let chosen = q
        .get("profile")
        .map(|s| s.as_str())
        .filter(|s| !s.is_empty());
    let script = match chosen {
        None => own_script(st, facts, peer, &base).await,
        Some(p) => menu_choice(st, facts, p, &base).await,
    };
    (script, Some(mac))
}

/// The script of a machine that proved who it is: its facts recorded, its decision made (or
/// the one it was just given, when it asks again with the same facts) and remembered for its
/// asset and config routes.
async fn own_script(
    st: &PolicyState,
    facts: ClientFacts,
    peer: Option<IpAddr>,
    base: &HttpBase,
) -> Response {
    let mac = facts.mac;
    let retry = st.policy.retry_secs();
    // Fast path: the same machine asking again with the same facts gets the script it was
    // just given, without touching the store (every write path of this server drops the
    // remembered decision). Not in a fleet: another server's API may have pinned, re-armed or
    // relabelled the machine since, and this server would not know.
    let shared = st.policy.store().is_shared();
    if let Some(d) = st
        .policy
        .recent(mac)
        .filter(|d| !shared && d.fresh_for(&facts))
    {
        tracing::debug!(%mac, profile = %d.profile, "boot script (remembered decision)");
        return text(d.cached_script(base, retry));
    }
    let known = match known_machine(st, mac, peer).await {
        Ok(r) => r,
        Err(RecordError::Store(e)) => return store_error_script(mac, &e, base, retry),
        Err(RecordError::Refused(reason)) => {
            let script = render::error_script(Some(&mac.to_string()), &reason, base, retry);
            return text(script);
        }
    };
    // The one merge: what the machine says now wins, what it did not say is what it said
    // before. The decision is made from it, and the store is given it whole.
    let mut merged = facts.clone();
    if let Some(r) = &known {
        merged.merge_stored(&r.facts);
    }
    let now = crate::now_ms();
    let mut record = known.clone().unwrap_or_else(|| new_record(mac, now));
    record.facts = merged.to_store();
    record.last_seen_ms = now;
    let decided = st.policy.decide(&merged, Some(&record), None).await;
    let profile = decided.as_ref().ok().map(|d| d.profile.clone());
    // One durable write at most (every commit is an fsync): none when the machine said
    // nothing new, was seen within a minute, keeps its profile and was last answered by this
    // server (in a fleet, which server answered is part of the record).
    let unchanged = known.as_ref().is_some_and(|r| {
        r.facts == record.facts
            && now - r.last_seen_ms < SEEN_REFRESH_MS
            && (profile.is_none() || r.last_profile == profile)
            && r.last_server.as_deref() == Some(st.policy.store().server_name())
    });
    if !unchanged {
        let stored = match store_machine(st, &record, profile).await {
            Ok(r) => r,
            Err(e) => return store_error_script(mac, &e, base, retry),
        };
        if stored.secret != record.secret {
            // Another request recorded this new machine first: its secret is the one that
            // stays, and scripts and templates may render it.
            return Box::pin(own_script(st, facts, peer, base)).await;
        }
    }
    match decided {
        Ok(d) => {
            let cap = st.policy.capability(mac, None);
            let d = st.policy.remember(&d.answered(facts).with_capability(cap));
            tracing::info!(%mac, profile = %d.profile, source = %d.source, "boot script");
            text(d.cached_script(base, retry))
        }
        Err(e) => {
            tracing::warn!(%mac, reason = %e, "machine cannot boot");
            text(render::error_script(
                Some(&mac.to_string()),
                &e.0,
                base,
                retry,
            ))
        }
    }
}

/// A machine seen for the first time, before it is stored: its secret is chosen now.
fn new_record(mac: Mac, now: i64) -> chainboot_store::machines::MachineRecord {
    chainboot_store::machines::MachineRecord {
        mac,
        first_seen_ms: now,
        last_seen_ms: now,
        facts: Default::default(),
        pinned_profile: None,
        installed_ms: None,
        installed_reason: None,
        labels: Default::default(),
        secret: crate::random_hex(16),
        last_profile: None,
        last_server: None,
        firmware: Default::default(),
    }
}

/// A profile picked from the menu answers this request only: nothing is stored or
/// remembered, and the script's asset URLs carry a capability for that profile, so its
/// kernel, initrds and config files follow the choice while every other request for the
/// machine still sees its own decision.
async fn menu_choice(
    st: &PolicyState,
    facts: ClientFacts,
    chosen: &str,
    base: &HttpBase,
) -> Response {
    let mac = facts.mac;
    let retry = st.policy.retry_secs();
    let policy = st.policy.clone();
    let stored = match blocking(move || policy.store().machine(mac).map_err(|e| e.to_string()))
        .await
        .map_err(|e| e.message)
        .and_then(|r| r)
    {
        Ok(r) => r,
        Err(e) => return store_error_script(mac, &e, base, retry),
    };
    match st
        .policy
        .decide(&facts, stored.as_ref(), Some(chosen))
        .await
    {
        Ok(d) => {
            let profile = d.profile.clone();
            let d = d.with_capability(st.policy.capability(mac, Some(&profile)));
            tracing::info!(%mac, %profile, source = %d.source, "boot script (menu choice)");
            text(d.script(base, retry))
        }
        Err(e) => text(render::error_script(
            Some(&mac.to_string()),
            &e.0,
            base,
            retry,
        )),
    }
}

/// The script for a store failure: logged with the cause, the console gets the short story.
fn store_error_script(mac: Mac, e: &str, base: &HttpBase, retry: u64) -> Response {
    tracing::error!(%mac, error = %e, "state store");
    text(render::error_script(
        Some(&mac.to_string()),
        "state store error (see the server log)",
        base,
        retry,
    ))
}

/// The machine's record, or `None` for a machine chainboot has no record of yet, which the
/// new-machine limiter admits first (per source address, for all sources together, and a cap
/// on the table); a refusal is the reason its console shows.
async fn known_machine(
    st: &PolicyState,
    mac: Mac,
    peer: Option<IpAddr>,
) -> Result<Option<chainboot_store::machines::MachineRecord>, RecordError> {
    let policy = st.policy.clone();
    let limiter = st.limiter.clone();
    blocking(move || -> Result<_, RecordError> {
        let store = policy.store();
        let known = store.machine(mac)?;
        if let (None, Some(l)) = (&known, &limiter) {
            let source = peer.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
            let now = std::time::Instant::now();
            l.admit(source, now, l.recorded(now, || store.machine_count())?)
                .map_err(|r| RecordError::Refused(r.to_string()))?;
        }
        Ok(known)
    })
    .await
    .map_err(|e| RecordError::Store(e.message))?
}

/// Writes the machine's facts (merged already), last-seen time and, when decided, profile:
/// one transaction. Returns the record as stored.
async fn store_machine(
    st: &PolicyState,
    record: &chainboot_store::machines::MachineRecord,
    profile: Option<String>,
) -> Result<chainboot_store::machines::MachineRecord, String> {
    let policy = st.policy.clone();
    let (mac, facts, now) = (record.mac, record.facts.clone(), record.last_seen_ms);
    let secret = record.secret.clone();
    blocking(move || {
        policy
            .store()
            .machine_seen(mac, &facts, now, &secret, profile.as_deref())
    })
    .await
    .map_err(|e| e.message)?
    .map_err(|e| e.to_string())
}

/// Why `/ipxe` could not record a machine.
enum RecordError {
    Store(String),
    /// The new-machine limiter said no (its reason names the config key).
    Refused(String),
}

impl From<chainboot_store::StoreError> for RecordError {
    fn from(e: chainboot_store::StoreError) -> RecordError {
        RecordError::Store(e.to_string())
    }
}

/// The decision a verified request for `mac` answers for: the profile its capability was
/// issued for (a menu choice), else the one `/ipxe` last made, else a fresh one from stored
/// facts. Unknown machines have none: nothing about them (secrets included) is rendered.
async fn decision_for(
    st: &PolicyState,
    mac: Mac,
    proof: &Proof,
) -> Result<Arc<Decision>, ApiError> {
    if proof.profile().is_none() {
        if let Some(d) = st.policy.recent(mac) {
            return Ok(d);
        }
    }
    let policy = st.policy.clone();
    let stored = blocking(move || policy.store().machine(mac))
        .await?
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found(format!("machine {mac} not known")))?;
    let d = st
        .policy
        .decide(&ClientFacts::new(mac), Some(&stored), proof.profile())
        .await
        .map_err(|e| ApiError::not_found(e.0))?;
    Ok(match proof.profile() {
        Some(p) => Arc::new(d.with_capability(st.policy.capability(mac, Some(p)))),
        None => {
            let cap = st.policy.capability(mac, None);
            st.policy.remember(&d.with_capability(cap))
        }
    })
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
    Peer(peer): Peer,
    method: Method,
    headers: HeaderMap,
    scheme: Scheme,
    Path((mac, slot)): Path<(String, String)>,
    Query(q): Query<CapQuery>,
) -> Response {
    let slot = parse_slot(&slot);
    let what = match slot {
        Some(AssetSlot::Kernel) => What::Kernel,
        Some(AssetSlot::Initrd(_)) => What::Initrd,
        Some(AssetSlot::Loader) => What::Loader,
        Some(AssetSlot::Url(_)) | None => What::File,
    };
    let mut proven = None;
    let resp = asset_response(
        &st,
        peer,
        method,
        headers,
        scheme,
        &mac,
        slot,
        q,
        &mut proven,
    );
    served(resp.await, what, proven)
}

/// A decision's asset; `proven` is set to the machine once the request proved it is it.
#[allow(clippy::too_many_arguments)]
async fn asset_response(
    st: &PolicyState,
    peer: Option<IpAddr>,
    method: Method,
    headers: HeaderMap,
    scheme: Scheme,
    mac: &str,
    slot: Option<AssetSlot>,
    q: CapQuery,
    proven: &mut Option<Mac>,
) -> Result<Response, ApiError> {
    let mac = parse_mac(mac)?;
    let slot = slot.ok_or_else(|| ApiError::not_found("no such boot asset"))?;
    let proof = st
        .verify(mac, peer, q.cap.as_deref(), "boot")
        .map_err(|r| ApiError::forbidden(r.0))?;
    *proven = Some(mac);
    let d = decision_for(st, mac, &proof).await?;
    let asset = d
        .asset(slot)
        .ok_or_else(|| ApiError::not_found(format!("profile {} has no such asset", d.profile)))?;
    if slot == AssetSlot::Kernel && method == Method::GET {
        if let Some(group) = d.once_group.clone() {
            // Boot-once: the kernel fetch is the point of no return; the next boot of this
            // machine goes to the local disk.
            let policy = st.policy.clone();
            let reason = format!("fetched the kernel of profile {}", d.profile);
            blocking(move || {
                policy
                    .store()
                    .machine_mark_installed(mac, crate::now_ms(), &reason)
            })
            .await?
            .map_err(store_error)?;
            st.policy.stale_recent(mac);
            tracing::info!(%mac, %group, "boot-once: kernel fetched, next boot is local disk");
        }
    }
    let base = st.base(&headers, scheme);
    Ok(serve_asset(st, &asset, &base, slot, mac).await)
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
                Err(_) => ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "asset URL is not a valid header",
                )
                .into_response(),
            }
        }
        AssetRef::Local(path) => {
            let file = match tokio::fs::File::open(path).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "boot asset");
                    return ApiError::not_found(format!("{}: {e}", path.display())).into_response();
                }
            };
            let len = match file.metadata().await {
                Ok(m) if m.is_file() => m.len(),
                _ => {
                    return ApiError::not_found(format!("{} is not a file", path.display()))
                        .into_response()
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
                    return ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        format!("{url}: HTTP {}", r.status()),
                    )
                    .into_response();
                }
                Err(e) => {
                    tracing::warn!(%url, error = %e, "relayed boot asset");
                    return ApiError::new(StatusCode::BAD_GATEWAY, format!("{url}: {e}"))
                        .into_response();
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
    Peer(peer): Peer,
    headers: HeaderMap,
    scheme: Scheme,
    Path((mac, name)): Path<(String, String)>,
    Query(q): Query<CapQuery>,
) -> Response {
    let mut proven = None;
    let resp = config_response(&st, peer, headers, scheme, &mac, name, q, &mut proven).await;
    served(resp, What::Config, proven)
}

/// A machine's rendered template; `proven` is set to the machine once the request proved it
/// is it.
#[allow(clippy::too_many_arguments)]
async fn config_response(
    st: &PolicyState,
    peer: Option<IpAddr>,
    headers: HeaderMap,
    scheme: Scheme,
    mac: &str,
    name: String,
    q: CapQuery,
    proven: &mut Option<Mac>,
) -> Result<Response, ApiError> {
    let mac = parse_mac(mac)?;
    let proof = st
        .verify(mac, peer, q.cap.as_deref(), "config")
        .map_err(|r| ApiError::forbidden(r.0))?;
    *proven = Some(mac);
    let dir = st
        .policy
        .templates_dir()
        .ok_or_else(|| ApiError::not_found("no [boot] templates folder configured"))?;
    let d = decision_for(st, mac, &proof).await?;
    let base = st.base(&headers, scheme);
    match blocking(move || d.config_file(&dir, &name, &base)).await? {
        Ok(Some(body)) => Ok(text(body)),
        Ok(None) => Err(ApiError::not_found("no such template")),
        Err(e) => {
            tracing::warn!(%mac, error = %e, "config template");
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.0))
        }
    }
}

async fn pxelinux_cfg(
    State(st): State<PolicyState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    scheme: Scheme,
    Path(name): Path<String>,
) -> Response {
    let base = st.base(&headers, scheme);
    let policy = st.policy.clone();
    let found = blocking(move || crate::tftp::pxelinux_lookup(&policy, &name, &base, peer)).await;
    // PXELINUX's configuration is its boot script.
    let resp = match found {
        Ok(Ok(Some(body))) => Ok(text(body)),
        Ok(Ok(None)) => Err(ApiError::not_found("no pxelinux config by that name")),
        Ok(Err(e)) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.0)),
        Err(e) => Err(e),
    };
    served(resp, What::Script, None)
}

async fn list_machines(
    _: Reader,
    State(st): State<PolicyState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    crate::paging::machines(st.policy.clone(), &q).await
}

async fn show_machine(
    _: Reader,
    State(st): State<PolicyState>,
    Path(mac): Path<String>,
) -> Result<Response, ApiError> {
    let mac = parse_mac(&mac)?;
    let policy = st.policy.clone();
    let hooks = st.hooks.clone();
    let (m, last_boot, operator) = blocking(move || {
        policy
            .store()
            .machine(mac)
            .map(|m| m.map(|m| (m, hooks.last_boot(mac), hooks.operator_actions(mac))))
    })
    .await?
    .map_err(store_error)?
    .ok_or_else(|| ApiError::not_found(format!("machine {mac} not known")))?;
    let mut v = serde_json::to_value(&m).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "last_boot".into(),
            last_boot.unwrap_or(serde_json::Value::Null),
        );
        o.insert(
            "operator".into(),
            operator.unwrap_or(serde_json::Value::Null),
        );
    }
    Ok(Json(v).into_response())
}

async fn forget_machine(
    _: Operator,
    State(st): State<PolicyState>,
    Peer(peer): Peer,
    Path(mac): Path<String>,
) -> Result<Response, ApiError> {
    let mac = parse_mac(&mac)?;
    match st
        .operator_change(mac, OperatorChange::Forget, false, peer)
        .await?
    {
        Some(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        None => Err(ApiError::not_found(format!("machine {mac} not known"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetProfile {
    profile: Option<String>,
}

async fn set_profile(
    _: Operator,
    State(st): State<PolicyState>,
    Peer(peer): Peer,
    Path(mac): Path<String>,
    body: Result<Json<SetProfile>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let mac = parse_mac(&mac)?;
    let body = json_body(body, "{\"profile\": \"NAME\" or null}")?;
    if let Some(p) = &body.profile {
        if !st.policy.has_profile(p) {
            return Err(ApiError::bad_request(format!(
                "unknown profile `{}`",
                render::echo_text(p)
            )));
        }
    }
    let done = st
        .operator_change(mac, OperatorChange::Profile(body.profile), true, peer)
        .await?;
    changed_json(done, mac)
}

/// The stored record as the answer, or 404 / 500.
fn machine_json(
    r: Result<Option<MachineRecord>, chainboot_store::StoreError>,
    mac: Mac,
) -> Result<Response, ApiError> {
    r.map_err(store_error)?
        .map(|m| Json(m).into_response())
        .ok_or_else(|| ApiError::not_found(format!("machine {mac} not known")))
}

/// The record after an operator's change as the answer, or 404.
fn changed_json(
    done: Option<(OperatorChanged, Option<MachineRecord>)>,
    mac: Mac,
) -> Result<Response, ApiError> {
    machine_json(Ok(done.and_then(|(_, after)| after)), mac)
}

async fn rearm(
    _: Operator,
    State(st): State<PolicyState>,
    Peer(peer): Peer,
    Path(mac): Path<String>,
) -> Result<Response, ApiError> {
    let mac = parse_mac(&mac)?;
    let done = st
        .operator_change(mac, OperatorChange::Rearm, false, peer)
        .await?;
    changed_json(done, mac)
}

async fn set_labels(
    _: Operator,
    State(st): State<PolicyState>,
    Peer(peer): Peer,
    Path(mac): Path<String>,
    body: Result<Json<BTreeMap<String, String>>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let mac = parse_mac(&mac)?;
    let labels = json_body(body, "{\"key\": \"value\", ...}")?;
    if labels.len() > 64 {
        return Err(ApiError::bad_request("at most 64 labels"));
    }
    if let Some((k, v)) = labels.iter().find(|(k, v)| !valid_label(k, v)) {
        return Err(ApiError::bad_request(format!(
            "label `{}` = `{}`: keys and values are up to 64 characters of letters, digits and . _ - : + , /",
            render::echo_text(k),
            render::echo_text(v)
        )));
    }
    let done = st
        .operator_change(mac, OperatorChange::Labels(labels), true, peer)
        .await?;
    changed_json(done, mac)
}

/// A machine's own report. Authorised by the operator's token or the machine's own secret
/// (Bearer, or `?secret=` for installers that cannot set headers), both checked before the
/// body is read; a secret never works for another machine.
async fn machine_event(
    State(st): State<PolicyState>,
    headers: HeaderMap,
    Path(mac): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Response {
    let mut proven = None;
    let resp = machine_report(&st, headers, &mac, q, body, &mut proven).await;
    served(resp, What::Callback, proven)
}

/// A machine's report handled; `proven` is set to the machine once the token or its secret
/// was shown.
async fn machine_report(
    st: &PolicyState,
    headers: HeaderMap,
    mac: &str,
    q: HashMap<String, String>,
    body: axum::body::Bytes,
    proven: &mut Option<Mac>,
) -> Result<Response, ApiError> {
    let mac = parse_mac(mac)?;
    let policy = st.policy.clone();
    let stored = blocking(move || policy.store().machine(mac))
        .await?
        .map_err(store_error)?;
    let presented = chainboot_api::bearer(&headers).or(q.get("secret").map(|s| s.as_str()));
    let own_secret = match (&stored, presented) {
        (Some(m), Some(p)) => chainboot_api::ct_eq(p.as_bytes(), m.secret.as_bytes()),
        _ => false,
    };
    if !st.auth.is_operator(&headers) && !own_secret {
        return Err(ApiError::unauthorized());
    }
    if stored.is_none() {
        return Err(ApiError::not_found(format!("machine {mac} not known")));
    }
    *proven = Some(mac);
    let (event, body) =
        crate::machine_event::parse(&body).map_err(|(status, msg)| ApiError::new(status, msg))?;
    let event = render::echo_text(&event);
    tracing::info!(%mac, %event, "machine event");
    st.hooks.machine_event(mac, &event, &body);
    if event == "installed" {
        let policy = st.policy.clone();
        let r = blocking(move || {
            let store = policy.store();
            store.machine_mark_installed(mac, crate::now_ms(), "reported installed")?;
            store.machine(mac)
        })
        .await?;
        st.policy.forget_recent(mac);
        return machine_json(r, mac);
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"event": event})),
    )
        .into_response())
}

async fn list_profiles(_: Reader, State(st): State<PolicyState>) -> Response {
    Json(st.policy.config().profiles).into_response()
}

async fn list_groups(_: Reader, State(st): State<PolicyState>) -> Response {
    Json(st.policy.config().groups).into_response()
}
