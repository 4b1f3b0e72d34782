//! Group commit: one flusher task makes writes durable for many waiters, and
//! keeps the integrity record in step with what it acknowledged.
//!
//! A writer applies its sled writes, then awaits [`GroupCommit::durable`]
//! (a create names the id it stored; a purge names, before deleting, the ids
//! it is about to delete). The flusher takes every waiter queued so far,
//! checks that the data directory is still the one opened, runs sled's
//! flush followed by a real `fdatasync` of what it wrote (`disk_sync.rs`:
//! sled's own flush is `sync_file_range`), rewrites the integrity record, and
//! answers them all. Writes queued during a
//! flush ride the next one, so the cost of an fsync is shared by every
//! request that arrived meanwhile. (An awaited flush per request collapses to
//! about 1 request/s under 32 concurrent clients; batching holds tens of
//! thousands per second.)
//!
//! A failed flush fails its whole batch and tells [`Health`]: sled 0.34 keeps
//! refusing every write after one I/O error, so the store must be opened
//! again (see `reopen.rs`), and the integrity record counts only what a
//! successful flush covered.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::datadir::DataDir;
use super::disk_sync::DiskSync;
use super::health::Health;
use super::integrity::{Record, RecordFile};
use crate::domain::RequestId;

/// Why a batch is not durable, shared by every waiter of the batch.
#[derive(Clone, Debug, thiserror::Error)]
pub enum FlushError {
    #[error("a write could not be made durable: {0}")]
    Failed(Arc<str>),
    #[error("the data directory is gone")]
    DirectoryGone,
    #[error("the store is closing")]
    Closing,
}

pub type FlushResult = Result<(), FlushError>;

/// What a waiter's writes mean for the integrity record.
#[derive(Debug)]
pub enum Ack {
    Nothing,
    /// A new request was stored: counted once its flush succeeds.
    Created(RequestId),
    /// These requests are about to be deleted: uncounted first, so a crash
    /// between the two can only leave more than the record counts.
    Retiring(Vec<RequestId>),
}

struct Waiter {
    done: oneshot::Sender<FlushResult>,
    ack: Ack,
}

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

/// `meta` key of the number of the last flush: written into sled before
/// each flush, and into the integrity record after it.
pub const COMMIT_SEQ_KEY: &[u8] = b"commit_seq";

/// What the flusher owns, and hands back when it stops.
pub struct Flusher {
    pub file: RecordFile,
    /// What the file holds: only what a successful flush covered.
    pub record: Record,
    pub stats: FlushStats,
    /// The syncs sled's flush leaves undone, for the sled it flushes.
    pub disk: DiskSync,
}

impl GroupCommit {
    /// Starts the flusher. It runs until every [`GroupCommit`] handle is
    /// dropped, answering the waiters still queued with one last flush, and
    /// returns what it owns.
    pub fn start(
        db: sled::Db,
        flusher: Flusher,
        dir: Arc<DataDir>,
        health: Arc<Health>,
    ) -> (Self, JoinHandle<Flusher>) {
        let (waiters, queue) = mpsc::unbounded_channel();
        let task = tokio::spawn(run_flusher(db, flusher, dir, health, queue));
        (Self { waiters }, task)
    }

    /// Resolves once every write this task made before calling it is on disk.
    pub async fn durable(&self) -> FlushResult {
        self.durable_with(Ack::Nothing).await
    }

    /// [`GroupCommit::durable`], counting `ack` in the integrity record.
    pub async fn durable_with(&self, ack: Ack) -> FlushResult {
        let (done, wait) = oneshot::channel();
        if self.waiters.send(Waiter { done, ack }).is_err() {
            return Err(FlushError::Closing);
        }
        wait.await.unwrap_or(Err(FlushError::Closing))
    }
}

async fn run_flusher(
    db: sled::Db,
    mut flusher: Flusher,
    dir: Arc<DataDir>,
    health: Arc<Health>,
    mut queue: mpsc::UnboundedReceiver<Waiter>,
) -> Flusher {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, usize::MAX).await > 0 {
        let started = Instant::now();
        let (result, returned) = flush_batch(&db, flusher, &dir, &batch).await;
        flusher = returned;
        match &result {
            Ok(()) => {}
            Err(FlushError::DirectoryGone) => health.lose(&format!(
                "the data directory {} was deleted or replaced while Herald ran",
                dir.path().display()
            )),
            Err(error) => health.fail(&error.to_string()),
        }
        crate::instruments::group_commit(batch.len(), started.elapsed());
        flusher.stats.flushes += 1;
        flusher.stats.waiters_served += batch.len() as u64;
        for waiter in batch.drain(..) {
            // A waiter that gave up (its client went away) needs no answer.
            let _ = waiter.done.send(result.clone());
        }
    }
    flusher
}

