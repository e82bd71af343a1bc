//! `/files/`, `/ipxe-bin/` and `/iso/` routes.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request as AxumRequest};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chainboot_content::{
    CleanPath, Content, Request, ResolveError, Resolver, Root, Served, Transport, What,
};
use chainboot_iso::{EntryKind, IsoLibrary};
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

use crate::response::{prefetch_small, respond, respond_with};
use crate::small_files::{Kept, SmallFiles};
use crate::StaticFile;
use bytes::Bytes;

/// What the static routes serve. Built by the binary from the config.
#[derive(Clone)]
pub struct StaticContent {
    /// `[http] root`, served under `/files/`.
    pub files: Option<Arc<Root>>,
    /// iPXE binaries, served under `/ipxe-bin/NAME` (for UEFI HTTP Boot).
    pub ipxe_bin: Arc<dyn Resolver>,
    /// `[[iso]]` images, served under `/iso/NAME/`.
    pub isos: Arc<IsoLibrary>,
    /// Directory indexes under `/files/` (`[http] listing`).
    pub listing: bool,
}

/// The router for `/files/...`, `/ipxe-bin/NAME` and `/iso/NAME/...` (GET and HEAD). The
/// binary merges its own routers (boot scripts, API) into it and hands the result to
/// [`crate::HttpServer::run`].
pub fn static_routes(content: StaticContent) -> Router {
    let c = Arc::new(Static {
        content,
        small_files: SmallFiles::default(),
    });
    let files = {
        let c = c.clone();
        move |req: AxumRequest| {
            let c = c.clone();
            async move { serve_files(&c, req).await }
        }
    };
    let ipxe = {
        let c = c.clone();
        move |req: AxumRequest| {
            let c = c.clone();
            async move { serve_ipxe_bin(&c, req).await }
        }
    };
    let iso = {
        let c = c.clone();
        move |req: AxumRequest| {
            let c = c.clone();
            async move { serve_iso(&c, req).await }
        }
    };
    Router::new()
        .route("/files", get(files.clone()))
        .route("/files/", get(files.clone()))
        .route("/files/{*rest}", get(files))
        .route("/ipxe-bin/{*rest}", get(ipxe))
        .route("/iso", get(iso.clone()))
        .route("/iso/", get(iso.clone()))
        .route("/iso/{*rest}", get(iso))
}

/// What the static routes share: the content, and the small files of `[http] root` kept in
/// memory.
struct Static {
    content: StaticContent,
    small_files: SmallFiles,
}

impl std::ops::Deref for Static {
    type Target = StaticContent;
    fn deref(&self) -> &StaticContent {
        &self.content
    }
}

/// Says what a response served, for the observer and the access log
/// ([`crate::AccessRecord::served`]); a response that says nothing counts as `other`.
pub fn served_as(mut resp: Response, served: Served) -> Response {
    resp.extensions_mut().insert(served);
    resp
}

/// Every response of `router`'s routes that does not say what it served is `what` (the
/// operator's API: none of it is a boot step). Paths no route matches stay `other`.
pub fn serving(router: Router, what: What) -> Router {
    router.route_layer(axum::middleware::map_response(
        move |resp: Response| async move {
            if resp.extensions().get::<Served>().is_some() {
                resp
            } else {
                served_as(resp, Served::new(what))
            }
        },
    ))
}

fn static_file(mut resp: Response, iso: Option<String>, path: Option<CleanPath>) -> Response {
    match path {
        Some(path) => {
            resp.extensions_mut().insert(StaticFile { iso, path });
            resp
        }
        None => served_as(
            resp,
            Served::new(if iso.is_some() {
                What::IsoFile
            } else {
                What::File
            }),
        ),
    }
}

