//! `POST /v1/notify`: the order in which the provider screens a call
//! (key, input, scripted failures, throttling, capacity) and how it serves an
//! admitted one (latency or stall, then an error status or a delivery).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::answer::Answer;
use super::validation::validation_errors;
use super::{Shared, Simulator, lock};
use crate::domain::Channel;

const API_KEY_HEADER: &str = "x-api-key";
const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
const ANONYMOUS_ID: &str = "anonymous";

/// The query parameters the provider reads.
#[derive(Deserialize)]
pub(super) struct NotifyQuery {
    priority: Option<String>,
    trace_id: Option<String>,
}

/// One call as received.
struct Call {
    id: String,
    headers: HeaderMap,
    priority: Option<String>,
    body: Bytes,
}

pub(super) async fn notify(
    State(simulator): State<Simulator>,
    headers: HeaderMap,
    Query(query): Query<NotifyQuery>,
    body: Bytes,
) -> Response {
    let call = Call {
        id: request_id(&headers, query.trace_id),
        headers,
        priority: query.priority,
        body,
    };
    let shared = simulator.shared;
    let arrival = shared.ledger.arrive(call.id.clone(), call.priority.clone());
    // A provider keeps working on a call whose caller hung up (say, on a
    // timeout), so the work runs in its own task: it still lands in the ledger
    // and may still deliver, as a real provider would.
    let work = tokio::spawn(async move {
        let reply = answer(&shared, &call).await;
        let status = reply.answer.status().as_u16();
        shared.ledger.record(arrival, status, reply.stalled);
        reply.answer
    });
    match work.await {
        Ok(answer) => answer.into_response(),
        Err(_panicked) => Answer::error(StatusCode::INTERNAL_SERVER_ERROR).into_response(),
    }
}

/// `Idempotency-Key`, else the `trace_id` query parameter, else "anonymous".
fn request_id(headers: &HeaderMap, trace_id: Option<String>) -> String {
    headers
        .get(IDEMPOTENCY_KEY_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .or(trace_id)
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| ANONYMOUS_ID.to_owned())
}

/// An answer, and whether the call stalled before it (the ledger keeps that:
/// a caller that timed out on a stall tries again, which explains a duplicate).
struct Reply {
    answer: Answer,
    stalled: bool,
}

async fn answer(shared: &Shared, call: &Call) -> Reply {
    match screen(shared, call) {
        Ok(()) => serve_admitted(shared).await,
        Err(refusal) => Reply {
            answer: refusal,
            stalled: false,
        },
    }
}

/// Everything that answers before the call is admitted; `Ok` admits it.
fn screen(shared: &Shared, call: &Call) -> Result<(), Answer> {
    let config = &shared.config;
    authenticate(&call.headers, config.api_key.expose())?;
    validate(call, &config.accepted_types)?;
    shared.fail_first.check(&call.id, config.retry_after_secs)?;
    // The throttle is drawn first so that a throttled call takes no window slot.
    if shared.dice.chance(config.throttle_rate) || !shared.capacity.try_admit() {
        return Err(
            Answer::error(StatusCode::TOO_MANY_REQUESTS).with_retry_after(config.retry_after_secs)
        );
    }
    Ok(())
}

/// FastAPI's `APIKeyHeader`: an absent (or empty) key is 403, a wrong one 401.
fn authenticate(headers: &HeaderMap, api_key: &str) -> Result<(), Answer> {
    match headers.get(API_KEY_HEADER).map(|key| key.as_bytes()) {
        None | Some(b"") => Err(detail(StatusCode::FORBIDDEN, "Not authenticated")),
        Some(key) if key == api_key.as_bytes() => Ok(()),
        Some(_) => Err(detail(StatusCode::UNAUTHORIZED, "Invalid API Key")),
    }
}

fn validate(call: &Call, accepted_types: &[Channel]) -> Result<(), Answer> {
    let errors = validation_errors(call.priority.as_deref(), &call.body, accepted_types);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Answer::detail(
            StatusCode::UNPROCESSABLE_ENTITY,
            Value::Array(errors),
        ))
    }
}

fn detail(status: StatusCode, message: &str) -> Answer {
    Answer::detail(status, json!(message))
}

/// Holds a service slot for the call's latency (or stall), then answers.
async fn serve_admitted(shared: &Shared) -> Reply {
    let config = &shared.config;
    let _slot = shared.capacity.service_slot().await;
    let stalled = shared.dice.chance(config.stall_rate);
    let delay_ms = if stalled {
        config.stall_ms
    } else {
        shared
            .dice
            .between(config.latency_min_ms, config.latency_max_ms)
    };
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    let answer = if shared.dice.chance(config.error_rate) {
        Answer::error(error_status(shared))
    } else {
        Answer::delivered(shared.next_provider_id())
    };
    Reply { answer, stalled }
}

