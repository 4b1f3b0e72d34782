//! The mover: every node moves due entries from Redis' due set (new work,
//! retries whose backoff passed, rescued leases) to RabbitMQ. `claim_due`
//! pushes each claimed entry forward by [`REPUBLISH_AFTER`] first, so nodes
//! never claim the same entry twice and a mover that dies before the
//! confirm leaves its entries to come back; `published` removes them only
//! after the broker confirmed. The copies a late republish makes are
//! fenced by their seq.
//!
//! It sleeps until the earliest entry falls due, at most [`POLL`] (other
//! nodes' work; the one bounded poll of the design), and wakes at once for
//! this node's own new work.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::ScaleoutStore;
use super::broker::{BrokerError, Outgoing};
use super::codec::notification_from;
use super::messages::{NotificationMessage, Pointer, WorkMessage, rfc3339_ms};
use crate::domain::Channel;
use crate::store::StoreError;

/// Entries claimed per script.
const CLAIM_BATCH: usize = 64;
/// How long a claimed entry waits for its confirm before any mover may claim it again.
const REPUBLISH_AFTER: Duration = Duration::from_secs(5);
/// The longest the mover sleeps.
const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
enum MoveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl ScaleoutStore {
    /// Moves due work to RabbitMQ until `shutdown`.
    pub(super) async fn move_due(&self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            let wait = if self.broker.is_connected() {
                match self.move_batch().await {
                    Ok(wait) => wait,
                    Err(error) => {
                        tracing::debug!(%error, "due work not moved yet");
                        POLL
                    }
                }
            } else {
                POLL // work waits in Redis until a session is up
            };
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.due.notified() => {}
                () = self.broker.connected.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Claims, publishes and marks one batch; how long until more is due.
    async fn move_batch(&self) -> Result<Duration, MoveError> {
        let answer: Vec<String> = self
            .redis
            .script(
                self.scripts
                    .claim_due
                    .arg(&self.tag)
                    .arg(CLAIM_BATCH)
                    .arg(REPUBLISH_AFTER.as_millis() as u64)
                    .arg(if self.options.external { "1" } else { "0" }),
            )
            .await?;
        let (next, entries) = answer
            .split_first()
            .ok_or_else(|| StoreError::Corrupt("claim_due answered nothing".into()))?;
        let external = self.options.external;
        let messages = entries
            .chunks(CLAIMED_FIELDS)
            .map(|entry| outgoing(entry, external))
            .collect::<Result<Vec<_>, _>>()?;
        if !messages.is_empty() {
            let taken = self.broker.publish(&messages).await?;
            let mut marking = self.scripts.published.prepare_invoke();
            marking.arg(&self.tag);
            for (message, taken) in messages.iter().zip(&taken) {
                if *taken {
                    let Pointer { id, seq } = message.message.pointer();
                    marking.arg(id.to_string()).arg(seq);
                }
            }
            let _: i64 = self.redis.script(&marking).await?;
            tracing::debug!(
                moved = taken.iter().filter(|t| **t).count(),
                "due work published"
            );
        }
        if messages.len() == CLAIM_BATCH {
            return Ok(Duration::ZERO);
        }
        Ok(match next.parse::<i64>() {
            Ok(ms) if ms >= 0 => Duration::from_millis(ms as u64).min(POLL),
            _ => POLL,
        })
    }
}

/// Fields per entry `claim_due` answers.
const CLAIMED_FIELDS: usize = 8;

/// One claimed entry: id, seq, channel, priority, then (for a whole
/// notification) its JSON, creation time, attempts so far and idempotency key.
fn outgoing(entry: &[String], whole: bool) -> Result<Outgoing, StoreError> {
    let bad = || StoreError::Corrupt(format!("claim_due answered {entry:?}"));
    let [
        id,
        seq,
        channel,
        priority,
        notification,
        created,
        attempts,
        key,
    ] = entry
    else {
        return Err(bad());
    };
    let pointer = Pointer {
        id: id.parse().map_err(|_| bad())?,
        seq: seq.parse().map_err(|_| bad())?,
    };
    let message = if whole {
        let notification = notification_from(notification)?;
        let created_at_ms: u64 = created.parse().map_err(|_| bad())?;
        let attempts: u32 = attempts.parse().map_err(|_| bad())?;
        WorkMessage::Notification(NotificationMessage {
            id: pointer.id,
            seq: pointer.seq,
            attempt: attempts + 1,
            to: notification.to,
            message: notification.message,
            channel: notification.channel,
            priority: notification.priority,
            created_at: rfc3339_ms(created_at_ms),
            created_at_ms,
            idempotency_key: Some(key.clone()).filter(|key| !key.is_empty()),
        })
    } else {
        WorkMessage::Pointer(pointer)
    };
    Ok(Outgoing {
        message,
        channel: channel.parse::<Channel>().map_err(|_| bad())?,
        priority: priority.parse().map_err(|_| bad())?,
    })
}
