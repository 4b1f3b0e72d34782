//! Liveness: each node beats its key `{prefix}:node:<instance>` (PX
//! [`NODE_TTL`]) every [`BEAT`], and rescues the leases of nodes whose key
//! expired (or whose deadline passed), so a killed node's work comes back
//! within about `NODE_TTL + BEAT`. The same beat refreshes the cached count
//! of pending work, shows whether Redis answers (`/ready`), and checks the
//! dataset's marker `{prefix}:meta`, written at start: a Redis that comes
//! back without it lost everything (restarted without persistence, or
//! flushed), and the node stops serving rather than take new work as if
//! nothing happened. A Redis wiped while every node was down is not noticed.

use std::time::Duration;

use redis::cmd;
use tokio_util::sync::CancellationToken;

use super::ScaleoutStore;
use crate::store::{InstanceId, StoreError};

/// The dataset marker's value: the layout of keys and scripts.
const FORMAT: &str = "herald-scaleout-1";

/// How long a node's liveness key outlives its last beat.
const NODE_TTL: Duration = Duration::from_millis(3_000);
const BEAT: Duration = Duration::from_millis(1_000);

impl ScaleoutStore {
    pub(super) fn node_key(&self, instance: &InstanceId) -> String {
        format!("{}:node:{instance}", self.tag)
    }

    /// Says this node is alive for another [`NODE_TTL`].
    pub(super) async fn beat(&self) -> Result<(), StoreError> {
        let _: () = self
            .redis
            .command(
                cmd("SET")
                    .arg(self.node_key(&self.options.instance))
                    .arg(&self.options.instance.0)
                    .arg("PX")
                    .arg(NODE_TTL.as_millis() as u64),
            )
            .await?;
        Ok(())
    }

    fn meta_key(&self) -> String {
        format!("{}:meta", self.tag)
    }

    /// Marks the dataset this node serves (kept if it is there already).
    pub(super) async fn mark_dataset(&self) -> Result<(), StoreError> {
        let _: Option<String> = self
            .redis
            .command(cmd("SET").arg(self.meta_key()).arg(FORMAT).arg("NX"))
            .await?;
        Ok(())
    }

    /// Stops serving if the dataset's marker is gone.
    async fn check_dataset(&self) -> Result<(), StoreError> {
        let present: bool = self
            .redis
            .command(cmd("EXISTS").arg(self.meta_key()))
            .await?;
        if !present && self.lost_reason().is_none() {
            let reason = format!(
                "Redis lost Herald's data (its marker {} is gone: restarted without persistence, or flushed); restart the nodes to serve what is left",
                self.meta_key()
            );
            tracing::error!(%reason, "data lost");
            crate::instruments::storage_state("lost");
            *self.lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        }
        Ok(())
    }

    /// Beats, checks the dataset, refreshes the pending count and rescues,
    /// until `shutdown`.
    pub(super) async fn keep_alive(&self, shutdown: CancellationToken) {
        loop {
            let upkeep = async {
                self.check_dataset().await?;
                self.beat().await?;
                self.refresh_pending().await?;
                self.rescue().await
            };
            if let Err(error) = upkeep.await {
                tracing::debug!(%error, "liveness upkeep failed; trying again");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(BEAT) => {}
            }
        }
    }
}
