//! The scale-out cluster end to end: several real `herald` nodes on a
//! private durable Redis and a RabbitMQ of their own (a vhost, or a private
//! node for the broker kill): a node killed mid-delivery (and one started
//! again under its own instance id), the shared rate limit and breaker,
//! priority across nodes, RabbitMQ out of reach or killed (external
//! senders: `scaleout_external.rs`). Skipped, with a message, where the
//! services are missing.

mod common;

use std::time::Duration;

use common::nodes::{all_final, assert_delivered_once, client, node, services, submit};
use common::services::{PrivateRedis, Vhost, scaleout_flags};
use common::{fast_provider, spawn_provider_with_latency};
use herald::simulator::Simulator;
use serde_json::json;
use tempfile::TempDir;

#[tokio::test]
async fn a_node_killed_mid_delivery_loses_nothing_and_its_leases_come_back() {
    let Some((redis, vhost)) = services() else {
        return;
    };
    let provider = spawn_provider_with_latency(100, 500).await;
    let client = client();
    let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new().unwrap()).collect();
    let flags = scaleout_flags(&redis.url(), &vhost);
    let mut nodes = Vec::new();
    for dir in &dirs {
        nodes.push(node(dir, &provider.url(), &flags).await);
    }
    let priorities = ["high", "normal", "low"];
    let channels = ["email", "sms", "push"];
    let mut ids = Vec::new();
    let mut killed: Option<(tokio::time::Instant, u64)> = None;
    for i in 0..600 {
        // Halfway through, kill node 2 while calls are in flight; the rest
        // of the requests go to the two nodes left.
        if i == 300 {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while provider.simulator.calls_in_progress() < 5 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "calls never got in flight"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let in_flight = provider.simulator.calls_in_progress();
            nodes[1].kill();
            killed = Some((tokio::time::Instant::now(), in_flight));
        }
        let herald = match (killed.is_some(), i % 3) {
            (true, 1) => &nodes[2],
            (_, n) => &nodes[n],
        };
        let body = json!({
            "to": "user@example.com",
            "message": format!("message {i}"),
            "type": channels[(i / 3) % 3],
            "priority": priorities[i % 3],
        });
        ids.push(submit(herald, &client, &body).await);
    }
    let (killed_at, in_flight_at_kill) = killed.expect("node 2 was killed");
    let survivor = &nodes[0];
    all_final(survivor, &client, &ids, Duration::from_secs(60)).await;
    let all_final_after = killed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(15).saturating_sub(killed_at.elapsed())).await;
    let mut duplicates = 0;
    let mut recovered = 0;
    for id in &ids {
        let status = survivor.request(&client, id).await["status"].clone();
        assert!(
            status == "sent" || status == "failed",
            "{id} is {status} 15 s after the kill"
        );
        duplicates += u64::from(provider.simulator.deliveries_of(id) > 1);
        let events = survivor.events(&client, id).await;
        let events = events["events"].as_array().cloned().unwrap_or_default();
        recovered += usize::from(events.iter().any(|e| e["event"] == "lease_recovered"));
    }
    eprintln!(
        "node kill: every request final {all_final_after:?} after the kill; {duplicates} sent twice, {in_flight_at_kill} calls in flight at the kill; {recovered} with lease_recovered"
    );
    assert!(
        duplicates <= in_flight_at_kill,
        "{duplicates} ids sent twice, more than the {in_flight_at_kill} calls in flight at the kill"
    );
    assert!(
        recovered >= 1,
        "the history shows the killed node's leases recovered"
    );
}

