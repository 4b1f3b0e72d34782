//! The `/v1/requests` routes: create, process, status and history; and what
//! the founding document's `/api/v1/notifications` routes share with them
//! (the create's outbox bound, idempotency key and write, an owned record,
//! the `{id}` segment).

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, MatchedPath, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tracing::Instrument;
use utoipa::ToSchema;
use utoipa::openapi::{self, Content, Ref, RefOr, ResponseBuilder};

use super::AppState;
use super::auth::Caller;
use super::body::{CreateBody, idempotency_key, parse_create};
use super::error::{ApiError, ErrorBody};
use crate::domain::{Notification, RequestId, Status};
use crate::store::{CreateOutcome, Event, EventKind, ProcessOutcome, RequestRecord};

/// How long a client should wait before retrying a create refused for a full outbox.
const OUTBOX_FULL_RETRY_AFTER_SECS: u64 = 5;

#[derive(Serialize, ToSchema)]
pub struct Created {
    id: String,
}

#[derive(Serialize, ToSchema)]
pub struct StatusView {
    id: String,
    status: Status,
}

/// `GET /v1/requests/{id}`: the contract's `id` and `status`, and a few facts users ask for.
#[derive(Serialize, ToSchema)]
pub struct RequestView {
    id: String,
    status: Status,
    #[serde(rename = "type")]
    channel: &'static str,
    priority: &'static str,
    attempts: u32,
    created_at_ms: u64,
    updated_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_attempt_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
}

