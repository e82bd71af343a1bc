//! The policy's HTTP routes over real sockets on 127.0.0.1: boot-once across a restart, the
//! pixiecore API against a small API server, API v1 with and without the token, per-machine
//! secrets, config templates, PXELINUX lookup over HTTP and TFTP.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use chainboot_api::ApiAuth;
use chainboot_content::{CleanPath, Request, ResolveError, Resolver, Served, Transport, What};
use chainboot_policy::{
    routes, ApiConfig, BootConfig, GroupConfig, HttpBase, Policy, PolicyConfig, PolicyState,
    ProfileConfig, TftpResolver,
};
use chainboot_store::Store;
use reqwest::redirect::Policy as Redirects;
use serde::Deserialize;

const TOKEN: &str = "test-token-0123456789";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    #[serde(default)]
    profile: Vec<ProfileConfig>,
    #[serde(default)]
    group: Vec<GroupConfig>,
    #[serde(default)]
    boot: BootConfig,
}

fn config(text: &str) -> PolicyConfig {
    let d: Doc = toml::from_str(text).unwrap();
    PolicyConfig {
        profiles: d.profile,
        groups: d.group,
        boot: d.boot,
    }
}

/// A running server: base URL and the task (aborted on drop).
struct Server {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(router: Router) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    Server {
        url: format!("http://{addr}"),
        task,
    }
}

async fn start(cfg: PolicyConfig, store: Arc<Store>, api: &ApiConfig) -> (Server, Arc<Policy>) {
    let policy = Arc::new(Policy::new(cfg, store).unwrap());
    let state = PolicyState::new(
        policy.clone(),
        ApiAuth::new(TOKEN, api.read_requires_token),
        HttpBase::new("http://198.18.0.1").unwrap(),
    );
    (serve(routes(state)).await, policy)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Redirects::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn get_text(url: &str) -> String {
    let r = client().get(url).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    r.text().await.unwrap()
}

/// `url` without its `?cap=...` boot capability; panics when there is none.
fn without_cap(url: &str) -> String {
    let (path, cap) = url
        .split_once("?cap=")
        .unwrap_or_else(|| panic!("no boot capability in {url}"));
    assert!(cap.len() > 20, "{url}");
    path.to_string()
}

/// The argument list of the script's `kernel` line, without `|| goto failed`.
fn kernel_args(script: &str) -> Vec<String> {
    let line = script
        .lines()
        .find(|l| l.starts_with("kernel "))
        .unwrap_or_else(|| panic!("no kernel line in:\n{script}"));
    let mut w: Vec<String> = line.split_whitespace().skip(1).map(String::from).collect();
    if w.ends_with(&["||".into(), "goto".into(), "failed".into()]) {
        w.truncate(w.len() - 3);
    }
    w
}

const INSTALL: &str = r#"
[[profile]]
name = "install"
kernel = "debian/vmlinuz"
initrd = ["debian/initrd.gz"]
cmdline = "auto=true url={{ http }}/config/{{ machine.mac }}/preseed.cfg secret={{ machine.secret }}"

[[profile]]
name = "rescue"
kernel = "rescue/vmlinuz"

[[group]]
name = "rack1"
profile = "install"
once = true
match = { mac = "52:54:00:*" }
"#;

const M1: &str = "52-54-00-00-00-01";
const M2: &str = "52-54-00-00-00-02";

/// What a boot route says it served, asked of the router directly with `peer` as the client.
async fn served_by(router: &Router, peer: [u8; 4], path: &str) -> (u16, Option<Served>) {
    use tower::ServiceExt;
    let mut req = axum::http::Request::get(path)
        .body(axum::body::Body::empty())
        .unwrap();
    let peer = SocketAddr::from((peer, 40000));
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(peer));
    let resp = router.clone().oneshot(req).await.unwrap();
    (
        resp.status().as_u16(),
        resp.extensions().get::<Served>().copied(),
    )
}

/// The state of the routes for the INSTALL config, on a store in memory.
fn install_state() -> PolicyState {
    let store = Arc::new(Store::in_memory().unwrap());
    let policy = Arc::new(Policy::new(config(INSTALL), store).unwrap());
    PolicyState::new(
        policy,
        ApiAuth::new(TOKEN, true),
        HttpBase::new("http://198.18.0.1").unwrap(),
    )
}