/// A node killed and started again under the same `--instance-id` (as the
/// compose nodes are) beats the liveness key its killed run held leases
/// under, and the broker gave the killed run's messages to the node left,
/// which drops them (leased elsewhere): the restart itself must take those
/// leases back, or they wait for their deadline. Leases here last 10 minutes
/// (6 × the call timeout), so only the restart can bring them back within
/// the minute this test waits. It tells only when the restart beats within
/// the liveness key's 3 s (a later one lets the rescuer in, and passes).
#[tokio::test]
async fn a_node_started_again_under_its_instance_id_takes_its_killed_runs_leases_back() {
    let Some((redis, vhost)) = services() else {
        return;
    };
    // The node to kill calls slowly, so its calls are in flight at the kill;
    // the other quickly, so it is free to take the killed run's messages.
    let slow = spawn_provider_with_latency(3_000, 4_000).await;
    let fast = Simulator::spawn(fast_provider()).await.unwrap();
    let client = client();
    let dirs: Vec<TempDir> = (0..2).map(|_| TempDir::new().unwrap()).collect();
    let mut flags = scaleout_flags(&redis.url(), &vhost);
    flags.extend(["--request-timeout-ms", "100000"].map(String::from));
    let mut restarted_flags = flags.clone();
    restarted_flags.extend(["--instance-id", "restarted"].map(String::from));
    let mut restarted = node(&dirs[0], &slow.url(), &restarted_flags).await;
    let other = node(&dirs[1], &fast.url(), &flags).await;
    restarted.wait_ready(&client).await;
    other.wait_ready(&client).await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        let id = restarted.create(&client).await;
        assert_eq!(restarted.process(&client, &id).await, 202);
        ids.push(id);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while slow.simulator.calls_in_progress() < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "calls never got in flight"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    restarted.kill();
    let restarted = node(&dirs[0], &slow.url(), &restarted_flags).await;
    restarted.wait_ready(&client).await;
    all_final(&other, &client, &ids, Duration::from_secs(60)).await;
    let mut recovered = 0;
    for id in &ids {
        let kinds = other.event_kinds(&client, id).await;
        recovered += usize::from(kinds.iter().any(|kind| kind == "lease_recovered"));
    }
    assert!(
        recovered >= 1,
        "the history shows the killed run's leases recovered"
    );
}

#[tokio::test]
async fn three_nodes_share_one_rate_limit_and_deliver_at_the_providers_pace() {
    let Some((redis, vhost)) = services() else {
        return;
    };
    // The reference provider's window (50 calls in any 10 s), no failures.
    let reference = herald::simulator::SimConfig {
        error_rate: 0.0,
        latency_min_ms: 100,
        latency_max_ms: 500,
        ..herald::simulator::SimConfig::default()
    };
    let provider = Simulator::spawn(reference).await.unwrap();
    let client = client();
    let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new().unwrap()).collect();
    let mut flags = scaleout_flags(&redis.url(), &vhost);
    flags.extend(["--rate-limit".to_string(), "50/10s".to_string()]);
    let mut nodes = Vec::new();
    for dir in &dirs {
        nodes.push(node(dir, &provider.url(), &flags).await);
    }
    // A backlog that outlasts three windows: the provider takes 150 in the
    // first 30 s (50 per window), the rest after.
    const REQUESTS: usize = 200;
    const WINDOWS: u64 = 3;
    let mut ids = Vec::new();
    for i in 0..REQUESTS {
        let herald = &nodes[i % 3];
        let id = herald.create(&client).await;
        assert_eq!(herald.process(&client, &id).await, 202);
        ids.push(id);
    }
    all_final(&nodes[0], &client, &ids, Duration::from_secs(90)).await;
    let calls = provider.simulator.calls();
    let throttled = calls.iter().filter(|c| c.status == 429).count();
    let delivered: Vec<u64> = calls
        .iter()
        .filter(|c| c.status == 200)
        .map(|c| c.at_ms)
        .collect();
    assert_eq!(delivered.len(), REQUESTS);
    let first = delivered.iter().min().copied().unwrap_or_default();
    let in_windows = delivered
        .iter()
        .filter(|&&at| at - first < WINDOWS * 10_000)
        .count();
    let ratio = in_windows as f64 / (WINDOWS * 50) as f64;
    let mut per_second = std::collections::BTreeMap::new();
    for call in &calls {
        let second = call.at_ms.saturating_sub(first) / 1000;
        *per_second.entry((second, call.status)).or_insert(0) += 1;
    }
    let summary = format!(
        "shared limiter: {in_windows} delivered in the first {WINDOWS} windows of 10 s (capacity {}): {ratio:.3}; {throttled} of {} calls refused with 429; calls by (second, status): {per_second:?}",
        WINDOWS * 50,
        calls.len()
    );
    eprintln!("{summary}");
    assert!(ratio >= 0.95, "{summary}");
    assert!(throttled as f64 <= 0.01 * calls.len() as f64, "{summary}");
}

