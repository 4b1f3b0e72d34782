//! The real `herald` binary as a child process: killed with SIGKILL in the
//! middle of a concurrent load, restarted on the same data directory, it loses
//! nothing it acknowledged and finishes every request.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::child::HeraldProcess;
use common::{SETTLE_TIMEOUT, email, eventually, spawn_provider_with_latency};
use serde_json::Value;
use tempfile::TempDir;

const CLIENTS: usize = 32;
const REQUESTS: usize = 3_000;
const KILL_AFTER_ACKS: usize = 1_000;
const MAX_IN_FLIGHT: usize = 8;

/// What the clients got acknowledged before the kill.
#[derive(Default)]
struct Acknowledged {
    created: Mutex<Vec<String>>,
    processed: Mutex<HashSet<String>>,
    count: AtomicUsize,
}

async fn client_loop(
    address: String,
    client: reqwest::Client,
    acked: Arc<Acknowledged>,
    budget: Arc<AtomicUsize>,
) {
    while budget.fetch_sub(1, Ordering::SeqCst) > 0 {
        let Ok(response) = client
            .post(format!("{address}/v1/requests"))
            .json(&email())
            .send()
            .await
        else {
            return; // the server is gone
        };
        if response.status() != 201 {
            return;
        }
        let Ok(body) = response.json::<Value>().await else {
            return;
        };
        let id = body["id"].as_str().unwrap().to_string();
        acked.created.lock().unwrap().push(id.clone());
        acked.count.fetch_add(1, Ordering::SeqCst);
        let Ok(response) = client
            .post(format!("{address}/v1/requests/{id}/process"))
            .send()
            .await
        else {
            return;
        };
        if response.status() == 202 {
            acked.processed.lock().unwrap().insert(id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_flight_loses_nothing_and_every_request_is_sent() {
    let provider = spawn_provider_with_latency(5, 30).await;
    let data_dir = TempDir::new().unwrap();
    let client = reqwest::Client::new();
    let in_flight = MAX_IN_FLIGHT.to_string();
    let flags = ["--max-in-flight", in_flight.as_str()];
    let mut herald = HeraldProcess::start(&data_dir, &provider.url(), &flags).await;
    herald.wait_ready(&client).await;

    let acked = Arc::new(Acknowledged::default());
    let budget = Arc::new(AtomicUsize::new(REQUESTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(client_loop(
                herald.address.clone(),
                client.clone(),
                acked.clone(),
                budget.clone(),
            ))
        })
        .collect();
    eventually(
        "enough creates are acknowledged to kill herald",
        async || acked.count.load(Ordering::SeqCst) >= KILL_AFTER_ACKS,
    )
    .await;
    herald.kill();
    for client in clients {
        client.await.unwrap();
    }
    let created = acked.created.lock().unwrap().clone();
    let processed = acked.processed.lock().unwrap().clone();
    assert!(created.len() >= KILL_AFTER_ACKS);

    let herald = HeraldProcess::start(&data_dir, &provider.url(), &flags).await;
    herald.wait_ready(&client).await;
    // Every acknowledged create survived; a client whose process call was cut off retries it.
    for id in &created {
        let found = herald.request(&client, id).await;
        assert_eq!(
            found["id"],
            id.as_str(),
            "acknowledged request {id} was lost"
        );
        if !processed.contains(id) {
            assert!([200, 202].contains(&herald.process(&client, id).await));
        }
    }
    wait_until_drained(&herald, &client).await;
    for id in &created {
        let body = herald.request(&client, id).await;
        assert_eq!(body["status"], "sent", "{id}");
        assert!(
            provider.simulator.deliveries_of(id) >= 1,
            "{id} never reached the provider"
        );
    }
    let duplicates = provider.simulator.stats().duplicate_deliveries;
    assert!(
        duplicates <= MAX_IN_FLIGHT as u64,
        "{duplicates} duplicate deliveries; at most {MAX_IN_FLIGHT} calls were in flight at the kill"
    );
    assert!(herald.terminate().await.success());
}

async fn wait_until_drained(herald: &HeraldProcess, client: &reqwest::Client) {
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    loop {
        let ready = herald.wait_ready(client).await;
        if ready["pending"] == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "outbox never drained: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
