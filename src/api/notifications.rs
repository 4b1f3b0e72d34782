//! The founding document's own API, `/api/v1/notifications`: one call
//! stores a notification and asks for its delivery (`202 QUEUED`), another
//! reads its status in the document's words (`QUEUED`, `PROCESSING`,
//! `DELIVERED`, `FAILED`). The records are `/v1/requests`' own, reached
//! through the same store calls, validation, idempotency keys and owners
//! (see [`super::requests`]), so either API reads what the other wrote.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Serialize;
use tracing::Instrument;
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::body::{NotificationBody, parse_create};
use super::error::{ApiError, ErrorBody};
use super::requests::{CreateRefusals, IdParam, owned_record, store, stored_response};
use crate::domain::Status;
use crate::store::ProcessOutcome;

/// A notification's status, as the founding document names it.
///
/// `QUEUED` covers both of `/v1`'s `queued` cases: waiting for delivery, and
/// (for a request created through `/v1/requests`) stored but not yet asked
/// for delivery. `PROCESSING` is an attempt in flight or a retry waiting out
/// its backoff; `DELIVERED` is `/v1`'s `sent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NotificationStatus {
    Queued,
    Processing,
    Delivered,
    Failed,
}

impl From<Status> for NotificationStatus {
    fn from(status: Status) -> Self {
        match status {
            Status::Queued => Self::Queued,
            Status::Processing => Self::Processing,
            Status::Sent => Self::Delivered,
            Status::Failed => Self::Failed,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct NotificationView {
    /// The request's id, the same as `/v1/requests/{id}`'s.
    notification_id: String,
    status: NotificationStatus,
}

/// Send a notification: store it and ask for its delivery, in one call.
///
/// Also served at `/api/v1/notifications/` (with the trailing slash). The
/// notification is on disk, and asked for delivery, before the `202`. The
/// same `Idempotency-Key` and body answer the same id again, and ask for
/// its delivery if an earlier call stored it but could not (a `503`): a
/// retry with the key always ends queued. Nothing invalid is stored, nor a
/// body that sends both `channel` and `type` (`422`).
#[utoipa::path(
    post,
    path = "/api/v1/notifications",
    tag = "notifications",
    request_body = NotificationBody,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Same key and body: the original id again. Same key, other body: 409.")),
    responses(
        (status = 202, description = "Stored durably and queued for delivery (a replay: its current status)",
            body = NotificationView,
            headers(("Location" = String, description = "The notification's URL"))),
        CreateRefusals,
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let limit = state.limits.max_body_bytes;
    let notification = parse_create::<NotificationBody>(&headers, body, limit)?;
    let (id, replayed) = store(&state, &caller, &headers, notification).await?;
    // A replay asks too: the call it replays may have stored the request and
    // then failed to ask (a 503), and asking twice changes nothing.
    let outcome = state
        .records
        .request_processing(id)
        .instrument(tracing::info_span!("request", %id))
        .await?;
    let status = match outcome {
        ProcessOutcome::Accepted(status) => {
            tracing::info!(%id, "processing requested");
            status
        }
        ProcessOutcome::AlreadyRequested(status) => status,
    };
    let view = Json(NotificationView {
        notification_id: id.to_string(),
        status: status.into(),
    });
    let location = format!("/api/v1/notifications/{id}");
    Ok(stored_response(
        StatusCode::ACCEPTED,
        view,
        &location,
        replayed,
    ))
}

/// A notification's status.
#[utoipa::path(
    get,
    path = "/api/v1/notifications/{id}",
    tag = "notifications",
    params(("id" = String, Path, description = "The notification id")),
    responses(
        (status = 200, description = "The notification's status", body = NotificationView),
        (status = 404, description = "Unknown id", body = ErrorBody),
    )
)]
pub async fn status(
    State(state): State<AppState>,
    caller: Caller,
    id: IdParam,
) -> Result<Json<NotificationView>, ApiError> {
    let record = owned_record(&state, &caller, id).await?;
    Ok(Json(NotificationView {
        notification_id: record.id.to_string(),
        status: record.status.into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_take_the_founding_documents_names() {
        let names: Vec<String> = Status::ALL
            .iter()
            .map(|s| serde_json::to_value(NotificationStatus::from(*s)).unwrap())
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(names, ["QUEUED", "PROCESSING", "DELIVERED", "FAILED"]);
    }
}
