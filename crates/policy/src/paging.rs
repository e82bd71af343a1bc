//! Paged list responses: a JSON array streamed in chunks read from the store as the client
//! takes them, never built in memory in one piece, and ended at a count or a byte budget,
//! whichever comes first. The client asks for the next page with the cursor of the last item
//! it got (`before=ID` for events, `after=MAC` for machines, `after=IP` for leases); an empty
//! array is the end.

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chainboot_api::ApiError;
use chainboot_machine::Mac;
use futures::StreamExt;

use crate::Policy;

/// Bytes of one page at most (the item that crosses it is the page's last).
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;
/// Items read from the store per chunk: the read connection is held for one chunk at a time,
/// so a client that reads slowly never blocks other readers.
const CHUNK: usize = 100;

/// Items of a page, each as its cursor and its JSON text; or what went wrong.
pub type Items<C> = Result<Vec<(C, Vec<u8>)>, String>;

/// Reads up to `n` items after `cursor` (`None`: from the start).
pub trait PageSource: Send + Sync + 'static {
    type Cursor: Clone + Send + 'static;
    fn fetch(&self, cursor: Option<Self::Cursor>, n: usize) -> Items<Self::Cursor>;
}

struct Progress<C> {
    cursor: Option<C>,
    items: usize,
    bytes: usize,
    done: bool,
}

/// Streams one page of at most `limit` items (and [`MAX_PAGE_BYTES`]) as a JSON array. A
/// store error before the first byte is a 500; a later one ends the body early, so the client
/// sees a broken response rather than a short but valid list.
pub async fn json_page<S: PageSource>(
    source: S,
    cursor: Option<S::Cursor>,
    limit: usize,
) -> Response {
    let source = Arc::new(source);
    let mut progress = Progress {
        cursor,
        items: 0,
        bytes: 0,
        done: limit == 0,
    };
    let first = match next_chunk(&source, &mut progress, limit).await {
        Ok(c) => c,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(serde_json::json!({ "error": e })),
            )
                .into_response()
        }
    };
    let mut head = b"[".to_vec();
    head.extend_from_slice(&first);
    if progress.done {
        head.push(b']');
    }
    let rest = futures::stream::unfold(
        (source, progress),
        move |(source, mut progress)| async move {
            if progress.done {
                return None;
            }
            match next_chunk(&source, &mut progress, limit).await {
                Ok(mut chunk) => {
                    if progress.done {
                        chunk.push(b']');
                    }
                    Some((Ok(Bytes::from(chunk)), (source, progress)))
                }
                Err(e) => {
                    progress.done = true;
                    Some((Err(std::io::Error::other(e)), (source, progress)))
                }
            }
        },
    );
    let body = futures::stream::once(async move { Ok(Bytes::from(head)) }).chain(rest);
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response()
}

/// The next items of the page as array elements (comma-separated, a leading comma unless
/// first); marks the page done when the source, the count or the byte budget is exhausted.
async fn next_chunk<S: PageSource>(
    source: &Arc<S>,
    progress: &mut Progress<S::Cursor>,
    limit: usize,
) -> Result<Vec<u8>, String> {
    if progress.done {
        return Ok(Vec::new());
    }
    let want = CHUNK.min(limit - progress.items);
    let (src, cursor) = (source.clone(), progress.cursor.clone());
    let items = tokio::task::spawn_blocking(move || src.fetch(cursor, want))
        .await
        .map_err(|e| format!("task failed: {e}"))??;
    let mut out = Vec::new();
    let got = items.len();
    for (cursor, json) in items {
        if progress.items > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&json);
        progress.items += 1;
        progress.bytes += json.len() + 1;
        progress.cursor = Some(cursor);
        if progress.bytes >= MAX_PAGE_BYTES {
            break;
        }
    }
    progress.done = got < want || progress.items >= limit || progress.bytes >= MAX_PAGE_BYTES;
    Ok(out)
}

/// Machines listed when a request names no limit, and at most.
pub const MAX_MACHINES_PAGE: usize = 1000;

/// Machine records in MAC order.
struct MachinePages(Arc<Policy>);

