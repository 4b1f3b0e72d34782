//! Retention through the API: a request delivered longer ago than
//! `--retention-secs` is deleted (404, and gone from `/metrics`' count), while
//! one that was never processed stays however old it is.

mod common;

use std::time::Duration;

use common::{email, eventually, fast_provider, spawn_app_with};

#[tokio::test]
async fn delivered_requests_are_deleted_after_the_retention_time_and_undelivered_stay() {
    let app = spawn_app_with(fast_provider(), |config| config.retention_secs = 1).await;
    let delivered = app.submit(&email()).await;
    let never_processed = app.create_ok(&email()).await;
    assert_eq!(app.wait_until_final(&delivered).await, "sent");

    // Kept for a second after `sent`, then the next sweep (every second) deletes it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while app.get(&format!("/v1/requests/{delivered}")).await.status() != 404 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{delivered} was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = app.get(&format!("/v1/requests/{delivered}/events")).await;
    assert_eq!(events.status(), 404);
    assert_eq!(app.status_of(&never_processed).await, "queued");

    // The sweep counts its batch once the purge returns, a moment after the
    // request is gone: CI once read the counter in between.
    eventually("the purge counted in /metrics", async || {
        let metrics = app.get("/metrics").await.text().await.unwrap();
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("herald_requests_purged_total "))
            .and_then(|value| value.parse::<f64>().ok())
            .is_some_and(|count| count >= 1.0)
    })
    .await;
}
