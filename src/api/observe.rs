//! What the API reports about itself: per-route request counts and latency,
//! and the `/metrics` endpoint that exposes every metric.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::instruments;

/// Counts and times every request by its route template (or `unmatched`) and
/// its method (or `other`), so neither ids nor invented methods grow the label space.
pub async fn track_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let method = instruments::method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    instruments::http_request(
        method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Prometheus metrics, in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Every metric (see docs/metrics.md)", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        instruments::render(&state.metrics),
    )
}
