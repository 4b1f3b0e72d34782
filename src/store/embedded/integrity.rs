//! The integrity record: what Herald has acknowledged, kept outside sled's
//! files, so a store that sled recovered with less is noticed.
//!
//! sled 0.34 stops reading its log at the first bad checksum and opens with
//! whatever came before, without a word (one flipped byte near the start of
//! `db` left 0 of 300 acknowledged requests readable). The record cannot be
//! rolled back with sled's log: it is its own file, `herald.integrity`, which
//! the group commit rewrites after each flush that acknowledged a create
//! (and before retention deletes anything), before the waiters are answered.
//!
//! The record counts the requests acknowledged and not yet purged by the hour
//! their id was made in (ids are UUIDv7), and the highest id acknowledged, so
//! a loss can be told by how many and which ids. It also lists the losses an
//! operator accepted (`--accept-data-loss`).
//!
//! The file holds two fixed slots, written in turn, each with a generation
//! and a crc32: a write torn by a crash leaves the other slot, one generation
//! older, which undercounts at most what that write added. The file's size
//! never changes after it is made, so each write costs one `fdatasync` and no
//! metadata update.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::domain::RequestId;

/// The record's file name in the data directory.
pub const FILE_NAME: &str = "herald.integrity";
const MAGIC: &[u8; 8] = b"HRLDINTG";
const LAYOUT_VERSION: u8 = 1;
/// Room for one slot: header, payload, crc. 16 KiB holds [`MAX_BUCKETS`] ranges.
const SLOT_SIZE: usize = 16 * 1024;
const HEADER_LEN: usize = 8 + 1 + 8 + 4;
/// Ranges kept before the oldest are merged: bounds the record's size for
/// stores that keep everything (`--retention-secs 0`).
const MAX_BUCKETS: usize = 512;
/// Accepted losses remembered, newest last.
const MAX_ACCEPTED: usize = 32;
const MS_PER_HOUR: u64 = 3_600_000;

#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    #[error("cannot read or write the integrity record: {0}")]
    Io(#[from] io::Error),
    #[error("the integrity record is damaged: neither of its two copies is readable")]
    Damaged,
    #[error("the integrity record has layout {0}, which this build does not read")]
    UnknownLayout(u8),
}

/// Acknowledged requests made in one range of hours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Bucket {
    first_hour: u32,
    last_hour: u32,
    count: u64,
}

/// A loss an operator accepted with `--accept-data-loss`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptedLoss {
    pub at_ms: u64,
    pub missing: u64,
}

/// What the record holds: the acknowledged requests, by when their ids were made.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Keyed by first hour; ranges never overlap.
    buckets: Vec<Bucket>,
    highest: Option<[u8; 16]>,
    accepted: Vec<AcceptedLoss>,
}

/// Requests acknowledged but not found, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loss {
    pub missing: u64,
    /// The earliest and latest hour (as ms since the epoch) holding missing ids.
    pub from_ms: u64,
    pub until_ms: u64,
    /// The highest id acknowledged, when it is one of the missing.
    pub highest_missing: Option<RequestId>,
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hour = |ms: u64| {
            httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        };
        write!(
            f,
            "{} acknowledged requests are missing, with ids made between {} and {}",
            self.missing,
            hour(self.from_ms),
            hour(self.until_ms),
        )?;
        if let Some(id) = self.highest_missing {
            write!(f, "; the newest acknowledged id, {id}, is among them")?;
        }
        Ok(())
    }
}

fn hour_of(id: &RequestId) -> u32 {
    let bytes = id.as_bytes();
    let mut ms = [0u8; 8];
    ms[2..].copy_from_slice(&bytes[..6]);
    (u64::from_be_bytes(ms) / MS_PER_HOUR) as u32
}

impl Tally {
    /// Every acknowledged request counted in the record.
    pub fn total(&self) -> u64 {
        self.buckets.iter().map(|b| b.count).sum()
    }

    pub fn accepted_losses(&self) -> &[AcceptedLoss] {
        &self.accepted
    }

    pub fn highest(&self) -> Option<RequestId> {
        self.highest.map(RequestId::from_bytes)
    }

