//! Opening a data directory: prepare it, open sled, check the format, and
//! compare what sled recovered with the integrity record before anything is
//! served.
//!
//! A full scan of the requests costs seconds per million (6–12 s measured
//! here under load, sled reading every page through its 8 MiB cache), so the
//! record is checked by two cheap means and the store is scanned only when
//! one of them finds something wrong:
//! - the commit sequence: sled holds the number of the last flush it kept;
//!   fewer than the record's means sled dropped acknowledged writes (it cuts
//!   its log at the first bad checksum, and everything after goes with it);
//! - after a clean stop, the digest of sled's files: a byte changed since
//!   then (a flip in data sled will not replay, which it would only find
//!   when reading it) means the files are not what Herald left.
//!
//! The scan counts the requests by the hour their ids were made and names
//! what is missing. A loss stops the start unless the operator accepts it.

use std::sync::Arc;

use super::commit::{COMMIT_SEQ_KEY, Flusher, GroupCommit};
use super::datadir::DataDir;
use super::engine::Opened;
use super::health::Health;
use super::integrity::{IntegrityError, Record, RecordFile, Tally};
use super::pending::OutboxDepth;
use super::{EmbeddedStore, FlushStats, Running, StoreError, StoreOptions, format, pending};
use crate::domain::{RequestId, now_ms};
use crate::instruments;

impl EmbeddedStore {
    /// Opens (or creates) the store in `path`: takes the directory, opens
    /// sled, checks the format and the integrity record, and returns every
    /// lease a crash left behind to the outbox. Starts the flusher, so it
    /// must run inside a tokio runtime.
    pub fn open_with(path: &std::path::Path, options: &StoreOptions) -> Result<Self, StoreError> {
        let dir = Arc::new(DataDir::prepare(path)?);
        let existing = read_record(&dir, options.accept_data_loss)?;
        let untouched = match existing.as_ref().and_then(|(_, record)| record.clean) {
            Some(digest) => dir.digest_sled_files().map_err(io_error(&dir))? == digest,
            None => false,
        };
        let (opened, rebuilt) = open_sled(&dir, options.cache_capacity_bytes)?;
        format::check_or_upgrade(&opened)?;
        let verdict = Verdict {
            untouched,
            rebuilt,
            accept_data_loss: options.accept_data_loss,
        };
        let (file, record) = verdict.settle(&dir, &opened, existing)?;
        let health = Arc::new(Health::default());
        // Exported from the start: at 0, and the store serving.
        instruments::data_loss_accepted(None);
        instruments::storage_state("serving");
        let store = Self {
            dir,
            options: options.clone(),
            health,
            engine: Default::default(),
            running: Default::default(),
            depth: OutboxDepth::default(),
            live_leases: Default::default(),
            wake: Default::default(),
            recovered_at_open: 0,
        };
        store.install(store.start(opened, file, record));
        let recovered = store.recover_leases()?;
        instruments::recovered_leases(recovered);
        // After recovery nothing is leased: every undelivered entry is in the outbox.
        let counts = pending::load(&store.engine()?.meta)?;
        store.depth.reset(counts, [0; 3]);
        Ok(Self {
            recovered_at_open: recovered,
            ..store
        })
    }

    /// Starts the group commit over `opened`.
    pub(super) fn start(&self, opened: Opened, file: RecordFile, record: Record) -> Running {
        let flusher = Flusher {
            file,
            record,
            stats: FlushStats::default(),
            disk: super::disk_sync::DiskSync::new(self.dir.path()),
        };
        let (commit, flusher) = GroupCommit::start(
            opened.db.clone(),
            flusher,
            self.dir.clone(),
            self.health.clone(),
        );
        let (engine, released) = opened.into_engine(commit);
        Running {
            engine: Arc::new(engine),
            flusher,
            released,
        }
    }
}

/// After a clean stop: the digest of sled's files as left, in the record.
pub(super) fn record_clean_stop(dir: &DataDir, flusher: &mut Flusher) -> Result<(), StoreError> {
    flusher.record.clean = Some(dir.digest_sled_files().map_err(io_error(dir))?);
    flusher
        .file
        .write(&flusher.record)
        .map_err(integrity_error(dir))
}