/// One of the configured error statuses; the provider's usual 500 when the
/// set (built in code, where the CLI's check does not apply) is empty.
fn error_status(shared: &Shared) -> StatusCode {
    shared
        .config
        .error_statuses
        .pick(&shared.dice)
        .and_then(|status| StatusCode::from_u16(status).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The scripted failures: the first `limit` screened calls of each request id
/// answer `status`, which makes tests like "500 twice, then 200" deterministic.
pub(super) struct FailFirst {
    limit: u32,
    status: StatusCode,
    calls_per_id: Mutex<HashMap<String, u32>>,
}

impl FailFirst {
    pub(super) fn new(limit: u32, status: u16) -> Self {
        Self {
            limit,
            // The CLI admits only 100..=599; a config built in code with anything
            // else falls back to the provider's usual failure.
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            calls_per_id: Mutex::new(HashMap::new()),
        }
    }

    /// Counts this call of `id`; the scripted failure while under the limit.
    fn check(&self, id: &str, retry_after_secs: Option<u64>) -> Result<(), Answer> {
        // Without a script there is nothing to count, and long runs keep no per-id map.
        if self.limit == 0 {
            return Ok(());
        }
        let mut calls_per_id = lock(&self.calls_per_id);
        let calls = calls_per_id.entry(id.to_owned()).or_default();
        *calls = calls.saturating_add(1);
        if *calls <= self.limit {
            Err(Answer::error(self.status).with_retry_after(retry_after_secs))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::header::RETRY_AFTER;
    use serde_json::json;

    use crate::domain::Channel;
    use crate::simulator::testing::{fast_config, notify, notify_request};
    use crate::simulator::{ErrorStatuses, RunningSimulator, SimConfig, Simulator};

    async fn statuses(running: &RunningSimulator, id: &str, calls: usize) -> Vec<u16> {
        let mut statuses = Vec::new();
        for _ in 0..calls {
            statuses.push(notify(running, id, "email").await.status().as_u16());
        }
        statuses
    }

    #[tokio::test]
    async fn a_missing_key_is_403_and_a_wrong_one_401() {
        let running = Simulator::spawn(fast_config()).await.unwrap();
        let url = format!("{}/v1/notify", running.url());
        let body = json!({"to": "a", "message": "b", "type": "sms"});
        let client = reqwest::Client::new();

        let missing = client.post(&url).json(&body).send().await.unwrap();
        assert_eq!(missing.status(), 403);
        assert_eq!(
            missing.json::<serde_json::Value>().await.unwrap(),
            json!({"detail": "Not authenticated"})
        );

        let wrong = client
            .post(&url)
            .header("X-API-Key", "nope")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401);
        assert_eq!(
            wrong.json::<serde_json::Value>().await.unwrap(),
            json!({"detail": "Invalid API Key"})
        );
    }

    #[tokio::test]
    async fn invalid_bodies_and_refused_types_are_422() {
        let config = SimConfig {
            accepted_types: vec![Channel::Email, Channel::Sms],
            ..fast_config()
        };
        let running = Simulator::spawn(config).await.unwrap();

        let bad = notify_request(&running, "bad")
            .body("{\"to\": 1")
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 422);
        let detail = &bad.json::<serde_json::Value>().await.unwrap()["detail"];
        assert_eq!(detail[0]["type"], "json_invalid");

        let push = notify(&running, "push", "push").await;
        assert_eq!(push.status(), 422);
        let detail = &push.json::<serde_json::Value>().await.unwrap()["detail"];
        assert_eq!(detail[0]["loc"], json!(["body", "type"]));
        assert_eq!(running.simulator.calls_of("push")[0].status, 422);
    }

    #[tokio::test]
    async fn a_delivery_is_200_with_a_provider_id() {
        let running = Simulator::spawn(fast_config()).await.unwrap();
        let delivered = notify(&running, "r-1", "push").await;
        assert_eq!(delivered.status(), 200);
        let body: serde_json::Value = delivered.json().await.unwrap();
        assert_eq!(body, json!({"status": "delivered", "provider_id": "p-1"}));

        let call = &running.simulator.calls()[0];
        assert_eq!(
            (call.id.as_str(), call.priority.as_deref(), call.status),
            ("r-1", Some("normal"), 200)
        );
    }

    #[tokio::test]
    async fn the_idempotency_key_names_the_request_over_the_trace_id() {
        let running = Simulator::spawn(fast_config()).await.unwrap();
        notify_request(&running, "trace")
            .header("Idempotency-Key", "key")
            .json(&json!({"to": "a", "message": "b", "type": "sms"}))
            .send()
            .await
            .unwrap();
        assert_eq!(running.simulator.deliveries_of("key"), 1);
        assert_eq!(running.simulator.deliveries_of("trace"), 0);
    }

    #[tokio::test]
    async fn calls_beyond_the_window_are_429_without_retry_after() {
        let config = SimConfig {
            window_calls: 3,
            ..fast_config()
        };
        let running = Simulator::spawn(config).await.unwrap();
        assert_eq!(statuses(&running, "w", 3).await, [200, 200, 200]);

        let refused = notify(&running, "w", "email").await;
        assert_eq!(refused.status(), 429);
        assert!(refused.headers().get(RETRY_AFTER).is_none());
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(body, json!({"error": "Rate limit exceeded"}));
    }

    #[tokio::test]
    async fn a_configured_retry_after_rides_on_every_429() {
        let config = SimConfig {
            window_calls: 3,
            retry_after_secs: Some(7),
            ..fast_config()
        };
        let running = Simulator::spawn(config).await.unwrap();
        statuses(&running, "w", 3).await;
        let refused = notify(&running, "w", "email").await;
        assert_eq!(refused.status(), 429);
        assert_eq!(refused.headers()[RETRY_AFTER], "7");
    }

    #[tokio::test]
    async fn throttled_calls_are_429_whatever_the_window() {
        let config = SimConfig {
            throttle_rate: 1.0,
            retry_after_secs: Some(2),
            ..fast_config()
        };
        let running = Simulator::spawn(config).await.unwrap();
        let throttled = notify(&running, "t", "email").await;
        assert_eq!(throttled.status(), 429);
        assert_eq!(throttled.headers()[RETRY_AFTER], "2");
    }

    #[tokio::test]
    async fn fail_first_fails_each_id_its_first_calls_only() {
        let config = SimConfig {
            fail_first: 2,
            ..fast_config()
        };
        let running = Simulator::spawn(config).await.unwrap();
        assert_eq!(statuses(&running, "a", 3).await, [500, 500, 200]);
        assert_eq!(statuses(&running, "b", 1).await, [500]);
        assert_eq!(statuses(&running, "a", 1).await, [200]);
    }

    #[tokio::test]
    async fn a_scripted_429_carries_the_configured_retry_after() {
        let config = SimConfig {
            fail_first: 1,
            fail_status: 429,
            retry_after_secs: Some(4),
            ..fast_config()
        };
        let running = Simulator::spawn(config).await.unwrap();
        let refused = notify(&running, "a", "sms").await;
        assert_eq!(refused.status(), 429);
        assert_eq!(refused.headers()[RETRY_AFTER], "4");
    }

    #[tokio::test]
    async fn a_stalled_call_outlasts_the_callers_timeout() {
        let config = SimConfig {
            stall_rate: 1.0,
            stall_ms: 60_000,
            ..fast_config()
        };
        let running = Simulator::spawn(config).await.unwrap();
        let stalled = notify_request(&running, "s")
            .timeout(std::time::Duration::from_millis(50))
            .json(&json!({"to": "a", "message": "b", "type": "sms"}))
            .send()
            .await;
        assert!(stalled.unwrap_err().is_timeout());
    }

    #[tokio::test]
    async fn an_error_rate_of_one_fails_every_call() {
        let config = SimConfig {
            error_rate: 1.0,
            ..fast_config()
        };
        let running = Simulator::spawn(config).await.unwrap();
        let failed = notify(&running, "e", "email").await;
        assert_eq!(failed.status(), 500);
        let body: serde_json::Value = failed.json().await.unwrap();
        assert_eq!(body, json!({"error": "External server error"}));
        assert_eq!(running.simulator.stats().by_status.get(&500), Some(&1));
    }

    #[tokio::test]
    async fn errors_are_drawn_from_the_configured_statuses() {
        let config = SimConfig {
            error_rate: 1.0,
            error_statuses: ErrorStatuses::of(&[502, 503]).unwrap(),
            seed: Some(3),
            ..fast_config()
        };
        let running = Simulator::spawn(config).await.unwrap();
        let answered = statuses(&running, "e", 40).await;
        assert!(answered.contains(&502) && answered.contains(&503));
        assert!(answered.iter().all(|status| [502, 503].contains(status)));
    }

    #[tokio::test]
    async fn the_ledger_marks_stalled_calls() {
        let config = SimConfig {
            stall_rate: 1.0,
            stall_ms: 0,
            ..fast_config()
        };
        let running = Simulator::spawn(config).await.unwrap();
        statuses(&running, "s", 2).await;
        let calls = running.simulator.calls_of("s");
        assert!(calls.iter().all(|call| call.stalled));
        assert_eq!(running.simulator.stats().duplicates_after_stall, 1);
    }

    #[tokio::test]
    async fn the_ledger_counts_duplicate_deliveries() {
        let running = Simulator::spawn(fast_config()).await.unwrap();
        statuses(&running, "twice", 2).await;
        statuses(&running, "once", 1).await;
        notify_request(&running, "anon").send().await.unwrap();

        let stats = running.simulator.stats();
        assert_eq!(stats.calls_total, 4);
        assert_eq!(stats.delivered, 3);
        assert_eq!(stats.unique_delivered, 2);
        assert_eq!(stats.duplicate_deliveries, 1);
        assert_eq!(stats.by_status.get(&422), Some(&1));
        assert_eq!(running.simulator.deliveries_of("twice"), 2);
    }
}