    /// Counts `id` as kept.
    pub fn add(&mut self, id: &RequestId) {
        let hour = hour_of(id);
        match self.bucket_mut(hour) {
            Some(bucket) => bucket.count += 1,
            None => {
                let at = self.buckets.partition_point(|b| b.first_hour < hour);
                let bucket = Bucket {
                    first_hour: hour,
                    last_hour: hour,
                    count: 1,
                };
                self.buckets.insert(at, bucket);
                self.merge_oldest_beyond_limit();
            }
        }
        if self.highest.is_none_or(|h| h < *id.as_bytes()) {
            self.highest = Some(*id.as_bytes());
        }
    }

    /// Counts `id` as gone on purpose (retention).
    pub fn remove(&mut self, id: &RequestId) {
        if let Some(bucket) = self.bucket_mut(hour_of(id)) {
            bucket.count = bucket.count.saturating_sub(1);
        }
        self.buckets.retain(|b| b.count > 0);
    }

    fn bucket_mut(&mut self, hour: u32) -> Option<&mut Bucket> {
        let at = self.buckets.partition_point(|b| b.last_hour < hour);
        self.buckets
            .get_mut(at)
            .filter(|b| b.first_hour <= hour && hour <= b.last_hour)
    }

    fn merge_oldest_beyond_limit(&mut self) {
        while self.buckets.len() > MAX_BUCKETS {
            let second = self.buckets.remove(1);
            let first = &mut self.buckets[0];
            first.last_hour = second.last_hour;
            first.count += second.count;
        }
    }

    /// What `found` (a count of what the store holds) lacks of this record.
    pub fn missing_from(&self, found: &Tally) -> Option<Loss> {
        let mut loss: Option<Loss> = None;
        for bucket in &self.buckets {
            let held: u64 = found
                .buckets
                .iter()
                .filter(|f| f.first_hour >= bucket.first_hour && f.last_hour <= bucket.last_hour)
                .map(|f| f.count)
                .sum();
            let missing = bucket.count.saturating_sub(held);
            if missing == 0 {
                continue;
            }
            let from_ms = u64::from(bucket.first_hour) * MS_PER_HOUR;
            let until_ms = (u64::from(bucket.last_hour) + 1) * MS_PER_HOUR;
            let loss = loss.get_or_insert(Loss {
                missing: 0,
                from_ms,
                until_ms,
                highest_missing: None,
            });
            loss.missing += missing;
            loss.until_ms = until_ms;
        }
        if let Some(loss) = loss.as_mut() {
            loss.highest_missing = self
                .highest
                .filter(|h| found.highest.is_none_or(|f| f < *h))
                .map(RequestId::from_bytes);
        }
        loss
    }

    /// Takes `found` as the truth from now on, remembering the accepted loss
    /// of `missing` requests.
    pub fn accept(&mut self, found: Tally, missing: u64, at_ms: u64) {
        let mut accepted = std::mem::take(&mut self.accepted);
        accepted.push(AcceptedLoss { at_ms, missing });
        let excess = accepted.len().saturating_sub(MAX_ACCEPTED);
        accepted.drain(..excess);
        *self = Tally { accepted, ..found };
    }

    /// Takes `found`'s counts (a store found whole, perhaps holding more than
    /// was acknowledged) and keeps this record's accepted losses.
    pub fn rebase(&mut self, found: Tally) {
        let accepted = std::mem::take(&mut self.accepted);
        *self = Tally { accepted, ..found };
    }
}

/// Counts ids into a [`Tally`] (what a scan of the store found).
impl FromIterator<RequestId> for Tally {
    fn from_iter<I: IntoIterator<Item = RequestId>>(ids: I) -> Self {
        let mut tally = Tally::default();
        let mut counts: BTreeMap<u32, u64> = BTreeMap::new();
        for id in ids {
            *counts.entry(hour_of(&id)).or_default() += 1;
            if tally.highest.is_none_or(|h| h < *id.as_bytes()) {
                tally.highest = Some(*id.as_bytes());
            }
        }
        tally.buckets = counts
            .into_iter()
            .map(|(hour, count)| Bucket {
                first_hour: hour,
                last_hour: hour,
                count,
            })
            .collect();
        tally
    }
}

/// The whole record: the tally, the sequence number of the last flush it
/// covers (sled's `meta` holds the same number, written before that flush:
/// a lower number there means sled lost acknowledged writes), and, after a
/// clean stop, a digest of sled's files as they were left.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub clean: Option<u32>,
    pub tally: Tally,
}

