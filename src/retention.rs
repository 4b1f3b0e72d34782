//! The retention sweeper: a background task that deletes requests which
//! reached `sent` or `failed` more than `--retention-secs` ago, with their
//! history and idempotency keys, so the data directory and the store's memory
//! stop growing with every request ever sent. Undelivered work is never
//! deleted. The deleting itself is the store's ([`Records::purge_final_before`]; the embedded
//! engine's is `src/store/embedded/retention.rs`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::now_ms;
use crate::instruments;
use crate::store::{Records, StoreError};

/// Requests read per store call: each call holds the task for a few
/// milliseconds and ends with at most one flush.
const BATCH: usize = 1_000;
const MIN_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(3_600);

/// Sweeps every quarter of `keep_for` (between a second and an hour) until
/// `shutdown`; a zero `keep_for` keeps everything and returns at once.
pub async fn run(store: Arc<dyn Records>, keep_for: Duration, shutdown: CancellationToken) {
    instruments::requests_purged(0); // exported from the start, as 0
    if keep_for.is_zero() {
        return;
    }
    let interval = (keep_for / 4).clamp(MIN_SWEEP_INTERVAL, MAX_SWEEP_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let cutoff_ms = now_ms().saturating_sub(keep_for.as_millis() as u64);
        match sweep(store.as_ref(), cutoff_ms, &shutdown).await {
            Ok((0, 0)) => {}
            Ok((requests, keys)) => {
                tracing::info!(requests, idempotency_keys = keys, "retention: deleted")
            }
            Err(error) => tracing::error!(%error, "retention sweep failed; retrying next time"),
        }
    }
}

/// Deletes, batch by batch, everything final before `cutoff_ms`; returns the
/// requests and the idempotency keys deleted.
async fn sweep(
    store: &dyn Records,
    cutoff_ms: u64,
    shutdown: &CancellationToken,
) -> Result<(usize, usize), StoreError> {
    // Bindings first: see `src/store/embedded/retention.rs`.
    let keys = store.purge_idempotency_before(cutoff_ms).await?;
    let mut requests = 0;
    let mut resume_after = None;
    loop {
        let batch = store
            .purge_final_before(cutoff_ms, resume_after, BATCH)
            .await?;
        instruments::requests_purged(batch.purged);
        requests += batch.purged;
        resume_after = batch.resume_after;
        if resume_after.is_none() || shutdown.is_cancelled() {
            break;
        }
        tokio::task::yield_now().await;
    }
    Ok((requests, keys))
}
