//! RabbitMQ: the work queue. A durable direct exchange `herald.work`
//! routes each work message (`messages.rs`) by channel to a durable classic queue
//! `herald.work.<channel>` with `x-max-priority`, so the broker decides
//! priority. Messages are persistent and published with confirms; the
//! consumers take a small prefetch and ack by hand only once the outcome is
//! in Redis (`work.rs`).
//!
//! With `--dispatch external` the node consumes no work: senders of the
//! operator's own do, and report back on the durable queue `herald.status`
//! (`reports.rs` applies them); the node consumes that queue instead. A
//! message no node can read is set aside in `herald.dead`, never dropped.
//!
//! One connection per node, two channels (publishing, consuming). The
//! session declares the topology every time it connects, and a lost
//! connection is retried with backoff while the work waits in Redis' due set
//! (`mover.rs` publishes only while a session is up).

use std::sync::Mutex;
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::messages::{Pointer, WorkMessage, pointer_for_own_dispatch};
use crate::domain::Channel;

const EXCHANGE: &str = "herald.work";
/// Where external senders report outcomes (through the default exchange).
pub(super) const STATUS_QUEUE: &str = "herald.status";
/// Where a message no node can read is set aside, with why, instead of being
/// dropped: an operator can read it, fix it, and publish it again.
pub(super) const DEAD_QUEUE: &str = "herald.dead";
/// Priority levels per queue: each is a sub-queue in RabbitMQ, so few.
const MAX_PRIORITY: u8 = 3;
/// How long a connection, a declaration or a confirm may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a session looks at its connection's state. A connection the
/// broker closed (a deleted vhost: `CONNECTION_FORCED`) was seen to leave
/// lapin's consumers pending, with no error, for as long as we watched (20 s
/// and more), so the session reads the state itself.
const HEALTH_CHECK: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub(super) enum BrokerError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ did not answer within {BROKER_TIMEOUT:?}")]
    Timeout,
    #[error("RabbitMQ is not connected")]
    Disconnected,
    #[error("the connection to RabbitMQ is no longer up")]
    Lost,
    #[error("the consumer of {0} stopped")]
    ConsumerEnded(String),
    #[error("checking the dataset: {0}")]
    Dataset(String),
}

/// A message taken from a queue, not yet acknowledged.
pub(super) struct Delivered {
    pub pointer: Pointer,
    pub channel: Channel,
    pub priority: u8,
    /// The message as delivered, to acknowledge it by.
    pub message: Delivery,
}

/// One message to publish.
pub(super) struct Outgoing {
    pub message: WorkMessage,
    pub channel: Channel,
    pub priority: u8,
}

pub(super) struct Broker {
    url: String,
    prefetch: u16,
    /// `--dispatch external`: consume reports, not work.
    external: bool,
    /// The publishing channel of the current session, if one is up.
    publisher: Mutex<Option<lapin::Channel>>,
    /// A session came up: the mover may publish.
    pub connected: Notify,
    /// Deliveries waiting for the dispatcher, oldest first.
    pub inbox: Mutex<Vec<Delivered>>,
    /// A delivery arrived in the inbox.
    pub arrived: Notify,
    /// External senders' reports waiting to be applied, oldest first.
    pub reports: Mutex<Vec<Delivery>>,
    /// A report arrived.
    pub reported: Notify,
}

impl Broker {
    pub fn new(url: String, prefetch: u16, external: bool) -> Self {
        Self {
            url,
            prefetch,
            external,
            publisher: Mutex::new(None),
            connected: Notify::new(),
            inbox: Mutex::new(Vec::new()),
            arrived: Notify::new(),
            reports: Mutex::new(Vec::new()),
            reported: Notify::new(),
        }
    }