/// Why a request path was refused before any lookup.
#[derive(Debug)]
pub(crate) enum PathRefusal {
    /// Not valid percent-encoding or not UTF-8.
    BadEncoding,
    /// Still percent-encoded after decoding once (`%252e%252e`): double encoding is how
    /// traversal filters get bypassed, and no boot asset is legitimately named like that.
    DoubleEncoded,
    /// Refused by [`CleanPath::parse`] (`..`, control bytes, ...).
    Path(chainboot_content::PathError),
}

/// Decodes the part of a raw (still encoded) URL path after `prefix`. `Ok(None)` = the
/// prefix itself (the root of the tree).
pub(crate) fn decode_path(raw: &str, prefix: &str) -> Result<Option<CleanPath>, PathRefusal> {
    let rest = raw.strip_prefix(prefix).unwrap_or("");
    let decoded = percent_decode_str(rest)
        .decode_utf8()
        .map_err(|_| PathRefusal::BadEncoding)?;
    if has_percent_escape(&decoded) {
        return Err(PathRefusal::DoubleEncoded);
    }
    if decoded.trim_matches(['/', '\\', '.']).is_empty() && !decoded.contains("..") {
        return Ok(None);
    }
    CleanPath::parse(&decoded)
        .map(Some)
        .map_err(PathRefusal::Path)
}

fn has_percent_escape(s: &str) -> bool {
    let b = s.as_bytes();
    b.windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

fn client_of(req: &AxumRequest) -> SocketAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
}

fn plain(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut msg = msg.into();
    msg.push('\n');
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg,
    )
        .into_response()
}

fn refusal_response(r: PathRefusal) -> Response {
    let msg = match r {
        PathRefusal::BadEncoding => "bad request path: invalid percent-encoding".to_string(),
        PathRefusal::DoubleEncoded => "bad request path: double percent-encoding".to_string(),
        PathRefusal::Path(e) => format!("bad request path: {e}"),
    };
    plain(StatusCode::BAD_REQUEST, msg)
}

fn resolve_error_response(e: &ResolveError) -> Response {
    match e {
        ResolveError::BadPath(p) => {
            plain(StatusCode::BAD_REQUEST, format!("bad request path: {p}"))
        }
        ResolveError::NotFound | ResolveError::IsDirectory => {
            plain(StatusCode::NOT_FOUND, "not found")
        }
        ResolveError::Forbidden(_) => plain(StatusCode::FORBIDDEN, "forbidden"),
        ResolveError::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
            plain(StatusCode::NOT_FOUND, "not found")
        }
        ResolveError::Generate(_) | ResolveError::Io(_) => {
            tracing::warn!(target: "chainboot::http", error = %e, "cannot serve");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error (see the server log)",
            )
        }
    }
}

/// Content-Type from the name. Boot assets without a known extension (vmlinuz, initrd,
/// undionly.kpxe) are octet-stream; scripts and configs are text.
pub(crate) fn content_type_for(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    let is = |list: &[&str]| list.iter().any(|e| e.eq_ignore_ascii_case(ext));
    if is(&["ipxe", "cfg", "conf", "seed", "preseed", "ks", "txt"]) {
        return "text/plain; charset=utf-8";
    }
    if is(&[
        "efi", "kpxe", "pxe", "lkrn", "0", "img", "iso", "gz", "xz", "zst", "bin",
    ]) {
        return "application/octet-stream";
    }
    // mime_guess looks extensions up case-insensitively.
    mime_guess::from_ext(ext)
        .first_raw()
        .unwrap_or("application/octet-stream")
}

/// Opening files stats and canonicalises paths and may index an ISO: off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ResolveError> + Send + 'static,
) -> Result<T, ResolveError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(ResolveError::Io(std::io::Error::other(e))))
}

fn wants_json(uri: &Uri, headers: &HeaderMap) -> bool {
    let q = uri.query().unwrap_or("");
    if q.split('&').any(|kv| kv == "format=json") {
        return true;
    }
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"))
}

/// One row of a directory index.
#[derive(Debug, serde::Serialize)]
struct IndexEntry {
    name: String,
    kind: EntryKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
}

