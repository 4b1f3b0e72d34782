//! The data directory before sled sees it, and while it runs: Herald's own
//! lock, the removal of files an interrupted start left half-written, the
//! check of sled's `conf`, a write probe that turns a full, read-only or
//! forbidden disk into one plain message, and the directory's identity, so a
//! directory deleted or replaced under a running gateway is noticed.
//!
//! sled says none of this plainly: a second instance gets "could not acquire
//! lock … WouldBlock", a damaged `conf` "created using a sled version earlier
//! than 0.29", and a 0-byte `snap.*.generating` left by a start on a full disk
//! is read as the newest snapshot, so every later start fails with "Read
//! corrupted data" until the file is deleted.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Herald's lock file; it holds the pid of the gateway that holds the lock.
pub const LOCK_FILE: &str = "herald.lock";
const PROBE_FILE: &str = "herald.probe";
/// What sled writes to `conf` with Herald's settings (sled's default segment
/// size, no compression, pagecache 0.34), followed by its crc32.
const SLED_CONF: &str = "segment_size: 524288\nuse_compression: false\nversion: 0.34\n";
/// The files sled and Herald keep in a data directory; anything else makes it foreign.
const KNOWN_FILES: [&str; 2] = [LOCK_FILE, super::integrity::FILE_NAME];

/// Why the data directory cannot be used. Each message says what failed,
/// where, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "another herald{holder} is using {dir}: stop it first, or give this one its own --data-dir",
        holder = holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    Locked { dir: PathBuf, holder: Option<u32> },
    #[error(
        "no space left on the device of {dir} ({during}): free space there and start again; nothing was changed"
    )]
    NoSpace { dir: PathBuf, during: &'static str },
    #[error(
        "{dir} is on a read-only filesystem ({during}): remount it read-write, or choose another --data-dir"
    )]
    ReadOnly { dir: PathBuf, during: &'static str },
    #[error(
        "permission denied on {dir} ({during}): let the user herald runs as (uid {uid}) write there, or choose another --data-dir"
    )]
    PermissionDenied {
        dir: PathBuf,
        during: &'static str,
        uid: u32,
    },
    #[error("cannot use {dir} ({during}): {source}")]
    Io {
        dir: PathBuf,
        during: &'static str,
        source: io::Error,
    },
    #[error("{dir} does not exist: name the data directory of a stopped Herald")]
    Missing { dir: PathBuf },
    #[error(
        "{dir} is not a Herald data directory (it holds `{found}`): point --data-dir at an empty directory or at Herald's own"
    )]
    Foreign { dir: PathBuf, found: String },
    #[error(
        "sled's settings file {path} is damaged ({reason}): Herald always writes the same settings, so deleting that one file lets the next start write it again; the data in `db` is not touched"
    )]
    DamagedConf { path: PathBuf, reason: &'static str },
}

impl DataDirError {
    /// Names an I/O failure by what an operator can do about it.
    pub fn from_io(dir: &Path, during: &'static str, source: io::Error) -> Self {
        let dir = dir.to_path_buf();
        match source.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                Self::NoSpace { dir, during }
            }
            io::ErrorKind::ReadOnlyFilesystem => Self::ReadOnly { dir, during },
            io::ErrorKind::PermissionDenied => Self::PermissionDenied {
                dir,
                during,
                // SAFETY: geteuid(2) has no preconditions and cannot fail.
                uid: unsafe { libc::geteuid() },
            },
            _ => Self::Io {
                dir,
                during,
                source,
            },
        }
    }
}

/// Which directory, by device and inode: what a path no longer leads to once
/// the directory was deleted or replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    dev: u64,
    ino: u64,
}

impl Identity {
    pub fn of(path: &Path) -> io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// A data directory Herald holds: locked, cleaned, checked. The lock lasts
/// as long as this value.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    identity: Identity,
    /// Held until [`DataDir::release`] or the drop.
    lock: std::sync::Mutex<Option<File>>,
}

impl DataDir {
    /// Creates the directory if needed, takes it, and proves the disk takes
    /// a durable write.
    pub fn prepare(path: &Path) -> Result<Self, DataDirError> {
        std::fs::create_dir_all(path).map_err(|e| DataDirError::from_io(path, "creating it", e))?;
        let dir = Self::take(path)?;
        probe_write(path)?;
        Ok(dir)
    }

    /// Takes an existing directory for reading it whole (`herald check`,
    /// `herald export`); creates nothing.
    pub fn lock_existing(path: &Path) -> Result<Self, DataDirError> {
        if !path.is_dir() {
            return Err(DataDirError::Missing {
                dir: path.to_path_buf(),
            });
        }
        Self::take(path)
    }

