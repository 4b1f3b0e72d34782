//! Contract tests: every endpoint and every error case, over HTTP, against the
//! real application and a real provider simulator.

mod common;

use common::{email, fast_provider, spawn_app, spawn_app_with};
use herald::simulator::SimConfig;
use serde_json::{Value, json};

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn create_answers_201_with_an_id_and_the_request_is_queued() {
    let app = spawn_app().await;
    let response = app.create(&email()).await;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_str().unwrap();
    assert_eq!(
        body.as_object().unwrap().len(),
        1,
        "exactly {{\"id\"}}: {body}"
    );
    assert_eq!(location, format!("/v1/requests/{id}"));

    let response = app.get(&format!("/v1/requests/{id}")).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], id);
    assert_eq!(body["status"], "queued");
    assert_eq!(body["type"], "email");
    assert_eq!(body["priority"], "normal");
    assert_eq!(
        app.provider().stats().calls_total,
        0,
        "nothing is sent before process"
    );
    app.stop().await;
}

#[tokio::test]
async fn process_answers_202_then_200_and_sends_exactly_once() {
    let app = spawn_app().await;
    let id = app.create_ok(&email()).await;

    let response = app.process(&id).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], id.as_str());
    assert!(["queued", "processing", "sent"].contains(&body["status"].as_str().unwrap()));

    let again = app.process(&id).await;
    assert_eq!(again.status(), 200);
    assert_eq!(app.wait_until_final(&id).await, "sent");

    let after = app.process(&id).await;
    assert_eq!(after.status(), 200);
    let body: Value = after.json().await.unwrap();
    assert_eq!(body["status"], "sent");
    assert_eq!(app.provider().deliveries_of(&id), 1);
    assert_eq!(app.provider().stats().calls_total, 1);
    app.stop().await;
}

#[tokio::test]
async fn every_channel_and_priority_is_delivered() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for channel in ["email", "sms", "push"] {
        for priority in ["high", "normal", "low"] {
            let body =
                json!({"to": "+15550100", "message": "hi", "type": channel, "priority": priority});
            ids.push(app.submit(&body).await);
        }
    }
    for id in &ids {
        assert_eq!(app.wait_until_final(id).await, "sent");
    }
    let calls = app.provider().calls();
    assert!(
        calls.iter().all(|c| c.priority.is_some()),
        "priority goes to the provider"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_history_records_every_transition_and_attempt() {
    let app = spawn_app().await;
    let id = app.submit(&email()).await;
    assert_eq!(app.wait_until_final(&id).await, "sent");

    let response = app.get(&format!("/v1/requests/{id}/events")).await;
    assert_eq!(response.status(), 200);
    let events = app.events_of(&id).await;
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "created",
            "process_requested",
            "attempt_started",
            "attempt_finished"
        ]
    );
    let finished = &events[3];
    assert_eq!(finished["status"], "sent");
    assert_eq!(finished["attempt"], 1);
    assert_eq!(finished["http_status"], 200);
    assert!(finished["provider_id"].as_str().unwrap().starts_with("p-"));
    assert!(finished["latency_ms"].is_u64());
    assert!(
        events
            .windows(2)
            .all(|w| w[0]["at_ms"].as_u64() <= w[1]["at_ms"].as_u64())
    );
    app.stop().await;
}

