//! Group commit: one flusher task makes writes durable for many waiters.
//!
//! A writer applies its sled transaction, then awaits [`GroupCommit::durable`].
//! The flusher takes every waiter queued so far, runs one `fsync`-backed sled
//! flush, and answers them all. Writes queued during a flush ride the next one,
//! so the cost of an fsync is shared by every request that arrived meanwhile.
//! (An awaited flush per request collapses to about 1 request/s under 32
//! concurrent clients; batching holds tens of thousands per second.)

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Why a flush failed, shared by every waiter of its batch.
pub type FlushResult = Result<(), Arc<sled::Error>>;

type Waiter = oneshot::Sender<FlushResult>;

/// The handle writers use to wait for durability.
#[derive(Clone)]
pub struct GroupCommit {
    waiters: mpsc::UnboundedSender<Waiter>,
}

/// Counters of the flusher's work, for logs and benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub struct FlushStats {
    pub flushes: u64,
    pub waiters_served: u64,
}

impl GroupCommit {
    /// Starts the flusher. It runs until every [`GroupCommit`] handle is dropped,
    /// answering the waiters still queued with one last flush.
    pub fn start(db: sled::Db) -> (Self, JoinHandle<FlushStats>) {
        let (waiters, queue) = mpsc::unbounded_channel();
        let flusher = tokio::spawn(run_flusher(db, queue));
        (Self { waiters }, flusher)
    }

    /// Resolves once every write this task made before calling it is on disk.
    pub async fn durable(&self) -> FlushResult {
        let (done, wait) = oneshot::channel();
        if self.waiters.send(done).is_err() {
            return Err(Arc::new(sled::Error::Unsupported(
                "the store is shutting down".into(),
            )));
        }
        wait.await.unwrap_or_else(|_| {
            Err(Arc::new(sled::Error::Unsupported(
                "the flusher stopped before answering".into(),
            )))
        })
    }
}

async fn run_flusher(db: sled::Db, mut queue: mpsc::UnboundedReceiver<Waiter>) -> FlushStats {
    let mut stats = FlushStats::default();
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, usize::MAX).await > 0 {
        let started = Instant::now();
        let db = db.clone();
        let result = match tokio::task::spawn_blocking(move || db.flush()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(Arc::new(error)),
            Err(join_error) => Err(Arc::new(sled::Error::ReportableBug(join_error.to_string()))),
        };
        if let Err(error) = &result {
            tracing::error!(%error, waiters = batch.len(), "group commit flush failed");
        }
        crate::instruments::group_commit(batch.len(), started.elapsed());
        stats.flushes += 1;
        stats.waiters_served += batch.len() as u64;
        for waiter in batch.drain(..) {
            // A waiter that gave up (its client went away) needs no answer.
            let _ = waiter.send(result.clone());
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `future` once, so a `durable()` call queues its waiter.
    async fn poll_once(future: &mut std::pin::Pin<Box<impl Future>>) {
        std::future::poll_fn(|cx| {
            let _ = future.as_mut().poll(cx);
            std::task::Poll::Ready(())
        })
        .await;
    }

    // One thread: the flusher cannot run until this test awaits, so every
    // waiter is queued before the first flush and all of them must share it.
    #[tokio::test(flavor = "current_thread")]
    async fn waiters_queued_before_a_flush_share_it_and_writes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let (commit, flusher) = GroupCommit::start(db.clone());

        let mut waiters = Vec::new();
        for i in 0u32..200 {
            db.insert(i.to_be_bytes(), &b"v"[..]).unwrap();
            let mut waiter = Box::pin(commit.durable());
            poll_once(&mut waiter).await;
            waiters.push(waiter);
        }
        for waiter in waiters {
            waiter.await.unwrap();
        }
        drop(commit);
        let stats = flusher.await.unwrap();
        assert_eq!(stats.waiters_served, 200);
        assert_eq!(
            stats.flushes, 1,
            "waiters queued before the first flush share it"
        );
        drop(db);

        let reopened = sled::open(dir.path()).unwrap();
        assert_eq!(reopened.len(), 200);
    }
}