/// Per-channel limits are the cluster's: three nodes with
/// `--sms-rate-per-sec 2` make two SMS calls a second between them, not two
/// each, while email on the same nodes is not held back. Counted in the
/// simulator's own timestamps.
#[tokio::test]
async fn three_nodes_share_a_channel_limit_and_other_channels_go_meanwhile() {
    let Some((redis, vhost)) = services() else {
        return;
    };
    let provider = Simulator::spawn(fast_provider()).await.unwrap();
    let client = client();
    let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new().unwrap()).collect();
    let mut flags = scaleout_flags(&redis.url(), &vhost);
    flags.extend(["--sms-rate-per-sec", "2"].map(String::from));
    let mut nodes = Vec::new();
    for dir in &dirs {
        let herald = node(dir, &provider.url(), &flags).await;
        herald.wait_ready(&client).await;
        nodes.push(herald);
    }
    const EACH: usize = 12;
    const GAP_MS: u64 = 500;
    let body = |channel: &str, i: usize| json!({"to": "user@example.com", "message": format!("{channel} {i}"), "type": channel});
    // The SMS first: a backlog the limit holds back, on every node, while
    // the emails arrive.
    let mut sms = Vec::new();
    for i in 0..EACH {
        sms.push(submit(&nodes[i % 3], &client, &body("sms", i)).await);
    }
    let mut emails = Vec::new();
    for i in 0..EACH {
        emails.push(submit(&nodes[i % 3], &client, &body("email", i)).await);
    }
    let every = [sms.clone(), emails.clone()].concat();
    all_final(&nodes[0], &client, &every, Duration::from_secs(60)).await;
    assert_delivered_once(&provider.simulator, &every);

    let calls = provider.simulator.calls();
    let arrivals = |ids: &[String]| {
        let mut at: Vec<u64> = calls
            .iter()
            .filter(|c| c.is_delivery() && ids.contains(&c.id))
            .map(|c| c.at_ms)
            .collect();
        at.sort_unstable();
        at
    };
    let sms_at = arrivals(&sms);
    let email_at = arrivals(&emails);
    let summary = format!("SMS at {sms_at:?}, emails at {email_at:?} (ms of the simulator)");
    eprintln!("{summary}");
    // One SMS per 500 ms for the cluster: a 2 s window holds 4, one more
    // when an earlier call was late within its place; per node it would
    // hold 12.
    const WINDOW_MS: u64 = 2_000;
    let most_in_a_window = sms_at
        .iter()
        .map(|&from| {
            sms_at
                .iter()
                .filter(|&&at| at >= from && at < from + WINDOW_MS)
                .count()
        })
        .max()
        .unwrap_or_default();
    assert!(
        most_in_a_window <= (WINDOW_MS / GAP_MS) as usize + 1,
        "{most_in_a_window} SMS in one window of {WINDOW_MS} ms: {summary}"
    );
    // Email is not paced by the SMS limit: every email reached the provider
    // before the ninth SMS, which the limit holds at least 4 s after the first.
    let ninth_sms = sms_at[8];
    let last_email = email_at[EACH - 1];
    assert!(
        last_email < ninth_sms,
        "the last email waited for the SMS limit: {summary}"
    );
}