    /// Takes Herald's lock, refuses a foreign directory, removes partial
    /// files and checks sled's `conf`.
    fn take(path: &Path) -> Result<Self, DataDirError> {
        let lock = lock(path)?;
        refuse_foreign(path)?;
        remove_partial_files(path)?;
        check_conf(path)?;
        let identity =
            Identity::of(path).map_err(|e| DataDirError::from_io(path, "reading it", e))?;
        Ok(Self {
            path: path.to_path_buf(),
            identity,
            lock: std::sync::Mutex::new(Some(lock)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lets another Herald take the directory (the store is closed).
    pub fn release(&self) {
        self.lock.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Whether the path still leads to the directory that was opened: `false`
    /// once it was deleted, moved away or replaced.
    pub fn is_in_place(&self) -> bool {
        Identity::of(&self.path).is_ok_and(|now| now == self.identity)
    }

    /// Removes what an interrupted start left half-written (before a reopen).
    pub fn remove_partial_files(&self) -> Result<(), DataDirError> {
        remove_partial_files(&self.path)
    }

    /// A crc32 of every file sled keeps here (`conf`, `db`, snapshots,
    /// blobs), in name order: equal digests mean sled will read back exactly
    /// what it wrote. About 0.5 s per 580 MB under load, 1M requests' worth
    /// (measured); taken at a clean stop and checked at the next start.
    pub fn digest_sled_files(&self) -> io::Result<u32> {
        let mut hasher = crc32fast::Hasher::new();
        let mut buffer = vec![0u8; 1 << 20];
        digest_into(&self.path, &mut hasher, &mut buffer, false)?;
        Ok(hasher.finalize())
    }

    /// Moves sled's snapshots out of its way (renamed, kept for an operator):
    /// a damaged snapshot stops sled from opening, and sled rebuilds one from
    /// its log.
    pub fn set_snapshots_aside(&self) -> io::Result<usize> {
        let mut moved = 0;
        for entry in std::fs::read_dir(&self.path)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("snap.") {
                let aside = self.path.join(format!("{SET_ASIDE_PREFIX}{name}"));
                std::fs::rename(entry.path(), aside)?;
                moved += 1;
            }
        }
        Ok(moved)
    }
}

/// Prefix of a damaged snapshot set aside ([`DataDir::set_snapshots_aside`]).
const SET_ASIDE_PREFIX: &str = "herald.damaged.";

fn is_sled_file(name: &str) -> bool {
    matches!(name, "conf" | "db" | "blobs") || name.starts_with("snap.")
}

/// Feeds the files of `dir` (only sled's, unless `everything`) to `hasher`.
fn digest_into(
    dir: &Path,
    hasher: &mut crc32fast::Hasher,
    buffer: &mut [u8],
    everything: bool,
) -> io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<io::Result<_>>()?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !everything && !is_sled_file(&name) {
            continue;
        }
        hasher.update(name.as_bytes());
        if entry.file_type()?.is_dir() {
            digest_into(&entry.path(), hasher, buffer, true)?;
            continue;
        }
        let mut file = File::open(entry.path())?;
        loop {
            let read = file.read(buffer)?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
        }
    }
    Ok(())
}

/// Takes an exclusive `flock` on `herald.lock` and writes this pid into it.
fn lock(dir: &Path) -> Result<File, DataDirError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| DataDirError::from_io(dir, "opening its lock file", e))?;
    if file.try_lock().is_err() {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        return Err(DataDirError::Locked {
            dir: dir.to_path_buf(),
            holder: holder.trim().parse().ok(),
        });
    }
    let pid = std::process::id().to_string();
    file.set_len(0)
        .and_then(|()| file.write_all_at(pid.as_bytes(), 0))
        .map_err(|e| DataDirError::from_io(dir, "writing its lock file", e))?;
    Ok(file)
}

/// A non-empty directory without sled's files is someone else's: sled would
/// add its own beside them, and a typo in `--data-dir` would go unnoticed.
fn refuse_foreign(dir: &Path) -> Result<(), DataDirError> {
    for name in file_names(dir)? {
        // Hidden files (`.gitkeep`) and a filesystem root's `lost+found` are nobody's data.
        let known = KNOWN_FILES.contains(&name.as_str())
            || is_sled_file(&name)
            || name.starts_with(SET_ASIDE_PREFIX)
            || name.starts_with('.')
            || name == "lost+found"
            || name == PROBE_FILE;
        if !known {
            return Err(DataDirError::Foreign {
                dir: dir.to_path_buf(),
                found: name,
            });
        }
    }
    Ok(())
}

