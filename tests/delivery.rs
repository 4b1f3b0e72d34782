//! Delivery behaviour against a simulator that fails in scripted ways:
//! retries, permanent failures, Retry-After, timeouts, outages and priority.

mod common;

use std::time::Duration;

use common::{TestApp, email, fast_provider, reserved_port, spawn_app_with, spawn_gateway};
use herald::config::GatewayConfig;
use herald::domain::Channel;
use herald::simulator::{SimConfig, Simulator};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpSocket;

/// Waits until `id` has had `calls` provider calls, or failed.
async fn wait_for_calls(app: &common::TestApp, id: &str, calls: usize) {
    let made = async {
        while app.attempts_of(id).await.len() < calls && app.status_of(id).await != "failed" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(common::SETTLE_TIMEOUT, made)
        .await
        .unwrap_or_else(|_| panic!("{calls} calls not made"));
}

fn http_statuses(attempts: &[Value]) -> Vec<u64> {
    attempts
        .iter()
        .map(|a| a["http_status"].as_u64().unwrap_or(0))
        .collect()
}

#[tokio::test]
async fn two_500s_then_a_200_is_sent_after_three_attempts() {
    let provider = SimConfig {
        fail_first: 2,
        fail_status: 500,
        ..fast_provider()
    };
    let app = spawn_app_with(provider, |_| {}).await;
    let id = app.submit(&email()).await;
    assert_eq!(app.wait_until_final(&id).await, "sent");
    assert_eq!(http_statuses(&app.attempts_of(&id).await), [500, 500, 200]);
    assert_eq!(app.provider().calls_of(&id).len(), 3);
    assert_eq!(app.provider().deliveries_of(&id), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_400_fails_after_one_attempt_with_the_answer_in_the_history() {
    let provider = SimConfig {
        fail_first: 1,
        fail_status: 400,
        ..fast_provider()
    };
    let app = spawn_app_with(provider, |_| {}).await;
    let id = app.submit(&email()).await;
    assert_eq!(app.wait_until_final(&id).await, "failed");
    let attempts = app.attempts_of(&id).await;
    assert_eq!(http_statuses(&attempts), [400]);
    assert!(
        attempts[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("HTTP 400")
    );
    // Give a wrong retry the time it would need, then check there was none.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.provider().calls_of(&id).len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_refused_channel_is_a_permanent_failure() {
    let provider = SimConfig {
        accepted_types: vec![Channel::Email, Channel::Sms],
        ..fast_provider()
    };
    let app = spawn_app_with(provider, |_| {}).await;
    let push = app
        .submit(&json!({"to": "device-token", "message": "hi", "type": "push"}))
        .await;
    let sms = app
        .submit(&json!({"to": "+15550100", "message": "hi", "type": "sms"}))
        .await;
    assert_eq!(app.wait_until_final(&push).await, "failed");
    assert_eq!(app.wait_until_final(&sms).await, "sent");
    assert_eq!(http_statuses(&app.attempts_of(&push).await), [422]);
    app.stop().await;
}

#[tokio::test]
async fn a_429_with_retry_after_delays_the_next_attempt() {
    let provider = SimConfig {
        fail_first: 1,
        fail_status: 429,
        retry_after_secs: Some(1),
        ..fast_provider()
    };
    let app = spawn_app_with(provider, |_| {}).await;
    let id = app.submit(&email()).await;
    assert_eq!(app.wait_until_final(&id).await, "sent");

    let events = app.events_of(&id).await;
    let first_finished = events
        .iter()
        .find(|e| e["event"] == "attempt_finished")
        .unwrap();
    let second_started = events
        .iter()
        .filter(|e| e["event"] == "attempt_started")
        .nth(1)
        .unwrap();
    assert_eq!(first_finished["http_status"], 429);
    assert_eq!(second_started["attempt"], 1, "a 429 spends no attempt");
    let finished_at = first_finished["at_ms"].as_u64().unwrap();
    let next_at = first_finished["next_attempt_at_ms"].as_u64().unwrap();
    let started_at = second_started["at_ms"].as_u64().unwrap();
    assert!(
        next_at >= finished_at + 1_000,
        "the history names a next attempt {} ms after a Retry-After: 1",
        next_at - finished_at
    );
    assert!(
        started_at >= next_at,
        "the second attempt came {} ms after a Retry-After: 1",
        started_at - finished_at
    );
    app.stop().await;
}

#[tokio::test]
async fn transient_failures_stop_when_the_retry_budget_is_spent() {
    let provider = SimConfig {
        fail_first: 100,
        fail_status: 503,
        ..fast_provider()
    };
    let app = spawn_app_with(provider, |c| {
        c.max_attempts = 3;
        c.breaker_threshold = 100;
    })
    .await;
    let id = app.submit(&email()).await;
    assert_eq!(app.wait_until_final(&id).await, "failed");
    let attempts = app.attempts_of(&id).await;
    assert_eq!(http_statuses(&attempts), [503, 503, 503]);
    assert!(
        attempts[2]["error"]
            .as_str()
            .unwrap()
            .contains("retry budget spent")
    );
    app.stop().await;
}

#[tokio::test]
async fn a_provider_that_never_answers_is_cut_off_by_the_timeout() {
    let provider = SimConfig {
        stall_rate: 1.0,
        stall_ms: 60_000,
        ..fast_provider()
    };
    let app = spawn_app_with(provider, |c| {
        c.request_timeout_ms = 200;
        c.max_attempts = 2;
        c.breaker_threshold = 100;
    })
    .await;
    let id = app.submit(&email()).await;
    assert_eq!(app.wait_until_final(&id).await, "failed");
    let attempts = app.attempts_of(&id).await;
    assert_eq!(attempts.len(), 2);
    assert!(
        attempts
            .iter()
            .all(|a| a["error"].as_str().unwrap().starts_with("timeout"))
    );
    app.stop().await;
}

/// A gateway whose provider is down (nothing listens at its address) until
/// [`end_outage`] starts one there, with its retry budget and breaker settings.
async fn gateway_in_an_outage(max_attempts: u32, breaker: (u32, u64)) -> (TestApp, TcpSocket) {
    // Bound now, listening only once the outage ends: until then every call is refused.
    let provider_port = reserved_port();
    let provider_addr = provider_port.local_addr().unwrap();
    let settings = |c: &mut GatewayConfig| {
        c.max_attempts = max_attempts;
        (c.breaker_threshold, c.breaker_cooldown_ms) = breaker;
    };
    let app = spawn_gateway(
        &format!("http://{provider_addr}"),
        TempDir::new().unwrap(),
        settings,
    )
    .await;
    (app, provider_port)
}

/// Starts the provider, then expects every request sent, each delivered once.
async fn end_outage(app: &TestApp, provider_port: TcpSocket, ids: &[String]) {
    let listener = provider_port.listen(1024).unwrap();
    let provider = Simulator::spawn_on(listener, fast_provider()).unwrap();
    for id in ids {
        assert_eq!(app.wait_until_final(id).await, "sent", "{id}");
        assert_eq!(provider.simulator.deliveries_of(id), 1);
    }
}

#[tokio::test]
async fn an_outage_fails_nothing_and_everything_is_sent_once_it_ends() {
    // Two attempts: an outage must not spend the budget.
    let (app, provider_port) = gateway_in_an_outage(2, (2, 100)).await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(app.submit(&email()).await);
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    for id in &ids {
        let status = app.status_of(id).await;
        assert!(
            status == "processing" || status == "queued",
            "{id} is {status} during the outage"
        );
    }
    end_outage(&app, provider_port, &ids).await;
    let events = app.events_of(&ids[0]).await;
    assert!(events.iter().any(|e| {
        e["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("connect"))
    }));
    app.stop().await;
}

/// Every attempt here is a request's last (`max_attempts = 1`): the failures
/// that open the breaker must wait to learn they began an outage, not fail.
#[tokio::test]
async fn a_last_attempt_when_an_outage_begins_is_not_failed_by_it() {
    // Three failures open the breaker; its 3 s cool-down is also how long a
    // failed last attempt waits for the breaker's verdict.
    let (app, provider_port) = gateway_in_an_outage(1, (3, 3_000)).await;
    // Created first, then processed back to back: the three failures that
    // open the breaker come well within one cool-down of each other.
    let ids = [
        app.create_ok(&email()).await,
        app.create_ok(&email()).await,
        app.create_ok(&email()).await,
    ];
    for id in &ids {
        assert!(app.process(id).await.status().is_success());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let statuses = [
        app.status_of(&ids[0]).await,
        app.status_of(&ids[1]).await,
        app.status_of(&ids[2]).await,
    ];
    assert!(
        !statuses.iter().any(|status| status == "failed"),
        "failed by the outage: {statuses:?}"
    );
    end_outage(&app, provider_port, &ids).await;
    app.stop().await;
}

#[tokio::test]
async fn high_priority_work_queued_later_is_sent_before_normal_work() {
    // First run: one call an hour, so at most one request is leased (the
    // first one due) however long the submits take; the rest stay queued.
    let provider = Simulator::spawn(fast_provider()).await.unwrap();
    let one_call_an_hour = |c: &mut herald::config::GatewayConfig| {
        c.rate_per_sec = Some(1.0 / 3_600.0);
        c.rate_burst = 1;
        c.max_in_flight = 1;
    };
    let app = spawn_gateway(&provider.url(), TempDir::new().unwrap(), one_call_an_hour).await;
    let normal =
        json!({"to": "a@example.com", "message": "n", "type": "email", "priority": "normal"});
    let high = json!({"to": "b@example.com", "message": "h", "type": "email", "priority": "high"});
    let low = json!({"to": "c@example.com", "message": "l", "type": "email", "priority": "low"});
    let mut normals = Vec::new();
    for _ in 0..4 {
        normals.push(app.submit(&normal).await);
    }
    let low_id = app.submit(&low).await;
    let highs = [app.submit(&high).await, app.submit(&high).await];
    let data_dir = app.stop().await;

    // Second run, one call at a time: the backlog goes out in priority order.
    let app = spawn_gateway(&provider.url(), data_dir, |c| c.max_in_flight = 1).await;
    for id in normals.iter().chain(&highs).chain([&low_id]) {
        assert_eq!(app.wait_until_final(id).await, "sent");
    }

    let order: Vec<String> = provider
        .simulator
        .calls()
        .into_iter()
        .map(|c| c.id)
        .collect();
    let position = |id: &String| order.iter().position(|o| o == id).unwrap();
    // Only the first normal can have been leased before the highs arrived.
    for high in &highs {
        for normal in &normals[1..] {
            assert!(position(high) < position(normal), "order: {order:?}");
        }
    }
    assert_eq!(
        position(&low_id),
        order.len() - 1,
        "low goes last: {order:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_wrong_api_key_keeps_the_work_queued_until_it_is_fixed() {
    let provider = Simulator::spawn(fast_provider()).await.unwrap();
    let wrong_key = |config: &mut herald::config::GatewayConfig| {
        config.provider_api_key = herald::secret::Secret::from("not-the-key");
        config.max_attempts = 2;
    };
    let app = spawn_gateway(&provider.url(), TempDir::new().unwrap(), wrong_key).await;
    let id = app.submit(&email()).await;
    // Twice its attempt budget, all refused: the request is still not failed.
    wait_for_calls(&app, &id, 4).await;
    assert!(
        http_statuses(&app.attempts_of(&id).await)
            .iter()
            .all(|&s| s == 401)
    );
    assert_ne!(app.status_of(&id).await, "failed");
    let data_dir = app.stop().await;

    // Restarted with the right key, the same request goes out.
    let app = spawn_gateway(&provider.url(), data_dir, |_| {}).await;
    assert_eq!(app.wait_until_final(&id).await, "sent");
    assert_eq!(provider.simulator.deliveries_of(&id), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_provider_redirect_is_never_followed_and_the_key_goes_nowhere_else() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    // Another host, as far as Herald can tell: a second loopback address.
    let capture = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let location = format!("http://{}/v1/notify", capture.local_addr().unwrap());
    let reached = Arc::new(AtomicUsize::new(0));
    let counter = reached.clone();
    tokio::spawn(async move {
        while let Ok((_socket, _)) = capture.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let redirecting = axum::Router::new().route(
        "/v1/notify",
        axum::routing::post(move || async move {
            (
                axum::http::StatusCode::TEMPORARY_REDIRECT,
                [(axum::http::header::LOCATION, location)],
            )
        }),
    );
    let provider = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let provider_url = format!("http://{}", provider.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(provider, redirecting).await });

    let app = spawn_gateway(&provider_url, TempDir::new().unwrap(), |config| {
        config.max_attempts = 2;
    })
    .await;
    let id = app.submit(&email()).await;
    // Twice its attempt budget, all redirected: the request is still not failed.
    wait_for_calls(&app, &id, 4).await;
    let attempts = app.attempts_of(&id).await;
    assert!(
        http_statuses(&attempts).iter().all(|&s| s == 307),
        "{attempts:?}"
    );
    assert!(
        attempts.iter().all(|a| a["attempt"] == 1),
        "no attempt spent: {attempts:?}"
    );
    assert_ne!(app.status_of(&id).await, "failed");
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "nothing reached the redirect's target"
    );
    app.stop().await;
}
