//! [`WorkSource`] on RabbitMQ: the dispatcher's next lease is the most
//! urgent delivery in this node's inbox (highest priority first, then the
//! oldest, among the channels the gate admits), once the `lease` script
//! fenced it. A delivery the fence refuses (stale seq, final, leased
//! elsewhere) is acked and skipped. A leased delivery stays unacknowledged
//! until its outcome is in Redis (`records.rs` lets it go): a node killed
//! meanwhile leaves it to the broker to redeliver, and its lease to the
//! rescuer.

use std::time::Duration;

use async_trait::async_trait;

use super::broker::{self, Delivered};
use super::{Held, ScaleoutStore};
use crate::store::{ChannelAdmission, Lease, StoreError, WorkSource};

/// Leases held by dead nodes to look at per rescue: bounds the script.
pub(super) const RESCUE_BATCH: usize = 1_000;

/// What the `lease` script made of a delivery.
enum Fenced {
    Leased(Lease),
    /// Leased already, by this owner.
    Held(String),
    /// Nothing to do for it: stale, final or gone.
    Skip(String),
}

impl ScaleoutStore {
    /// The most urgent delivery a channel admits, or how long the earliest
    /// refused channel waits.
    fn pick(&self, admits: ChannelAdmission<'_>) -> Result<Delivered, Option<Duration>> {
        let mut inbox = self.broker.inbox.lock().unwrap_or_else(|p| p.into_inner());
        let mut waiting: Option<Duration> = None;
        let mut chosen: Option<usize> = None;
        for (index, delivered) in inbox.iter().enumerate() {
            match admits(delivered.channel) {
                // Oldest first within a priority: the first seen wins ties.
                None if chosen.is_none_or(|c| inbox[c].priority < delivered.priority) => {
                    chosen = Some(index)
                }
                None => {}
                Some(wait) => waiting = Some(waiting.map_or(wait, |w| w.min(wait))),
            }
        }
        match chosen {
            Some(index) => Ok(inbox.remove(index)),
            None => Err(waiting),
        }
    }

    async fn fence(&self, delivered: &Delivered) -> Result<Fenced, StoreError> {
        let answer: Vec<String> = self
            .redis
            .script(
                self.scripts
                    .lease
                    .arg(&self.tag)
                    .arg(delivered.pointer.id.to_string())
                    .arg(delivered.pointer.seq)
                    .arg(&self.options.instance.0)
                    .arg(self.options.lease_for.as_millis() as u64),
            )
            .await?;
        match answer.as_slice() {
            [leased, notification, attempt, asked, deadline] if leased == "leased" => {
                let number = |text: &str| {
                    text.parse::<u64>().map_err(|_| {
                        StoreError::Corrupt(format!("the lease script answered {answer:?}"))
                    })
                };
                Ok(Fenced::Leased(Lease {
                    id: delivered.pointer.id,
                    notification: super::codec::notification_from(notification)?,
                    attempt: number(attempt)? as u32,
                    process_requested_at_ms: number(asked)?,
                    owner: self.options.instance.clone(),
                    deadline_ms: number(deadline)?,
                }))
            }
            [held, owner] if held == "held" => Ok(Fenced::Held(owner.clone())),
            [why] => Ok(Fenced::Skip(why.clone())),
            other => Err(StoreError::Corrupt(format!(
                "the lease script answered {other:?}"
            ))),
        }
    }

    /// The attempt of `id` is over: ack its message.
    pub(super) async fn let_go(&self, id: crate::domain::RequestId) {
        let held = self.held().remove(&id);
        if let Some(held) = held {
            broker::ack(&held.message).await;
        }
    }