#[tokio::test]
async fn high_priority_work_overtakes_a_low_backlog_across_nodes() {
    let Some((redis, vhost)) = services() else {
        return;
    };
    let provider = Simulator::spawn(fast_provider()).await.unwrap();
    let client = client();
    let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new().unwrap()).collect();
    let mut flags = scaleout_flags(&redis.url(), &vhost);
    flags.extend(["--rate-limit".to_string(), "10/1s".to_string()]);
    let mut nodes = Vec::new();
    for dir in &dirs {
        nodes.push(node(dir, &provider.url(), &flags).await);
    }
    let body = |i: usize, priority: &str| json!({"to": "a@example.com", "message": format!("{i}"), "type": "email", "priority": priority});
    let mut lows = Vec::new();
    for i in 0..150 {
        lows.push(submit(&nodes[i % 3], &client, &body(i, "low")).await);
    }
    let mut highs = Vec::new();
    for i in 0..20 {
        highs.push(submit(&nodes[i % 3], &client, &body(i, "high")).await);
    }
    all_final(&nodes[0], &client, &highs, Duration::from_secs(30)).await;
    let order: Vec<String> = provider
        .simulator
        .calls()
        .into_iter()
        .map(|c| c.id)
        .collect();
    let position = |id: &String| order.iter().position(|o| o == id);
    let first_high = highs.iter().filter_map(position).min().unwrap();
    let last_high = highs.iter().filter_map(position).max().unwrap();
    let lows_between = order[first_high..last_high]
        .iter()
        .filter(|id| lows.contains(id))
        .count();
    let lows_left = lows
        .iter()
        .filter(|id| position(id).is_none_or(|p| p > last_high))
        .count();
    // Allowed to go between: what each node had prefetched (3 × 4) and what
    // went in the second the other nodes' movers may take to publish (10).
    assert!(
        lows_between <= 22,
        "{lows_between} low requests went out between the first and the last high"
    );
    assert!(
        lows_left >= 50,
        "the highs overtook a backlog: {lows_left} lows were still waiting"
    );
}

