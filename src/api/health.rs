//! Liveness and readiness probes.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::store::StorageState;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Alive", example = json!({"status": "ok"}))))]
pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: the store takes writes, the dispatcher is running and the
/// work queue carries work. `503` names what is not ready (`component`:
/// `storage`, `dispatcher`, or `queue` with the code `queue_unavailable`:
/// the scale-out engine's RabbitMQ is out of reach; requests are still
/// taken then, and wait in Redis).
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready", example = json!({"status": "ready", "pending": 0})),
        (status = 503, description = "Not ready", body = super::error::ErrorBody),
    ))]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    match state.records.storage_state() {
        StorageState::Serving => {}
        StorageState::Unavailable(detail) | StorageState::Lost(detail) => {
            return Err(ApiError::NotReady {
                component: "storage",
                detail,
            });
        }
    }
    if let Some(detail) = state.records.work_queue_unavailable() {
        return Err(ApiError::QueueUnavailable(detail));
    }
    if !state.dispatcher.is_running() {
        return Err(ApiError::NotReady {
            component: "dispatcher",
            detail: "the dispatcher is not running".into(),
        });
    }
    let mut body = json!({ "status": "ready", "pending": state.records.pending() });
    if let Some(warning) = state.records.warning() {
        body["warning"] = json!(warning);
    }
    Ok(Json(body))
}
