//! Each side of the scale-out engine notices when the other lost its data
//! (`src/store/scaleout/dataset.rs`): a RabbitMQ that comes back empty gets
//! every request it held published again, and a Redis wiped while the
//! nodes were down stops them from serving (with work queued or none),
//! unless the operator accepts the loss. The nodes run `--dispatch external`, so the work stays in the
//! queues where the test can count it. Skipped, with a message, where the
//! services are missing.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

use common::child::HeraldProcess;
use common::nodes::{external_node, ready_external_node, redis_command, services};
use common::sender::TestSender;
use common::services::Vhost;

/// Creates and processes `n` emails; their ids.
async fn submit_emails(herald: &HeraldProcess, client: &reqwest::Client, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let id = herald.create(client).await;
        assert_eq!(herald.process(client, &id).await, 202);
        ids.push(id);
    }
    ids
}

/// Waits, up to 20 s, until `herald.work.email` holds `n` messages.
async fn wait_for_messages(vhost: &Vhost, n: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let held = messages_in_email_queue(vhost).await;
        if held == Some(n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "herald.work.email holds {held:?} messages, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn messages_in_email_queue(vhost: &Vhost) -> Option<u32> {
    let connection = Connection::connect(&vhost.amqp_url(), ConnectionProperties::default())
        .await
        .ok()?;
    let channel = connection.create_channel().await.ok()?;
    let passive = QueueDeclareOptions {
        passive: true,
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare("herald.work.email".into(), passive, FieldTable::default())
        .await
        .ok();
    let _ = connection.close(200, "counted".into()).await;
    queue.map(|queue| queue.message_count())
}

/// Consumes `herald.work.email` until every id in `ids` arrived.
async fn consume_all(vhost: &Vhost, ids: &[String]) {
    let mut sender = TestSender::consume(vhost, "herald.work.email").await;
    let mut missing: HashSet<&str> = ids.iter().map(String::as_str).collect();
    while !missing.is_empty() {
        let pointer = sender.next().await;
        missing.remove(pointer["id"].as_str().unwrap());
    }
    sender.close().await;
}

#[tokio::test]
async fn a_broker_that_lost_its_messages_gets_every_waiting_request_again() {
    let Some((redis, vhost)) = services() else {
        return;
    };
    let (client, _dir, herald) = ready_external_node(&redis, &vhost, &[]).await;
    let ids = submit_emails(&herald, &client, 20).await;
    wait_for_messages(&vhost, 20).await;

    // Deleted, and only then made again: the node must see its connection
    // gone on its own (lapin left a force-closed one looking up).
    vhost.delete();
    let ready = herald.wait_not_ready(&client, "queue").await;
    assert_eq!(ready["error"]["code"], "queue_unavailable", "{ready}");
    vhost.open();
    herald.wait_ready(&client).await;
    consume_all(&vhost, &ids).await;
    for id in &ids {
        assert_eq!(
            herald.request(&client, id).await["status"],
            "queued",
            "{id}"
        );
    }
    assert!(herald.terminate().await.success());
}

#[tokio::test]
async fn a_redis_wiped_while_the_nodes_were_down_is_refused_until_the_loss_is_accepted() {
    let Some((redis, vhost)) = services() else {
        return;
    };
    let (client, dir, herald) = ready_external_node(&redis, &vhost, &[]).await;
    submit_emails(&herald, &client, 5).await;
    wait_for_messages(&vhost, 5).await;
    assert!(herald.terminate().await.success());

    redis_command(&redis, &["FLUSHALL"]);
    let herald = external_node(&dir, &redis.url(), &vhost, &[]).await;
    let ready = herald.wait_not_ready(&client, "storage").await;
    assert!(ready.to_string().contains("lost its data"), "{ready}");
    assert_eq!(
        herald.create_status(&client).await,
        503,
        "nothing new on a dataset that lost the old"
    );
    assert!(
        !herald.terminate().await.success(),
        "the node exits non-zero"
    );
    assert_eq!(
        messages_in_email_queue(&vhost).await,
        Some(5),
        "the refused node left the old work where it was"
    );

    let herald = external_node(&dir, &redis.url(), &vhost, &["--accept-data-loss"]).await;
    herald.wait_ready(&client).await;
    let id = herald.create(&client).await;
    assert_eq!(herald.request(&client, &id).await["status"], "queued");
    assert!(herald.terminate().await.success());
}

#[tokio::test]
async fn a_redis_wiped_while_the_nodes_were_down_with_nothing_queued_is_refused_too() {
    let Some((redis, vhost)) = services() else {
        return;
    };
    let (client, dir, herald) = ready_external_node(&redis, &vhost, &[]).await;
    // Created, never processed: the records are in Redis, nothing is queued.
    for _ in 0..3 {
        herald.create(&client).await;
    }
    assert!(herald.terminate().await.success());
    assert_eq!(messages_in_email_queue(&vhost).await, Some(0));

    redis_command(&redis, &["FLUSHALL"]);
    let herald = external_node(&dir, &redis.url(), &vhost, &[]).await;
    let ready = herald.wait_not_ready(&client, "storage").await;
    assert!(ready.to_string().contains("lost its data"), "{ready}");
    assert!(
        !herald.terminate().await.success(),
        "the node exits non-zero"
    );
}
