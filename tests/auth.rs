//! Client API keys: with a keys file, every `/v1` call needs a client's key,
//! a request is visible only to its creator, idempotency keys are per
//! client, `/metrics` can need its own key, and SIGHUP reloads the files.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::child::HeraldProcess;
use common::{TestApp, email, fast_provider, spawn_app_with};
use herald::simulator::Simulator;
use serde_json::{Value, json};
use tempfile::TempDir;

const BILLING: &str = "billing-key-0123456789";
const SUPPORT: &str = "support-key-0123456789";
const METRICS: &str = "metrics-key-0123456789";

/// Writes the client keys file and the metrics key file into a new directory.
fn key_files() -> (TempDir, PathBuf, PathBuf) {
    let dir = TempDir::new().unwrap();
    let clients = dir.path().join("clients");
    std::fs::write(
        &clients,
        format!("# name key\nbilling {BILLING}\nsupport {SUPPORT}\n"),
    )
    .unwrap();
    let metrics = dir.path().join("metrics");
    std::fs::write(&metrics, format!("{METRICS}\n")).unwrap();
    (dir, clients, metrics)
}

async fn app_with_keys() -> (TestApp, TempDir) {
    let (dir, clients, metrics) = key_files();
    let app = spawn_app_with(fast_provider(), |config| {
        config.client_keys_file = Some(clients);
        config.metrics_key_file = Some(metrics);
    })
    .await;
    (app, dir)
}

async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> reqwest::Response {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = app.client.request(method, format!("{}{path}", app.address));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    request.send().await.expect("request sent")
}

async fn code_of(response: reqwest::Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn without_a_known_key_every_client_call_is_401_json() {
    let (app, _keys) = app_with_keys().await;
    let id = "018f4a3e-0000-7000-8000-000000000000";
    let calls = [
        ("POST", "/v1/requests".to_string()),
        ("GET", format!("/v1/requests/{id}")),
        ("POST", format!("/v1/requests/{id}/process")),
        ("GET", format!("/v1/requests/{id}/events")),
        ("GET", "/v1/no-such-route".to_string()),
        ("DELETE", "/v1/requests".to_string()),
        ("GET", "/api/v1/requests".to_string()),
    ];
    for (method, path) in &calls {
        for key in [None, Some("not-a-known-key-at-all"), Some(METRICS)] {
            let response = call(&app, method, path, key, Some(&email())).await;
            assert_eq!(response.status(), 401, "{method} {path} with {key:?}");
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            assert_eq!(code_of(response).await, "unauthorized");
        }
    }
    for open in ["/health", "/ready", "/openapi.json"] {
        assert_eq!(app.get(open).await.status(), 200, "{open} needs no key");
    }
    assert_eq!(app.records.request_count().await.unwrap(), 0);
    app.stop().await;
}

#[tokio::test]
async fn a_request_is_visible_only_to_the_client_that_created_it() {
    let (app, _keys) = app_with_keys().await;
    let created = call(&app, "POST", "/v1/requests", Some(BILLING), Some(&email())).await;
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    for path in [
        format!("/v1/requests/{id}"),
        format!("/v1/requests/{id}/events"),
    ] {
        let theirs = call(&app, "GET", &path, Some(SUPPORT), None).await;
        assert_eq!(theirs.status(), 404, "{path}");
        assert_eq!(code_of(theirs).await, "request_not_found");
        assert_eq!(
            call(&app, "GET", &path, Some(BILLING), None).await.status(),
            200
        );
    }
    let process = format!("/v1/requests/{id}/process");
    let theirs = call(&app, "POST", &process, Some(SUPPORT), None).await;
    assert_eq!(theirs.status(), 404);
    let status: Value = call(
        &app,
        "GET",
        &format!("/v1/requests/{id}"),
        Some(BILLING),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        status["status"], "queued",
        "the other client's process did nothing"
    );
    assert_eq!(
        call(&app, "POST", &process, Some(BILLING), None)
            .await
            .status(),
        202
    );
    app.stop().await;
}

#[tokio::test]
async fn idempotency_keys_are_per_client() {
    let (app, _keys) = app_with_keys().await;
    let create = |key: &'static str, body: Value| {
        app.client
            .post(format!("{}/v1/requests", app.address))
            .bearer_auth(key)
            .header("idempotency-key", "order-42")
            .json(&body)
            .send()
    };
    let billing = create(BILLING, email()).await.unwrap();
    assert_eq!(billing.status(), 201);
    let billing_id = billing.json::<Value>().await.unwrap()["id"].clone();

    // The same key from another client: its own request, not billing's id,
    // and another body is no 409 (which would tell that the key is taken).
    let support = create(SUPPORT, email()).await.unwrap();
    assert_eq!(support.status(), 201);
    assert!(support.headers().get("idempotent-replayed").is_none());
    let support_id = support.json::<Value>().await.unwrap()["id"].clone();
    assert_ne!(support_id, billing_id);
    let other = json!({"to": "other@example.com", "message": "hi", "type": "sms"});
    assert_eq!(
        create(SUPPORT, other).await.unwrap().status(),
        409,
        "its own key, reused"
    );

    let replay = create(BILLING, email()).await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.json::<Value>().await.unwrap()["id"], billing_id);
    assert_eq!(app.records.request_count().await.unwrap(), 2);
    app.stop().await;
}

#[tokio::test]
async fn metrics_need_their_own_key_when_one_is_set() {
    let (app, _keys) = app_with_keys().await;
    for key in [None, Some(BILLING)] {
        let response = call(&app, "GET", "/metrics", key, None).await;
        assert_eq!(response.status(), 401, "{key:?}");
        assert_eq!(code_of(response).await, "unauthorized");
    }
    let response = call(&app, "GET", "/metrics", Some(METRICS), None).await;
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("herald_"));
    app.stop().await;
}

#[tokio::test]
async fn sighup_reloads_the_client_keys() {
    let provider = Simulator::spawn(fast_provider()).await.unwrap();
    let (_keys, clients, _) = key_files();
    let data_dir = TempDir::new().unwrap();
    let client = reqwest::Client::new();
    let herald = HeraldProcess::start(
        &data_dir,
        &provider.url(),
        &["--client-keys-file", clients.to_str().unwrap()],
    )
    .await;
    herald.wait_ready(&client).await;
    let create = |key: &'static str| {
        client
            .post(format!("{}/v1/requests", herald.address))
            .bearer_auth(key)
            .json(&email())
            .send()
    };
    assert_eq!(create(BILLING).await.unwrap().status(), 201);

    const ROTATED: &str = "billing-key-rotated-0123";
    std::fs::write(&clients, format!("billing {ROTATED}\n")).unwrap();
    herald.signal(libc::SIGHUP);
    let deadline = tokio::time::Instant::now() + common::SETTLE_TIMEOUT;
    while create(ROTATED).await.unwrap().status() != 201 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new key never worked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        create(BILLING).await.unwrap().status(),
        401,
        "the old key is gone"
    );
    assert_eq!(create(SUPPORT).await.unwrap().status(), 401);
    assert!(herald.terminate().await.success());
}
