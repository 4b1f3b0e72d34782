//! `herald check` and `herald export`: reading a stopped store whole.
//!
//! The check reads every key of every tree (seconds per million requests:
//! this is what the start avoids) and reports what the store holds and each
//! inconsistency between the trees, the persisted counts and the integrity
//! record. The export writes every readable request with its history as one
//! JSON line, skipping what sled cannot read, so an operator can save what a
//! damaged store still holds.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::datadir::DataDir;
use super::engine::Opened;
use super::integrity::{Record, RecordFile, Tally};
use super::open::{commit_seq, open_sled};
use super::reads::{decode_lease, decode_outbox_key};
use super::{Event, RequestRecord, StoreError, decode, format, keys, pending};

/// Problems past this many are counted, not listed.
const MAX_LISTED: usize = 20;

/// What `herald check` found.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub requests: u64,
    pub by_status: BTreeMap<&'static str, u64>,
    pub pending: u64,
    pub leased: u64,
    pub events: u64,
    pub idempotency_keys: u64,
    pub record: Option<Record>,
    pub sled_seq: Option<u64>,
    pub problems: Vec<String>,
    pub unlisted_problems: usize,
    pub notes: Vec<String>,
}

impl CheckReport {
    /// Whether nothing is wrong: the only answer `herald check` exits 0 for.
    pub fn is_sound(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, problem: String) {
        if self.problems.len() < MAX_LISTED {
            self.problems.push(problem);
        } else {
            self.unlisted_problems += 1;
        }
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "requests: {}", self.requests)?;
        for (status, count) in &self.by_status {
            writeln!(f, "  {status}: {count}")?;
        }
        writeln!(
            f,
            "pending (processing asked for, not final): {}",
            self.pending
        )?;
        writeln!(f, "leases: {}", self.leased)?;
        writeln!(f, "events stored: {}", self.events)?;
        writeln!(f, "idempotency keys: {}", self.idempotency_keys)?;
        match &self.record {
            Some(record) => {
                let clean = if record.clean.is_some() {
                    "clean stop"
                } else {
                    "not stopped cleanly"
                };
                writeln!(
                    f,
                    "integrity record: {} acknowledged, last flush {}, {clean}, {} accepted losses",
                    record.tally.total(),
                    record.seq,
                    record.tally.accepted_losses().len()
                )?;
            }
            None => writeln!(f, "integrity record: none")?,
        }
        if let Some(seq) = self.sled_seq {
            writeln!(f, "sled's last flush: {seq}")?;
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        for problem in &self.problems {
            writeln!(f, "PROBLEM: {problem}")?;
        }
        if self.unlisted_problems > 0 {
            writeln!(f, "PROBLEM: {} more not listed", self.unlisted_problems)?;
        }
        let verdict = if self.is_sound() {
            "sound"
        } else {
            "NOT sound"
        };
        write!(f, "verdict: {verdict}")
    }
}

/// Reads the stopped store in `path` whole. After a sound check the record
/// is marked clean again, so the next start need not check anything twice.
pub fn check(path: &Path) -> Result<CheckReport, StoreError> {
    let dir = DataDir::lock_existing(path)?;
    let mut report = CheckReport::default();
    let existing = RecordFile::open(path);
    let (opened, rebuilt) = open_sled(&dir, super::StoreOptions::default().cache_capacity_bytes)?;
    if rebuilt {
        report.problem(
            "sled's snapshot was damaged; it was set aside and rebuilt from the log".into(),
        );
    }
    format::check_or_upgrade(&opened)?;
    report.sled_seq = commit_seq(&opened)?;
    let found = check_requests(&opened, &mut report);
    check_work(&opened, &mut report);
    check_events_and_keys(&opened, &mut report);
    let mut file = match existing {
        Ok(Some((file, record))) => {
            compare_with_record(&record, &found, &mut report);
            report.record = Some(record);
            Some(file)
        }
        Ok(None) if report.sled_seq.is_some() => {
            report.problem("the integrity record herald.integrity is missing".into());
            None
        }
        Ok(None) => {
            report
                .notes
                .push("no integrity record yet: the next start makes one".into());
            None
        }
        Err(error) => {
            report.problem(error.to_string());
            None
        }
    };
    drop(opened);
    if report.is_sound()
        && let (Some(file), Some(record)) = (file.as_mut(), report.record.as_mut())
    {
        record.clean = Some(dir.digest_sled_files().map_err(|e| {
            StoreError::from(super::DataDirError::from_io(
                path,
                "reading sled's files",
                e,
            ))
        })?);
        if let Err(error) = file.write(record) {
            report
                .notes
                .push(format!("could not mark the checked store clean: {error}"));
        }
    }
    Ok(report)
}

