//! The API's one error type, and the one place errors become HTTP answers:
//! `{"error": {"code": "...", "message": "..."}}` with the matching status.

use std::any::Any;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::ToSchema;

use crate::store::StoreError;

/// How long a client should wait after the store could not take its write.
/// The embedded store reopens its database within about two seconds of the
/// disk taking writes again.
const STORAGE_RETRY_AFTER_SECS: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("the body must be JSON: send `Content-Type: application/json`")]
    UnsupportedMediaType,
    #[error("the body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    Validation(String),
    #[error("the Idempotency-Key header must be 1 to 255 visible ASCII characters")]
    InvalidIdempotencyKey,
    #[error("send one Idempotency-Key header, not several")]
    RepeatedIdempotencyKey,
    #[error("this Idempotency-Key was already used with a different request body")]
    IdempotencyConflict,
    #[error("no request with id `{0}`")]
    RequestNotFound(String),
    #[error("no route for this path")]
    RouteNotFound,
    #[error("send `Authorization: Bearer <key>` with a key this server knows")]
    Unauthorized,
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    #[error("the request line or a header could not be parsed")]
    MalformedRequest,
    #[error("the request URI is too long")]
    UriTooLong,
    #[error("the request line and headers are larger than {0} bytes, or more than 100 headers")]
    HeadersTooLarge(usize),
    #[error("every connection this server takes is busy; retry shortly")]
    TooManyConnections,
    #[error("this method is not allowed on this path")]
    MethodNotAllowed,
    #[error("the outbox holds {pending} undelivered requests (limit {limit}); retry later")]
    OutboxFull {
        pending: u64,
        limit: u64,
        retry_after_secs: u64,
    },
    #[error("not ready: {component}: {detail}")]
    NotReady {
        /// What is not ready, for machines: `storage` or `dispatcher`.
        component: &'static str,
        detail: String,
    },
    #[error("{0}; nothing was changed: retry later")]
    StorageUnavailable(String),
    /// `/ready` only: requests are still taken (their work waits in the
    /// store), but none is delivered until the work queue is back.
    #[error("work queue unavailable: {0}")]
    QueueUnavailable(String),
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_)
            | ApiError::InvalidIdempotencyKey
            | ApiError::RepeatedIdempotencyKey => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::IdempotencyConflict => StatusCode::CONFLICT,
            ApiError::RequestNotFound(_) | ApiError::RouteNotFound => StatusCode::NOT_FOUND,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::MalformedRequest => StatusCode::BAD_REQUEST,
            ApiError::UriTooLong => StatusCode::URI_TOO_LONG,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::TooManyConnections => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::OutboxFull { .. }
            | ApiError::NotReady { .. }
            | ApiError::StorageUnavailable(_)
            | ApiError::QueueUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Seconds a client should wait before trying again, for the answers
    /// that mean "later".
    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            ApiError::OutboxFull {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            ApiError::NotReady { .. }
            | ApiError::StorageUnavailable(_)
            | ApiError::QueueUnavailable(_) => Some(STORAGE_RETRY_AFTER_SECS),
            _ => None,
        }
    }

    /// A stable, machine-readable name for the error.
    fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::Validation(_) => "validation_failed",
            ApiError::InvalidIdempotencyKey | ApiError::RepeatedIdempotencyKey => {
                "invalid_idempotency_key"
            }
            ApiError::IdempotencyConflict => "idempotency_conflict",
            ApiError::RequestNotFound(_) => "request_not_found",
            ApiError::RouteNotFound => "route_not_found",
            ApiError::Unauthorized => "unauthorized",
            ApiError::BodyTimeout(_) => "body_timeout",
            ApiError::MalformedRequest => "malformed_request",
            ApiError::UriTooLong => "uri_too_long",
            ApiError::HeadersTooLarge(_) => "headers_too_large",
            ApiError::TooManyConnections => "too_many_connections",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::OutboxFull { .. } => "outbox_full",
            ApiError::NotReady { .. } => "not_ready",
            ApiError::StorageUnavailable(_) => "storage_unavailable",
            ApiError::QueueUnavailable(_) => "queue_unavailable",
            ApiError::Internal => "internal_error",
        }
    }
}

/// The body of every error answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable, e.g. `validation_failed`.
    #[schema(example = "validation_failed")]
    code: &'static str,
    /// For people: what is wrong and how to fix it.
    #[schema(example = "`to` is required")]
    message: String,
    /// With `not_ready` and `queue_unavailable`: what is not ready
    /// (`storage`, `dispatcher`, `queue`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "storage")]
    component: Option<&'static str>,
}

impl ApiError {
    /// The JSON body this error answers with.
    pub fn body(&self) -> ErrorBody {
        let component = match self {
            ApiError::NotReady { component, .. } => Some(*component),
            ApiError::QueueUnavailable(_) => Some("queue"),
            _ => None,
        };
        ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
                component,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body();
        let mut response = (self.status(), Json(body)).into_response();
        super::protocol::add_headers(&self, response.headers_mut());
        if let Some(seconds) = self.retry_after_secs() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Answers a handler's panic as a JSON `500` instead of dropping the connection.
pub fn panics_as_internal_errors() -> CatchPanicLayer<fn(Box<dyn Any + Send>) -> Response> {
    CatchPanicLayer::custom(|panic: Box<dyn Any + Send>| {
        let reason = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        tracing::error!(reason, "a handler panicked; answering 500");
        ApiError::Internal.into_response()
    })
}

/// Every store error has a meaning a client can act on; none is a `500`.
/// An unavailable store was logged once by the store when it stopped taking
/// writes, so each refused request is logged only at debug level.
impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(id) => ApiError::RequestNotFound(id.to_string()),
            StoreError::IdempotencyConflict => ApiError::IdempotencyConflict,
            StoreError::Unavailable(reason) => {
                tracing::debug!(%reason, "storage unavailable; answering 503");
                ApiError::StorageUnavailable(format!("storage unavailable: {reason}"))
            }
            error => {
                tracing::error!(%error, "store error; answering 503");
                ApiError::StorageUnavailable(error.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::get;

    async fn boom() -> &'static str {
        panic!("deliberately")
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_a_json_500() {
        let router = Router::new()
            .route("/boom", get(boom))
            .layer(panics_as_internal_errors());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });

        let response = reqwest::get(format!("http://{address}/boom"))
            .await
            .unwrap();
        assert_eq!(response.status(), 500);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "internal_error");
    }
}