/// Removes what an interrupted start or write left half-done: sled's
/// `snap.*.generating` (written in full, synced, then renamed: one that is
/// still there was never finished, and sled would read it as the newest
/// snapshot), Herald's write probe and a half-made integrity record.
fn remove_partial_files(dir: &Path) -> Result<(), DataDirError> {
    let half_made_record = format!("{}.new", super::integrity::FILE_NAME);
    for name in file_names(dir)? {
        let partial = (name.starts_with("snap.") && name.ends_with(".generating"))
            || name == PROBE_FILE
            || name == half_made_record;
        if partial {
            let path = dir.join(&name);
            tracing::warn!(file = %path.display(), "removing a file an interrupted start left half-written");
            std::fs::remove_file(&path)
                .map_err(|e| DataDirError::from_io(dir, "removing a partial file", e))?;
        }
    }
    Ok(())
}

fn file_names(dir: &Path) -> Result<Vec<String>, DataDirError> {
    let listing = |e| DataDirError::from_io(dir, "listing it", e);
    std::fs::read_dir(dir)
        .map_err(listing)?
        .map(|entry| {
            entry
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .map_err(listing)
        })
        .collect()
}

/// sled's `conf` holds three settings and a crc32; sled itself treats a file
/// of 8 bytes or fewer as absent (and rewrites it), but a damaged longer one
/// stops it with a misleading message.
fn check_conf(dir: &Path) -> Result<(), DataDirError> {
    let path = dir.join("conf");
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(DataDirError::from_io(dir, "reading sled's conf", e)),
    };
    if bytes.len() <= 8 {
        return Ok(());
    }
    let (text, crc) = bytes.split_at(bytes.len() - 4);
    let damaged = |reason| DataDirError::DamagedConf {
        path: path.clone(),
        reason,
    };
    if crc32fast::hash(text).to_le_bytes() != crc {
        return Err(damaged("its checksum does not match"));
    }
    if text != SLED_CONF.as_bytes() {
        return Err(damaged("it holds settings Herald never writes"));
    }
    Ok(())
}

/// Writes, syncs and removes a small file, so a disk that cannot take a
/// durable write is named now, before sled half-writes its own files.
fn probe_write(dir: &Path) -> Result<(), DataDirError> {
    let path = dir.join(PROBE_FILE);
    let written = File::create(&path)
        .and_then(|file| {
            file.write_all_at(&[0u8; 4096], 0)?;
            file.sync_all()
        })
        .and_then(|()| std::fs::remove_file(&path));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&path);
        DataDirError::from_io(dir, "writing a test file", e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap();
        let _held = DataDir::prepare(dir.path()).unwrap();
        let refused = DataDir::prepare(dir.path()).unwrap_err();
        let message = refused.to_string();
        assert!(message.starts_with("another herald"), "{message}");
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
    }

    #[test]
    fn partial_snapshots_are_removed_and_real_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("snap.00000000000000AB.generating"), b"").unwrap();
        std::fs::write(dir.path().join("snap.00000000000000AA"), b"kept").unwrap();
        DataDir::prepare(dir.path()).unwrap();
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["herald.lock", "snap.00000000000000AA"]);
    }

    #[test]
    fn a_directory_of_other_files_is_foreign() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        let refused = DataDir::prepare(dir.path()).unwrap_err();
        assert!(matches!(&refused, DataDirError::Foreign { found, .. } if found == "notes.txt"));
    }

    #[test]
    fn a_damaged_conf_is_named_and_the_one_sled_writes_passes() {
        let dir = tempfile::tempdir().unwrap();
        drop(sled::open(dir.path()).unwrap());
        drop(DataDir::prepare(dir.path()).unwrap());
        let mut conf = std::fs::read(dir.path().join("conf")).unwrap();
        conf[3] ^= 0x20;
        std::fs::write(dir.path().join("conf"), &conf).unwrap();
        let refused = DataDir::prepare(dir.path()).unwrap_err();
        assert!(
            matches!(refused, DataDirError::DamagedConf { .. }),
            "{refused}"
        );
    }

    #[test]
    fn the_digest_follows_every_byte_of_sleds_files_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        drop(sled::open(dir.path()).unwrap());
        let data = DataDir::prepare(dir.path()).unwrap();
        let before = data.digest_sled_files().unwrap();
        std::fs::write(dir.path().join(".gitkeep"), b"not sled's").unwrap();
        assert_eq!(data.digest_sled_files().unwrap(), before);
        let db = dir.path().join("db");
        let mut bytes = std::fs::read(&db).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        std::fs::write(&db, &bytes).unwrap();
        assert_ne!(data.digest_sled_files().unwrap(), before);
    }

    #[test]
    fn the_identity_changes_when_the_directory_is_replaced() {
        let parent = tempfile::tempdir().unwrap();
        let path = parent.path().join("data");
        let dir = DataDir::prepare(&path).unwrap();
        assert!(dir.is_in_place());
        std::fs::remove_dir_all(&path).unwrap();
        assert!(!dir.is_in_place(), "deleted");
        std::fs::create_dir(&path).unwrap();
        assert!(!dir.is_in_place(), "replaced by another directory");
    }
}