/// Opens sled; when a damaged snapshot stops it, sets the snapshots aside
/// and opens again from the log alone. Whether that happened.
pub(super) fn open_sled(dir: &DataDir, cache_bytes: u64) -> Result<(Opened, bool), StoreError> {
    match Opened::open(dir.path(), cache_bytes) {
        Ok(opened) => Ok((opened, false)),
        Err(StoreError::Corrupt(reason)) => {
            let moved = dir.set_snapshots_aside().map_err(io_error(dir))?;
            if moved == 0 {
                return Err(StoreError::Corrupt(reason));
            }
            tracing::warn!(%reason, moved, "sled refused its snapshot; set aside, opening from the log");
            Ok((Opened::open(dir.path(), cache_bytes)?, true))
        }
        Err(other) => Err(other),
    }
}

/// The record as the last run left it; an unreadable one is a refusal
/// unless the operator accepts losing what it protected.
fn read_record(dir: &DataDir, accept: bool) -> Result<Option<(RecordFile, Record)>, StoreError> {
    match RecordFile::open(dir.path()) {
        Ok(found) => Ok(found),
        Err(IntegrityError::Damaged) if accept => {
            tracing::error!(
                "the integrity record is damaged; --accept-data-loss: starting a new one"
            );
            std::fs::remove_file(dir.path().join(super::integrity::FILE_NAME))
                .map_err(io_error(dir))?;
            Ok(None)
        }
        Err(error) => Err(integrity_error(dir)(error)),
    }
}

/// What the start knows when it compares the store with its record.
struct Verdict {
    /// The files are byte for byte what the last clean stop left.
    untouched: bool,
    /// sled had to rebuild its snapshot from the log.
    rebuilt: bool,
    accept_data_loss: bool,
}

impl Verdict {
    /// Compares, and returns the record to go on with: refuses a loss
    /// unless accepted.
    fn settle(
        &self,
        dir: &DataDir,
        opened: &Opened,
        existing: Option<(RecordFile, Record)>,
    ) -> Result<(RecordFile, Record), StoreError> {
        let kept_seq = commit_seq(opened)?;
        let (file, mut record) = match existing {
            Some(existing) => existing,
            None if kept_seq.is_none() => return first_record(dir, opened),
            // sled has flushed under a record before: the record was deleted.
            None => {
                let found = scan(opened, self.accept_data_loss)?;
                let why = format!(
                    "the integrity record {} is missing, so what this store acknowledged cannot be checked",
                    dir.path().join(super::integrity::FILE_NAME).display()
                );
                self.refuse_unless_accepted(dir, &why, 0)?;
                let record = Record {
                    seq: kept_seq.unwrap_or(0),
                    clean: None,
                    tally: found,
                };
                let file = RecordFile::create(dir.path(), &record).map_err(integrity_error(dir))?;
                return Ok((file, record));
            }
        };
        let kept_seq = kept_seq.unwrap_or(0);
        let cut = kept_seq < record.seq;
        let changed = record.clean.is_some() && !self.untouched;
        if cut || changed || self.rebuilt {
            tracing::warn!(
                cut,
                changed,
                rebuilt = self.rebuilt,
                "checking every request against the integrity record"
            );
            let found = scan(opened, self.accept_data_loss)?;
            match describe_loss(&record, &found, kept_seq) {
                Some((why, missing)) => {
                    self.refuse_unless_accepted(dir, &why, missing)?;
                    record.tally.accept(found, missing, now_ms());
                }
                None => record.tally.rebase(found),
            }
        }
        record.seq = record.seq.max(kept_seq);
        record.clean = None;
        let mut file = file;
        continue_sequence(opened, &mut file, &record).map_err(|e| match e {
            Sequenced::Sled(error) => StoreError::from(error),
            Sequenced::Record(error) => integrity_error(dir)(error),
        })?;
        Ok((file, record))
    }

    fn refuse_unless_accepted(
        &self,
        dir: &DataDir,
        why: &str,
        missing: u64,
    ) -> Result<(), StoreError> {
        if !self.accept_data_loss {
            return Err(data_loss(dir, why));
        }
        tracing::error!(
            reason = why,
            missing,
            "--accept-data-loss: starting without the missing data"
        );
        instruments::data_loss_accepted(Some(missing));
        Ok(())
    }
}

