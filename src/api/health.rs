//! Liveness and readiness probes.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Alive", example = json!({"status": "ok"}))))]
pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: the store answers reads and the dispatcher is running.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready", example = json!({"status": "ready", "pending": 0})),
        (status = 503, description = "Not ready", body = super::error::ErrorBody),
    ))]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if !state.store.is_healthy() {
        return Err(ApiError::NotReady("the store does not answer"));
    }
    if !state.dispatcher.is_running() {
        return Err(ApiError::NotReady("the dispatcher is not running"));
    }
    Ok(Json(
        json!({ "status": "ready", "pending": state.store.pending() }),
    ))
}