/// Decodes every request; returns what was readable, counted for the record.
fn check_requests(opened: &Opened, report: &mut CheckReport) -> Tally {
    let mut ids = Vec::new();
    for entry in opened.requests().iter() {
        let (key, bytes) = match entry {
            Ok(entry) => entry,
            Err(error) => {
                report.problem(format!(
                    "sled cannot read the rest of the requests tree: {error}"
                ));
                break;
            }
        };
        match decode::<RequestRecord>(&bytes) {
            Ok(record) if record.id.as_bytes()[..] == key[..] => {
                report.requests += 1;
                *report.by_status.entry(record.status.as_str()).or_default() += 1;
                ids.push(record.id);
            }
            Ok(record) => report.problem(format!(
                "the record under key {key:02x?} is request {}",
                record.id
            )),
            Err(error) => report.problem(format!("request {key:02x?} is unreadable: {error}")),
        }
    }
    ids.into_iter().collect()
}

/// Every outbox entry and lease points at an undelivered request, and the
/// persisted counts match them.
fn check_work(opened: &Opened, report: &mut CheckReport) {
    let mut counted = [0u64; 3];
    let mut seen = HashSet::new();
    let entries = opened
        .outbox()
        .iter()
        .keys()
        .map(|k| ("outbox", k))
        .chain(opened.delayed().iter().values().map(|v| ("delayed", v)))
        .chain(opened.leases().iter().values().map(|v| ("leases", v)));
    for (tree, entry) in entries {
        let decoded = entry
            .map_err(StoreError::from)
            .and_then(|bytes| match tree {
                "leases" => decode_lease(&bytes).map(|lease| lease.leased_from),
                _ => decode_outbox_key(&bytes),
            });
        let key = match decoded {
            Ok(key) => key,
            Err(error) => {
                report.problem(format!("{tree}: {error}"));
                continue;
            }
        };
        counted[usize::from(key.rank)] += 1;
        if tree == "leases" {
            report.leased += 1;
        }
        if !seen.insert(key.id) {
            report.problem(format!(
                "request {} is in the outbox or leased twice",
                key.id
            ));
        }
        match opened
            .requests()
            .get(key.id.as_bytes())
            .map(|b| b.map(|b| decode::<RequestRecord>(&b)))
        {
            Ok(Some(Ok(record))) if record.status.is_terminal() => {
                report.problem(format!(
                    "{tree}: request {} is {} but still there",
                    key.id, record.status
                ));
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_))) | Err(_) => {} // reported with the requests
            Ok(None) => report.problem(format!(
                "{tree}: an entry for request {}, which is not stored",
                key.id
            )),
        }
    }
    report.pending = counted.iter().sum();
    match pending::load(opened.meta()) {
        Ok(persisted) if persisted == counted => {}
        Ok(persisted) => report.problem(format!(
            "the persisted pending counts {persisted:?} (high, normal, low) differ from the outbox and leases {counted:?}"
        )),
        Err(error) => report.problem(format!("the pending counts: {error}")),
    }
}

fn check_events_and_keys(opened: &Opened, report: &mut CheckReport) {
    let events = opened.db.open_tree("events");
    if let Ok(events) = events {
        for entry in events.iter().keys() {
            match entry {
                Ok(key) if key.len() == keys::EVENT_KEY_LEN => report.events += 1,
                Ok(key) => report.problem(format!("an event key of {} bytes", key.len())),
                Err(error) => {
                    report.problem(format!("sled cannot read the rest of the events: {error}"));
                    break;
                }
            }
        }
    }
    if let Ok(keys) = opened.db.open_tree("idempotency") {
        report.idempotency_keys = keys.len() as u64;
    }
}

fn compare_with_record(record: &Record, found: &Tally, report: &mut CheckReport) {
    if let Some(loss) = record.tally.missing_from(found) {
        report.problem(loss.to_string());
    }
    let kept = report.sled_seq.unwrap_or(0);
    if kept < record.seq {
        report.problem(format!(
            "sled kept its writes up to flush {kept}, but flush {} was acknowledged",
            record.seq
        ));
    }
}

/// One line of `herald export`.
#[derive(Serialize, serde::Deserialize, Debug, PartialEq, Eq)]
pub struct ExportLine {
    pub request: RequestRecord,
    pub events: Vec<Event>,
}

/// What an export wrote and skipped.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ExportSummary {
    pub exported: u64,
    pub unreadable: u64,
}

