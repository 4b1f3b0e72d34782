//! Liveness: each node beats its key `{prefix}:node:<instance>` (PX
//! [`NODE_TTL`]) every [`BEAT`], and rescues the leases of nodes whose key
//! expired (or whose deadline passed), so a killed node's work comes back
//! within about `NODE_TTL + BEAT`. The same beat refreshes the cached count
//! of pending work, shows whether Redis answers (`/ready`), and checks the
//! dataset's marker (`dataset.rs`): a Redis that comes back without it lost
//! everything, and the node stops serving rather than take new work as if
//! nothing happened.

use std::time::Duration;

use redis::cmd;
use tokio_util::sync::CancellationToken;

use super::ScaleoutStore;
use crate::store::{InstanceId, StoreError};

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
