//! The answers the simulated provider gives, each shaped like the reference
//! provider's (`{"detail": ...}` from its framework, `{"error": ...}` from its
//! own code).

use axum::Json;
use axum::http::StatusCode;
use axum::http::header::RETRY_AFTER;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A status, a JSON body and, for some 429s, a `Retry-After`.
pub(super) struct Answer {
    status: StatusCode,
    body: Value,
    retry_after_secs: Option<u64>,
}

impl Answer {
    /// `200 {"status": "delivered", "provider_id": ...}`.
    pub(super) fn delivered(provider_id: String) -> Self {
        Self::new(
            StatusCode::OK,
            json!({"status": "delivered", "provider_id": provider_id}),
        )
    }

    /// A refusal by the provider's framework: `{"detail": ...}`.
    pub(super) fn detail(status: StatusCode, detail: Value) -> Self {
        Self::new(status, json!({ "detail": detail }))
    }

    /// A failure of the provider's own: `{"error": ...}`.
    pub(super) fn error(status: StatusCode) -> Self {
        Self::new(status, json!({ "error": error_message(status) }))
    }

    /// Adds `Retry-After` if this is a 429 and the provider is configured to send one.
    pub(super) fn with_retry_after(mut self, retry_after_secs: Option<u64>) -> Self {
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            self.retry_after_secs = retry_after_secs;
        }
        self
    }

    pub(super) fn status(&self) -> StatusCode {
        self.status
    }

    fn new(status: StatusCode, body: Value) -> Self {
        Self {
            status,
            body,
            retry_after_secs: None,
        }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(RETRY_AFTER, secs.into());
        }
        response
    }
}

/// The reference provider's wording for the errors it is known to send.
fn error_message(status: StatusCode) -> &'static str {
    match status {
        StatusCode::TOO_MANY_REQUESTS => "Rate limit exceeded",
        StatusCode::INTERNAL_SERVER_ERROR => "External server error",
        other => other.canonical_reason().unwrap_or("Error"),
    }
}