    /// Keeps a session up until `shutdown`, reconnecting with backoff. Each
    /// session first passes `check` (the dataset's, `dataset.rs`) before it
    /// consumes or publishes anything.
    pub async fn run(&self, shutdown: CancellationToken, check: &dyn SessionCheck) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let ended = self.session(&shutdown, &mut backoff, check).await;
            self.set_publisher(None);
            // Their channel is gone: the broker gives them to a consumer again.
            self.inbox.lock().unwrap_or_else(|p| p.into_inner()).clear();
            self.reports
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            match ended {
                Ok(()) => return,
                Err(error) => tracing::warn!(%error, retry_in = ?backoff, "RabbitMQ session ended"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One connection: declare, consume into the inbox, until it fails or
    /// `shutdown`.
    async fn session(
        &self,
        shutdown: &CancellationToken,
        backoff: &mut Duration,
        check: &dyn SessionCheck,
    ) -> Result<(), BrokerError> {
        let connection = bounded(Connection::connect(
            &self.url,
            ConnectionProperties::default(),
        ))
        .await?;
        let publisher = bounded(connection.create_channel()).await?;
        bounded(publisher.confirm_select(ConfirmSelectOptions::default())).await?;
        let consuming = bounded(connection.create_channel()).await?;
        bounded(consuming.basic_qos(self.prefetch, BasicQosOptions::default())).await?;
        declare(&publisher).await?;
        check
            .reconcile(Probe {
                connection: &connection,
            })
            .await?;
        let queues: Vec<String> = if self.external {
            vec![STATUS_QUEUE.to_string()]
        } else {
            Channel::ALL.iter().map(|c| queue_name(*c)).collect()
        };
        let mut consumers = Vec::new();
        for queue in queues {
            let consumer = consuming.basic_consume(
                queue.as_str().into(),
                format!("herald-{queue}").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            );
            consumers.push(bounded(consumer).await?.boxed());
        }
        let mut deliveries = consumers
            .into_iter()
            .reduce(|a, b| a.race(b).boxed())
            .ok_or(BrokerError::Disconnected)?;
        self.set_publisher(Some(publisher));
        self.connected.notify_waiters();
        *backoff = BACKOFF_MIN;
        tracing::info!("RabbitMQ session up; topology declared");
        let mut health = tokio::time::interval(HEALTH_CHECK);
        loop {
            tokio::select! {
                _ = health.tick() => if !connection.status().connected() {
                    return Err(BrokerError::Lost);
                },
                () = shutdown.cancelled() => {
                    self.set_publisher(None);
                    // The consumers first, so no delivery is in flight as the connection goes.
                    let _ = bounded(consuming.close(200, "herald stopping".into())).await;
                    let _ = bounded(connection.close(200, "herald stopping".into())).await;
                    return Ok(());
                }
                delivery = deliveries.next() => match delivery {
                    Some(Ok(delivery)) => self.accept(delivery).await,
                    Some(Err(error)) => return Err(error.into()),
                    None => return Err(BrokerError::ConsumerEnded("herald.work".into())),
                },
            }
        }
    }

    /// Puts a delivery in the inbox; sets one this node cannot read aside
    /// in [`DEAD_QUEUE`] with why (damaged, or a whole notification meant
    /// for external senders).
    async fn accept(&self, delivery: Delivery) {
        if delivery.routing_key.as_str() == STATUS_QUEUE {
            self.reports
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(delivery);
            self.reported.notify_one();
            return;
        }
        let pointer = pointer_for_own_dispatch(&delivery.data);
        let channel = delivery.routing_key.as_str().parse::<Channel>();
        match (pointer, channel) {
            (Ok(pointer), Ok(channel)) => {
                let priority = delivery.properties.priority().unwrap_or(0);
                let delivered = Delivered {
                    pointer,
                    channel,
                    priority,
                    message: delivery,
                };
                self.inbox
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(delivered);
                self.arrived.notify_waiters();
            }
            (Err(unreadable), _) => self.set_aside(&delivery, &unreadable.to_string()).await,
            (Ok(_), Err(_)) => {
                let reason = super::messages::Unreadable::Damaged.to_string();
                self.set_aside(&delivery, &reason).await
            }
        }
    }

    /// Sets `delivery` aside in [`DEAD_QUEUE`] with `reason` and the routing
    /// key it came with, then acks it. One that cannot be set aside stays
    /// unacknowledged: the broker gives it back when the session ends.
    pub async fn set_aside(&self, delivery: &Delivery, reason: &str) {
        let publisher = self
            .publisher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(publisher) = publisher else {
            return;
        };
        let mut headers = FieldTable::default();
        headers.insert(
            "x-herald-reason".into(),
            AMQPValue::LongString(reason.into()),
        );
        let routing_key = delivery.routing_key.as_str();
        headers.insert(
            "x-herald-routing-key".into(),
            AMQPValue::LongString(routing_key.into()),
        );
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers);
        let sent = publisher.basic_publish(
            "".into(),
            DEAD_QUEUE.into(),
            BasicPublishOptions::default(),
            &delivery.data,
            properties,
        );
        let confirmed = async { bounded(bounded(sent).await?).await }.await;
        match confirmed {
            Ok(confirmation) if confirmation.is_ack() => {
                tracing::error!(
                    routing_key,
                    reason,
                    "an unreadable message; set aside in {DEAD_QUEUE}"
                );
                ack(delivery).await;
            }
            Ok(_) => tracing::warn!(
                routing_key,
                "an unreadable message the broker would not set aside; left in its queue"
            ),
            Err(error) => {
                tracing::warn!(%error, routing_key, "an unreadable message not set aside yet; left in its queue")
            }
        }
    }

    /// Publishes `messages` persistently and waits for the broker's confirms;
    /// for each, whether the broker took it.
    pub async fn publish(&self, messages: &[Outgoing]) -> Result<Vec<bool>, BrokerError> {
        let publisher = self
            .publisher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(BrokerError::Disconnected)?;
        let mut confirms = Vec::with_capacity(messages.len());
        for message in messages {
            let payload = serde_json::to_vec(&message.message).unwrap_or_default();
            let Pointer { id, seq } = message.message.pointer();
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_priority(message.priority)
                .with_content_type("application/json".into())
                .with_message_id(format!("{id}.{seq}").into())
                .with_type(message.message.amqp_type().into())
                .with_timestamp(crate::domain::now_ms() / 1000);
            let options = BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            };
            let routing_key = message.channel.as_str().into();
            let sent = publisher.basic_publish(
                EXCHANGE.into(),
                routing_key,
                options,
                &payload,
                properties,
            );
            confirms.push(bounded(sent).await?);
        }
        let mut taken = Vec::with_capacity(confirms.len());
        for confirm in confirms {
            let confirmation = bounded(confirm).await?;
            // A returned message (no queue bound) is confirmed too: not taken.
            taken.push(confirmation.is_ack() && confirmation.take_message().is_none());
        }
        Ok(taken)
    }