/// The record's file, open for rewriting.
pub struct RecordFile {
    file: File,
    generation: u64,
}

impl RecordFile {
    /// Opens the record in `dir`: `None` when there is none yet.
    pub fn open(dir: &Path) -> Result<Option<(Self, Record)>, IntegrityError> {
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(FILE_NAME))
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let (generation, record) = read_newest(&file)?;
        Ok(Some((Self { file, generation }, record)))
    }

    /// Makes a new record file holding `record`, written and synced before it
    /// is put in place, so a half-made file is never read.
    pub fn create(dir: &Path, record: &Record) -> Result<Self, IntegrityError> {
        let partial = dir.join(format!("{FILE_NAME}.new"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)?;
        file.set_len(2 * SLOT_SIZE as u64)?;
        let mut made = Self {
            file,
            generation: 0,
        };
        made.write(record)?;
        made.write(record)?; // both slots valid
        std::fs::rename(&partial, dir.join(FILE_NAME))?;
        File::open(dir)?.sync_all()?;
        Ok(made)
    }

    /// Writes `record` over the older slot and syncs it.
    pub fn write(&mut self, record: &Record) -> Result<(), IntegrityError> {
        let generation = self.generation + 1;
        let slot = encode_slot(generation, record)?;
        let offset = (generation % 2) * SLOT_SIZE as u64;
        self.file.write_all_at(&slot, offset)?;
        self.file.sync_data()?;
        self.generation = generation;
        Ok(())
    }
}

fn encode_slot(generation: u64, record: &Record) -> Result<Vec<u8>, IntegrityError> {
    let payload = postcard::to_allocvec(record).map_err(|e| io::Error::other(e.to_string()))?;
    let mut slot = Vec::with_capacity(HEADER_LEN + payload.len() + 4);
    slot.extend_from_slice(MAGIC);
    slot.push(LAYOUT_VERSION);
    slot.extend_from_slice(&generation.to_le_bytes());
    slot.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    slot.extend_from_slice(&payload);
    let crc = crc32fast::hash(&slot);
    slot.extend_from_slice(&crc.to_le_bytes());
    if slot.len() > SLOT_SIZE {
        return Err(io::Error::other("the integrity record outgrew its slot").into());
    }
    Ok(slot)
}

/// The valid slot of the highest generation.
fn read_newest(file: &File) -> Result<(u64, Record), IntegrityError> {
    let mut best: Option<(u64, Record)> = None;
    for slot in 0..2u64 {
        let mut bytes = vec![0u8; SLOT_SIZE];
        let read = file.read_at(&mut bytes, slot * SLOT_SIZE as u64)?;
        bytes.truncate(read);
        if let Some((generation, record)) = decode_slot(&bytes)?
            && best.as_ref().is_none_or(|(g, _)| *g < generation)
        {
            best = Some((generation, record));
        }
    }
    best.ok_or(IntegrityError::Damaged)
}

