//! Bringing the store back after a write failed, without a restart.
//!
//! sled 0.34 remembers its first I/O error and refuses every later write,
//! even once the disk has room again (measured: one `503`, then every write
//! failed until the gateway restarted). So when a flush fails, the store
//! stops taking writes (`503 storage_unavailable`), waits until every
//! operation let go of the engine, and opens the directory again, retrying
//! with a growing pause until sled opens and its commit sequence shows it
//! kept every acknowledged flush.
//!
//! Attempts running meanwhile keep their leases: a lease is on disk before
//! its provider call starts (`writes.rs`), so the reopened store still has
//! it, and the attempt records its outcome once the store serves again. Any
//! other lease the reopened store holds (its write was in the failed flush)
//! goes back to the outbox.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::open::{commit_seq, open_sled};
use super::{EmbeddedStore, StoreError, pending};
use crate::store::StorageState as State;

/// The first pause between two tries to reopen, doubled up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(250);
/// "Writes work again within seconds" once the disk has room.
const MAX_PAUSE: Duration = Duration::from_secs(2);

impl EmbeddedStore {
    /// Watches the store until `shutdown`: after a failed write, reopens it
    /// as soon as the disk takes writes again. A lost store stays lost.
    pub async fn keep_available(&self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.health.failure() => {}
            }
            if let State::Lost(_) = self.health.state() {
                return;
            }
            self.reopen_until_serving(&shutdown).await;
        }
    }

    async fn reopen_until_serving(&self, shutdown: &CancellationToken) {
        let mut flusher = self.take_engine().await;
        if flusher.is_none() {
            return;
        }
        let mut pause = FIRST_PAUSE;
        loop {
            match self.reopen(&mut flusher) {
                Ok(()) => return,
                Err(ReopenError::Lost(reason)) => return self.health.lose(&reason),
                Err(ReopenError::NotYet(error)) => {
                    tracing::warn!(%error, retry_in = ?pause, "the store cannot be reopened yet");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    /// One try: open sled, check that it kept every acknowledged flush, put
    /// the new engine in place with the flusher's record.
    fn reopen(&self, flusher: &mut Option<super::commit::Flusher>) -> Result<(), ReopenError> {
        self.dir
            .remove_partial_files()
            .map_err(|e| ReopenError::NotYet(e.into()))?;
        let (opened, _) =
            open_sled(&self.dir, self.options.cache_capacity_bytes).map_err(ReopenError::NotYet)?;
        let record_seq = flusher.as_ref().map_or(0, |f| f.record.seq);
        let kept = commit_seq(&opened)
            .map_err(ReopenError::NotYet)?
            .unwrap_or(0);
        if kept < record_seq {
            return Err(ReopenError::Lost(format!(
                "reopened after a failed write, sled kept its writes up to flush {kept} but flush {record_seq} was acknowledged"
            )));
        }
        let counts = pending::load(opened.meta()).map_err(ReopenError::NotYet)?;
        let leased = leased_by_priority(&opened).map_err(ReopenError::NotYet)?;
        let Some(taken) = flusher.take() else {
            return Err(ReopenError::Lost(
                "the integrity record was lost with the failed engine".into(),
            ));
        };
        let super::commit::Flusher {
            file, mut record, ..
        } = taken;
        record.seq = record.seq.max(kept);
        let running = self.start(opened, file, record);
        let engine = running.engine.clone();
        self.install(running);
        self.depth.reset(counts, leased);
        let live = self
            .live_leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match self.recover_leases_except(&engine, &live) {
            Ok(0) => {}
            Ok(returned) => {
                tracing::info!(returned, "leases of a failed flush returned to the outbox")
            }
            Err(error) => {
                tracing::warn!(%error, "leases of a failed flush stay until the next start")
            }
        }
        self.health.recovered();
        self.work_arrived();
        Ok(())
    }
}

enum ReopenError {
    /// Try again later (the disk is still full, say).
    NotYet(StoreError),
    /// The reopened store lacks acknowledged writes.
    Lost(String),
}

/// Leases on disk, by priority rank.
fn leased_by_priority(opened: &super::engine::Opened) -> Result<[u64; 3], StoreError> {
    let mut counts = [0; 3];
    for lease in opened.leases().iter().values() {
        let key = super::reads::decode_lease(&lease?)?.leased_from;
        counts[usize::from(key.rank)] += 1;
    }
    Ok(counts)
}