/// One flush for `batch`: the directory check, sled's fsync, then the
/// integrity record, all off the runtime's threads.
async fn flush_batch(
    db: &sled::Db,
    mut flusher: Flusher,
    dir: &Arc<DataDir>,
    batch: &[Waiter],
) -> (FlushResult, Flusher) {
    let mut next = flusher.record.clone();
    next.seq += 1;
    for waiter in batch {
        match &waiter.ack {
            Ack::Nothing => {}
            Ack::Created(id) => next.tally.add(id),
            Ack::Retiring(ids) => ids.iter().for_each(|id| next.tally.remove(id)),
        }
    }
    let (db, dir) = (db.clone(), dir.clone());
    let joined = tokio::task::spawn_blocking(move || {
        let result = write_batch(&db, &dir, &mut flusher, &next);
        if result.is_ok() {
            flusher.record = next;
        }
        (result, flusher)
    })
    .await;
    match joined {
        Ok(done) => done,
        // The blocking task cannot panic short of a bug in sled; its state is gone with it.
        Err(error) => panic!("the group-commit flush panicked: {error}"),
    }
}

fn write_batch(db: &sled::Db, dir: &DataDir, flusher: &mut Flusher, next: &Record) -> FlushResult {
    // Checked before the flush: an fsync into a deleted directory succeeds
    // and saves nothing.
    if !dir.is_in_place() {
        return Err(FlushError::DirectoryGone);
    }
    let failed = |error: sled::Error| FlushError::Failed(super::engine::describe(&error).into());
    // After every write of the batch, so sled loses it only with them.
    db.insert(COMMIT_SEQ_KEY, &next.seq.to_be_bytes())
        .map_err(failed)?;
    db.flush().map_err(failed)?;
    let io_failed = |error: &dyn std::fmt::Display| FlushError::Failed(error.to_string().into());
    flusher.disk.after_flush().map_err(|e| io_failed(&e))?;
    flusher.file.write(next).map_err(|e| io_failed(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(dir: &tempfile::TempDir) -> (sled::Db, GroupCommit, JoinHandle<Flusher>, Arc<Health>) {
        let data = Arc::new(DataDir::prepare(dir.path()).unwrap());
        let db = sled::open(dir.path()).unwrap();
        let file = RecordFile::create(dir.path(), &Record::default()).unwrap();
        let flusher = Flusher {
            file,
            record: Record::default(),
            stats: FlushStats::default(),
            disk: DiskSync::new(dir.path()),
        };
        let health = Arc::new(Health::default());
        let (commit, task) = GroupCommit::start(db.clone(), flusher, data, health.clone());
        (db, commit, task, health)
    }

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
        let (db, commit, flusher, _) = start(&dir);

        let mut waiters = Vec::new();
        for i in 0u32..200 {
            db.insert(i.to_be_bytes(), &b"v"[..]).unwrap();
            let mut waiter = Box::pin(commit.durable_with(Ack::Created(RequestId::new())));
            poll_once(&mut waiter).await;
            waiters.push(waiter);
        }
        for waiter in waiters {
            waiter.await.unwrap();
        }
        drop(commit);
        let flusher = flusher.await.unwrap();
        assert_eq!(flusher.stats.waiters_served, 200);
        assert_eq!(
            flusher.stats.flushes, 1,
            "waiters queued before the first flush share it"
        );
        let counted = flusher.record.tally.total();
        assert_eq!(counted, 200, "every acknowledged create is counted");
        drop(db);

        let reopened = sled::open(dir.path()).unwrap();
        assert_eq!(
            reopened.len(),
            200 + 1,
            "the writes and the commit sequence"
        );
        let (_, on_disk) = RecordFile::open(dir.path()).unwrap().unwrap();
        assert_eq!(on_disk, flusher.record);
        let seq = reopened.get(COMMIT_SEQ_KEY).unwrap().unwrap();
        assert_eq!(seq.as_ref(), on_disk.seq.to_be_bytes());
    }

    #[tokio::test]
    async fn a_deleted_directory_fails_the_flush_and_loses_the_store() {
        let parent = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir_in(parent.path()).unwrap();
        let (_db, commit, _flusher, health) = start(&dir);
        commit.durable().await.unwrap();
        std::fs::remove_dir_all(dir.path()).unwrap();
        let result = commit.durable_with(Ack::Created(RequestId::new())).await;
        assert!(matches!(result, Err(FlushError::DirectoryGone)));
        assert!(matches!(
            health.state(),
            crate::store::StorageState::Lost(_)
        ));
    }
}
