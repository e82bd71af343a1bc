//! The HTTP API's shared layer, used by every crate that serves API routes (the machine side
//! in chainboot-policy, the operator side in chainboot-ops):
//!
//! - [`ApiError`]: the one error type; it *is* the response (`{"error": "..."}` with its
//!   status), so handlers return `Result<_, ApiError>` and use `?`;
//! - [`ApiAuth`] with the extractors [`Operator`] (the bearer token, for writes) and
//!   [`Reader`] (the token when reads need it): listed before a body extractor, the token is
//!   checked before any body is read or parsed;
//! - [`blocking`]: store work off the async workers, its failure already an [`ApiError`].

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An API error: a status and a message for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }
    pub fn unauthorized() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token")
    }
    /// A server-side failure (`what` failed with `e`): logged, and reported to the caller.
    pub fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "{what}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{what}: {e}"))
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.message }));
        if self.status == StatusCode::UNAUTHORIZED {
            (self.status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
        } else {
            (self.status, body).into_response()
        }
    }
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compares secrets in time independent of where they differ. Empty secrets never match.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() || b.is_empty() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who may use the API: the operator's bearer token, and whether reads need it.
#[derive(Clone)]
pub struct ApiAuth {
    token: Arc<str>,
    read_requires_token: bool,
}

impl ApiAuth {
    pub fn new(token: &str, read_requires_token: bool) -> ApiAuth {
        ApiAuth {
            token: token.into(),
            read_requires_token,
        }
    }

    /// The same token, every request needing it (the API shared with the boot listener).
    pub fn token_only(&self) -> ApiAuth {
        ApiAuth {
            token: self.token.clone(),
            read_requires_token: true,
        }
    }

    /// True if the request carries the operator's token.
    pub fn is_operator(&self, headers: &HeaderMap) -> bool {
        bearer(headers).is_some_and(|t| ct_eq(t.as_bytes(), self.token.as_bytes()))
    }

    pub fn check_write(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.is_operator(headers) {
            Ok(())
        } else {
            Err(ApiError::unauthorized())
        }
    }

    pub fn check_read(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.read_requires_token {
            self.check_write(headers)
        } else {
            Ok(())
        }
    }
}

/// Extractor: the request carries the operator's token.
pub struct Operator;

/// Extractor: the request may read (the token, when reads need it).
pub struct Reader;

impl<S> FromRequestParts<S> for Operator
where
    ApiAuth: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        ApiAuth::from_ref(state).check_write(&parts.headers)?;
        Ok(Operator)
    }
}

impl<S> FromRequestParts<S> for Reader
where
    ApiAuth: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        ApiAuth::from_ref(state).check_read(&parts.headers)?;
        Ok(Reader)
    }
}

/// Runs blocking work (the store) off the async workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal("background task", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, auth.parse().expect("header"));
        h
    }

    #[test]
    fn token_checks() {
        let auth = ApiAuth::new("s3cret", false);
        assert!(auth.is_operator(&headers("Bearer s3cret")));
        assert!(auth.is_operator(&headers("bearer  s3cret ")));
        assert!(!auth.is_operator(&headers("Bearer s3cre")));
        assert!(!auth.is_operator(&headers("Basic s3cret")));
        assert!(auth.check_read(&HeaderMap::new()).is_ok());
        assert_eq!(
            auth.token_only().check_read(&HeaderMap::new()),
            Err(ApiError::unauthorized())
        );
        assert!(!ct_eq(b"", b""));
    }

    #[tokio::test]
    async fn errors_are_json_responses() {
        let r = ApiError::unauthorized().into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers()
                .get(header::WWW_AUTHENTICATE)
                .map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
        let r = ApiError::not_found("machine x not known").into_response();
        let body = axum::body::to_bytes(r.into_body(), 1024)
            .await
            .expect("body");
        assert_eq!(&body[..], br#"{"error":"machine x not known"}"#);
    }
}
