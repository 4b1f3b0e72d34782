//! The scale-out engine's records end to end: real `herald` binaries with
//! `--backend scaleout` on a private durable Redis and a private RabbitMQ
//! vhost: the start-up guard, one node's life of a request, idempotency
//! across nodes, Redis killed, restarted, or back empty. Skipped, with a
//! message, on a machine without `redis-server` or RabbitMQ. The cluster's
//! behaviour (kills, the shared limiter, priority, the broker) is in
//! `scaleout_cluster.rs`.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::child::HeraldProcess;
use common::nodes::{
    OneNode, all_final, assert_delivered_once, client, node, one_ready_node, redis_command,
    services, submit, uuid_like,
};
use common::services::scaleout_flags;
use common::{email, fast_provider};
use herald::simulator::Simulator;
use serde_json::{Value, json};
use tempfile::TempDir;

#[tokio::test]
async fn the_guard_refuses_a_redis_that_keeps_nothing_on_disk() {
    if std::net::TcpStream::connect(("127.0.0.1", 6379)).is_err() {
        common::missing(
            "Redis on 127.0.0.1:6379",
            "redis-server --port 6379 --save ''",
        );
        return;
    }
    let fsync = std::process::Command::new("redis-cli")
        .args(["-p", "6379", "CONFIG", "GET", "appendfsync"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    if fsync.contains("always") {
        eprintln!("skipped: the Redis on 127.0.0.1:6379 fsyncs every write; nothing to refuse");
        return;
    }
    let dir = TempDir::new().unwrap();
    let flags = [
        "--backend",
        "scaleout",
        "--redis-url",
        "redis://127.0.0.1:6379",
        "--redis-prefix",
        "herald-guard-test",
    ];
    let refused = HeraldProcess::try_start(dir.path(), "http://127.0.0.1:9", &flags).await;
    let Err(refusal) = refused else {
        panic!("herald started on a Redis without appendfsync always");
    };
    assert!(!refusal.status.success());
    let line = &refusal.last_line;
    assert!(
        line.contains("appendonly") || line.contains("appendfsync"),
        "the refusal names the setting: {line}"
    );
    assert!(
        line.contains("--appendfsync always"),
        "and how to fix it: {line}"
    );
    assert!(line.contains("--allow-volatile-redis"), "{line}");
}

#[tokio::test]
async fn an_operator_may_accept_a_volatile_redis_and_ready_says_so() {
    let Some((redis, vhost)) = services() else {
        return;
    };
    let client = client();
    let _: () = redis_command(&redis, &["CONFIG", "SET", "appendfsync", "everysec"]);
    let dir = TempDir::new().unwrap();
    let mut flags = scaleout_flags(&redis.url(), &vhost);
    flags.push("--allow-volatile-redis".into());
    let herald = node(&dir, "http://127.0.0.1:9", &flags).await;
    let ready = herald.wait_ready(&client).await;
    let warning = ready["warning"].as_str().unwrap_or_default();
    assert!(warning.contains("appendfsync everysec"), "{ready}");
    herald.terminate().await;
}

#[tokio::test]
async fn one_node_creates_processes_and_delivers_with_the_history() {
    let Some((redis, vhost)) = services() else {
        return;
    };
    let OneNode {
        provider,
        client,
        herald,
        dir: _dir,
    } = one_ready_node(&redis, &vhost).await;

    let id = herald.create(&client).await;
    assert_eq!(herald.request(&client, &id).await["status"], "queued");
    assert_eq!(herald.process(&client, &id).await, 202);
    assert_eq!(
        herald.process(&client, &id).await,
        200,
        "a second process changes nothing"
    );
    all_final(
        &herald,
        &client,
        std::slice::from_ref(&id),
        Duration::from_secs(15),
    )
    .await;
    let record = herald.request(&client, &id).await;
    assert_eq!(record["status"], "sent", "{record}");
    assert_eq!(record["attempts"], 1);
    assert_eq!(provider.simulator.deliveries_of(&id), 1);

    let kinds = herald.event_kinds(&client, &id).await;
    assert_eq!(
        kinds,
        [
            "created",
            "process_requested",
            "attempt_started",
            "attempt_finished"
        ]
    );
    let unknown = format!("{}/v1/requests/{}", herald.address, uuid_like());
    assert_eq!(client.get(unknown).send().await.unwrap().status(), 404);
    assert!(herald.terminate().await.success(), "a clean stop");
}

#[tokio::test]
async fn a_node_starts_with_per_channel_limits_and_refuses_one_that_is_not_a_rate() {
    let Some((redis, vhost)) = services() else {
        return;
    };
    let client = client();
    let dir = TempDir::new().unwrap();
    let flags = scaleout_flags(&redis.url(), &vhost);
    let mut zero: Vec<&str> = flags.iter().map(String::as_str).collect();
    zero.extend(["--sms-rate-per-sec", "0"]);
    let refused = HeraldProcess::try_start(dir.path(), "http://127.0.0.1:9", &zero).await;
    let Err(refusal) = refused else {
        panic!("herald started with --sms-rate-per-sec 0");
    };
    assert!(
        refusal.last_line.contains("rate `0` per second"),
        "{refusal:?}"
    );

    let provider = Simulator::spawn(fast_provider()).await.unwrap();
    let mut limited = flags.clone();
    limited.extend(
        [
            "--email-rate-per-sec",
            "50",
            "--sms-rate-per-sec",
            "2",
            "--push-rate-per-sec",
            "5",
        ]
        .map(String::from),
    );
    let herald = node(&dir, &provider.url(), &limited).await;
    herald.wait_ready(&client).await;
    let mut ids = Vec::new();
    for channel in ["email", "sms", "push"] {
        let body = json!({"to": "user@example.com", "message": "hi", "type": channel});
        ids.push(submit(&herald, &client, &body).await);
    }
    all_final(&herald, &client, &ids, Duration::from_secs(15)).await;
    for id in &ids {
        assert_eq!(herald.request(&client, id).await["status"], "sent", "{id}");
    }
    assert_delivered_once(&provider.simulator, &ids);
    assert!(herald.terminate().await.success());
}

#[tokio::test]
async fn two_hundred_racing_creates_with_one_key_over_three_nodes_make_one_request() {
    let Some((redis, vhost)) = services() else {
        return;
    };
    let client = client();
    let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new().unwrap()).collect();
    let flags = scaleout_flags(&redis.url(), &vhost);
    let mut nodes = Vec::new();
    for dir in &dirs {
        nodes.push(node(dir, "http://127.0.0.1:9", &flags).await);
    }
    let addresses: Vec<String> = nodes.iter().map(|n| n.address.clone()).collect();
    let mut racing = tokio::task::JoinSet::new();
    for i in 0..200 {
        let url = format!("{}/v1/requests", addresses[i % 3]);
        let client = client.clone();
        racing.spawn(async move {
            let response = client
                .post(url)
                .header("Idempotency-Key", "one-key")
                .json(&email())
                .send()
                .await
                .expect("request sent");
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (status, body["id"].as_str().unwrap_or_default().to_string())
        });
    }
    let mut ids = HashSet::new();
    let mut created = 0;
    while let Some(answer) = racing.join_next().await {
        let (status, id) = answer.unwrap();
        assert!(status == 201 || status == 200, "a create answered {status}");
        created += usize::from(status == 201);
        ids.insert(id);
    }
    assert_eq!(ids.len(), 1, "every answer names one request: {ids:?}");
    assert!(created >= 1);
    let other = json!({"to": "someone@else.com", "message": "other", "type": "email"});
    let conflict = client
        .post(format!("{}/v1/requests", addresses[1]))
        .header("Idempotency-Key", "one-key")
        .json(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(conflict.status(), 409);
    let count = client
        .get(format!("{}/ready", addresses[2]))
        .send()
        .await
        .unwrap();
    assert_eq!(count.status(), 200);
}

#[tokio::test]
async fn a_redis_killed_and_restarted_keeps_every_acknowledged_request_and_dispatch_resumes() {
    let Some((mut redis, vhost)) = services() else {
        return;
    };
    let OneNode {
        provider,
        client,
        herald,
        dir: _dir,
    } = one_ready_node(&redis, &vhost).await;
    let mut sent = Vec::new();
    for _ in 0..20 {
        let id = herald.create(&client).await;
        assert_eq!(herald.process(&client, &id).await, 202);
        sent.push(id);
    }
    all_final(&herald, &client, &sent, Duration::from_secs(20)).await;
    let mut waiting = Vec::new();
    for _ in 0..10 {
        waiting.push(herald.create(&client).await);
    }

    redis.kill();
    let started = tokio::time::Instant::now();
    let answer = client
        .post(format!("{}/v1/requests", herald.address))
        .json(&email())
        .send()
        .await
        .expect("an answer, not a hang");
    assert_eq!(answer.status(), 503, "a create while Redis is down");
    assert!(answer.headers().contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "answered in {:?}",
        started.elapsed()
    );
    let ready = client
        .get(format!("{}/ready", herald.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "not ready while Redis is down");

    redis.restart();
    herald.wait_ready(&client).await;
    for id in sent.iter().chain(&waiting) {
        let events = herald.events(&client, id).await;
        assert!(
            events["events"].as_array().is_some_and(|e| !e.is_empty()),
            "{id} and its history survived the restart: {events}"
        );
    }
    for id in &sent {
        assert_eq!(herald.request(&client, id).await["status"], "sent");
    }
    for id in &waiting {
        assert_eq!(herald.process(&client, id).await, 202);
    }
    all_final(&herald, &client, &waiting, Duration::from_secs(30)).await;
    assert_delivered_once(&provider.simulator, &waiting);
    assert!(herald.terminate().await.success());
}

#[tokio::test]
async fn a_redis_that_comes_back_empty_stops_the_node_from_serving() {
    let Some((redis, vhost)) = services() else {
        return;
    };
    let client = client();
    let dir = TempDir::new().unwrap();
    let herald = node(
        &dir,
        "http://127.0.0.1:9",
        &scaleout_flags(&redis.url(), &vhost),
    )
    .await;
    herald.wait_ready(&client).await;
    herald.create(&client).await;
    redis_command(&redis, &["FLUSHALL"]);
    let body = herald.wait_not_ready(&client, "storage").await;
    assert!(body.to_string().contains("lost"), "{body}");
    assert_eq!(
        herald.create_status(&client).await,
        503,
        "no new work on a dataset that lost the old"
    );
    assert!(
        !herald.terminate().await.success(),
        "the node exits non-zero"
    );
}

#[tokio::test]
async fn scripts_redis_forgot_are_loaded_again() {
    let Some((redis, vhost)) = services() else {
        return;
    };
    let OneNode {
        provider: _provider,
        client,
        herald,
        dir: _dir,
    } = one_ready_node(&redis, &vhost).await;
    let first = herald.create(&client).await;
    assert_eq!(herald.process(&client, &first).await, 202);
    all_final(
        &herald,
        &client,
        std::slice::from_ref(&first),
        Duration::from_secs(15),
    )
    .await;
    // As after a restart: Redis keeps no script.
    redis_command(&redis, &["SCRIPT", "FLUSH"]);
    let second = herald.create(&client).await;
    assert_eq!(herald.process(&client, &second).await, 202);
    all_final(
        &herald,
        &client,
        std::slice::from_ref(&second),
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(herald.request(&client, &second).await["status"], "sent");
    assert!(herald.terminate().await.success());
}