#[tokio::test]
async fn boot_routes_say_what_they_served_and_name_only_machines_that_proved_it() {
    let router = routes(install_state());
    let m1 = M1.parse().unwrap();
    // Loopback may act for any machine; 198.18.0.9 proves nothing.
    let (local, stranger) = ([127, 0, 0, 1], [198, 18, 0, 9]);
    let cases = [
        (
            local,
            "/boot.ipxe".to_string(),
            200,
            Some(Served::new(What::Script)),
        ),
        (
            local,
            format!("/ipxe?mac={M1}"),
            200,
            Some(Served::of(What::Script, m1)),
        ),
        (
            stranger,
            format!("/ipxe?mac={M1}"),
            200,
            Some(Served::new(What::Script)),
        ),
        (
            local,
            "/ipxe?mac=nonsense".into(),
            200,
            Some(Served::new(What::Script)),
        ),
        // The initrd first: fetching the kernel installs this boot-once machine.
        (
            local,
            format!("/boot/{M1}/initrd/0"),
            302,
            Some(Served::of(What::Initrd, m1)),
        ),
        (
            local,
            format!("/boot/{M1}/kernel"),
            302,
            Some(Served::of(What::Kernel, m1)),
        ),
        (
            stranger,
            format!("/boot/{M1}/kernel"),
            403,
            Some(Served::new(What::Kernel)),
        ),
        (
            local,
            format!("/boot/{M1}/nothing"),
            404,
            Some(Served::new(What::File)),
        ),
        (
            local,
            format!("/config/{M1}/preseed.cfg"),
            404,
            Some(Served::of(What::Config, m1)),
        ),
        (
            stranger,
            format!("/config/{M1}/preseed.cfg"),
            403,
            Some(Served::new(What::Config)),
        ),
        (
            local,
            "/pxelinux.cfg/default".into(),
            404,
            Some(Served::new(What::Script)),
        ),
        (
            local,
            "/api/v1/profiles".into(),
            401,
            Some(Served::new(What::Api)),
        ),
        (local, "/favicon.ico".into(), 404, None),
    ];
    for (peer, path, status, served) in cases {
        assert_eq!(
            served_by(&router, peer, &path).await,
            (status, served),
            "{path}"
        );
    }
}

#[tokio::test]
async fn ipxe_merges_facts_once_and_writes_only_what_changed() {
    let store = Arc::new(Store::in_memory().unwrap());
    let (srv, policy) = start(config(INSTALL), store.clone(), &ApiConfig::default()).await;
    let m1: chainboot_machine::Mac = M1.parse().unwrap();
    let s = get_text(&format!("{}/ipxe?mac={M1}&hostname=node1", srv.url)).await;
    // A new machine: its facts, its profile and the secret its script carries, stored together.
    let rec = store.machine(m1).unwrap().expect("recorded");
    assert_eq!(rec.facts.hostname.as_deref(), Some("node1"));
    assert_eq!(rec.last_profile.as_deref(), Some("install"));
    assert!(s.contains(&format!("secret={}", rec.secret)), "{s}");
    // What it says now wins, what it does not say is kept.
    let uuid = "6d1b0e0c-1a2b-4c3d-8e9f-001122334455";
    get_text(&format!("{}/ipxe?mac={M1}&uuid={uuid}", srv.url)).await;
    let rec = store.machine(m1).unwrap().unwrap();
    assert_eq!(rec.facts.hostname.as_deref(), Some("node1"));
    assert_eq!(rec.facts.uuid.as_deref(), Some(uuid));
    // Nothing new within a minute: no write (the last-seen time stays), even when the
    // remembered decision is gone.
    let seen = rec.last_seen_ms;
    policy.forget_recent(m1);
    std::thread::sleep(Duration::from_millis(5));
    let again = get_text(&format!("{}/ipxe?mac={M1}&uuid={uuid}", srv.url)).await;
    assert!(again.contains("kernel --name kernel"), "{again}");
    assert_eq!(store.machine(m1).unwrap().unwrap().last_seen_ms, seen);
}

#[tokio::test]
async fn boot_once_machine_boots_local_disk_after_its_kernel_fetch_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiConfig::default();
    {
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let (srv, _) = start(config(INSTALL), store, &api).await;
        let s = get_text(&format!(
            "{}/ipxe?mac={M1}&platform=efi&buildarch=x86_64",
            srv.url
        ))
        .await;
        let k = kernel_args(&s);
        let kernel_url = format!("{}/boot/{M1}/kernel", srv.url);
        assert_eq!(
            without_cap(&k[2]),
            kernel_url,
            "boot-once kernels go through the policy route:\n{s}"
        );
        assert_eq!(k[3], "initrd=initrd.gz");

        // Asking for the script again does not count as installing.
        let again = get_text(&format!("{}/ipxe?mac={M1}", srv.url)).await;
        assert!(again.contains("kernel --name kernel"), "{again}");

        let r = client().get(&kernel_url).send().await.unwrap();
        assert_eq!(r.status(), 302);
        assert_eq!(
            r.headers()["location"].to_str().unwrap(),
            format!("{}/files/debian/vmlinuz", srv.url)
        );
        // The very next request, same facts as before, already gets the local disk.
        let s = get_text(&format!("{}/ipxe?mac={M1}", srv.url)).await;
        assert!(s.lines().any(|l| l == "exit"), "{s}");
    }
    // Restart: new store handle on the same state dir, new policy, new server.
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let (srv, _) = start(config(INSTALL), store.clone(), &api).await;
    let s = get_text(&format!("{}/ipxe?mac={M1}", srv.url)).await;
    assert!(
        s.lines().any(|l| l == "exit"),
        "installed machine boots local disk:\n{s}"
    );
    assert!(!s.contains("kernel --name"), "{s}");
    assert!(s.contains("already installed"), "{s}");

    // Another machine of the same group is unaffected.
    let s = get_text(&format!("{}/ipxe?mac={M2}", srv.url)).await;
    assert!(s.contains("kernel --name"), "{s}");

    // Re-arm needs the token, then the machine installs again.
    let rearm = format!("{}/api/v1/machines/{M1}/rearm", srv.url);
    assert_eq!(client().post(&rearm).send().await.unwrap().status(), 401);
    let r = client()
        .post(&rearm)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let s = get_text(&format!("{}/ipxe?mac={M1}", srv.url)).await;
    assert!(s.contains("kernel --name"), "{s}");
    let rec = store.machine(M1.parse().unwrap()).unwrap().unwrap();
    assert_eq!(rec.installed_ms, None);
}

