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
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;
    use serde_json::{Value, json};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::api::{ApiLimits, router};
    use crate::config::GatewayConfig;
    use crate::dispatch::Dispatcher;
    use crate::domain::{Notification, RequestId};
    use crate::keys::Keys;
    use crate::store::embedded::EmbeddedStore;
    use crate::store::embedded::pacing::Pacer;
    use crate::store::{
        AttemptReport, Backend, CreateOutcome, Decision, Event, Lease, PurgeBatch, Records,
        RequestRecord, StorageState, StoreError,
    };

    /// The embedded store, but its first `request_processing` fails as a
    /// store out of reach would: after the create, before the process.
    struct ProcessFailsOnce {
        store: Arc<EmbeddedStore>,
        failed: AtomicBool,
    }

    #[async_trait]
    impl Records for ProcessFailsOnce {
        async fn create(
            &self,
            notification: Notification,
            key: Option<&str>,
            owner: Option<&str>,
        ) -> Result<CreateOutcome, StoreError> {
            Records::create(&*self.store, notification, key, owner).await
        }
        async fn owner_of(&self, id: RequestId) -> Result<Option<String>, StoreError> {
            Records::owner_of(&*self.store, id).await
        }
        async fn replay_of(
            &self,
            key: &str,
            notification: &Notification,
        ) -> Result<Option<RequestId>, StoreError> {
            Records::replay_of(&*self.store, key, notification).await
        }
        async fn request_processing(&self, id: RequestId) -> Result<ProcessOutcome, StoreError> {
            if !self.failed.swap(true, Ordering::SeqCst) {
                return Err(StoreError::Unavailable("injected: out of reach".into()));
            }
            Records::request_processing(&*self.store, id).await
        }
        async fn get(&self, id: RequestId) -> Result<Option<RequestRecord>, StoreError> {
            Records::get(&*self.store, id).await
        }
        async fn events(&self, id: RequestId) -> Result<Option<Vec<Event>>, StoreError> {
            Records::events(&*self.store, id).await
        }
        async fn request_count(&self) -> Result<u64, StoreError> {
            Records::request_count(&*self.store).await
        }
        async fn sync(&self) -> Result<(), StoreError> {
            Records::sync(&*self.store).await
        }
        async fn finish_attempt(
            &self,
            lease: &Lease,
            report: AttemptReport,
            decision: Decision,
        ) -> Result<Status, StoreError> {
            Records::finish_attempt(&*self.store, lease, report, decision).await
        }
        async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
            Records::release_lease(&*self.store, lease).await
        }
        async fn purge_final_before(
            &self,
            cutoff_ms: u64,
            resume_after: Option<RequestId>,
            limit: usize,
        ) -> Result<PurgeBatch, StoreError> {
            Records::purge_final_before(&*self.store, cutoff_ms, resume_after, limit).await
        }
        async fn purge_idempotency_before(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
            Records::purge_idempotency_before(&*self.store, cutoff_ms).await
        }
        fn pending(&self) -> u64 {
            Records::pending(&*self.store)
        }
        fn storage_state(&self) -> StorageState {
            Records::storage_state(&*self.store)
        }
        async fn maintain(&self, shutdown: CancellationToken) {
            Records::maintain(&*self.store, shutdown).await
        }
        async fn close(&self) -> Result<(), StoreError> {
            Records::close(&*self.store).await
        }
    }

    /// The API alone (no dispatcher runs: nothing is delivered) on a
    /// loopback port, over `records`.
    async fn serve(records: Arc<ProcessFailsOnce>) -> String {
        let config = GatewayConfig::defaults();
        let backend = Backend {
            records: records.clone(),
            work: records.store.clone(),
            gate: Arc::new(Pacer::new(&config.rate_settings()).unwrap()),
        };
        let (_, dispatcher) = Dispatcher::new(&backend, &config.dispatch_settings()).unwrap();
        let state = AppState {
            records,
            dispatcher,
            limits: ApiLimits {
                max_body_bytes: 65_536,
                outbox_limit: 100,
            },
            metrics: crate::instruments::install().unwrap(),
            keys: Arc::new(Keys::none()),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(state)).await });
        format!("http://{address}/api/v1/notifications")
    }

    #[tokio::test]
    async fn a_retry_with_the_key_asks_for_the_delivery_a_failed_process_did_not() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let records = Arc::new(ProcessFailsOnce {
            store: store.clone(),
            failed: AtomicBool::new(false),
        });
        let url = serve(records).await;
        let body = json!({"to": "a@b.c", "message": "hi", "channel": "sms"});
        let send = || {
            reqwest::Client::new()
                .post(&url)
                .header("idempotency-key", "reset-1")
                .json(&body)
                .send()
        };

        let failed = send().await.unwrap();
        assert_eq!(failed.status(), 503);
        assert!(failed.headers().contains_key("retry-after"));
        let answer: Value = failed.json().await.unwrap();
        assert_eq!(answer["error"]["code"], "storage_unavailable");
        assert_eq!(Records::request_count(&*store).await.unwrap(), 1, "stored");
        assert_eq!(Records::pending(&*store), 0, "not asked for delivery");

        let retried = send().await.unwrap();
        assert_eq!(retried.status(), 202);
        assert_eq!(retried.headers()["idempotent-replayed"], "true");
        let answer: Value = retried.json().await.unwrap();
        assert_eq!(answer["status"], "QUEUED");
        let id: RequestId = answer["notification_id"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            Records::request_count(&*store).await.unwrap(),
            1,
            "one request"
        );
        assert_eq!(Records::pending(&*store), 1, "asked for delivery now");
        let events = Records::events(&*store, id).await.unwrap().unwrap();
        assert!(
            events
                .iter()
                .any(|e| matches!(e.kind, crate::store::EventKind::ProcessRequested)),
            "{events:?}"
        );
    }

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