/// Writes every readable request of the stopped store in `path`, with its
/// history, to `out` as JSON lines, oldest first. An unreadable record or a
/// part of the tree sled cannot read is skipped and counted.
pub fn export(path: &Path, out: &mut dyn Write) -> Result<ExportSummary, StoreError> {
    let dir = DataDir::lock_existing(path)?;
    let (opened, _) = open_sled(&dir, super::StoreOptions::default().cache_capacity_bytes)?;
    let events = opened.db.open_tree("events")?;
    let mut summary = ExportSummary::default();
    let mut resume: Option<[u8; 16]> = None;
    let mut stuck = 0;
    loop {
        let range = match resume {
            Some(after) => opened
                .requests()
                .range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => opened.requests().range::<&[u8], _>(..),
        };
        let mut failed = false;
        for entry in range {
            let (key, bytes) = match entry {
                Ok(entry) => entry,
                Err(error) => {
                    tracing::error!(%error, "export: sled cannot read part of the requests; skipping ahead");
                    failed = true;
                    break;
                }
            };
            resume = <[u8; 16]>::try_from(key.as_ref()).ok();
            stuck = 0;
            match exported_line(&events, &bytes) {
                Some(line) => {
                    let json = serde_json::to_string(&line)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    writeln!(out, "{json}")
                        .map_err(|e| StoreError::Unavailable(format!("writing the export: {e}")))?;
                    summary.exported += 1;
                }
                None => summary.unreadable += 1,
            }
        }
        if !failed {
            break;
        }
        summary.unreadable += 1;
        stuck += 1;
        // Step past the key that will not read; give up on a tree that reads no further.
        resume = Some(next_key(resume.unwrap_or([0; 16])));
        if stuck > 3 {
            break;
        }
    }
    Ok(summary)
}

fn exported_line(events: &sled::Tree, bytes: &[u8]) -> Option<ExportLine> {
    let request: RequestRecord = decode(bytes)
        .inspect_err(|error| tracing::error!(%error, "export: an unreadable request skipped"))
        .ok()?;
    let mut history: BTreeMap<u32, Event> = request.implied_events().collect();
    for entry in events.scan_prefix(request.id.as_bytes()) {
        let Ok((key, bytes)) = entry else { break };
        if let (Some(seq), Ok(event)) = (keys::event_sequence(&key), decode(&bytes)) {
            history.insert(seq, event);
        }
    }
    Some(ExportLine {
        request,
        events: history.into_values().collect(),
    })
}

/// The smallest 16-byte key above `key`.
fn next_key(mut key: [u8; 16]) -> [u8; 16] {
    for byte in key.iter_mut().rev() {
        if *byte == u8::MAX {
            *byte = 0;
        } else {
            *byte += 1;
            break;
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Priority, RequestId, Status, now_ms};
    use crate::store::embedded::EmbeddedStore;
    use crate::store::embedded::tests::{engine, processed};
    use crate::store::{AttemptReport, Decision};

    async fn a_store_with_history() -> (tempfile::TempDir, Vec<RequestId>) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let sent = processed(&store, Priority::High).await;
        let lease = store.lease_next_due(now_ms() + 1).unwrap().unwrap();
        store
            .finish_attempt(&lease, AttemptReport::default(), Decision::Sent)
            .await
            .unwrap();
        let waiting = processed(&store, Priority::Low).await;
        store.close().await.unwrap();
        (dir, vec![sent, waiting])
    }

    #[tokio::test]
    async fn a_sound_store_checks_sound_and_exports_every_request() {
        let (dir, ids) = a_store_with_history().await;
        let report = check(dir.path()).unwrap();
        assert!(report.is_sound(), "{report}");
        assert_eq!((report.requests, report.pending), (2, 1));
        assert_eq!(report.record.as_ref().unwrap().tally.total(), 2);

        let mut out = Vec::new();
        let summary = export(dir.path(), &mut out).unwrap();
        assert_eq!(
            summary,
            ExportSummary {
                exported: 2,
                unreadable: 0
            }
        );
        let lines: Vec<ExportLine> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let exported: Vec<_> = lines.iter().map(|l| l.request.id).collect();
        assert_eq!(exported, ids);
        assert_eq!(lines[0].request.status, Status::Sent);
        assert_eq!(
            lines[0].events.len(),
            4,
            "created, process, attempt started and finished"
        );

        let store = EmbeddedStore::open(dir.path()).unwrap();
        for line in lines {
            assert_eq!(store.get(line.request.id).unwrap().unwrap(), line.request);
            assert_eq!(store.events(line.request.id).unwrap().unwrap(), line.events);
        }
    }

    #[tokio::test]
    async fn an_inconsistent_store_is_not_sound() {
        let (dir, ids) = a_store_with_history().await;
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            engine(&store).requests.remove(ids[1].as_bytes()).unwrap();
            store.close().await.unwrap();
        }
        let report = check(dir.path()).unwrap();
        assert!(!report.is_sound());
        let text = report.to_string();
        assert!(text.contains("not stored"), "{text}");
        assert!(
            text.contains("1 acknowledged requests are missing"),
            "{text}"
        );
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let parent = tempfile::tempdir().unwrap();
        let missing = parent.path().join("nothing-here");
        let error = check(&missing).unwrap_err();
        assert!(error.to_string().contains("does not exist"), "{error}");
        assert!(!missing.exists(), "a check creates nothing");
    }

    #[test]
    fn next_key_carries() {
        let mut key = [0u8; 16];
        key[15] = 0xff;
        let next = next_key(key);
        assert_eq!((next[14], next[15]), (1, 0));
    }
}
