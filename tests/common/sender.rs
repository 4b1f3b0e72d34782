//! A sender of the operator's own for `--dispatch external` tests: it
//! consumes a work queue Herald declared, reads each work message, and
//! publishes reports to `herald.status`, as a real sender would.

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::Value;

use super::services::Vhost;

pub struct TestSender {
    connection: Connection,
    channel: lapin::Channel,
    work: lapin::Consumer,
}

impl TestSender {
    /// Consumes `queue` on `vhost`, waiting up to 20 s for Herald to declare it.
    pub async fn consume(vhost: &Vhost, queue: &str) -> Self {
        let connection = Connection::connect(&vhost.amqp_url(), ConnectionProperties::default())
            .await
            .expect("the test sender connects");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let channel = connection.create_channel().await.unwrap();
            let consumed = channel
                .basic_consume(
                    queue.into(),
                    "test-sender".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await;
            if let Ok(work) = consumed {
                return Self {
                    connection,
                    channel,
                    work,
                };
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{queue} never declared"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The next work message (10 s at most) as JSON, acked.
    pub async fn next(&mut self) -> Value {
        serde_json::from_slice(&self.next_message().await.data).unwrap()
    }

    /// The next message as delivered (10 s at most), acked.
    pub async fn next_message(&mut self) -> Delivery {
        let delivery: Delivery = tokio::time::timeout(Duration::from_secs(10), self.work.next())
            .await
            .expect("a message reaches the sender")
            .expect("a delivery")
            .unwrap();
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        delivery
    }

    /// Publishes `report` to `herald.status`, persistently.
    pub async fn report(&self, report: &Value) {
        self.publish("", "herald.status", report.to_string().as_bytes())
            .await;
    }

    /// Publishes `body` to `exchange` with `routing_key`, persistently.
    pub async fn publish(&self, exchange: &str, routing_key: &str, body: &[u8]) {
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap();
        drop(confirm);
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "done".into()).await;
    }
}
