//! Who is calling: with client keys on, every `/v1/*` and `/api/v1/*` call
//! needs `Authorization: Bearer KEY` (else `401`), a request is visible only
//! to the client that created it (another one gets `404`, as for an unknown
//! id), and idempotency keys are per client. `/metrics` may need its own key.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::domain::RequestId;

/// The client a request was authenticated as.
#[derive(Clone, Debug)]
struct Client(Arc<str>);

/// Checks the caller's key where one is needed; lets the handler know who it is.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let keys = &state.keys;
    if is_client_api(path) && keys.clients_required() {
        match bearer(request.headers()).and_then(|key| keys.client(key)) {
            Some(name) => {
                request.extensions_mut().insert(Client(name));
            }
            None => return ApiError::Unauthorized.into_response(),
        }
    } else if path == "/metrics"
        && keys.metrics_key_required()
        && !bearer(request.headers()).is_some_and(|key| keys.is_metrics_key(key))
    {
        return ApiError::Unauthorized.into_response();
    }
    next.run(request).await
}

/// Paths of the client API, routed or not: an unknown one is `401` too,
/// so that no route is revealed to a caller without a key.
fn is_client_api(path: &str) -> bool {
    ["/v1", "/api/v1"].iter().any(|prefix| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// The key of an `Authorization: Bearer KEY` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

/// The caller, for the handlers: `None` with client keys off.
pub struct Caller(Option<Arc<str>>);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<Client>().map(|c| c.0.clone())))
    }
}

impl Caller {
    /// The name to store as the request's owner.
    pub fn name(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// The idempotency key as stored: per client, so that one client can
    /// neither replay nor probe another's. Client names have no spaces and
    /// keys are visible ASCII, so `name key` cannot collide with a bare key.
    pub fn scoped_key(&self, key: &str) -> String {
        match &self.0 {
            Some(name) => format!("{name} {key}"),
            None => key.to_string(),
        }
    }

    /// Refuses, as unknown, a request another client created (or one made
    /// while keys were off, which no client owns).
    pub async fn check_owns(
        &self,
        state: &AppState,
        id: RequestId,
        raw: &str,
    ) -> Result<(), ApiError> {
        let Some(caller) = self.name() else {
            return Ok(());
        };
        match state.records.owner_of(id).await? {
            Some(owner) if owner == caller => Ok(()),
            _ => Err(ApiError::RequestNotFound(raw.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn only_the_client_api_needs_a_client_key() {
        for path in [
            "/v1",
            "/v1/requests",
            "/v1/requests/x/events",
            "/api/v1/requests",
            "/v1/nothing",
        ] {
            assert!(is_client_api(path), "{path}");
        }
        for path in [
            "/health",
            "/ready",
            "/metrics",
            "/openapi.json",
            "/docs",
            "/v10/requests",
            "/v1x",
        ] {
            assert!(!is_client_api(path), "{path}");
        }
    }

    #[test]
    fn a_bearer_key_is_read_from_the_authorization_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), None);
    }

    #[test]
    fn idempotency_keys_are_scoped_by_client() {
        let billing = Caller(Some(Arc::from("billing")));
        assert_eq!(billing.scoped_key("order-1"), "billing order-1");
        assert_eq!(Caller(None).scoped_key("order-1"), "order-1");
    }
}
