//! [`Records`] on Redis: each write is one script (`lua/`), answered only
//! once Redis has it in its AOF (`appendfsync always` fsyncs before the
//! reply), so [`Records::sync`] has nothing left to wait for.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use redis::cmd;
use tokio_util::sync::CancellationToken;

use super::ScaleoutStore;
use super::codec::{self, amqp_priority};
use crate::domain::{Notification, RequestId, Status};
use crate::store::{
    AttemptReport, CreateOutcome, Decision, Event, Lease, ProcessOutcome, PurgeBatch, Records,
    RequestRecord, StorageState, StoreError,
};

/// Parses the status a script answered.
fn status(text: &str) -> Result<Status, StoreError> {
    text.parse().map_err(StoreError::Corrupt)
}

impl ScaleoutStore {
    fn key(&self, kind: &str, id: impl std::fmt::Display) -> String {
        format!("{}:{kind}:{id}", self.tag)
    }

    /// Re-reads the count of undelivered work (the scripts keep it).
    pub(super) async fn refresh_pending(&self) -> Result<(), StoreError> {
        let pending: Option<i64> = self
            .redis
            .command(cmd("GET").arg(format!("{}:pending", self.tag)))
            .await?;
        self.pending
            .store(pending.unwrap_or(0).max(0) as u64, Ordering::Relaxed);
        Ok(())
    }

    fn set_pending(&self, text: &str) {
        if let Ok(pending) = text.parse::<i64>() {
            self.pending.store(pending.max(0) as u64, Ordering::Relaxed);
        }
    }

    /// Ends the lease as `decision` says; `LeaseLost` when the fence refused.
    async fn finish(
        &self,
        lease: &Lease,
        seq: u64,
        report: &AttemptReport,
        decision: Decision,
    ) -> Result<Status, StoreError> {
        let (name, wait_ms) = match decision {
            Decision::Sent => ("sent", 0),
            Decision::Failed => ("failed", 0),
            Decision::RetryAfter { wait_ms } => ("retry", wait_ms),
            Decision::Deferred { wait_ms } => ("deferred", wait_ms),
        };
        let report_json =
            serde_json::to_string(report).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let answer: Vec<String> = self
            .redis
            .script(
                self.scripts
                    .finish
                    .arg(&self.tag)
                    .arg(lease.id.to_string())
                    .arg(seq)
                    .arg(&lease.owner.0)
                    .arg(name)
                    .arg(wait_ms)
                    .arg(report_json)
                    .arg(report.provider_id.as_deref().unwrap_or(""))
                    .arg(report.error.as_deref().unwrap_or("")),
            )
            .await?;
        match answer.as_slice() {
            [lost] if lost == "lost" => Err(StoreError::LeaseLost(lease.id)),
            [new_status, pending] => {
                self.set_pending(pending);
                if decision.retry_wait_ms().is_some() {
                    self.due.notify_one();
                }
                status(new_status)
            }
            other => Err(unexpected("finish", other)),
        }
    }
}

fn unexpected(script: &str, answer: &[String]) -> StoreError {
    StoreError::Corrupt(format!("the {script} script answered {answer:?}"))
}

#[async_trait]
impl Records for ScaleoutStore {
    async fn create(
        &self,
        notification: Notification,
        idempotency_key: Option<&str>,
        owner: Option<&str>,
    ) -> Result<CreateOutcome, StoreError> {
        self.refusal()?;
        let id = RequestId::new();
        let body = codec::notification_json(&notification)?;
        let answer: Vec<String> = self
            .redis
            .script(
                self.scripts
                    .create
                    .arg(&self.tag)
                    .arg(id.to_string())
                    .arg(body)
                    .arg(idempotency_key.unwrap_or(""))
                    .arg(owner.unwrap_or(""))
                    .arg(notification.channel.as_str())
                    .arg(amqp_priority(notification.priority)),
            )
            .await?;
        let parse = |text: &str| {
            text.parse::<RequestId>()
                .map_err(|_| StoreError::Corrupt(format!("an idempotency binding to {text}")))
        };
        match answer.as_slice() {
            [created, _] if created == "created" => Ok(CreateOutcome::Created(id)),
            [replayed, bound] if replayed == "replayed" => {
                Ok(CreateOutcome::Replayed(parse(bound)?))
            }
            [conflict] if conflict == "conflict" => Err(StoreError::IdempotencyConflict),
            other => Err(unexpected("create", other)),
        }
    }

    async fn owner_of(&self, id: RequestId) -> Result<Option<String>, StoreError> {
        self.refusal()?;
        self.redis
            .command(cmd("HGET").arg(self.key("req", id)).arg("ow"))
            .await
    }

    async fn replay_of(
        &self,
        key: &str,
        notification: &Notification,
    ) -> Result<Option<RequestId>, StoreError> {
        self.refusal()?;
        let bound: Option<String> = self
            .redis
            .command(cmd("GET").arg(self.key("idem", key)))
            .await?;
        let Some(bound) = bound else {
            return Ok(None);
        };
        let (id, body) = bound
            .split_once('\n')
            .ok_or_else(|| StoreError::Corrupt(format!("idempotency binding of {key}")))?;
        if body != codec::notification_json(notification)? {
            return Err(StoreError::IdempotencyConflict);
        }
        id.parse()
            .map(Some)
            .map_err(|_| StoreError::Corrupt(format!("an idempotency binding to {id}")))
    }

