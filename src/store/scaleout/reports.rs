//! The reverse flow of `--dispatch external`: senders of the operator's own
//! consume `herald.work.<channel>`, call their provider, and publish
//! `{id, seq, outcome, provider_id?, error?}` to `herald.status`. Any node
//! applies a report with the `report` script, fenced by `(id, seq)`, so a
//! repeated report or one on an older copy changes nothing; the report is
//! acked once Redis has the outcome.

use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::ScaleoutStore;
use super::broker;
use crate::domain::RequestId;
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
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Outcome {
    Sent,
    Failed,
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

    /// Applies one report and acks it; an unreadable one is acked and logged.
    async fn apply(&self, delivery: &lapin::message::Delivery) -> Result<(), StoreError> {
        let report = match serde_json::from_slice::<StatusReport>(&delivery.data) {
            Ok(report) => report,
            Err(error) => {
                tracing::error!(%error, "an unreadable status report; dropped");
                broker::ack(delivery).await;
                return Ok(());
            }
        };
        let outcome = match report.outcome {
            Outcome::Sent => "sent",
            Outcome::Failed => "failed",
        };
        let applied: String = self
            .redis
            .script(
                self.scripts
                    .report
                    .arg(&self.tag)
                    .arg(report.id.to_string())
                    .arg(report.seq)
                    .arg(outcome)
                    .arg(report.provider_id.as_deref().unwrap_or(""))
                    .arg(report.error.as_deref().unwrap_or("")),
            )
            .await?;
        tracing::info!(id = %report.id, seq = report.seq, outcome, applied, "status report");
        broker::ack(delivery).await;
        Ok(())
    }
}