impl PageSource for MachinePages {
    type Cursor = Mac;
    fn fetch(&self, cursor: Option<Mac>, n: usize) -> Items<Mac> {
        let page = self
            .0
            .store()
            .machines_page(cursor, n)
            .map_err(|e| e.to_string())?;
        page.into_iter()
            .map(|m| Ok((m.mac, serde_json::to_vec(&m).map_err(|e| e.to_string())?)))
            .collect()
    }
}

/// `GET /api/v1/machines?limit=N&after=MAC`: one page of machines in MAC order.
pub async fn machines(policy: Arc<Policy>, query: &HashMap<String, String>) -> Response {
    match page_query::<Mac>(query, MAX_MACHINES_PAGE) {
        Ok((limit, after)) => json_page(MachinePages(policy), after, limit).await,
        Err(e) => e.into_response(),
    }
}

/// A list request's `limit` (at most `max`, and `max` when it names none) and `after` cursor:
/// the one reading of them for every list that pages forward. A value that does not parse is
/// a 400 naming the parameter.
pub fn page_query<C>(
    query: &HashMap<String, String>,
    max: usize,
) -> Result<(usize, Option<C>), ApiError>
where
    C: FromStr,
    C::Err: Display,
{
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => max,
        Some(Ok(n)) => n.min(max),
        Some(Err(e)) => return Err(ApiError::bad_request(format!("limit: {e}"))),
    };
    let after = match query.get("after").map(|c| c.parse::<C>()) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => return Err(ApiError::bad_request(format!("after: {e}"))),
    };
    Ok((limit, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Items 0..n, each `size` bytes of JSON string.
    struct Numbers {
        n: usize,
        size: usize,
    }

    impl PageSource for Numbers {
        type Cursor = usize;
        fn fetch(&self, cursor: Option<usize>, n: usize) -> Items<usize> {
            let start = cursor.map_or(0, |c| c + 1);
            Ok((start..self.n.min(start + n))
                .map(|i| {
                    let pad = "x".repeat(self.size.saturating_sub(10));
                    (i, format!("\"{i:06}{pad}\"").into_bytes())
                })
                .collect())
        }
    }

    async fn page(source: Numbers, cursor: Option<usize>, limit: usize) -> Vec<String> {
        let resp = json_page(source, cursor, limit).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    #[tokio::test]
    async fn pages_end_at_the_limit_or_the_source_and_continue_from_a_cursor() {
        let all = page(Numbers { n: 250, size: 10 }, None, 1000).await;
        assert_eq!(all.len(), 250);
        let first = page(Numbers { n: 250, size: 10 }, None, 120).await;
        assert_eq!(first.len(), 120);
        let next = page(Numbers { n: 250, size: 10 }, Some(119), 1000).await;
        assert_eq!(next.len(), 130);
        assert!(next[0].starts_with("000120"));
        assert!(page(Numbers { n: 250, size: 10 }, Some(249), 10)
            .await
            .is_empty());
        assert!(page(Numbers { n: 0, size: 10 }, None, 10).await.is_empty());
    }

    #[tokio::test]
    async fn a_page_stops_at_its_byte_budget() {
        let items = page(
            Numbers {
                n: 1000,
                size: 4000,
            },
            None,
            1000,
        )
        .await;
        let bytes: usize = items.iter().map(|s| s.len() + 3).sum();
        assert!(items.len() < 1000 && items.len() >= 250, "{}", items.len());
        assert!(bytes <= MAX_PAGE_BYTES + 4100, "{bytes}");
    }

    #[test]
    fn a_page_query_caps_the_limit_and_names_what_does_not_parse() {
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(page_query::<u32>(&q(&[]), 1000), Ok((1000, None)));
        assert_eq!(
            page_query::<u32>(&q(&[("limit", "5000"), ("after", "7")]), 1000),
            Ok((1000, Some(7)))
        );
        assert_eq!(
            page_query::<u32>(&q(&[("limit", "3")]), 1000),
            Ok((3, None))
        );
        let bad = page_query::<u32>(&q(&[("limit", "-1")]), 1000).unwrap_err();
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert!(bad.message.starts_with("limit: "), "{bad}");
        let bad = page_query::<u32>(&q(&[("after", "x")]), 1000).unwrap_err();
        assert!(bad.message.starts_with("after: "), "{bad}");
    }
}
