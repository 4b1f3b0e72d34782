//! What sled's flush leaves in the page cache, made durable before an
//! acknowledgement: an `fdatasync` of sled's log, of every blob file it
//! created, and of the directories whose entries changed.
//!
//! sled 0.34.7 ends `flush()` with `sync_file_range` on Linux (traced on the
//! release binary, issue 21): the log's pages are written back, but neither
//! the file's metadata (the log grows: its size and new extents live there)
//! nor the device's write cache is flushed, so a power cut within sled's own
//! 500 ms `fsync` period could take an acknowledged request with it. Blob
//! files (values over a quarter segment) are written without any sync, and
//! snapshots are renamed into place without a sync of the directory.
//!
//! One [`DiskSync`] per opened sled: the group-commit flusher calls
//! [`DiskSync::after_flush`] once per batch, after sled's flush and before
//! anyone is answered. A directory is synced only when its entries (name and
//! inode) differ from those at its last sync, so a batch normally costs one
//! `fdatasync` of the log; measured in `BENCHMARKS.md` (issue 21).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::fs::DirEntryExt;
use std::path::{Path, PathBuf};

/// sled's log file in a data directory.
const LOG_FILE: &str = "db";
/// The folder sled keeps blob values in.
const BLOBS_DIR: &str = "blobs";

/// A directory's entries as they were at its last sync.
type Entries = BTreeSet<(OsString, u64)>;

/// The syncs sled leaves undone, for one data directory.
pub struct DiskSync {
    dir: PathBuf,
    /// Opened at the first sync, so opening the store does not fail on it.
    log: Option<File>,
    dir_synced: Option<Entries>,
    blobs_synced: Option<Entries>,
}

/// What one call synced beyond the log, for tests and logs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Synced {
    pub blobs: usize,
    pub directories: usize,
}

impl DiskSync {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            log: None,
            dir_synced: None,
            blobs_synced: None,
        }
    }

    /// Makes durable what sled's last flush wrote: the log's data and size,
    /// then new blob files and the directories whose entries changed. The
    /// directories are listed after the log's sync, so every rename sled
    /// finished before the acknowledged writes reached the log is covered.
    pub fn after_flush(&mut self) -> io::Result<Synced> {
        self.log()?.sync_data()?;
        let mut synced = Synced::default();
        let blobs = self.dir.join(BLOBS_DIR);
        if blobs.is_dir() {
            let entries = entries(&blobs)?;
            let fresh = new_entries(self.blobs_synced.as_ref(), &entries);
            for (name, _) in &fresh {
                sync_new_file(&blobs.join(name))?;
            }
            synced.blobs = fresh.len();
            if self.blobs_synced.as_ref() != Some(&entries) {
                File::open(&blobs)?.sync_all()?;
                synced.directories += 1;
                self.blobs_synced = Some(entries);
            }
        }
        let entries = entries(&self.dir)?;
        if self.dir_synced.as_ref() != Some(&entries) {
            File::open(&self.dir)?.sync_all()?;
            synced.directories += 1;
            self.dir_synced = Some(entries);
        }
        Ok(synced)
    }

    fn log(&mut self) -> io::Result<&File> {
        let log = match self.log.take() {
            Some(log) => log,
            None => File::open(self.dir.join(LOG_FILE))?,
        };
        Ok(self.log.insert(log))
    }
}

/// A directory's entries by name and inode: a rename over an existing name
/// changes the inode, a new file adds a name.
fn entries(dir: &Path) -> io::Result<Entries> {
    let mut entries = Entries::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        entries.insert((entry.file_name(), entry.ino()));
    }
    Ok(entries)
}

/// The entries of `now` that were not there at the last sync (all of them
/// before the first).
fn new_entries(synced: Option<&Entries>, now: &Entries) -> Vec<(OsString, u64)> {
    now.iter()
        .filter(|entry| synced.is_none_or(|synced| !synced.contains(*entry)))
        .cloned()
        .collect()
}

/// `fdatasync` of a file sled created; one removed meanwhile (blob garbage
/// collection) needs none.
fn sync_new_file(path: &Path) -> io::Result<()> {
    match File::open(path) {
        Ok(file) => file.sync_data(),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_synced_when_their_entries_change_and_not_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG_FILE), b"log").unwrap();
        let mut disk = DiskSync::new(dir.path());
        assert_eq!(disk.after_flush().unwrap().directories, 1, "the first sync");
        assert_eq!(disk.after_flush().unwrap(), Synced::default());

        std::fs::write(dir.path().join("snap.1.generating"), b"s").unwrap();
        let renamed = dir.path().join("snap.1");
        std::fs::rename(dir.path().join("snap.1.generating"), &renamed).unwrap();
        assert_eq!(disk.after_flush().unwrap().directories, 1, "a rename");
        assert_eq!(disk.after_flush().unwrap(), Synced::default());

        std::fs::create_dir(dir.path().join(BLOBS_DIR)).unwrap();
        std::fs::write(dir.path().join(BLOBS_DIR).join("7"), b"blob").unwrap();
        let synced = disk.after_flush().unwrap();
        assert_eq!(synced.blobs, 1);
        assert_eq!(synced.directories, 2, "the blobs folder and its parent");
        std::fs::write(dir.path().join(BLOBS_DIR).join("8"), b"blob").unwrap();
        let synced = disk.after_flush().unwrap();
        assert_eq!((synced.blobs, synced.directories), (1, 1));
    }

    #[test]
    fn a_missing_log_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let error = DiskSync::new(dir.path()).after_flush().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }
}
