//! Prometheus metrics: the recorder, and one function per thing Herald
//! measures, so every metric's name and labels are written in one place
//! (and listed for operators in `docs/metrics.md`).

use std::sync::Mutex;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// Latency buckets, in seconds: fine below 10 ms where the API lives, coarse
/// up to the provider's timeouts.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

static RECORDER: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs the process-wide recorder once; later calls return the same handle
/// (tests start several gateways in one process, some at the same moment).
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let mut installed = RECORDER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full("herald_group_commit_batch_size".into()),
            BATCH_BUCKETS,
        )?
        .install_recorder()?;
    *installed = Some(handle.clone());
    Ok(handle)
}

/// How often recorded histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The text exposition of every metric.
pub fn render(handle: &PrometheusHandle) -> String {
    handle.run_upkeep();
    handle.render()
}

/// Folds histogram samples into their buckets every few seconds until
/// `shutdown`. The exporter keeps every raw sample until upkeep runs, and runs
/// it by itself only on a scrape: without this task a gateway nobody scrapes
/// keeps one or more samples per request, for ever.
pub async fn run_upkeep(handle: PrometheusHandle, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(UPKEEP_INTERVAL) => handle.run_upkeep(),
        }
    }
}

/// `method` is a label value as [`method_label`] gives it, `route` a matched
/// route template or `unmatched`: a client picks neither freely, so the series
/// stay bounded.
pub fn http_request(method: &'static str, route: &str, status: u16, elapsed: Duration) {
    let route = route.to_string();
    let labels = [("method", method.to_string()), ("route", route.clone())];
    counter!("herald_http_requests_total", "method" => method, "route" => route, "status" => status.to_string()).increment(1);
    histogram!("herald_http_request_duration_seconds", &labels).record(elapsed.as_secs_f64());
}

/// The `method` label: one of HTTP's nine standard methods, or `other` for any
/// name a client invents (each would otherwise become a series, kept for ever).
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    const KNOWN: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::HEAD, "HEAD"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::CONNECT, "CONNECT"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::TRACE, "TRACE"),
        (Method::PATCH, "PATCH"),
    ];
    KNOWN
        .iter()
        .find(|(known, _)| known == method)
        .map_or("other", |(_, label)| label)
}

pub fn request_created() {
    counter!("herald_requests_created_total").increment(1);
}

pub fn request_finished(status: &'static str) {
    counter!("herald_requests_finished_total", "status" => status).increment(1);
}

pub fn outbox_depth(priority: &'static str, state: &'static str, depth: u64) {
    gauge!("herald_outbox_depth", "priority" => priority, "state" => state).set(depth as f64);
}

pub fn provider_attempt(outcome: &'static str, elapsed: Duration) {
    counter!("herald_provider_attempts_total", "outcome" => outcome).increment(1);
    histogram!("herald_provider_call_duration_seconds", "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}

pub fn rate_limiter_wait(waited: Duration) {
    histogram!("herald_rate_limiter_wait_seconds").record(waited.as_secs_f64());
}

/// 0 closed, 1 half-open, 2 open.
pub fn circuit_breaker_state(state: u8) {
    gauge!("herald_circuit_breaker_state").set(f64::from(state));
}

pub fn group_commit(batch_size: usize, flush: Duration) {
    histogram!("herald_group_commit_batch_size").record(batch_size as f64);
    histogram!("herald_group_commit_flush_duration_seconds").record(flush.as_secs_f64());
}

pub fn recovered_leases(count: usize) {
    counter!("herald_recovered_leases_total").increment(count as u64);
}

pub fn requests_purged(count: usize) {
    counter!("herald_requests_purged_total").increment(count as u64);
}

/// Whether the store takes writes: one gauge per state, 1 for the current one.
pub fn storage_state(current: &'static str) {
    for state in ["serving", "unavailable", "lost"] {
        gauge!("herald_storage_state", "state" => state).set(f64::from(u8::from(state == current)));
    }
}

/// A start that went on without acknowledged data (`--accept-data-loss`);
/// `None` only registers the counters at 0.
pub fn data_loss_accepted(missing: Option<u64>) {
    let (starts, requests) = missing.map_or((0, 0), |missing| (1, missing));
    counter!("herald_data_loss_accepted_total").increment(starts);
    counter!("herald_data_loss_accepted_requests_total").increment(requests);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_standard_methods_are_labelled_by_name() {
        assert_eq!(method_label(&axum::http::Method::POST), "POST");
        assert_eq!(method_label(&axum::http::Method::PATCH), "PATCH");
        for invented in ["FOO", "get", "X".repeat(2_000).as_str()] {
            let method = axum::http::Method::from_bytes(invented.as_bytes()).unwrap();
            assert_eq!(method_label(&method), "other", "{invented:.20}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn upkeep_runs_until_shutdown_and_then_returns() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let shutdown = CancellationToken::new();
        let upkeep = tokio::spawn(run_upkeep(recorder.handle(), shutdown.clone()));

        tokio::time::sleep(UPKEEP_INTERVAL * 3).await;
        assert!(!upkeep.is_finished(), "upkeep must keep running");

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(1), upkeep)
            .await
            .expect("upkeep stops on shutdown")
            .unwrap();
    }
}