    /// Returns the lease of `id` at `seq`, due now, with its attempt number
    /// given back when `unsent` (the provider was never called); whether the
    /// fence let it.
    pub(super) async fn release(
        &self,
        id: crate::domain::RequestId,
        seq: u64,
        unsent: bool,
    ) -> Result<bool, StoreError> {
        let released: i64 = self
            .redis
            .script(
                self.scripts
                    .release
                    .arg(&self.tag)
                    .arg(id.to_string())
                    .arg(seq)
                    .arg(&self.options.instance.0)
                    .arg(u8::from(unsent)),
            )
            .await?;
        self.due.notify_one();
        Ok(released == 1)
    }

    /// Takes back the leases of dead nodes and those past their deadline.
    pub(super) async fn rescue(&self) -> Result<usize, StoreError> {
        self.take_back("").await
    }

    /// At start, before the dispatcher leases anything: takes back, with the
    /// dead nodes' leases, those held under this node's own instance id. They
    /// are an earlier run's (killed, then started again under the same
    /// `--instance-id`, as the compose nodes and the drill are), and the
    /// liveness key this run beats keeps the rescuer off them until their
    /// deadline: 60 s by default, which was most of the 3-node drill's drain
    /// (BENCHMARKS.md).
    pub(super) async fn rescue_at_start(&self) -> Result<usize, StoreError> {
        self.take_back(&self.options.instance.0).await
    }

    /// The `rescue` script; `starting`: an owner whose every lease goes too.
    async fn take_back(&self, starting: &str) -> Result<usize, StoreError> {
        let rescued: usize = self
            .redis
            .script(
                self.scripts
                    .rescue
                    .arg(&self.tag)
                    .arg(RESCUE_BATCH)
                    .arg(starting),
            )
            .await?;
        if rescued > 0 {
            tracing::info!(rescued, "leases taken back from dead or late attempts");
            self.due.notify_one();
        }
        Ok(rescued)
    }
}

#[async_trait]
impl WorkSource for ScaleoutStore {
    async fn next(&self, admits: ChannelAdmission<'_>) -> Result<Lease, StoreError> {
        loop {
            self.refusal()?;
            let arrived = self.broker.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let delivered = match self.pick(admits) {
                Ok(delivered) => delivered,
                Err(Some(wait)) => {
                    tokio::select! {
                        () = &mut arrived => {}
                        () = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
                Err(None) => {
                    arrived.await;
                    continue;
                }
            };
            match self.fence(&delivered).await {
                Ok(Fenced::Leased(lease)) => {
                    let held = Held {
                        seq: delivered.pointer.seq,
                        message: delivered.message,
                    };
                    self.held().insert(lease.id, held);
                    return Ok(lease);
                }
                Ok(Fenced::Held(owner)) => {
                    let id = delivered.pointer.id;
                    let orphan = owner == self.options.instance.0 && !self.held().contains_key(&id);
                    if orphan {
                        // This node leased it, but the reply was lost to a
                        // timeout: no attempt runs, so give it back now
                        // rather than at its deadline.
                        let _ = self.release(id, delivered.pointer.seq, true).await;
                    }
                    broker::ack(&delivered.message).await;
                }
                Ok(Fenced::Skip(why)) => {
                    tracing::debug!(id = %delivered.pointer.id, seq = delivered.pointer.seq, why, "delivery fenced off");
                    broker::ack(&delivered.message).await;
                }
                Err(error) => {
                    // Redis is out of reach: keep the delivery for the next try.
                    self.broker
                        .inbox
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(0, delivered);
                    return Err(error);
                }
            }
        }
    }

    /// The leases this node's attempts abandoned (a shutdown past its
    /// grace) go back, due now; then any dead node's.
    async fn recover(&self) -> Result<usize, StoreError> {
        let abandoned: Vec<_> = self
            .held()
            .iter()
            .map(|(id, held)| (*id, held.seq))
            .collect();
        let mut returned = 0;
        for (id, seq) in abandoned {
            returned += usize::from(self.release(id, seq, false).await?);
            self.let_go(id).await;
        }
        Ok(returned + self.rescue().await?)
    }
}
