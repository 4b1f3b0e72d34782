//! `--dispatch external`: the nodes publish the work and a sender of the
//! operator's own (`common/sender.rs`) consumes it and reports outcomes on
//! `herald.status`; statuses and history follow the reports, repeats change
//! nothing, a reported retry goes again on Herald's retry policy, and a
//! message no node can read (or one in the other dispatch mode's form) is
//! set aside in `herald.dead`.
//! Skipped, with a message, where the services are missing.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use tempfile::TempDir;

use common::nodes::{all_final, client, external_node, node, ready_external_node, services};
use common::sender::TestSender;
use common::services::scaleout_flags;
use lapin::types::AMQPValue;

#[tokio::test]
async fn external_senders_consume_the_work_and_their_reports_set_status_and_history() {
    let Some((redis, vhost)) = services() else {
        return;
    };
    let (client, _dir, herald) = ready_external_node(&redis, &vhost, &[]).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = herald.create(&client).await;
        assert_eq!(herald.process(&client, &id).await, 202);
        ids.push(id);
    }

    let mut sender = TestSender::consume(&vhost, "herald.work.email").await;
    let mut reported = HashMap::new();
    for n in 0..3 {
        let pointer = sender.next().await;
        let id = pointer["id"].as_str().unwrap().to_string();
        let report = if n < 2 {
            json!({"id": id, "seq": pointer["seq"], "outcome": "sent", "provider_id": format!("ext-{n}")})
        } else {
            json!({"id": id, "seq": pointer["seq"], "outcome": "failed", "error": "mailbox \"full\""})
        };
        // Every report twice: applying one must be idempotent.
        sender.report(&report).await;
        sender.report(&report).await;
        reported.insert(id, n);
    }
    assert_eq!(reported.len(), 3, "each request was published once");
    all_final(&herald, &client, &ids, Duration::from_secs(15)).await;
    for id in &ids {
        let n = reported[id];
        let record = herald.request(&client, id).await;
        let events = herald.events(&client, id).await;
        let kinds = herald.event_kinds(&client, id).await;
        assert_eq!(
            kinds,
            [
                "created",
                "process_requested",
                "attempt_started",
                "attempt_finished"
            ],
            "one attempt, whatever the repeats: {events}"
        );
        if n < 2 {
            assert_eq!(record["status"], "sent", "{record}");
            assert_eq!(record["provider_id"], format!("ext-{n}"));
        } else {
            assert_eq!(record["status"], "failed", "{record}");
            assert!(
                events.to_string().contains("mailbox \\\"full\\\""),
                "{events}"
            );
        }
    }
    sender.close().await;
    assert!(herald.terminate().await.success());
}

#[tokio::test]
async fn a_reported_retry_goes_again_until_the_retry_budget_is_spent() {
    let Some((redis, vhost)) = services() else {
        return;
    };
    let (client, _dir, herald) =
        ready_external_node(&redis, &vhost, &["--max-attempts", "3"]).await;
    let id = herald.create(&client).await;
    assert_eq!(herald.process(&client, &id).await, 202);
    let mut sender = TestSender::consume(&vhost, "herald.work.email").await;

    // Three transient failures: the first two go again, each with a new
    // seq; the third spends the budget of 3 attempts.
    let mut seqs = Vec::new();
    for attempt in 1..=3 {
        let pointer = sender.next().await;
        assert_eq!(
            pointer["id"],
            id.as_str(),
            "attempt {attempt} of the one request"
        );
        seqs.push(pointer["seq"].as_u64().unwrap());
        let report = json!({"id": id, "seq": pointer["seq"], "outcome": "retry", "error": "503 from the sender's provider"});
        sender.report(&report).await;
        sender.report(&report).await; // a repeat changes nothing
        if attempt < 3 {
            let status = herald.request(&client, &id).await["status"].clone();
            assert_ne!(status, "failed", "attempt {attempt} is retried");
        }
    }
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "a new seq per attempt: {seqs:?}"
    );
    all_final(
        &herald,
        &client,
        std::slice::from_ref(&id),
        Duration::from_secs(15),
    )
    .await;
    let record = herald.request(&client, &id).await;
    assert_eq!(record["status"], "failed", "{record}");
    let events = herald.events(&client, &id).await;
    assert!(
        events
            .to_string()
            .contains("retry budget spent after 3 attempts"),
        "{events}"
    );
    let kinds = herald.event_kinds(&client, &id).await;
    let started = kinds.iter().filter(|k| *k == "attempt_started").count();
    let finished = kinds.iter().filter(|k| *k == "attempt_finished").count();
    assert_eq!(
        (started, finished),
        (3, 3),
        "three attempts in the history: {events}"
    );
    let retries = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !e["next_attempt_at_ms"].is_null())
        .count();
    assert_eq!(retries, 2, "two attempts name their next one: {events}");
    sender.close().await;
    assert!(herald.terminate().await.success());
}

#[tokio::test]
async fn unreadable_reports_and_work_messages_are_set_aside_not_dropped() {
    let Some((redis, vhost)) = services() else {
        return;
    };
    let client = client();
    let dir = TempDir::new().unwrap();
    // One node consumes the reports, the other the work.
    let reports = external_node(&dir, &redis.url(), &vhost, &[]).await;
    let mut flags = scaleout_flags(&redis.url(), &vhost);
    flags.extend(["--instance-id", "worker"].map(String::from));
    let worker = node(&dir, "http://127.0.0.1:9", &flags).await;
    reports.wait_ready(&client).await;
    worker.wait_ready(&client).await;
    let mut dead = TestSender::consume(&vhost, "herald.dead").await;

    dead.publish("", "herald.status", b"{\"id\": 42}").await;
    dead.publish("herald.work", "email", b"not json").await;
    // A whole notification (an external-dispatch node's form) reaching the
    // node that dispatches itself: a cluster that mixes the modes.
    let whole = json!({"form": "notification", "id": common::nodes::uuid_like(), "seq": 1,
        "attempt": 1, "to": "a@example.com", "message": "m", "type": "sms", "priority": "low",
        "created_at": "2026-12-08T00:00:00.000Z", "created_at_ms": 1_796_688_000_000u64});
    dead.publish("herald.work", "sms", whole.to_string().as_bytes())
        .await;
    let mut set_aside = HashMap::new();
    for _ in 0..3 {
        let message = dead.next_message().await;
        let headers = message.properties.headers().clone().unwrap_or_default();
        let header = |name: &str| match headers.inner().get(name) {
            Some(AMQPValue::LongString(text)) => text.to_string(),
            other => panic!("{name}: {other:?}"),
        };
        let body = String::from_utf8_lossy(&message.data).to_string();
        set_aside.insert(
            header("x-herald-routing-key"),
            (body, header("x-herald-reason")),
        );
    }
    let (body, reason) = &set_aside["herald.status"];
    assert_eq!(body, "{\"id\": 42}", "the report as it was sent");
    assert!(reason.contains("not a status report"), "{reason}");
    let (body, reason) = &set_aside["email"];
    assert_eq!(body, "not json", "the work message as it was sent");
    assert!(reason.contains("not a work message"), "{reason}");
    let (body, reason) = &set_aside["sms"];
    assert_eq!(
        body,
        &whole.to_string(),
        "the whole notification as it was sent"
    );
    assert!(reason.contains("mixes dispatch modes"), "{reason}");
    dead.close().await;
    assert!(reports.terminate().await.success());
    assert!(worker.terminate().await.success());
}