#[tokio::test]
async fn installed_event_needs_the_machines_own_secret() {
    let store = Arc::new(Store::in_memory().unwrap());
    let (srv, _) = start(config(INSTALL), store.clone(), &ApiConfig::default()).await;
    let secret_of = |script: &str| {
        kernel_args(script)
            .iter()
            .find_map(|a| a.strip_prefix("secret=").map(String::from))
            .unwrap()
    };
    let s1 = secret_of(&get_text(&format!("{}/ipxe?mac={M1}", srv.url)).await);
    let s2 = secret_of(&get_text(&format!("{}/ipxe?mac={M2}", srv.url)).await);
    assert_eq!(s1.len(), 32);
    assert_ne!(s1, s2);

    let ev = |m: &str| format!("{}/api/v1/machines/{m}/events", srv.url);
    let body = serde_json::json!({"event": "installed"});
    let c = client();
    // No credentials, another machine's secret (header or query): refused, nothing changes.
    assert_eq!(
        c.post(ev(M2)).json(&body).send().await.unwrap().status(),
        401
    );
    assert_eq!(
        c.post(ev(M2))
            .bearer_auth(&s1)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let r = c
        .post(format!("{}?secret={s1}", ev(M2)))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        store
            .machine(M2.parse().unwrap())
            .unwrap()
            .unwrap()
            .installed_ms,
        None
    );
    // Unknown machines look the same as wrong secrets to the unauthenticated.
    let r = c
        .post(ev("52-54-00-99-99-99"))
        .bearer_auth(&s1)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Its own secret, as an installer would send it (query string).
    let r = c
        .post(format!("{}?secret={s1}", ev(M1)))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rec = store.machine(M1.parse().unwrap()).unwrap().unwrap();
    assert_eq!(rec.installed_reason.as_deref(), Some("reported installed"));
    let s = get_text(&format!("{}/ipxe?mac={M1}", srv.url)).await;
    assert!(s.lines().any(|l| l == "exit"), "{s}");

    // The API token works for any machine; the machine JSON never shows the secret.
    let r = c
        .post(ev(M2))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains(&s2), "{text}");
    // Bad bodies are refused clearly.
    let r = c
        .post(ev(M2))
        .bearer_auth(TOKEN)
        .body("{")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn api_v1_round_trips_with_and_without_the_token() {
    let store = Arc::new(Store::in_memory().unwrap());
    let (srv, _) = start(config(INSTALL), store.clone(), &ApiConfig::default()).await;
    let c = client();
    let url = |p: &str| format!("{}/api/v1{p}", srv.url);
    get_text(&format!(
        "{}/ipxe?mac={M1}&hostname=node1&serial=SN1",
        srv.url
    ))
    .await;

    // Reads need the token by default.
    assert_eq!(c.get(url("/machines")).send().await.unwrap().status(), 401);
    let list: Vec<serde_json::Value> = c
        .get(url("/machines"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["mac"], "52:54:00:00:00:01");
    assert_eq!(list[0]["facts"]["hostname"], "node1");
    assert!(list[0].get("secret").is_none());
    let one: serde_json::Value = c
        .get(url(&format!("/machines/{M1}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["last_profile"], "install");
    assert_eq!(
        c.get(url("/machines/52-54-00-99-99-99"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        c.get(url("/machines/not-a-mac"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    let profiles: Vec<serde_json::Value> = c
        .get(url("/profiles"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(profiles[0]["name"], "install");
    let groups: Vec<serde_json::Value> = c
        .get(url("/groups"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(groups[0]["match"]["mac"][0], "52:54:00:*");

    // Writes: no token, wrong token -> 401 and nothing changes.
    let pin = url(&format!("/machines/{M1}/profile"));
    let body = serde_json::json!({"profile": "rescue"});
    assert_eq!(c.put(&pin).json(&body).send().await.unwrap().status(), 401);
    assert_eq!(
        c.put(&pin)
            .bearer_auth("wrong")
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        store
            .machine(M1.parse().unwrap())
            .unwrap()
            .unwrap()
            .pinned_profile,
        None
    );
    // With the token.
    let r = c
        .put(&pin)
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let s = get_text(&format!("{}/ipxe?mac={M1}", srv.url)).await;
    assert!(
        s.contains("/files/rescue/vmlinuz"),
        "pinned profile wins over the group:\n{s}"
    );
    let r = c
        .put(&pin)
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"profile": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .put(&pin)
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"profile": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(get_text(&format!("{}/ipxe?mac={M1}", srv.url))
        .await
        .contains("/boot/"));

    // Labels: validated, stored, used by selectors.
    let labels = url(&format!("/machines/{M1}/labels"));
    let r = c
        .put(&labels)
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"rack": "r1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["labels"]["rack"], "r1");
    let r = c
        .put(&labels)
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"rack": "${x}\nshell"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Forget.
    let m = url(&format!("/machines/{M1}"));
    assert_eq!(c.delete(&m).send().await.unwrap().status(), 401);
    assert_eq!(
        c.delete(&m)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        c.get(&m).bearer_auth(TOKEN).send().await.unwrap().status(),
        404
    );
    assert_eq!(
        c.delete(&m)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn reads_can_require_the_token() {
    let api = ApiConfig {
        read_requires_token: true,
        ..ApiConfig::default()
    };
    let (srv, _) = start(config(INSTALL), Arc::new(Store::in_memory().unwrap()), &api).await;
    let c = client();
    let url = format!("{}/api/v1/machines", srv.url);
    assert_eq!(c.get(&url).send().await.unwrap().status(), 401);
    assert_eq!(
        c.get(&url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{}/api/v1/profiles", srv.url))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}

#[test]
fn token_file_is_created_0600_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let api = ApiConfig::default();
    let t1 = api.load_or_create_token(dir.path()).unwrap();
    let t2 = api.load_or_create_token(dir.path()).unwrap();
    assert_eq!(t1, t2);
    assert_eq!(t1.len(), 64);
    let meta = std::fs::metadata(dir.path().join("api.token")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    std::fs::write(dir.path().join("api.token"), "\n").unwrap();
    assert!(
        api.load_or_create_token(dir.path()).is_err(),
        "empty token file is an error"
    );
}

#[tokio::test]
async fn ipxe_always_answers_a_script_that_explains_and_retries() {
    let (srv, _) = start(
        config("[[profile]]\nname = \"x\"\nkernel = \"k\"\n[boot]\ndefault = \"x\"\nretry_delay = \"3s\"\n"),
        Arc::new(Store::in_memory().unwrap()),
        &ApiConfig::default(),
    )
    .await;
    for q in [
        "",
        "?mac=",
        "?mac=zz",
        "?mac=52-54-00-00-00-01%0Ashell",
        "?%%%",
    ] {
        let s = get_text(&format!("{}/ipxe{q}", srv.url)).await;
        assert!(
            s.starts_with("#!ipxe\necho chainboot: cannot boot"),
            "{q}: {s}"
        );
        assert!(s.contains("sleep 3\n") && s.contains("/boot.ipxe"), "{s}");
    }
    // The stub uses the Host the client used.
    let stub = get_text(&format!("{}/boot.ipxe", srv.url)).await;
    assert!(
        stub.starts_with(&format!(
            "#!ipxe\nchain --replace --autofree {}/ipxe?mac=${{mac:hexhyp}}",
            srv.url
        )),
        "{stub}"
    );
}

// ------------------------------------------------------------------ pixiecore API

async fn pixiecore_api(dir: &Path) -> Server {
    let initrd = dir.join("initrd.img");
    std::fs::write(&initrd, b"INITRD-FROM-FILE").unwrap();
    let initrd = format!("file://{}", initrd.display());
    let app = Router::new()
        .route(
            "/api/v1/boot/{mac}",
            get(
                move |axum::extract::Path(mac): axum::extract::Path<String>| {
                    let initrd = initrd.clone();
                    async move {
                        match mac.as_str() {
                            "52:54:00:00:00:01" => axum::Json(serde_json::json!({
                                "kernel": "/kernel",
                                "initrd": [initrd],
                                "cmdline": "console=ttyS0 cloud={{ URL \"/cloud\" }}",
                                "message": "hello from the API",
                            }))
                            .into_response_parts_ok(),
                            "52:54:00:00:00:03" => axum::Json(serde_json::json!({
                                "ipxe-script": "#!ipxe\necho custom\nexit\n",
                            }))
                            .into_response_parts_ok(),
                            "52:54:00:00:00:04" => {
                                // Slower than the configured timeout (bounded).
                                tokio::time::sleep(Duration::from_secs(2)).await;
                                axum::http::StatusCode::NOT_FOUND.into_response_parts_ok()
                            }
                            _ => axum::http::StatusCode::NOT_FOUND.into_response_parts_ok(),
                        }
                    }
                },
            ),
        )
        .route("/kernel", get(|| async { "KERNEL-BYTES" }))
        // pixiecore: naked paths are not rooted within the API path.
        .route(
            "/api/kernel",
            get(|| async { "WRONG: resolved under the API path" }),
        )
        .route("/cloud", get(|| async { "#cloud-config" }));
    serve(app).await
}

trait IntoResp {
    fn into_response_parts_ok(self) -> axum::response::Response;
}
impl<T: axum::response::IntoResponse> IntoResp for T {
    fn into_response_parts_ok(self) -> axum::response::Response {
        self.into_response()
    }
}

// Two workers: the TFTP resolver is called synchronously below, like from a TFTP thread, and
// the stand-in API server must keep running meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pixiecore_api_machines_boot_and_others_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let api_srv = pixiecore_api(dir.path()).await;
    // The API URL has a path (/api): the boot endpoint is under it, but naked paths in answers
    // resolve against the host, not under it.
    let cfg = config(&format!(
        "[[profile]]\nname = \"rescue\"\nkernel = \"rescue/vmlinuz\"\n[[group]]\nname = \"g\"\nprofile = \"rescue\"\nmatch = {{ mac = \"aa:*\" }}\n[boot]\napi = \"{}/api\"\napi_timeout = \"500ms\"\n",
        api_srv.url
    ));
    let (srv, policy) = start(
        cfg,
        Arc::new(Store::in_memory().unwrap()),
        &ApiConfig::default(),
    )
    .await;
    let c = client();

    let s = get_text(&format!("{}/ipxe?mac=52-54-00-00-00-01", srv.url)).await;
    assert!(s.contains("echo hello from the API"), "{s}");
    // Over TFTP: the resolver asks the API on a thread and runtime of its own.
    let r = TftpResolver::new(policy.clone(), HttpBase::new("http://198.18.0.1").unwrap()).unwrap();
    let over_tftp = tftp_get(&r, "ipxe/52-54-00-00-00-03").unwrap();
    assert!(
        over_tftp.contains("echo custom"),
        "the API's script: {over_tftp}"
    );
    let k = kernel_args(&s);
    let m = "52-54-00-00-00-01";
    assert_eq!(without_cap(&k[2]), format!("{}/boot/{m}/kernel", srv.url));
    assert_eq!(k[3], "initrd=initrd.img");
    assert_eq!(k[4], "console=ttyS0");
    assert_eq!(
        without_cap(&k[5]),
        format!("cloud={}/boot/{m}/url/0", srv.url)
    );
    assert!(
        s.contains(&format!(
            "initrd --name initrd.img {}/boot/{m}/initrd/0?cap=",
            srv.url
        )),
        "{s}"
    );

    // The assets are relayed or served by chainboot, with Content-Length.
    let r = c
        .get(format!("{}/boot/{m}/kernel", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(12));
    assert_eq!(r.text().await.unwrap(), "KERNEL-BYTES");
    let r = c
        .get(format!("{}/boot/{m}/initrd/0", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.content_length(), Some(16));
    assert_eq!(r.text().await.unwrap(), "INITRD-FROM-FILE");
    assert_eq!(
        get_text(&format!("{}/boot/{m}/url/0", srv.url)).await,
        "#cloud-config"
    );
    assert_eq!(
        c.get(format!("{}/boot/{m}/initrd/1", srv.url))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // The raw ipxe-script answer is passed through.
    let s = get_text(&format!("{}/ipxe?mac=52-54-00-00-00-03", srv.url)).await;
    assert_eq!(s, "#!ipxe\necho custom\nexit\n");

    // 404 machine: does not boot; the console says why and it retries.
    let s = get_text(&format!("{}/ipxe?mac=52-54-00-00-00-02", srv.url)).await;
    assert!(
        s.contains("cannot boot 52:54:00:00:00:02: boot API answered HTTP 404"),
        "{s}"
    );
    assert!(!s.contains("kernel"), "{s}");

    // Too slow: same, with the reason.
    let s = get_text(&format!("{}/ipxe?mac=52-54-00-00-00-04", srv.url)).await;
    assert!(
        s.contains("unreachable") && s.contains("no answer within"),
        "{s}"
    );

    // Groups still come first.
    let s = get_text(&format!("{}/ipxe?mac=aa-00-00-00-00-01", srv.url)).await;
    assert!(s.contains("/files/rescue/vmlinuz"), "{s}");

    // API down.
    let api_url = api_srv.url.clone();
    drop(api_srv);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let s = get_text(&format!("{}/ipxe?mac=52-54-00-00-00-05", srv.url)).await;
    assert!(
        s.contains("boot API unreachable"),
        "API at {api_url} is gone: {s}"
    );
}

// ------------------------------------------------------------------ templates, PXELINUX, TFTP

const SEED: &str = r#"
[[profile]]
name = "seed"
pxelinux = "lpxelinux.0"
kernel = "seed/vmlinuz"
cmdline = "console=ttyS0 ks={{ http }}/config/{{ machine.mac }}/ks.cfg"

[[profile]]
name = "inst"
kernel = "k"

[[group]]
name = "pxe"
profile = "seed"
match = { mac = "52:54:00:00:00:0*" }

[[group]]
name = "other"
profile = "inst"
match = { mac = "52:54:00:00:01:*" }
"#;

fn seed_policy(templates: &Path) -> PolicyConfig {
    let mut cfg = config(SEED);
    cfg.boot.templates = Some(templates.to_path_buf());
    cfg
}

#[tokio::test]
async fn config_templates_and_pxelinux_lookup_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    std::fs::write(t.join("ks.cfg"), "# generic\nurl {{ http }}/files/os\nnetwork --hostname={{ machine.hostname }}\n%post\ncurl -X POST '{{ machine.events_url }}'\n").unwrap();
    std::fs::create_dir_all(t.join("inst")).unwrap();
    std::fs::write(
        t.join("inst").join("ks.cfg"),
        "# for inst {{ profile.name }}\n",
    )
    .unwrap();
    std::fs::create_dir_all(t.join("pxelinux.cfg")).unwrap();
    std::fs::write(t.join("pxelinux.cfg").join("default"), "DEFAULT local\n").unwrap();
    std::fs::write(t.join("secret.txt"), "outside").unwrap();

    let store = Arc::new(Store::in_memory().unwrap());
    let (srv, _) = start(seed_policy(t), store.clone(), &ApiConfig::default()).await;
    let c = client();
    let s = get_text(&format!(
        "{}/ipxe?mac={M1}&hostname=node1&ip=198.18.0.10",
        srv.url
    ))
    .await;
    assert!(
        s.contains(&format!(
            "set 209:string {}/pxelinux.cfg/01-52-54-00-00-00-01",
            srv.url
        )),
        "{s}"
    );

    let ks = get_text(&format!("{}/config/{M1}/ks.cfg", srv.url)).await;
    let secret = store.machine(M1.parse().unwrap()).unwrap().unwrap().secret;
    assert!(ks.contains("network --hostname=node1"), "{ks}");
    assert!(
        ks.contains(&format!(
            "{}/api/v1/machines/52:54:00:00:00:01/events?secret={secret}",
            srv.url
        )),
        "{ks}"
    );
    // The URL from the kickstart works as the installer would use it.
    let url = ks
        .lines()
        .find_map(|l| l.strip_prefix("curl -X POST '"))
        .unwrap()
        .trim_end_matches('\'');
    let r = c
        .post(url)
        .json(&serde_json::json!({"event": "installed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Profile-specific template wins, and keeps its final newline.
    get_text(&format!("{}/ipxe?mac=52-54-00-00-01-01", srv.url)).await;
    assert_eq!(
        get_text(&format!("{}/config/52-54-00-00-01-01/ks.cfg", srv.url)).await,
        "# for inst inst\n"
    );
    for bad in ["nope.cfg", "..", ".hidden", "%2e%2e"] {
        let r = c
            .get(format!("{}/config/{M1}/{bad}", srv.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{bad}");
    }

    // PXELINUX: by MAC, by hex IP (from the facts the machine sent), default static file.
    let cfg = get_text(&format!("{}/pxelinux.cfg/01-52-54-00-00-00-02", srv.url)).await;
    assert!(
        cfg.contains(&format!("KERNEL {}/files/seed/vmlinuz", srv.url)),
        "{cfg}"
    );
    assert!(cfg.contains("APPEND console=ttyS0 ks="), "{cfg}");
    let by_ip = get_text(&format!("{}/pxelinux.cfg/C612000A", srv.url)).await;
    assert!(
        by_ip.contains("ks=") && by_ip.contains("52:54:00:00:00:01"),
        "{by_ip}"
    );
    assert_eq!(
        get_text(&format!("{}/pxelinux.cfg/default", srv.url)).await,
        "DEFAULT local\n"
    );
    // Not a PXELINUX machine, unknown hex prefix: not found, so PXELINUX tries the next name.
    let r = c
        .get(format!("{}/pxelinux.cfg/01-52-54-00-00-01-01", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .get(format!("{}/pxelinux.cfg/C612", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

fn tftp_get(r: &TftpResolver, path: &str) -> Result<String, ResolveError> {
    let path = CleanPath::parse(path).unwrap();
    let req = Request {
        path: &path,
        client: "127.0.0.1:2000".parse().unwrap(),
        transport: Transport::Tftp,
    };
    let content = r.resolve(&req)?;
    let mut buf = vec![0u8; content.len() as usize];
    let n = content.read_at(0, &mut buf).unwrap();
    buf.truncate(n);
    Ok(String::from_utf8(buf).unwrap())
}

#[test]
fn tftp_resolver_serves_the_stub_scripts_and_pxelinux_configs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::in_memory().unwrap());
    let policy = Arc::new(Policy::new(seed_policy(dir.path()), store).unwrap());
    let r = TftpResolver::new(
        policy.clone(),
        HttpBase::new("http://198.18.0.1:8080").unwrap(),
    )
    .unwrap();
    // Called from a plain thread (as a blocking TFTP worker would).
    let served = |path: &str| {
        let path = CleanPath::parse(path).unwrap();
        let client = "127.0.0.1:2000".parse().unwrap();
        let transport = Transport::Tftp;
        let req = Request {
            path: &path,
            client,
            transport,
        };
        r.resolve(&req).unwrap().served()
    };
    // All scripts (PXELINUX's config is its script); the observer finds the machine by the
    // client's address.
    assert_eq!(served("boot.ipxe"), Served::new(What::Script));
    assert_eq!(served("ipxe/52-54-00-00-00-01"), Served::new(What::Script));
    assert_eq!(
        served("pxelinux.cfg/01-52-54-00-00-00-01"),
        Served::new(What::Script)
    );
    let stub = tftp_get(&r, "boot.ipxe").unwrap();
    assert!(stub.starts_with("#!ipxe\nchain"), "{stub}");
    let script = tftp_get(&r, "ipxe/52-54-00-00-00-01").unwrap();
    assert!(
        script.contains("chain http://198.18.0.1:8080/files/lpxelinux.0"),
        "{script}"
    );
    let cfg = tftp_get(&r, "\\pxelinux.cfg\\01-52-54-00-00-00-01").unwrap();
    assert!(
        cfg.contains("KERNEL http://198.18.0.1:8080/files/seed/vmlinuz"),
        "{cfg}"
    );
    assert!(matches!(
        tftp_get(&r, "undionly.kpxe"),
        Err(ResolveError::NotFound)
    ));
    assert!(matches!(
        tftp_get(&r, "pxelinux.cfg/default"),
        Err(ResolveError::NotFound)
    ));

    // And from inside a tokio runtime (as an async TFTP server would call it).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let out = rt.block_on(async { tftp_get(&r, "pxelinux.cfg/01-52-54-00-00-00-02") });
    assert!(out.unwrap().contains("DEFAULT chainboot"));
    rt.block_on(async move { drop(r) });
}

#[tokio::test]
async fn quick_mode_serves_local_files_with_content_length() {
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("bzImage");
    std::fs::write(&k, vec![7u8; 300_000]).unwrap();
    let policy = Arc::new(
        Policy::quick(
            &k,
            &[],
            "console=ttyS0",
            Arc::new(Store::in_memory().unwrap()),
        )
        .unwrap(),
    );
    let state = PolicyState::new(
        policy,
        ApiAuth::new(TOKEN, true),
        HttpBase::new("http://198.18.0.1").unwrap(),
    );
    let srv = serve(routes(state)).await;
    let s = get_text(&format!("{}/ipxe?mac={M1}", srv.url)).await;
    let kurl = kernel_args(&s)[2].clone();
    let r = client().get(&kurl).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(300_000));
    assert_eq!(r.bytes().await.unwrap().len(), 300_000);
}

#[tokio::test]
async fn arch_comes_from_a_name_or_from_ipxe_platform_and_buildarch() {
    let cfg = config(
        "[[profile]]\nname = \"efi\"\nkernel = \"efi/vmlinuz\"\n[[profile]]\nname = \"bios\"\nkernel = \"bios/vmlinuz\"\n[[group]]\nname = \"e\"\nprofile = \"efi\"\nmatch = { arch = \"efi-x64\" }\n[[group]]\nname = \"b\"\nprofile = \"bios\"\nmatch = { arch = \"bios\" }\n[boot]\ndefault = \"local-disk\"\n",
    );
    let (srv, _) = start(
        cfg,
        Arc::new(Store::in_memory().unwrap()),
        &ApiConfig::default(),
    )
    .await;
    for (n, (q, want)) in [
        ("platform=efi&buildarch=x86_64", "/files/efi/vmlinuz"),
        ("platform=pcbios&buildarch=i386", "/files/bios/vmlinuz"),
        ("arch=efi-x64", "/files/efi/vmlinuz"),
        ("arch=x86_64&platform=efi", "/files/efi/vmlinuz"),
        ("arch=bios", "/files/bios/vmlinuz"),
        ("platform=efi&buildarch=mips", "exit"),
    ]
    .into_iter()
    .enumerate()
    {
        let s = get_text(&format!("{}/ipxe?mac=52-54-00-00-20-{n:02x}&{q}", srv.url)).await;
        assert!(s.contains(want), "{q}: {s}");
    }
}

#[tokio::test]
async fn a_menu_choice_answers_its_own_request_and_its_capability_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("install")).unwrap();
    std::fs::write(
        dir.path().join("install/preseed.cfg"),
        "install for {{ machine.mac }}\n",
    )
    .unwrap();
    let cfg = config(&format!(
        "[[profile]]\nname = \"install\"\nkernel = \"debian/vmlinuz\"\n\
         cmdline = \"url={{{{ http }}}}/config/{{{{ machine.mac }}}}/preseed.cfg?cap={{{{ machine.cap }}}}\"\n\
         [[profile]]\nname = \"rescue\"\nkernel = \"rescue/vmlinuz\"\n\
         [boot]\ndefault = \"menu\"\ntemplates = \"{}\"\n",
        dir.path().display()
    ));
    let (srv, policy) = start(
        cfg,
        Arc::new(Store::in_memory().unwrap()),
        &ApiConfig::default(),
    )
    .await;
    let menu = get_text(&format!("{}/ipxe?mac={M1}", srv.url)).await;
    assert!(menu.contains("profile=install"), "{menu}");
    let chosen = get_text(&format!("{}/ipxe?mac={M1}&profile=install", srv.url)).await;
    assert!(chosen.contains("/files/debian/vmlinuz"), "{chosen}");
    // Nothing was remembered: the machine's own decision is still the menu.
    assert_eq!(
        policy
            .recent(M1.parse().unwrap())
            .map(|d| d.profile.clone()),
        Some("menu".into())
    );
    let again = get_text(&format!("{}/ipxe?mac={M1}", srv.url)).await;
    assert!(again.contains("choose target"), "{again}");
    // The machine's config without the choice's capability is the menu's (none) ...
    let plain = format!("{}/config/{M1}/preseed.cfg", srv.url);
    assert_eq!(client().get(&plain).send().await.unwrap().status(), 404);
    // ... and with it, the chosen profile's.
    let url = kernel_args(&chosen)
        .into_iter()
        .find_map(|a| a.strip_prefix("url=").map(str::to_string))
        .unwrap_or_else(|| panic!("no url= in {chosen}"));
    assert!(url.contains("?cap="), "{url}");
    assert_eq!(
        get_text(&url).await.trim_end(),
        "install for 52:54:00:00:00:01"
    );
    // The capability is the choice's: it does not carry over to another profile or machine.
    let forged = url.replace(".install", ".rescue");
    assert_eq!(client().get(&forged).send().await.unwrap().status(), 403);
    let other = url.replace("52:54:00:00:00:01", "52:54:00:00:00:02");
    assert_eq!(client().get(&other).send().await.unwrap().status(), 403);
}

/// `/boot.ipxe` asked of the router directly with `host` as the Host header, over TLS or not.
async fn stub_for(router: &Router, host: Option<&str>, tls: bool) -> String {
    use tower::ServiceExt;
    let mut req = axum::http::Request::get("/boot.ipxe");
    if let Some(h) = host {
        req = req.header("host", h);
    }
    let mut req = req.body(axum::body::Body::empty()).unwrap();
    if tls {
        req.extensions_mut().insert(chainboot_http::tls::OverTls);
    }
    let resp = router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn the_stub_follows_each_requests_host_and_scheme_however_often_asked() {
    let router = routes(install_state().with_https_port(Some(8443)));
    let chain = |base: &str| format!("#!ipxe\nchain --replace --autofree {base}/ipxe?mac=");
    for _ in 0..3 {
        // The same Host over both schemes: each keeps its own.
        let plain = stub_for(&router, Some("198.18.0.1:8080"), false).await;
        assert!(
            plain.starts_with(&chain("http://198.18.0.1:8080")),
            "{plain}"
        );
        let tls = stub_for(&router, Some("198.18.0.1:8080"), true).await;
        assert!(tls.starts_with(&chain("https://198.18.0.1:8080")), "{tls}");
        // No usable Host: the configured base.
        for host in [None, Some("bad host/"), Some("x\"y")] {
            let s = stub_for(&router, host, false).await;
            assert!(s.starts_with(&chain("http://198.18.0.1")), "{host:?}: {s}");
        }
    }
    // More Hosts than are kept, each answered with its own, then the first ones again.
    for round in 0..2 {
        for i in 0..200 {
            let host = format!("h{i}.example:{}", 1000 + i);
            let s = stub_for(&router, Some(&host), false).await;
            assert!(
                s.starts_with(&chain(&format!("http://{host}"))),
                "{round} {s}"
            );
        }
    }
}

/// A live-servers row as the fleet loop reads it.
fn live_row(
    name: &str,
    http: &str,
    https_port: Option<u16>,
) -> chainboot_store::servers::ServerRecord {
    chainboot_store::servers::ServerRecord {
        name: name.into(),
        started_ms: 0,
        heartbeat_ms: 0,
        version: "x".into(),
        age_ms: 0,
        addresses: Vec::new(),
        boot: Some(chainboot_store::servers::BootBase {
            http: http.into(),
            https_port,
        }),
        connected: true,
    }
}

#[tokio::test]
async fn scripts_name_the_live_peers_as_they_are_now_and_none_when_alone() {
    let peers = chainboot_policy::PeerBases::new();
    let state = install_state()
        .with_https_port(Some(8443))
        .with_peer_bases(peers.clone());
    let router = routes(state);
    let alone = stub_for(&router, Some("198.18.0.1:8080"), false).await;
    assert!(!alone.contains("||"), "{alone}");
    let (b, c) = (
        live_row("pxe-b", "http://198.18.0.2:8080", Some(8443)),
        live_row("pxe-c", "http://198.18.0.3:8080", None),
    );
    peers.set_live("pxe-a", &[&c, &b]);
    let chains = |s: &str| -> Vec<String> {
        s.lines()
            .nth(1)
            .unwrap()
            .split(" || ")
            .map(|c| c.split("/ipxe?").next().unwrap().to_string())
            .collect()
    };
    // The peers in name order, each in the scheme the stub was fetched over.
    let plain = stub_for(&router, Some("198.18.0.1:8080"), false).await;
    assert_eq!(
        chains(&plain),
        [
            "chain --replace --autofree http://198.18.0.1:8080",
            "chain --replace --autofree http://198.18.0.2:8080",
            "chain --replace --autofree http://198.18.0.3:8080",
        ]
    );
    let tls = stub_for(&router, Some("198.18.0.1:8443"), true).await;
    assert_eq!(
        chains(&tls),
        [
            "chain --replace --autofree https://198.18.0.1:8443",
            "chain --replace --autofree https://198.18.0.2:8443",
        ]
    );
    // The machine's own script (loopback may act for it) names them on every fetch.
    let srv = serve(router.clone()).await;
    let script = get_text(&format!("{}/ipxe?mac={M1}", srv.url)).await;
    let kernel = script.lines().find(|l| l.starts_with("kernel ")).unwrap();
    let fetches: Vec<&str> = kernel.split(" || ").collect();
    assert_eq!(fetches.len(), 4, "{script}");
    let own = srv.url.clone();
    for (i, peer) in ["http://198.18.0.2:8080", "http://198.18.0.3:8080"]
        .iter()
        .enumerate()
    {
        // The same fetch from the peer; the command line is the machine's, untouched.
        assert_eq!(
            fetches[i + 1],
            fetches[0].replacen(&own, peer, 1),
            "{script}"
        );
    }
    assert_eq!(fetches[3], "goto failed");
    // A peer gone: the kept stub is rendered again without it.
    peers.set_live("pxe-a", &[&c]);
    let plain = stub_for(&router, Some("198.18.0.1:8080"), false).await;
    assert_eq!(chains(&plain).len(), 2, "{plain}");
    peers.set_live("pxe-a", &[]);
    assert_eq!(
        stub_for(&router, Some("198.18.0.1:8080"), false).await,
        alone
    );
}
