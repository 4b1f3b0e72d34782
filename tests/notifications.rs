//! The founding document's API, `/api/v1/notifications`, over HTTP against
//! the real application and the provider simulator: one call creates and
//! queues, the status reads in the document's words, the records are
//! `/v1/requests`' own, and every rule of `/v1` (validation, idempotency,
//! client keys and owners) holds here too.

mod common;

use common::{TestApp, eventually, fast_provider, spawn_app, spawn_app_with};
use herald::simulator::SimConfig;
use serde_json::{Value, json};
use tempfile::TempDir;

const BILLING: &str = "billing-key-0123456789";
const SUPPORT: &str = "support-key-0123456789";

fn notification() -> Value {
    json!({"to": "user@example.com", "message": "Your code is 1234", "channel": "email"})
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

/// `POST path` with `body`, an optional client key and idempotency key.
async fn post(
    app: &TestApp,
    path: &str,
    body: &Value,
    client_key: Option<&str>,
    idempotency_key: Option<&str>,
) -> reqwest::Response {
    let mut request = app.client.post(format!("{}{path}", app.address)).json(body);
    if let Some(key) = client_key {
        request = request.bearer_auth(key);
    }
    if let Some(key) = idempotency_key {
        request = request.header("idempotency-key", key);
    }
    request.send().await.expect("request sent")
}

/// Sends a notification that must be accepted; returns its id.
async fn send_ok(app: &TestApp, body: &Value) -> String {
    let response = post(app, "/api/v1/notifications", body, None, None).await;
    assert_eq!(response.status(), 202, "{body}");
    let answer: Value = response.json().await.unwrap();
    answer["notification_id"]
        .as_str()
        .expect("a notification_id")
        .to_string()
}

async fn notification_status(app: &TestApp, id: &str) -> String {
    let response = app.get(&format!("/api/v1/notifications/{id}")).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["notification_id"], id);
    body["status"].as_str().unwrap_or_default().to_string()
}

async fn wait_for_status(app: &TestApp, id: &str, wanted: &str) {
    eventually(&format!("{id} is {wanted}"), async || {
        notification_status(app, id).await == wanted
    })
    .await;
}