#[tokio::test]
async fn while_rabbitmq_is_out_of_reach_work_waits_in_redis_and_goes_once_it_is_back() {
    let Some(redis) = PrivateRedis::start() else {
        return;
    };
    // A vhost that does not exist yet: RabbitMQ refuses Herald, as if down.
    let Some(vhost) = Vhost::reserve() else {
        return;
    };
    let provider = Simulator::spawn(fast_provider()).await.unwrap();
    let client = client();
    let dir = TempDir::new().unwrap();
    let herald = node(&dir, &provider.url(), &scaleout_flags(&redis.url(), &vhost)).await;
    let ready = herald.wait_not_ready(&client, "queue").await;
    assert_eq!(ready["error"]["code"], "queue_unavailable", "{ready}");
    let mut ids = Vec::new();
    for _ in 0..10 {
        let id = herald.create(&client).await;
        assert_eq!(
            herald.process(&client, &id).await,
            202,
            "process answers without RabbitMQ"
        );
        ids.push(id);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for id in &ids {
        assert_eq!(
            herald.request(&client, id).await["status"],
            "queued",
            "{id} waits"
        );
    }
    assert_eq!(provider.simulator.calls().len(), 0);

    let back = tokio::time::Instant::now();
    vhost.open();
    all_final(&herald, &client, &ids, Duration::from_secs(30)).await;
    eprintln!("RabbitMQ back → all delivered in {:?}", back.elapsed());
    let ready = herald.wait_ready(&client).await;
    assert!(
        ready.get("warning").is_none(),
        "no warning once it is back: {ready}"
    );
    assert_delivered_once(&provider.simulator, &ids);
    // Out of reach again while connected: the broker force-closes the
    // connection of a deleted vhost, and the node must notice.
    vhost.delete();
    let ready = herald.wait_not_ready(&client, "queue").await;
    assert_eq!(ready["error"]["code"], "queue_unavailable", "{ready}");
    assert!(herald.terminate().await.success());
}

#[tokio::test]
async fn a_breaker_that_opens_at_one_node_holds_them_all() {
    let Some((redis, vhost)) = services() else {
        return;
    };
    let failing = herald::simulator::SimConfig {
        error_rate: 1.0,
        ..fast_provider()
    };
    let provider = Simulator::spawn(failing).await.unwrap();
    let client = client();
    let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new().unwrap()).collect();
    let mut nodes = Vec::new();
    // Only the first node's breaker opens (at the first failure); the others'
    // would never, so any pause they keep is the shared one.
    for (i, dir) in dirs.iter().enumerate() {
        let mut flags = scaleout_flags(&redis.url(), &vhost);
        let threshold = if i == 0 { "1" } else { "1000000" };
        flags.extend(
            [
                "--breaker-threshold",
                threshold,
                "--breaker-cooldown-ms",
                "5000",
            ]
            .map(String::from),
        );
        flags.extend(["--max-attempts", "1000000"].map(String::from));
        nodes.push(node(dir, &provider.url(), &flags).await);
    }
    for i in 0..30 {
        let herald = &nodes[i % 3];
        let id = herald.create(&client).await;
        assert_eq!(herald.process(&client, &id).await, 202);
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let calls = provider.simulator.calls();
    let first = calls
        .iter()
        .map(|c| c.at_ms)
        .min()
        .expect("calls were made");
    let held = calls
        .iter()
        .filter(|c| c.at_ms >= first + 1_000 && c.at_ms < first + 3_500)
        .count();
    assert!(
        held <= 5,
        "{held} calls went out while the first node's breaker was open ({} in all)",
        calls.len()
    );
}

#[tokio::test]
async fn a_broker_killed_under_load_loses_nothing_and_delivery_resumes_when_it_is_back() {
    let Some(redis) = PrivateRedis::start() else {
        return;
    };
    let Some(mut rabbit) = common::services::PrivateRabbit::start() else {
        return;
    };
    let provider = spawn_provider_with_latency(50, 150).await;
    let client = client();
    let dir = TempDir::new().unwrap();
    let flags = [
        "--backend".to_string(),
        "scaleout".into(),
        "--redis-url".into(),
        redis.url(),
        "--amqp-url".into(),
        rabbit.amqp_url(),
    ];
    let herald = node(&dir, &provider.url(), &flags).await;
    herald.wait_ready(&client).await;
    let mut ids = Vec::new();
    for _ in 0..100 {
        let id = herald.create(&client).await;
        assert_eq!(herald.process(&client, &id).await, 202);
        ids.push(id);
    }
    rabbit.kill();
    // The broker is gone: creates and processes still answer.
    for _ in 0..50 {
        let id = herald.create(&client).await;
        assert_eq!(
            herald.process(&client, &id).await,
            202,
            "process without the broker"
        );
        ids.push(id);
    }
    let calls_at_kill = provider.simulator.calls().len();
    rabbit.restart();
    let back = tokio::time::Instant::now();
    let deadline = back + Duration::from_secs(30);
    while provider.simulator.calls().len() == calls_at_kill && calls_at_kill < ids.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery within 30 s of the broker's return"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first_delivery = back.elapsed();
    all_final(&herald, &client, &ids, Duration::from_secs(30)).await;
    eprintln!(
        "broker restart: first delivery {first_delivery:?} after it listened again, every request final {:?} after",
        back.elapsed()
    );
    for id in &ids {
        assert_eq!(herald.request(&client, id).await["status"], "sent", "{id}");
        assert!(provider.simulator.deliveries_of(id) >= 1, "{id} delivered");
    }
    assert!(herald.terminate().await.success());
}
