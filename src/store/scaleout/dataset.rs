//! The dataset's identity, held on both sides so that each notices when the
//! other lost its data. Redis holds the marker `{prefix}:meta`
//! (`<format>/<uuid>`, written by the first node to open an empty Redis)
//! and `{prefix}:bound` once a broker has been told of it; RabbitMQ holds
//! two durable, empty queues: `herald.dataset.<uuid>` names the dataset,
//! and `herald.dataset` says the vhost has carried one. Each broker session
//! asks, before it publishes anything ([`ScaleoutStore::reconcile`]):
//!
//! - `herald.dataset.<uuid>` is there: both sides hold the same dataset;
//! - it is missing and Redis was bound: the broker lost its messages (its
//!   data directory was wiped, or it is a new broker). Every request Redis
//!   knows the broker held (`{prefix}:onbroker`) goes back to the due set,
//!   and the mover publishes it again;
//! - it is missing, Redis was never bound, and the broker carried a dataset
//!   (`herald.dataset` is there, or the work queues hold messages, which a
//!   vhost bound before `herald.dataset` existed shows instead): Redis lost
//!   its data while the nodes were down (restarted without its AOF, or
//!   flushed) and this start marked the empty Redis as a new dataset. The
//!   node stops serving; `--accept-data-loss` serves the new dataset
//!   instead, and the fence drops the orphaned messages;
//! - it is missing, never bound, and the broker never carried one: a first
//!   start.
//!
//! While the nodes run, the marker gone from Redis, or another in its place,
//! means the same loss ([`ScaleoutStore::check_dataset`]). One vhost carries
//! one dataset: a second key prefix on it is refused as a loss.

use redis::cmd;

use super::ScaleoutStore;
use super::broker::{BrokerError, Probe, SessionCheck};
use super::link::RedisLink;
use crate::store::StoreError;

/// The marker's format part: the layout of keys and scripts.
const FORMAT: &str = "herald-scaleout-1";
/// The broker-side sign that the vhost has carried a dataset.
const CARRIED: &str = "herald.dataset";
/// Requests put back in the due set per script when the broker lost them.
const REQUEUE_BATCH: usize = 1_000;

fn meta_key(tag: &str) -> String {
    format!("{tag}:meta")
}

/// Marks the dataset in Redis (kept if it is there already) and returns
/// the marker this node serves.
pub(super) async fn mark(redis: &RedisLink, tag: &str) -> Result<String, StoreError> {
    let fresh = format!("{FORMAT}/{}", uuid::Uuid::now_v7().simple());
    let _: Option<String> = redis
        .command(cmd("SET").arg(meta_key(tag)).arg(&fresh).arg("NX"))
        .await?;
    let marker: Option<String> = redis.command(cmd("GET").arg(meta_key(tag))).await?;
    marker.ok_or_else(|| StoreError::Unavailable("Redis dropped the dataset marker".into()))
}

impl ScaleoutStore {
    fn bound_key(&self) -> String {
        format!("{}:bound", self.tag)
    }

    /// The broker-side name of this dataset.
    fn dataset_queue(&self) -> String {
        let id = self.dataset.rsplit('/').next().unwrap_or(&self.dataset);
        format!("herald.dataset.{id}")
    }
}

#[async_trait::async_trait]
impl SessionCheck for ScaleoutStore {
    /// Brings a new broker session and Redis to the same dataset; see the
    /// module's comment for the cases.
    async fn reconcile(&self, probe: Probe<'_>) -> Result<(), BrokerError> {
        let queue = self.dataset_queue();
        if probe.messages_in(&queue).await?.is_some() {
            return Ok(());
        }
        let bound: bool = self
            .redis
            .command(cmd("EXISTS").arg(self.bound_key()))
            .await
            .map_err(store_error)?;
        // A marker without its uuid was written before the broker kept one:
        // that Redis held data all along, so it counts as bound.
        let bound = bound || self.dataset == FORMAT;
        if bound {
            let requeued = self.requeue_published().await.map_err(store_error)?;
            tracing::warn!(
                requeued,
                "RabbitMQ does not know this dataset (its data was lost, or it is a new broker): the work it held is published again"
            );
        } else {
            let carried = probe.messages_in(CARRIED).await?.is_some();
            let waiting = probe.work_messages().await?;
            // Another node may have bound this dataset since the first look:
            // it declares the dataset's queue before anything else.
            if (carried || waiting > 0) && probe.messages_in(&queue).await?.is_none() {
                self.refuse_orphaned(waiting)?;
            }
        }
        probe.declare_durable(&queue).await?;
        probe.declare_durable(CARRIED).await?;
        let _: () = self
            .redis
            .command(cmd("SET").arg(self.bound_key()).arg(&self.dataset))
            .await
            .map_err(store_error)?;
        Ok(())
    }
}

impl ScaleoutStore {
    /// The broker carried a dataset this Redis never saw, and holds
    /// `waiting` of its messages: stop serving, unless the operator
    /// accepted the loss.
    fn refuse_orphaned(&self, waiting: u64) -> Result<(), BrokerError> {
        if self.options.accept_data_loss {
            tracing::warn!(
                waiting,
                "--accept-data-loss: serving a new dataset; RabbitMQ's {waiting} messages of the lost one are dropped as they arrive"
            );
            return Ok(());
        }
        self.lose(format!(
            "Redis holds a new, empty dataset while RabbitMQ carried an older one (it holds {waiting} of its messages): Redis lost its data while the nodes were down (restarted without its AOF, or flushed). Restore Redis from its AOF, or start with --accept-data-loss to serve without the lost requests"
        ));
        Err(BrokerError::Dataset(
            "Redis lost its data; this node serves nothing".into(),
        ))
    }

    /// Every request the broker was known to hold goes back to the due set;
    /// how many did.
    async fn requeue_published(&self) -> Result<u64, StoreError> {
        let mut requeued = 0;
        loop {
            let (moved, left): (u64, u64) = self
                .redis
                .script(
                    self.scripts
                        .requeue_published
                        .arg(&self.tag)
                        .arg(REQUEUE_BATCH),
                )
                .await?;
            requeued += moved;
            if left == 0 {
                self.due.notify_one();
                return Ok(requeued);
            }
        }
    }

    /// Stops serving if the dataset's marker is gone, or another took its place.
    pub(super) async fn check_dataset(&self) -> Result<(), StoreError> {
        let marker: Option<String> = self
            .redis
            .command(cmd("GET").arg(meta_key(&self.tag)))
            .await?;
        if marker.as_deref() != Some(self.dataset.as_str()) {
            self.lose(format!(
                "Redis lost Herald's data (its marker {} is gone or replaced: restarted without persistence, or flushed); restart the nodes to serve what is left",
                meta_key(&self.tag)
            ));
        }
        Ok(())
    }

    /// Stops serving for `reason`; the first reason found stays.
    fn lose(&self, reason: String) {
        let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        if lost.is_none() {
            tracing::error!(%reason, "data lost");
            crate::instruments::storage_state("lost");
            *lost = Some(reason);
        }
    }
}

fn store_error(error: StoreError) -> BrokerError {
    BrokerError::Dataset(error.to_string())
}