/// The plain words for what the store lacks of its record, and how many
/// requests; `None` when it lacks nothing.
fn describe_loss(record: &Record, found: &Tally, kept_seq: u64) -> Option<(String, u64)> {
    if let Some(loss) = record.tally.missing_from(found) {
        return Some((loss.to_string(), loss.missing));
    }
    (kept_seq < record.seq).then(|| {
        let why = format!(
            "sled kept its writes up to flush {kept_seq} but flush {} was acknowledged; every acknowledged request is there, so the lost writes are later changes to them (process calls, attempt outcomes)",
            record.seq
        );
        (why, 0)
    })
}

/// A store with no record yet, new or written before Herald kept one:
/// counts what is there (nothing, for a new store) as acknowledged.
fn first_record(dir: &DataDir, opened: &Opened) -> Result<(RecordFile, Record), StoreError> {
    let found = scan(opened, false)?;
    if found.total() > 0 {
        tracing::info!(
            requests = found.total(),
            "made the integrity record for an existing store"
        );
    }
    let record = Record {
        seq: 0,
        clean: None,
        tally: found,
    };
    let mut file = RecordFile::create(dir.path(), &record).map_err(integrity_error(dir))?;
    continue_sequence(opened, &mut file, &record).map_err(|e| match e {
        Sequenced::Sled(error) => StoreError::from(error),
        Sequenced::Record(error) => integrity_error(dir)(error),
    })?;
    Ok((file, record))
}

enum Sequenced {
    Sled(sled::Error),
    Record(IntegrityError),
}

/// Writes `record.seq` into sled, flushed, and then the record without its
/// clean mark: from here on sled and the record count flushes together,
/// and a crash is not taken for a clean stop.
fn continue_sequence(
    opened: &Opened,
    file: &mut RecordFile,
    record: &Record,
) -> Result<(), Sequenced> {
    opened
        .db
        .insert(COMMIT_SEQ_KEY, &record.seq.to_be_bytes())
        .map_err(Sequenced::Sled)?;
    opened.db.flush().map_err(Sequenced::Sled)?;
    file.write(record).map_err(Sequenced::Record)
}

/// The number of the last flush sled kept; `None` before any.
pub(super) fn commit_seq(opened: &Opened) -> Result<Option<u64>, StoreError> {
    match opened.db.get(COMMIT_SEQ_KEY)? {
        None => Ok(None),
        Some(bytes) => {
            let bytes: [u8; 8] = bytes
                .as_ref()
                .try_into()
                .map_err(|_| StoreError::Corrupt("the commit sequence is not 8 bytes".into()))?;
            Ok(Some(u64::from_be_bytes(bytes)))
        }
    }
}

/// Counts every readable request. An unreadable part stops the count,
/// unless the operator accepted a loss (then it is skipped, and logged).
pub(super) fn scan(opened: &Opened, skip_unreadable: bool) -> Result<Tally, StoreError> {
    let mut ids = Vec::new();
    for key in opened.requests().iter().keys() {
        match key {
            Ok(key) => match <[u8; 16]>::try_from(key.as_ref()) {
                Ok(bytes) => ids.push(RequestId::from_bytes(bytes)),
                Err(_) => tracing::error!(
                    len = key.len(),
                    "a request key that is not an id; not counted"
                ),
            },
            Err(error) if skip_unreadable => {
                tracing::error!(%error, "part of the requests tree is unreadable; not counted");
                break;
            }
            Err(error) => {
                return Err(StoreError::Corrupt(format!(
                    "sled cannot read its requests tree ({error}); `herald export` saves what is readable, --accept-data-loss starts without the rest"
                )));
            }
        }
    }
    Ok(ids.into_iter().collect())
}

fn io_error(dir: &DataDir) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |error| {
        StoreError::from(super::DataDirError::from_io(
            dir.path(),
            "checking the integrity record",
            error,
        ))
    }
}

fn integrity_error(dir: &DataDir) -> impl Fn(IntegrityError) -> StoreError + '_ {
    move |error| match error {
        IntegrityError::Io(io) => io_error(dir)(io),
        other => data_loss(dir, &other.to_string()),
    }
}

/// A refusal to start for missing data, with the ways out.
fn data_loss(dir: &DataDir, why: &str) -> StoreError {
    let dir = dir.path().display();
    StoreError::Refused(format!(
        "{why} in {dir}: restore the directory from a backup, or start with --accept-data-loss to go on without them (`herald export --data-dir {dir}` saves what is readable first)"
    ))
}
