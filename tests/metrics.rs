//! `/metrics` exposes every metric `docs/metrics.md` promises, in the
//! Prometheus text format, with values that follow what happened.

mod common;

use std::collections::BTreeSet;

use common::{email, fast_provider, spawn_app, spawn_app_with};
use herald::simulator::SimConfig;

/// The tests of this file share the process's one recorder: each holds this
/// while it reads `/metrics`, so one test's requests do not show in the other's.
static RECORDER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Metric names from the table in docs/metrics.md (first column, in backticks).
fn documented_metrics() -> Vec<String> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    doc.lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .map(str::to_string)
        .collect()
}

/// The value of the first sample whose line starts with `prefix`.
fn sample(exposition: &str, prefix: &str) -> Option<f64> {
    exposition
        .lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test]
async fn every_documented_metric_is_exported_and_counts_what_happened() {
    let _recorder = RECORDER.lock().await;
    // The first call of each request fails once, so retries show up too.
    let provider = SimConfig {
        fail_first: 1,
        ..fast_provider()
    };
    let app = spawn_app_with(provider, |_| {}).await;
    let id = app.submit(&email()).await;
    assert_eq!(app.wait_until_final(&id).await, "sent");
    assert_eq!(app.get("/v1/requests/not-an-id").await.status(), 404);
    // `sent` is readable as soon as it is written; the dispatcher counts it
    // once the write is durable, a moment later.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while !app
        .get("/metrics")
        .await
        .text()
        .await
        .unwrap()
        .contains("herald_requests_finished_total{status=\"sent\"} 1")
    {
        assert!(tokio::time::Instant::now() < deadline, "sent never counted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let exposition = response.text().await.unwrap();

    let documented = documented_metrics();
    assert!(
        documented.len() >= 12,
        "docs/metrics.md lists {documented:?}"
    );
    for name in &documented {
        assert!(
            exposition
                .lines()
                .any(|line| line.starts_with(name.as_str())),
            "{name} is documented but not exported"
        );
    }
    let created = sample(&exposition, "herald_requests_created_total").unwrap();
    assert!(created >= 1.0);
    assert!(
        sample(
            &exposition,
            "herald_provider_attempts_total{outcome=\"retry\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        sample(
            &exposition,
            "herald_provider_attempts_total{outcome=\"sent\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        exposition.contains("route=\"/v1/requests/{id}\""),
        "routes are labelled by template"
    );
    assert!(exposition.contains("herald_http_request_duration_seconds_bucket"));
    assert!(
        !exposition.contains(&id),
        "request ids never become label values"
    );
    app.stop().await;
}

/// Every series of an exposition: its name and labels, without the value.
fn series(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' ').map(|(series, _)| series.to_string()))
        .collect()
}

#[tokio::test]
async fn invented_methods_and_paths_add_no_series() {
    let _recorder = RECORDER.lock().await;
    let app = spawn_app().await;
    let invent = |i: usize| reqwest::Method::from_bytes(format!("X{i:0>200}").as_bytes()).unwrap();
    let send = |method: reqwest::Method, path: String| {
        app.client
            .request(method, format!("{}{path}", app.address))
            .send()
    };
    // Once, so that every series the loop below can touch exists already.
    assert_eq!(
        send(invent(0), "/v1/requests".into())
            .await
            .unwrap()
            .status(),
        405
    );
    assert_eq!(
        send(reqwest::Method::GET, "/nowhere-0".into())
            .await
            .unwrap()
            .status(),
        404
    );
    app.get("/metrics").await; // the scrape's own series, too
    let before = app.get("/metrics").await.text().await.unwrap();

    for i in 1..=1_000 {
        let answer = send(invent(i), "/v1/requests".into()).await.unwrap();
        assert_eq!(answer.status(), 405);
        let answer = send(reqwest::Method::GET, format!("/nowhere-{i}"))
            .await
            .unwrap();
        assert_eq!(answer.status(), 404);
    }
    let after = app.get("/metrics").await.text().await.unwrap();

    assert_eq!(series(&before), series(&after), "no series was added");
    assert!(
        after.len().abs_diff(before.len()) < 1_024,
        "only counter values changed: {} bytes, then {}",
        before.len(),
        after.len()
    );
    assert!(after.contains("method=\"other\""));
    assert!(after.contains("route=\"unmatched\""));
    assert!(!after.contains("X000") && !after.contains("nowhere"));
    app.stop().await;
}