    pub fn is_connected(&self) -> bool {
        self.publisher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    fn set_publisher(&self, publisher: Option<lapin::Channel>) {
        *self.publisher.lock().unwrap_or_else(|p| p.into_inner()) = publisher;
    }
}

/// What a new session must pass before it consumes or publishes.
#[async_trait::async_trait]
pub(super) trait SessionCheck: Sync {
    async fn reconcile(&self, probe: Probe<'_>) -> Result<(), BrokerError>;
}

/// What a session asks the broker before it starts: each question on a
/// channel of its own, since asking after a missing queue closes its channel.
pub(super) struct Probe<'a> {
    connection: &'a Connection,
}

impl Probe<'_> {
    /// How many messages `queue` holds; `None` when there is no such queue.
    pub async fn messages_in(&self, queue: &str) -> Result<Option<u64>, BrokerError> {
        let channel = bounded(self.connection.create_channel()).await?;
        let passive = QueueDeclareOptions {
            passive: true,
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let asked = channel.queue_declare(queue.into(), passive, FieldTable::default());
        match bounded(asked).await {
            Ok(found) => {
                let _ = bounded(channel.close(200, "asked".into())).await;
                Ok(Some(u64::from(found.message_count())))
            }
            Err(BrokerError::Amqp(error)) if is_not_found(&error) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Messages waiting in the work queues, altogether.
    pub async fn work_messages(&self) -> Result<u64, BrokerError> {
        let mut waiting = 0;
        for channel in Channel::ALL {
            waiting += self.messages_in(&queue_name(*channel)).await?.unwrap_or(0);
        }
        Ok(waiting)
    }

    /// Declares `queue` durable and empty: a marker that outlives restarts.
    pub async fn declare_durable(&self, queue: &str) -> Result<(), BrokerError> {
        let channel = bounded(self.connection.create_channel()).await?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        bounded(channel.queue_declare(queue.into(), durable, FieldTable::default())).await?;
        let _ = bounded(channel.close(200, "declared".into())).await;
        Ok(())
    }
}

/// The broker's `404 NOT_FOUND`.
fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404)
}

/// Acknowledges a delivery; a channel gone meanwhile means the broker
/// redelivers it, which the lease fence drops.
pub(super) async fn ack(delivery: &Delivery) {
    if let Err(error) = bounded(delivery.ack(lapin::options::BasicAckOptions::default())).await {
        tracing::debug!(%error, "ack not delivered; the broker redelivers and the fence drops it");
    }
}

pub(super) fn queue_name(channel: Channel) -> String {
    format!("{EXCHANGE}.{channel}")
}

/// The exchange, per channel its priority queue bound by routing key, the
/// status queue and the queue of messages set aside.
async fn declare(channel: &lapin::Channel) -> Result<(), BrokerError> {
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    let exchange = channel.exchange_declare(
        EXCHANGE.into(),
        ExchangeKind::Direct,
        durable_exchange,
        FieldTable::default(),
    );
    bounded(exchange).await?;
    for kind in Channel::ALL {
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-max-priority".into(),
            AMQPValue::LongInt(i32::from(MAX_PRIORITY)),
        );
        let durable_queue = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        bounded(channel.queue_declare(queue_name(*kind).into(), durable_queue, arguments)).await?;
        let bind = channel.queue_bind(
            queue_name(*kind).into(),
            EXCHANGE.into(),
            kind.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        );
        bounded(bind).await?;
    }
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    for queue in [STATUS_QUEUE, DEAD_QUEUE] {
        let declared = channel.queue_declare(queue.into(), durable_queue, FieldTable::default());
        bounded(declared).await?;
    }
    Ok(())
}

/// Bounds one broker operation by [`BROKER_TIMEOUT`].
async fn bounded<T>(
    operation: impl std::future::Future<Output = Result<T, lapin::Error>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(BROKER_TIMEOUT, operation).await {
        Ok(result) => result.map_err(BrokerError::from),
        Err(_) => Err(BrokerError::Timeout),
    }
}