#[tokio::test]
async fn unknown_and_malformed_ids_are_404_with_a_json_error() {
    let app = spawn_app().await;
    let unknown = "018f4a3e-0000-7000-8000-000000000000";
    for path in [
        format!("/v1/requests/{unknown}"),
        format!("/v1/requests/{unknown}/events"),
        "/v1/requests/not-an-id".to_string(),
        "/v1/requests/%00%01".to_string(),
        // Not UTF-8 once decoded.
        "/v1/requests/%FF".to_string(),
        "/v1/requests/%FF/events".to_string(),
    ] {
        let response = app.get(&path).await;
        assert_eq!(response.status(), 404, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(error_code(&body), "request_not_found", "{path}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("no request")
        );
    }
    for id in [unknown, "12345", "%FF"] {
        let response = app.process(id).await;
        assert_eq!(response.status(), 404);
        assert_eq!(
            error_code(&response.json().await.unwrap()),
            "request_not_found"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn invalid_bodies_get_the_right_status_and_are_never_stored() {
    let app = spawn_app_with(fast_provider(), |c| c.max_body_bytes = 2048).await;
    let long_to = "a".repeat(513);
    let long_message = "m".repeat(10_001);
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"message": "hi", "type": "sms"}),
            422,
            "validation_failed",
        ),
        (json!({"to": "x", "type": "sms"}), 422, "validation_failed"),
        (
            json!({"to": "x", "message": "hi"}),
            422,
            "validation_failed",
        ),
        (
            json!({"to": "", "message": "hi", "type": "sms"}),
            422,
            "validation_failed",
        ),
        (
            json!({"to": "x", "message": "   ", "type": "sms"}),
            422,
            "validation_failed",
        ),
        (
            json!({"to": "x", "message": "hi", "type": "fax"}),
            422,
            "validation_failed",
        ),
        (
            json!({"to": "x", "message": "hi", "type": "SMS"}),
            422,
            "validation_failed",
        ),
        (
            json!({"to": 42, "message": "hi", "type": "sms"}),
            422,
            "validation_failed",
        ),
        (
            json!({"to": "x", "message": "hi", "type": "sms", "priority": "urgent"}),
            422,
            "validation_failed",
        ),
        (
            json!({"to": long_to, "message": "hi", "type": "sms"}),
            422,
            "validation_failed",
        ),
        (json!(["to", "message"]), 422, "validation_failed"),
        // serde alone would read an array of four as the four fields.
        (
            json!(["x@y.z", "hi", "email", "high"]),
            422,
            "validation_failed",
        ),
        (json!("x@y.z"), 422, "validation_failed"),
        (
            json!({"to": "x", "message": long_message, "type": "sms"}),
            413,
            "payload_too_large",
        ),
    ];
    for (body, status, code) in cases {
        let response = app.create(&body).await;
        assert_eq!(response.status(), status, "{body}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(error_code(&answer), code, "{body}: {answer}");
        assert!(!answer["error"]["message"].as_str().unwrap().is_empty());
    }

    let raw = |content_type: &'static str, body: &'static str| {
        app.client
            .post(format!("{}/v1/requests", app.address))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let malformed = raw("application/json", r#"{"to": "x", "message": "#)
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    assert_eq!(
        error_code(&malformed.json().await.unwrap()),
        "malformed_json"
    );
    let not_json = raw("text/plain", r#"{"to":"x","message":"hi","type":"sms"}"#)
        .await
        .unwrap();
    assert_eq!(not_json.status(), 415);
    assert_eq!(
        error_code(&not_json.json().await.unwrap()),
        "unsupported_media_type"
    );
    let empty = raw("application/json", "").await.unwrap();
    assert_eq!(empty.status(), 400);

    assert_eq!(
        app.records.request_count().await.unwrap(),
        0,
        "nothing invalid is stored"
    );
    app.stop().await;
}

#[tokio::test]
async fn idempotency_keys_replay_the_original_and_refuse_a_different_body() {
    let app = spawn_app().await;
    let send = |key: &'static str, body: Value| {
        app.client
            .post(format!("{}/v1/requests", app.address))
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let first = send("order-42", email()).await.unwrap();
    assert_eq!(first.status(), 201);
    let first_id = first.json::<Value>().await.unwrap()["id"].clone();

    let replay = send("order-42", email()).await.unwrap();
    assert_eq!(replay.status(), 201);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.json::<Value>().await.unwrap()["id"], first_id);

    let other_body = json!({"to": "other@example.com", "message": "hi", "type": "email"});
    let conflict = send("order-42", other_body).await.unwrap();
    assert_eq!(conflict.status(), 409);
    assert_eq!(
        error_code(&conflict.json().await.unwrap()),
        "idempotency_conflict"
    );

    let bad_key = send("has space", email()).await.unwrap();
    assert_eq!(bad_key.status(), 400);
    assert_eq!(
        error_code(&bad_key.json().await.unwrap()),
        "invalid_idempotency_key"
    );

    assert_eq!(app.records.request_count().await.unwrap(), 1);
    app.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json_errors() {
    let app = spawn_app().await;
    let missing = app.get("/v2/nothing").await;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        error_code(&missing.json().await.unwrap()),
        "route_not_found"
    );

    let wrong_method = app
        .client
        .delete(format!("{}/v1/requests", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(
        error_code(&wrong_method.json().await.unwrap()),
        "method_not_allowed"
    );
    app.stop().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    let health = app.get("/health").await;
    assert_eq!(health.status(), 200);
    assert_eq!(health.json::<Value>().await.unwrap()["status"], "ok");
    let ready = app.get("/ready").await;
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "ready");
    app.stop().await;
}

/// An outbox limit of one, and a provider that takes 5 s per call, so the
/// first request processed keeps the outbox full.
async fn app_with_an_outbox_of_one() -> common::TestApp {
    let slow = SimConfig {
        latency_min_ms: 5_000,
        latency_max_ms: 5_000,
        ..fast_provider()
    };
    spawn_app_with(slow, |c| {
        c.outbox_limit = 1;
        c.shutdown_grace_ms = 100;
    })
    .await
}

#[tokio::test]
async fn a_full_outbox_refuses_creates_with_503_and_retry_after() {
    let app = app_with_an_outbox_of_one().await;
    app.submit(&email()).await;

    let refused = app.create(&email()).await;
    assert_eq!(refused.status(), 503);
    assert!(
        refused.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert_eq!(error_code(&refused.json().await.unwrap()), "outbox_full");
    assert_eq!(app.records.request_count().await.unwrap(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_full_outbox_still_answers_an_idempotent_replay() {
    let app = app_with_an_outbox_of_one().await;
    let send = |key: &'static str| {
        app.client
            .post(format!("{}/v1/requests", app.address))
            .header("idempotency-key", key)
            .json(&email())
            .send()
    };
    let first = send("order-7").await.unwrap();
    let id = first.json::<Value>().await.unwrap()["id"].clone();
    assert_eq!(app.process(id.as_str().unwrap()).await.status(), 202);

    let replay = send("order-7").await.unwrap();
    assert_eq!(replay.status(), 201, "an answer already given");
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.json::<Value>().await.unwrap()["id"], id);
    assert_eq!(
        send("order-8").await.unwrap().status(),
        503,
        "new work waits"
    );
    assert_eq!(app.records.request_count().await.unwrap(), 1);
    app.stop().await;
}

#[tokio::test]
async fn format_characters_in_to_and_a_repeated_idempotency_key_are_refused() {
    let app = spawn_app().await;
    for to in [
        "user\u{202E}moc.elpmaxe@evil.com",
        "us\u{200B}er@example.com",
        "\u{FEFF}+15550100",
    ] {
        let body = json!({"to": to, "message": "hi", "type": "email"});
        let response = app.create(&body).await;
        assert_eq!(response.status(), 422, "{to:?}");
        assert_eq!(
            error_code(&response.json().await.unwrap()),
            "validation_failed"
        );
    }
    let repeated = app
        .client
        .post(format!("{}/v1/requests", app.address))
        .header("idempotency-key", "order-1")
        .header("idempotency-key", "order-2")
        .json(&email())
        .send()
        .await
        .unwrap();
    assert_eq!(repeated.status(), 400);
    let body: Value = repeated.json().await.unwrap();
    assert_eq!(error_code(&body), "invalid_idempotency_key");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("one Idempotency-Key")
    );
    assert_eq!(
        app.records.request_count().await.unwrap(),
        0,
        "nothing invalid is stored"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_create_without_content_type_is_read_as_json() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(format!("{}/v1/requests", app.address))
        .body(email().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "no Content-Type: JSON");
    let not_json = app
        .client
        .post(format!("{}/v1/requests", app.address))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(email().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        not_json.status(),
        415,
        "an explicit other type is still refused"
    );
    assert_eq!(app.records.request_count().await.unwrap(), 1);
    app.stop().await;
}