    async fn request_processing(&self, id: RequestId) -> Result<ProcessOutcome, StoreError> {
        self.refusal()?;
        let answer: Vec<String> = self
            .redis
            .script(self.scripts.process.arg(&self.tag).arg(id.to_string()))
            .await?;
        match answer.as_slice() {
            [missing] if missing == "missing" => Err(StoreError::NotFound(id)),
            [already, now] if already == "already" => {
                Ok(ProcessOutcome::AlreadyRequested(status(now)?))
            }
            [accepted, now, pending] if accepted == "accepted" => {
                self.set_pending(pending);
                self.due.notify_one();
                Ok(ProcessOutcome::Accepted(status(now)?))
            }
            other => Err(unexpected("process", other)),
        }
    }

    async fn get(&self, id: RequestId) -> Result<Option<RequestRecord>, StoreError> {
        self.refusal()?;
        let fields: HashMap<String, String> = self
            .redis
            .command(cmd("HGETALL").arg(self.key("req", id)))
            .await?;
        codec::record_from(id, &fields)
    }

    async fn events(&self, id: RequestId) -> Result<Option<Vec<Event>>, StoreError> {
        self.refusal()?;
        let lines: Vec<String> = self
            .redis
            .command(cmd("LRANGE").arg(self.key("ev", id)).arg(0).arg(-1))
            .await?;
        if lines.is_empty() {
            // Every stored request has its `created` event.
            return Ok(None);
        }
        lines
            .iter()
            .map(|line| codec::event_from(line))
            .collect::<Result<_, _>>()
            .map(Some)
    }

    async fn request_count(&self) -> Result<u64, StoreError> {
        self.refusal()?;
        let count: Option<i64> = self
            .redis
            .command(cmd("GET").arg(format!("{}:count", self.tag)))
            .await?;
        Ok(count.unwrap_or(0).max(0) as u64)
    }

    /// Nothing to wait for: a script's reply comes after the fsync.
    async fn sync(&self) -> Result<(), StoreError> {
        self.refusal()
    }

    async fn finish_attempt(
        &self,
        lease: &Lease,
        report: AttemptReport,
        decision: Decision,
    ) -> Result<Status, StoreError> {
        self.refusal()?;
        let seq = self
            .held()
            .get(&lease.id)
            .map(|held| held.seq)
            .ok_or(StoreError::LeaseLost(lease.id))?;
        let finished = self.finish(lease, seq, &report, decision).await;
        if let Ok(_) | Err(StoreError::LeaseLost(_)) = finished {
            // Recorded (or fenced off): the message has done its work.
            self.let_go(lease.id).await;
        }
        finished
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        self.refusal()?;
        let seq = self
            .held()
            .get(&lease.id)
            .map(|held| held.seq)
            .ok_or(StoreError::LeaseLost(lease.id))?;
        let released = self.release(lease.id, seq, true).await?;
        self.let_go(lease.id).await;
        if released {
            Ok(())
        } else {
            Err(StoreError::LeaseLost(lease.id))
        }
    }

    async fn purge_final_before(
        &self,
        cutoff_ms: u64,
        _resume_after: Option<RequestId>,
        limit: usize,
    ) -> Result<PurgeBatch, StoreError> {
        self.refusal()?;
        // The final index is by the time each request became final, and a
        // purged entry leaves it: every batch starts from its oldest.
        let answer: (usize, String) = self
            .redis
            .script(
                self.scripts
                    .purge_final
                    .arg(&self.tag)
                    .arg(cutoff_ms)
                    .arg(limit),
            )
            .await?;
        let (purged, last) = answer;
        Ok(PurgeBatch {
            purged,
            resume_after: if purged == limit {
                last.parse().ok()
            } else {
                None
            },
        })
    }

    /// The purge deletes each request's idempotency key in the same script,
    /// so no key is ever left without its request: nothing to do first.
    async fn purge_idempotency_before(&self, _cutoff_ms: u64) -> Result<usize, StoreError> {
        self.refusal()?;
        Ok(0)
    }

    fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    fn storage_state(&self) -> StorageState {
        if let Some(reason) = self.lost_reason() {
            return StorageState::Lost(reason);
        }
        if self.closed.load(Ordering::Acquire) {
            return StorageState::Unavailable("the store is closed".into());
        }
        self.redis.state()
    }

    /// A volatile Redis does not stop the API, but an operator should know.
    fn warning(&self) -> Option<String> {
        self.volatile.clone()
    }

    fn work_queue_unavailable(&self) -> Option<String> {
        (!self.broker.is_connected()).then(|| {
            format!(
                "RabbitMQ at {} is out of reach: requests are taken and wait in Redis until it is back",
                super::redacted(&self.options.amqp_url)
            )
        })
    }

    async fn maintain(&self, shutdown: CancellationToken) {
        tokio::join!(
            self.broker.run(shutdown.clone(), self),
            self.move_due(shutdown.clone()),
            self.keep_alive(shutdown.clone()),
            self.gate.run(shutdown.clone()),
            self.apply_reports(shutdown.clone()),
        );
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.closed.store(true, Ordering::Release);
        // Let the other nodes rescue whatever this one still holds at once.
        let _: Result<i64, _> = self
            .redis
            .command(cmd("DEL").arg(self.node_key(&self.options.instance)))
            .await;
        tracing::info!("scale-out engine closed");
        // A node that saw its data lost exits non-zero, as a lost embedded store does.
        match self.lost_reason() {
            Some(reason) => Err(StoreError::Unavailable(reason)),
            None => Ok(()),
        }
    }
}