#[tokio::test]
async fn a_notification_is_queued_in_one_call_and_delivered() {
    let app = spawn_app().await;
    let response = post(&app, "/api/v1/notifications", &notification(), None, None).await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let body: Value = response.json().await.unwrap();
    let id = body["notification_id"].as_str().unwrap().to_string();
    assert_eq!(body["status"], "QUEUED");
    assert_eq!(
        body.as_object().unwrap().len(),
        2,
        "exactly two fields: {body}"
    );
    assert_eq!(location, format!("/api/v1/notifications/{id}"));

    wait_for_status(&app, &id, "DELIVERED").await;
    assert_eq!(app.provider().deliveries_of(&id), 1);
    // The same record, read through /v1.
    let record: Value = app
        .get(&format!("/v1/requests/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&record["status"], &record["type"], &record["priority"]),
        (&json!("sent"), &json!("email"), &json!("normal"))
    );
    let events: Vec<String> = app
        .events_of(&id)
        .await
        .iter()
        .map(|e| e["event"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        events,
        [
            "created",
            "process_requested",
            "attempt_started",
            "attempt_finished"
        ]
    );
    // Routes are labelled by their template, never by an id.
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains(r#"route="/api/v1/notifications""#));
    assert!(metrics.contains(r#"route="/api/v1/notifications/{id}""#));
    assert!(!metrics.contains(&id), "an id in a metric label");
    app.stop().await;
}

#[tokio::test]
async fn the_trailing_slash_the_type_alias_and_the_critical_priority_are_accepted() {
    let app = spawn_app().await;
    let cases = [
        (
            "/api/v1/notifications/",
            json!({"to": "+15550100", "message": "hi", "channel": "sms"}),
            "sms",
            "normal",
        ),
        (
            "/api/v1/notifications",
            json!({"to": "device-1", "message": "hi", "type": "push", "priority": "low"}),
            "push",
            "low",
        ),
        (
            "/api/v1/notifications",
            json!({"to": "a@b.c", "message": "reset", "type": "email", "priority": "critical"}),
            "email",
            "high",
        ),
        (
            "/api/v1/notifications/",
            json!({"to": "a@b.c", "message": "hi", "channel": "email", "priority": "high"}),
            "email",
            "high",
        ),
    ];
    for (path, body, channel, priority) in cases {
        let response = post(&app, path, &body, None, None).await;
        assert_eq!(response.status(), 202, "{path} {body}");
        let answer: Value = response.json().await.unwrap();
        let id = answer["notification_id"].as_str().unwrap().to_string();
        wait_for_status(&app, &id, "DELIVERED").await;
        let record: Value = app
            .get(&format!("/v1/requests/{id}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(record["type"], channel, "{body}");
        assert_eq!(record["priority"], priority, "{body}");
        let calls = app.provider().calls();
        let call = calls
            .iter()
            .find(|c| c.id == id)
            .expect("the provider was called");
        assert_eq!(call.priority.as_deref(), Some(priority), "{body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn invalid_notifications_get_a_json_error_and_are_never_stored() {
    let app = spawn_app_with(fast_provider(), |c| c.max_body_bytes = 2048).await;
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"to": "x", "message": "hi"}), 422, "required"),
        (
            json!({"to": "x", "message": "hi", "channel": "sms", "type": "sms"}),
            422,
            "not both",
        ),
        (
            json!({"to": "x", "message": "hi", "channel": "sms", "type": "email"}),
            422,
            "not both",
        ),
        (
            json!({"to": "x", "message": "hi", "channel": null}),
            422,
            "`channel` is required",
        ),
        (
            json!({"to": "x", "message": "hi", "channel": "fax"}),
            422,
            "unknown channel",
        ),
        (
            json!({"to": "x", "message": "hi", "type": "SMS"}),
            422,
            "unknown channel",
        ),
        (
            json!({"to": "x", "message": "hi", "channel": "sms", "priority": "urgent"}),
            422,
            "critical",
        ),
        (
            json!({"message": "hi", "channel": "sms"}),
            422,
            "`to` is required",
        ),
        (
            json!({"to": " ", "message": "hi", "channel": "sms"}),
            422,
            "must not be empty",
        ),
        (
            json!({"to": "a\u{202e}b", "message": "hi", "channel": "sms"}),
            422,
            "format characters",
        ),
        (
            json!({"to": "x", "message": "m".repeat(10_001), "channel": "sms"}),
            413,
            "larger than",
        ),
        (json!(["x", "hi", "sms"]), 422, "JSON object"),
    ];
    for (body, status, message) in cases {
        let response = post(&app, "/api/v1/notifications", &body, None, None).await;
        assert_eq!(response.status(), status, "{body}");
        let answer: Value = response.json().await.unwrap();
        let text = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{body}: {answer}");
    }
    let raw = app
        .client
        .post(format!("{}/api/v1/notifications", app.address))
        .header("content-type", "application/json")
        .body(r#"{"to": "x", "message": "#)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    assert_eq!(error_code(&raw.json().await.unwrap()), "malformed_json");
    let bad_key = post(
        &app,
        "/api/v1/notifications",
        &notification(),
        None,
        Some("has space"),
    )
    .await;
    assert_eq!(bad_key.status(), 400);
    assert_eq!(
        app.records.request_count().await.unwrap(),
        0,
        "nothing invalid is stored"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_replays_the_notification_and_refuses_another_body() {
    let app = spawn_app().await;
    let path = "/api/v1/notifications";
    let first = post(&app, path, &notification(), None, Some("reset-42")).await;
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let id = first.json::<Value>().await.unwrap()["notification_id"].clone();
    let id = id.as_str().unwrap().to_string();
    wait_for_status(&app, &id, "DELIVERED").await;

    let replay = post(&app, path, &notification(), None, Some("reset-42")).await;
    assert_eq!(replay.status(), 202);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let answer: Value = replay.json().await.unwrap();
    assert_eq!(answer["notification_id"], id.as_str());
    assert_eq!(
        answer["status"], "DELIVERED",
        "a replay tells the current status"
    );

    let other = json!({"to": "other@example.com", "message": "hi", "channel": "email"});
    let conflict = post(&app, path, &other, None, Some("reset-42")).await;
    assert_eq!(conflict.status(), 409);
    assert_eq!(
        error_code(&conflict.json().await.unwrap()),
        "idempotency_conflict"
    );
    assert_eq!(app.provider().deliveries_of(&id), 1, "delivered once");
    assert_eq!(app.records.request_count().await.unwrap(), 1);
    app.stop().await;
}

// A create that was stored but never asked for delivery (a /v1 create, or
// an /api/v1 call whose process step answered 503) ends queued and
// delivered once the client retries with its key.
#[tokio::test]
async fn a_replay_of_a_stored_but_unprocessed_create_asks_for_delivery() {
    let app = spawn_app().await;
    let v1_body =
        json!({"to": "user@example.com", "message": "Your code is 1234", "type": "email"});
    let created = post(&app, "/v1/requests", &v1_body, None, Some("order-7")).await;
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        notification_status(&app, &id).await,
        "QUEUED",
        "stored, not asked"
    );
    assert_eq!(app.provider().stats().calls_total, 0);

    let replay = post(
        &app,
        "/api/v1/notifications",
        &notification(),
        None,
        Some("order-7"),
    )
    .await;
    assert_eq!(replay.status(), 202);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(
        replay.json::<Value>().await.unwrap()["notification_id"],
        id.as_str()
    );
    wait_for_status(&app, &id, "DELIVERED").await;
    assert_eq!(app.provider().deliveries_of(&id), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_full_outbox_refuses_a_notification_but_answers_its_replay() {
    // A provider slower than the call timeout keeps the first one undelivered.
    let provider = SimConfig {
        latency_min_ms: 5_000,
        latency_max_ms: 5_000,
        ..fast_provider()
    };
    let app = spawn_app_with(provider, |c| {
        c.outbox_limit = 1;
        c.shutdown_grace_ms = 100;
    })
    .await;
    let path = "/api/v1/notifications";
    let first = post(&app, path, &notification(), None, Some("first")).await;
    assert_eq!(first.status(), 202);
    let id = first.json::<Value>().await.unwrap()["notification_id"].clone();

    let other = json!({"to": "other@example.com", "message": "hi", "type": "sms"});
    let refused = post(&app, path, &other, None, None).await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(error_code(&refused.json().await.unwrap()), "outbox_full");

    let replay = post(&app, path, &notification(), None, Some("first")).await;
    assert_eq!(replay.status(), 202, "an answer already given");
    assert_eq!(replay.json::<Value>().await.unwrap()["notification_id"], id);
    assert_eq!(app.records.request_count().await.unwrap(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_notification_the_provider_refuses_ends_failed() {
    let provider = SimConfig {
        error_rate: 1.0,
        ..fast_provider()
    };
    let app = spawn_app_with(provider, |c| c.max_attempts = 1).await;
    let id = send_ok(&app, &notification()).await;
    wait_for_status(&app, &id, "FAILED").await;
    assert_eq!(app.status_of(&id).await, "failed");
    app.stop().await;
}

#[tokio::test]
async fn unknown_and_malformed_ids_are_404_with_a_json_error() {
    let app = spawn_app().await;
    for (id, named) in [
        (
            "018f4a3e-0000-7000-8000-000000000000",
            "018f4a3e-0000-7000-8000-000000000000",
        ),
        ("not-an-id", "not-an-id"),
        ("%FF", "%FF"),
    ] {
        let response = app.get(&format!("/api/v1/notifications/{id}")).await;
        assert_eq!(response.status(), 404, "{id}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(error_code(&body), "request_not_found", "{id}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(named),
            "{body}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn with_client_keys_a_notification_needs_a_key_and_belongs_to_its_client() {
    let dir = TempDir::new().unwrap();
    let clients = dir.path().join("clients");
    std::fs::write(&clients, format!("billing {BILLING}\nsupport {SUPPORT}\n")).unwrap();
    let app = spawn_app_with(fast_provider(), |config| {
        config.client_keys_file = Some(clients);
    })
    .await;
    let path = "/api/v1/notifications";
    for key in [None, Some("not-a-known-key-at-all")] {
        let response = post(&app, path, &notification(), key, None).await;
        assert_eq!(response.status(), 401, "{key:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }
    assert_eq!(app.records.request_count().await.unwrap(), 0);

    let created = post(&app, path, &notification(), Some(BILLING), Some("k-1")).await;
    assert_eq!(created.status(), 202);
    let id = created.json::<Value>().await.unwrap()["notification_id"].clone();
    let url = format!(
        "{}/api/v1/notifications/{}",
        app.address,
        id.as_str().unwrap()
    );
    let read = |key: &'static str| app.client.get(&url).bearer_auth(key).send();
    assert_eq!(read(BILLING).await.unwrap().status(), 200);
    let theirs = read(SUPPORT).await.unwrap();
    assert_eq!(
        theirs.status(),
        404,
        "another client's notification is unknown"
    );
    assert_eq!(
        error_code(&theirs.json().await.unwrap()),
        "request_not_found"
    );
    assert_eq!(app.client.get(&url).send().await.unwrap().status(), 401);

    // The same idempotency key from another client is its own notification.
    let support = post(&app, path, &notification(), Some(SUPPORT), Some("k-1")).await;
    assert_eq!(support.status(), 202);
    assert!(support.headers().get("idempotent-replayed").is_none());
    assert_ne!(
        support.json::<Value>().await.unwrap()["notification_id"],
        id
    );
    let replay = post(&app, path, &notification(), Some(BILLING), Some("k-1")).await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.json::<Value>().await.unwrap()["notification_id"], id);
    assert_eq!(app.records.request_count().await.unwrap(), 2);
    app.stop().await;
}