const PATH_SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'/')
    .add(b'\\')
    .add(b'\'')
    .add(b'&');

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A small HTML (or JSON) index. Links are absolute, so the URL needs no trailing slash.
fn index_response(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    base: &str,
    title: &str,
    entries: Vec<IndexEntry>,
) -> Response {
    let (body, ctype) = if wants_json(uri, headers) {
        let v = serde_json::json!({ "path": title, "entries": entries });
        (v.to_string(), "application/json")
    } else {
        let mut html = format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title></head>\n<body><h1>{t}</h1>\n<ul>\n",
            t = html_escape(title)
        );
        for e in &entries {
            let href: String = utf8_percent_encode(&e.name, PATH_SEGMENT).to_string();
            let slash = if e.kind == EntryKind::Dir { "/" } else { "" };
            let size = e.size.map(|s| format!(" ({s} bytes)")).unwrap_or_default();
            html.push_str(&format!(
                "<li><a href=\"{base}/{href}{slash}\">{}{slash}</a>{size}</li>\n",
                html_escape(&e.name)
            ));
        }
        html.push_str("</ul></body></html>\n");
        (html, "text/html; charset=utf-8")
    };
    let mut r =
        crate::content_response(method, &HeaderMap::new(), Content::from_bytes(body), ctype);
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn encoded_base(prefix: &str, path: Option<&CleanPath>) -> String {
    let mut base = prefix.trim_end_matches('/').to_string();
    if let Some(p) = path {
        for part in p.parts() {
            base.push('/');
            base.push_str(&utf8_percent_encode(part, PATH_SEGMENT).to_string());
        }
    }
    base
}

/// What a path under `/files/` or `/iso/NAME/` turned out to be.
enum Found {
    /// A file, with its bytes when small enough to have been read at once.
    File(Content, Option<Bytes>),
    /// A small file under `[http] root` kept in memory, confirmed unchanged.
    Kept(Arc<Kept>),
    /// A directory to index.
    Dir(Vec<IndexEntry>),
}

fn file_found(content: Content) -> Result<Found, ResolveError> {
    let pre = prefetch_small(&content)?;
    Ok(Found::File(content, pre))
}

/// [`file_found`] for a file under `[http] root`: a small one is read whole and kept in
/// `small_files` for the next request of `key` when it is settled. Its state is read before the
/// bytes, and the read confirms the file did not change meanwhile.
fn file_found_keeping(
    content: Content,
    small_files: &SmallFiles,
    key: String,
) -> Result<Found, ResolveError> {
    let state = (content.len() <= crate::small_files::MAX_FILE)
        .then(|| content.file_state())
        .flatten();
    let pre = prefetch_small(&content)?;
    if let (Some(state), Some(bytes)) = (state, &pre) {
        small_files.keep(key, state, &content, bytes.clone());
    }
    Ok(Found::File(content, pre))
}

fn root_entries(list: Vec<(String, bool)>) -> Found {
    Found::Dir(
        list.into_iter()
            .map(|(name, is_dir)| IndexEntry {
                name,
                kind: if is_dir {
                    EntryKind::Dir
                } else {
                    EntryKind::File
                },
                size: None,
            })
            .collect(),
    )
}

fn iso_entries(list: Vec<chainboot_iso::IsoEntry>) -> Found {
    Found::Dir(
        list.into_iter()
            .map(|e| IndexEntry {
                size: (e.kind == EntryKind::File).then_some(e.len),
                name: e.name,
                kind: e.kind,
            })
            .collect(),
    )
}

