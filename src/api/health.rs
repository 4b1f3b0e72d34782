//! Liveness and readiness probes.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;

/// `GET /health`: the process answers.
pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /ready`: the store answers reads and the dispatcher is running.
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
