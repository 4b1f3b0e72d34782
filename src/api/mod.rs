//! The HTTP API: routes, shared state and the JSON error contract.

mod auth;
mod body;
mod docs;
mod error;
mod health;
mod notifications;
mod observe;
mod openapi_rules;
mod protocol;
mod requests;
mod text;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;

pub use docs::ApiDoc;
pub use error::ApiError;
pub use protocol::{connection_refusal, protocol_error_body};

use crate::dispatch::DispatcherHandle;
use crate::keys::Keys;
use crate::store::Records;

/// Input limits the handlers enforce.
#[derive(Clone, Copy, Debug)]
pub struct ApiLimits {
    pub max_body_bytes: usize,
    /// Undelivered requests beyond which creates are refused with `503`.
    pub outbox_limit: u64,
}

#[derive(Clone)]
pub struct AppState {
    pub records: Arc<dyn Records>,
    pub dispatcher: DispatcherHandle,
    pub limits: ApiLimits,
    pub metrics: PrometheusHandle,
    pub keys: Arc<Keys>,
}

pub fn router(state: AppState) -> Router {
    let body_limit = DefaultBodyLimit::max(state.limits.max_body_bytes);
    Router::new()
        .route("/v1/requests", post(requests::create))
        .route("/v1/requests/{id}", get(requests::status))
        .route("/v1/requests/{id}/process", post(requests::process))
        .route("/v1/requests/{id}/events", get(requests::events))
        .route("/api/v1/notifications", post(notifications::create))
        .route("/api/v1/notifications/", post(notifications::create))
        .route("/api/v1/notifications/{id}", get(notifications::status))
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(observe::metrics))
        .route("/openapi.json", get(docs::openapi_json))
        .route("/docs", get(docs::docs_page))
        .route("/docs/swagger-ui-bundle.js", get(docs::swagger_ui_js))
        .route("/docs/swagger-ui.css", get(docs::swagger_ui_css))
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(body_limit)
        .layer(error::panics_as_internal_errors())
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(middleware::from_fn(observe::track_requests))
        .with_state(state)
}
