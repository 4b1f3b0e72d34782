//! Helpers the simulator's tests share: a config without latency and a client
//! call to the notify endpoint.

use serde_json::json;

use super::{RunningSimulator, SimConfig};

/// The reference provider's behaviour minus its latency and its random 500s,
/// so tests run fast and answer what they script.
pub(super) fn fast_config() -> SimConfig {
    SimConfig {
        latency_min_ms: 0,
        latency_max_ms: 0,
        error_rate: 0.0,
        ..SimConfig::default()
    }
}

/// A notify call for request `id` with the right key and no body yet.
pub(super) fn notify_request(running: &RunningSimulator, id: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(format!("{}/v1/notify", running.url()))
        .query(&[("priority", "normal"), ("trace_id", id)])
        .header(
            "X-API-Key",
            running.simulator.shared.config.api_key.expose(),
        )
}

/// A valid notify call of type `kind` for request `id`.
pub(super) async fn notify(running: &RunningSimulator, id: &str, kind: &str) -> reqwest::Response {
    notify_request(running, id)
        .json(&json!({"to": "someone@example.com", "message": "hello", "type": kind}))
        .send()
        .await
        .unwrap()
}