fn decode_slot(bytes: &[u8]) -> Result<Option<(u64, Record)>, IntegrityError> {
    if bytes.len() < HEADER_LEN + 4 || &bytes[..8] != MAGIC {
        return Ok(None);
    }
    if bytes[8] != LAYOUT_VERSION {
        return Err(IntegrityError::UnknownLayout(bytes[8]));
    }
    let generation = u64::from_le_bytes(bytes[9..17].try_into().unwrap_or_default());
    let len = u32::from_le_bytes(bytes[17..21].try_into().unwrap_or_default()) as usize;
    let Some(end) = HEADER_LEN
        .checked_add(len)
        .filter(|end| end + 4 <= bytes.len())
    else {
        return Ok(None);
    };
    let crc = u32::from_le_bytes(bytes[end..end + 4].try_into().unwrap_or_default());
    if crc32fast::hash(&bytes[..end]) != crc {
        return Ok(None);
    }
    Ok(postcard::from_bytes(&bytes[HEADER_LEN..end])
        .ok()
        .map(|record| (generation, record)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_at(ms: u64, n: u16) -> RequestId {
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        bytes[14..].copy_from_slice(&n.to_be_bytes());
        RequestId::from_bytes(bytes)
    }

    const HOUR: u64 = MS_PER_HOUR;

    #[test]
    fn counts_by_hour_and_reports_what_is_missing_where() {
        let ids: Vec<_> = (0..10)
            .map(|n| id_at(1_000 * HOUR + u64::from(n) * HOUR / 2, n))
            .collect();
        let mut record = Tally::default();
        ids.iter().for_each(|id| record.add(id));
        assert_eq!(record.total(), 10);
        let whole: Tally = ids.iter().copied().collect();
        assert_eq!(record.missing_from(&whole), None);

        let found: Tally = ids[..4].iter().chain(&ids[6..8]).copied().collect();
        let loss = record.missing_from(&found).unwrap();
        assert_eq!(loss.missing, 4);
        assert_eq!(
            loss.from_ms,
            1_002 * HOUR,
            "ids 4 and 5 were made in hour 1002"
        );
        assert_eq!(loss.until_ms, 1_005 * HOUR, "ids 8 and 9 in hour 1004");
        assert_eq!(loss.highest_missing, Some(ids[9]));
    }

    #[test]
    fn more_found_than_acknowledged_is_no_loss_and_purges_are_subtracted() {
        let ids: Vec<_> = (0..4).map(|n| id_at(5 * HOUR, n)).collect();
        let mut record = Tally::default();
        ids[..2].iter().for_each(|id| record.add(id));
        let found: Tally = ids.iter().copied().collect();
        assert_eq!(
            record.missing_from(&found),
            None,
            "a create answered 503 may survive"
        );
        record.remove(&ids[0]);
        let found: Tally = ids[1..].iter().copied().collect();
        assert_eq!(record.missing_from(&found), None);
        assert_eq!(record.total(), 1);
    }

    #[test]
    fn old_hours_merge_into_ranges_beyond_the_limit() {
        let mut record = Tally::default();
        for hour in 0..(MAX_BUCKETS as u64 + 10) {
            record.add(&id_at(hour * HOUR, 0));
        }
        assert_eq!(record.buckets.len(), MAX_BUCKETS);
        assert_eq!(record.total(), MAX_BUCKETS as u64 + 10);
        let found: Tally = (1..(MAX_BUCKETS as u64 + 10))
            .map(|h| id_at(h * HOUR, 0))
            .collect();
        assert_eq!(record.missing_from(&found).unwrap().missing, 1);
        let full = Record {
            seq: u64::MAX,
            clean: Some(u32::MAX),
            tally: record,
        };
        encode_slot(1, &full).expect("a full record fits its slot");
    }

    #[test]
    fn the_file_keeps_the_newest_whole_slot() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = Record::default();
        record.tally.add(&id_at(HOUR, 1));
        let mut file = RecordFile::create(dir.path(), &record).unwrap();
        record.tally.add(&id_at(HOUR, 2));
        record.seq = 7;
        file.write(&record).unwrap();
        let (_, read) = RecordFile::open(dir.path()).unwrap().unwrap();
        assert_eq!((read.tally.total(), read.seq), (2, 7));

        // Tear the newest slot: the older one (one create fewer) is read.
        let torn_offset = (file.generation % 2) * SLOT_SIZE as u64 + 30;
        file.file.write_all_at(&[0xFF; 4], torn_offset).unwrap();
        let (_, read) = RecordFile::open(dir.path()).unwrap().unwrap();
        assert_eq!((read.tally.total(), read.seq), (1, 0));

        let other = ((file.generation + 1) % 2) * SLOT_SIZE as u64 + 30;
        file.file.write_all_at(&[0xFF; 4], other).unwrap();
        assert!(matches!(
            RecordFile::open(dir.path()),
            Err(IntegrityError::Damaged)
        ));
    }

    #[test]
    fn accepting_a_loss_takes_what_was_found_and_remembers_it() {
        let ids: Vec<_> = (0..3).map(|n| id_at(7 * HOUR, n)).collect();
        let mut record = Tally::default();
        ids.iter().for_each(|id| record.add(id));
        let found: Tally = ids[..1].iter().copied().collect();
        let loss = record.missing_from(&found).unwrap();
        record.accept(found.clone(), loss.missing, 42);
        assert_eq!(record.missing_from(&found), None);
        assert_eq!(
            record.accepted_losses(),
            [AcceptedLoss {
                at_ms: 42,
                missing: 2
            }]
        );
    }
}