fn found_response(
    found: Result<Found, ResolveError>,
    req: &AxumRequest,
    prefix: &str,
    path: Option<&CleanPath>,
    file_name: &str,
) -> Response {
    match found {
        Ok(Found::File(content, pre)) => respond(
            req.method(),
            req.headers(),
            &content,
            pre,
            content_type_for(file_name),
        ),
        Ok(Found::Kept(kept)) => respond_with(
            req.method(),
            req.headers(),
            &kept.content,
            None,
            content_type_for(file_name),
            kept.validators.clone(),
        ),
        Ok(Found::Dir(entries)) => {
            let base = encoded_base(prefix, path);
            let title = format!(
                "{prefix}/{}",
                path.map(|p| p.as_string()).unwrap_or_default()
            );
            index_response(
                req.method(),
                req.uri(),
                req.headers(),
                &base,
                &title,
                entries,
            )
        }
        Err(e) => resolve_error_response(&e),
    }
}

/// The key of a clean path among the kept small files: its components joined with `/`
/// (borrowed when there is one, the common case of a file at the top of the root).
fn kept_key(p: &CleanPath) -> std::borrow::Cow<'_, str> {
    match p.parts() {
        [only] => std::borrow::Cow::Borrowed(only),
        _ => std::borrow::Cow::Owned(p.as_string()),
    }
}

async fn serve_files(c: &Arc<Static>, req: AxumRequest) -> Response {
    let path = match decode_path(req.uri().path(), "/files") {
        Ok(p) => p,
        Err(r) => return static_file(refusal_response(r), None, None),
    };
    let Some(root) = c.files.as_deref() else {
        let resp = plain(StatusCode::NOT_FOUND, "not found ([http] root is not set)");
        return static_file(resp, None, path);
    };
    // Opened on the async worker, not the blocking pool, as nginx does: for a local file the
    // open is one `openat2` and a few `fstat`s (and a small file's single `pread` from the
    // page cache), while the hop to the blocking pool costs two context switches and measured
    // twice the CPU per small request (31 vs 14 us, bench/README.md). Large bodies are still
    // read on the blocking pool, chunk by chunk. The trade-off: a root on slow or network
    // storage can stall a worker for the duration of an open.
    // A small file kept from an earlier request answers after one `statx` that confirms it
    // (`small_files`); the others are opened and, when small and settled, kept.
    let found = match &path {
        None if c.listing => root.list(None).map(root_entries),
        None => Err(ResolveError::NotFound),
        Some(p) => match c.small_files.get(root, &kept_key(p)) {
            Some(kept) => Ok(Found::Kept(kept)),
            None => match root.open_exact_first(p) {
                Ok(content) => file_found_keeping(content, &c.small_files, p.as_string()),
                Err(ResolveError::IsDirectory) if c.listing => root.list(Some(p)).map(root_entries),
                Err(e) => Err(e),
            },
        },
    };
    let name = path.as_ref().map(|p| p.last()).unwrap_or_default();
    let resp = found_response(found, &req, "/files", path.as_ref(), name);
    static_file(resp, None, path)
}

async fn serve_ipxe_bin(c: &Arc<Static>, req: AxumRequest) -> Response {
    served_as(ipxe_bin(c, req).await, Served::new(What::FirstStage))
}

async fn ipxe_bin(c: &Arc<Static>, req: AxumRequest) -> Response {
    let path = match decode_path(req.uri().path(), "/ipxe-bin") {
        Ok(Some(p)) => p,
        Ok(None) => return plain(StatusCode::NOT_FOUND, "not found"),
        Err(r) => return refusal_response(r),
    };
    let client = client_of(&req);
    let resolver = c.ipxe_bin.clone();
    let p2 = path.clone();
    let found = blocking(move || {
        let content = resolver.resolve(&Request {
            path: &p2,
            client,
            transport: Transport::Http,
        })?;
        file_found(content)
    })
    .await;
    found_response(found, &req, "/ipxe-bin", Some(&path), path.last())
}

