//! The reverse flow of `--dispatch external`: senders of the operator's own
//! consume `herald.work.<channel>`, call their provider, and publish
//! `{id, seq, outcome, provider_id?, error?, retry_after_ms?}` to
//! `herald.status`. Any node applies a report with the `report` script,
//! fenced by `(id, seq)`, so a repeated report or one on an older copy
//! changes nothing; the report is acked once Redis has the outcome. A
//! `retry` (a transient failure) is judged by the same retry policy as the
//! nodes' own calls: within its budget it goes again after the policy's
//! jittered backoff (never before `retry_after_ms`), else it is `failed`.

use std::time::Duration;

use redis::cmd;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::ScaleoutStore;
use super::broker;
use crate::domain::{RequestId, now_ms};
use crate::store::StoreError;

/// How long to wait before applying reports again while Redis is out of reach.
const RETRY: Duration = Duration::from_secs(1);

/// What an external sender reports.
#[derive(Debug, Deserialize)]
struct StatusReport {
    id: RequestId,
    seq: u64,
    outcome: Outcome,
    #[serde(default)]
    provider_id: Option<String>,
    #[serde(default)]
    error: Option<String>,
    /// With `retry`: the provider's `Retry-After`, a floor for the delay.
    #[serde(default)]
    retry_after_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Outcome {
    Sent,
    Failed,
    Retry,
}

/// What a report is applied as: the outcome, the error to record, and for a
/// retry its delay and the attempt number it was judged for.
struct Applied {
    outcome: &'static str,
    error: Option<String>,
    retry: Option<(Duration, u64)>,
}

impl ScaleoutStore {
    /// Applies reports as they arrive, until `shutdown`.
    pub(super) async fn apply_reports(&self, shutdown: CancellationToken) {
        loop {
            let mut waiting: std::collections::VecDeque<_> = std::mem::take(
                &mut *self
                    .broker
                    .reports
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            )
            .into();
            let mut again = false;
            while let Some(delivery) = waiting.pop_front() {
                if let Err(error) = self.apply(&delivery).await {
                    tracing::debug!(%error, "reports not applied yet; retrying");
                    // Keep this one and the rest, in order, for the next try.
                    waiting.push_front(delivery);
                    {
                        let mut reports = self
                            .broker
                            .reports
                            .lock()
                            .unwrap_or_else(|p| p.into_inner());
                        reports.splice(0..0, waiting.drain(..));
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(RETRY) => {}
                    }
                    again = true;
                }
            }
            if again {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.broker.reported.notified() => {}
            }
        }
    }

    /// Applies one report and acks it; an unreadable one is set aside.
    async fn apply(&self, delivery: &lapin::message::Delivery) -> Result<(), StoreError> {
        let report = match serde_json::from_slice::<StatusReport>(&delivery.data) {
            Ok(report) => report,
            Err(error) => {
                let reason = format!("not a status report: {error}");
                self.broker.set_aside(delivery, &reason).await;
                return Ok(());
            }
        };
        let judged = match report.outcome {
            Outcome::Sent => Applied {
                outcome: "sent",
                error: report.error.clone(),
                retry: None,
            },
            Outcome::Failed => Applied {
                outcome: "failed",
                error: report.error.clone(),
                retry: None,
            },
            Outcome::Retry => self.judge_retry(&report).await?,
        };
        let (delay, attempt) = judged.retry.unwrap_or_default();
        let applied: String = self
            .redis
            .script(
                self.scripts
                    .report
                    .arg(&self.tag)
                    .arg(report.id.to_string())
                    .arg(report.seq)
                    .arg(judged.outcome)
                    .arg(report.provider_id.as_deref().unwrap_or(""))
                    .arg(judged.error.as_deref().unwrap_or(""))
                    .arg(delay.as_millis() as u64)
                    .arg(attempt),
            )
            .await?;
        if judged.retry.is_some() {
            self.due.notify_one();
        }
        tracing::info!(id = %report.id, seq = report.seq, outcome = judged.outcome, applied, "status report");
        broker::ack(delivery).await;
        Ok(())
    }

    /// A reported transient failure: retried after the policy's delay while
    /// the request's budget lasts (attempts and age), else failed.
    async fn judge_retry(&self, report: &StatusReport) -> Result<Applied, StoreError> {
        let key = format!("{}:req:{}", self.tag, report.id);
        let fields: (Option<u64>, Option<u64>) = self
            .redis
            .command(cmd("HMGET").arg(key).arg("at").arg("pr"))
            .await?;
        let attempt = fields.0.unwrap_or(0) + 1;
        let age = Duration::from_millis(now_ms().saturating_sub(fields.1.unwrap_or(0)));
        let error = report
            .error
            .clone()
            .unwrap_or_else(|| "the sender reported a transient failure".into());
        let policy = &self.options.retry;
        let attempts = u32::try_from(attempt).unwrap_or(u32::MAX);
        if !policy.allows_retry(attempts, age) {
            return Ok(Applied {
                outcome: "failed",
                error: Some(format!(
                    "{error} (retry budget spent after {attempt} attempts)"
                )),
                retry: None,
            });
        }
        let floor = report.retry_after_ms.map(Duration::from_millis);
        let delay = policy.delay(attempts, floor, &mut rand::rng());
        Ok(Applied {
            outcome: "retry",
            error: Some(error),
            retry: Some((delay, attempt)),
        })
    }
}