impl From<RequestRecord> for RequestView {
    fn from(record: RequestRecord) -> Self {
        Self {
            id: record.id.to_string(),
            status: record.status,
            channel: record.notification.channel.as_str(),
            priority: record.notification.priority.as_str(),
            attempts: record.attempts,
            created_at_ms: record.created_at_ms,
            updated_at_ms: record.updated_at_ms,
            next_attempt_at_ms: record.next_attempt_at_ms,
            provider_id: record.provider_id,
            last_error: record.last_error,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct EventView {
    at_ms: u64,
    status: Status,
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_attempt_at_ms: Option<u64>,
}

impl From<Event> for EventView {
    fn from(event: Event) -> Self {
        let mut view = EventView {
            at_ms: event.at_ms,
            status: event.status,
            event: "",
            attempt: None,
            http_status: None,
            error: None,
            provider_id: None,
            latency_ms: None,
            next_attempt_at_ms: None,
        };
        view.event = match event.kind {
            EventKind::Created => "created",
            EventKind::ProcessRequested => "process_requested",
            EventKind::LeaseRecovered => "lease_recovered",
            EventKind::AttemptStarted { attempt } => {
                view.attempt = Some(attempt);
                "attempt_started"
            }
            EventKind::AttemptFinished(report) => {
                view.attempt = Some(report.attempt);
                view.http_status = report.http_status;
                view.error = report.error;
                view.provider_id = report.provider_id;
                view.latency_ms = Some(report.latency_ms);
                view.next_attempt_at_ms = report.next_attempt_at_ms;
                "attempt_finished"
            }
        };
        view
    }
}

#[derive(Serialize, ToSchema)]
pub struct HistoryView {
    id: String,
    events: Vec<EventView>,
}

/// Create a notification request.
///
/// The request is on disk (fsync) before the `201`. Nothing invalid is stored.
#[utoipa::path(
    post,
    path = "/v1/requests",
    tag = "requests",
    request_body = CreateBody,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Same key and body: the original id again. Same key, other body: 409.")),
    responses(
        (status = 201, description = "Stored durably", body = Created,
            headers(("Location" = String, description = "The request's URL"))),
        CreateRefusals,
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let notification = parse_create::<CreateBody>(&headers, body, state.limits.max_body_bytes)?;
    let (id, replayed) = store(&state, &caller, &headers, notification).await?;
    let created = Json(Created { id: id.to_string() });
    let location = format!("/v1/requests/{id}");
    Ok(stored_response(
        StatusCode::CREATED,
        created,
        &location,
        replayed,
    ))
}

/// The answers that refuse a create, in the OpenAPI document: the same for
/// both APIs' creates, which share their checks.
pub struct CreateRefusals;

impl utoipa::IntoResponses for CreateRefusals {
    fn responses() -> BTreeMap<String, RefOr<openapi::Response>> {
        [
            (
                "400",
                "Malformed JSON or idempotency key (or one sent twice)",
            ),
            (
                "408",
                "The body did not arrive within the body-read timeout",
            ),
            ("409", "Idempotency key reused with another body"),
            ("413", "Body too large"),
            (
                "415",
                "A Content-Type other than JSON (none is read as JSON)",
            ),
            ("422", "A field is missing or invalid"),
            (
                "503",
                "Outbox full (with Retry-After; a replay is still answered) or storage unavailable",
            ),
        ]
        .into_iter()
        .map(|(code, description)| {
            let body = Content::new(Some(Ref::from_schema_name("ErrorBody")));
            let response = ResponseBuilder::new()
                .description(description)
                .content("application/json", body);
            (code.to_string(), response.build().into())
        })
        .collect()
    }
}

/// Stores a validated create, or finds the request its idempotency key (per
/// client) made before with the same body: the id, and whether it is that
/// replay. Refused while the outbox is full, unless it is a replay.
pub async fn store(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    notification: Notification,
) -> Result<(RequestId, bool), ApiError> {
    let key = idempotency_key(headers)?.map(|key| caller.scoped_key(key));
    let key = key.as_deref();
    let outcome = match admit(state, key, &notification).await? {
        Some(replayed) => replayed,
        None => {
            let created = state.records.create(notification, key, caller.name());
            created.await?
        }
    };
    let (id, replayed) = match outcome {
        CreateOutcome::Created(id) => (id, false),
        CreateOutcome::Replayed(id) => (id, true),
    };
    tracing::debug!(%id, replayed, "request stored");
    if !replayed {
        crate::instruments::request_created();
    }
    Ok((id, replayed))
}

/// The answer to a create: `body` with `code`, `Location`, and
/// `Idempotent-Replayed: true` for a replay.
pub fn stored_response(
    code: StatusCode,
    body: impl IntoResponse,
    location: &str,
    replayed: bool,
) -> Response {
    let mut response = (code, body).into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(location) {
        headers.insert(header::LOCATION, location);
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// Refuses a create while the outbox is full, unless it replays an
/// idempotency key: that is an answer already given, not new work. `Some` is
/// that replay.
async fn admit(
    state: &AppState,
    key: Option<&str>,
    notification: &Notification,
) -> Result<Option<CreateOutcome>, ApiError> {
    let pending = state.records.pending();
    if pending < state.limits.outbox_limit {
        return Ok(None);
    }
    if let Some(key) = key
        && let Some(id) = state.records.replay_of(key, notification).await?
    {
        return Ok(Some(CreateOutcome::Replayed(id)));
    }
    Err(ApiError::OutboxFull {
        pending,
        limit: state.limits.outbox_limit,
        retry_after_secs: OUTBOX_FULL_RETRY_AFTER_SECS,
    })
}

/// Ask for delivery.
///
/// `202` when the request entered the outbox now; `200` with its current
/// status when delivery had been asked for before: a second call changes
/// nothing. Delivery is at-least-once (a crash mid-call may repeat that call).
#[utoipa::path(
    post,
    path = "/v1/requests/{id}/process",
    tag = "requests",
    params(("id" = String, Path, description = "The request id")),
    responses(
        (status = 202, description = "Delivery starts", body = StatusView),
        (status = 200, description = "Delivery was already asked for", body = StatusView),
        (status = 404, description = "Unknown id", body = ErrorBody),
        (status = 503, description = "Storage unavailable: not accepted", body = ErrorBody),
    )
)]
pub async fn process(
    State(state): State<AppState>,
    caller: Caller,
    IdParam { id, raw }: IdParam,
) -> Result<(StatusCode, Json<StatusView>), ApiError> {
    caller.check_owns(&state, id, &raw).await?;
    async move {
        let (code, status) = match state.records.request_processing(id).await? {
            ProcessOutcome::Accepted(status) => {
                tracing::info!("processing requested");
                (StatusCode::ACCEPTED, status)
            }
            ProcessOutcome::AlreadyRequested(status) => (StatusCode::OK, status),
        };
        let view = StatusView {
            id: id.to_string(),
            status,
        };
        Ok((code, Json(view)))
    }
    .instrument(tracing::info_span!("request", %id))
    .await
}

/// A request's status.
#[utoipa::path(
    get,
    path = "/v1/requests/{id}",
    tag = "requests",
    params(("id" = String, Path, description = "The request id")),
    responses(
        (status = 200, description = "The request", body = RequestView),
        (status = 404, description = "Unknown id", body = ErrorBody),
    )
)]
pub async fn status(
    State(state): State<AppState>,
    caller: Caller,
    id: IdParam,
) -> Result<Json<RequestView>, ApiError> {
    Ok(Json(owned_record(&state, &caller, id).await?.into()))
}

/// The request `id` names, if the caller may see it: else `404`.
pub async fn owned_record(
    state: &AppState,
    caller: &Caller,
    IdParam { id, raw }: IdParam,
) -> Result<RequestRecord, ApiError> {
    caller.check_owns(state, id, &raw).await?;
    let record = state.records.get(id).await?;
    record.ok_or(ApiError::RequestNotFound(raw))
}

/// A request's history: every transition and provider attempt, oldest first.
#[utoipa::path(
    get,
    path = "/v1/requests/{id}/events",
    tag = "requests",
    params(("id" = String, Path, description = "The request id")),
    responses(
        (status = 200, description = "The history", body = HistoryView),
        (status = 404, description = "Unknown id", body = ErrorBody),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    IdParam { id, raw }: IdParam,
) -> Result<Json<HistoryView>, ApiError> {
    caller.check_owns(&state, id, &raw).await?;
    let events = state
        .records
        .events(id)
        .await?
        .ok_or(ApiError::RequestNotFound(raw))?;
    Ok(Json(HistoryView {
        id: id.to_string(),
        events: events.into_iter().map(EventView::from).collect(),
    }))
}

/// The `{id}` of a request's URL. A segment that is not an id, or not even
/// UTF-8, names no request: `404` in JSON, not `400` or `500`.
pub struct IdParam {
    id: RequestId,
    /// As the client wrote it, for the error message.
    raw: String,
}

impl<S: Send + Sync> FromRequestParts<S> for IdParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let raw = match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(raw)) => raw,
            // Only the `{id}` segment can fail to decode: name it as sent.
            Err(_) => {
                let template = parts.extensions.get::<MatchedPath>();
                let at = template.and_then(|t| t.as_str().split('/').position(|s| s == "{id}"));
                let segment = at.and_then(|at| parts.uri.path().split('/').nth(at));
                return Err(ApiError::RequestNotFound(
                    segment.unwrap_or_default().to_string(),
                ));
            }
        };
        match raw.parse() {
            Ok(id) => Ok(Self { id, raw }),
            Err(_) => Err(ApiError::RequestNotFound(raw)),
        }
    }
}