async fn serve_iso(c: &Arc<Static>, req: AxumRequest) -> Response {
    let path = match decode_path(req.uri().path(), "/iso") {
        Ok(p) => p,
        Err(r) => return served_as(refusal_response(r), Served::new(What::IsoFile)),
    };
    let Some(path) = path else {
        // /iso/: the configured images that opened.
        let entries = c
            .isos
            .status()
            .into_iter()
            .filter(|s| s.result.is_ok())
            .map(|s| IndexEntry {
                name: s.name,
                kind: EntryKind::Dir,
                size: None,
            })
            .collect();
        let resp = found_response(Ok(Found::Dir(entries)), &req, "/iso", None, "");
        return served_as(resp, Served::new(What::IsoFile));
    };
    let lookup = (path.first().to_string(), path.strip_prefix(1));
    let isos = c.isos.clone();
    // The image's name and the inner path go to the blocking task and come back, so the
    // response's tag needs no copies of its own.
    let resolved = blocking(move || {
        let found = {
            let (name, inner) = &lookup;
            match inner {
                None => isos.list(name, None).map(iso_entries),
                Some(p) => match isos.content(name, p) {
                    Ok(content) => file_found(content),
                    Err(ResolveError::IsDirectory) => isos.list(name, Some(p)).map(iso_entries),
                    Err(e) => Err(e),
                },
            }
        };
        Ok((found, lookup))
    })
    .await;
    let (found, (name, inner)) = match resolved {
        Ok(r) => r,
        Err(e) => return served_as(resolve_error_response(&e), Served::new(What::IsoFile)),
    };
    let file_name = inner.as_ref().map(|p| p.last()).unwrap_or_default();
    let resp = found_response(found, &req, "/iso", Some(&path), file_name);
    static_file(resp, Some(name), inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_decode_once_and_refuse_traversal() {
        let ok = |raw: &str| decode_path(raw, "/files").unwrap().map(|p| p.as_string());
        assert_eq!(ok("/files/a%20b/c.txt"), Some("a b/c.txt".into()));
        assert_eq!(ok("/files/"), None);
        assert_eq!(ok("/files"), None);
        for bad in [
            "/files/../etc/passwd",
            "/files/%2e%2e/etc/passwd",
            "/files/%2E%2E%2Fetc%2Fpasswd",
            "/files/a/%2e%2e%2f%2e%2e%2fetc",
            "/files/%252e%252e/etc",
            "/files/..%5c..%5cetc",
            "/files/a\\..\\..\\etc",
            "/files/%00",
            "/files/%ff",
            "/files/..",
        ] {
            assert!(decode_path(bad, "/files").is_err(), "{bad}");
        }
    }

    #[test]
    fn random_request_paths_decode_to_clean_paths_or_refusals() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let pieces = [
            "%2e", "%2E", "%2f", "%5c", "%25", "%00", "%c0%ae", ".", "..", "/", "\\", "a", "%",
        ];
        for _ in 0..100_000 {
            let mut raw = String::from("/files/");
            for _ in 0..(next() % 8) {
                raw.push_str(pieces[(next() % pieces.len() as u64) as usize]);
            }
            if let Ok(Some(p)) = decode_path(&raw, "/files") {
                for part in p.parts() {
                    assert!(
                        part != ".." && part != "." && !part.contains(['/', '\\', '\0']),
                        "{raw:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn kept_files_are_keyed_by_their_clean_path() {
        for raw in [
            "a.bin",
            "/a.bin",
            "dir/a.bin",
            "dir//sub/./a.bin",
            "dir\\a.bin",
        ] {
            let p = CleanPath::parse(raw).unwrap();
            assert_eq!(kept_key(&p), p.as_string(), "{raw}");
        }
        let top = CleanPath::parse("a.bin").unwrap();
        assert!(matches!(
            kept_key(&top),
            std::borrow::Cow::Borrowed("a.bin")
        ));
    }

    #[test]
    fn content_types_fit_boot_assets() {
        assert_eq!(content_type_for("boot.ipxe"), "text/plain; charset=utf-8");
        assert_eq!(content_type_for("vmlinuz"), "application/octet-stream");
        assert_eq!(content_type_for("ipxe.efi"), "application/octet-stream");
        assert_eq!(content_type_for("index.html"), "text/html");
    }
}
