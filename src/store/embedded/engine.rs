//! One opening of the sled database: the `Db`, its trees and the handle
//! of the group commit that flushes it.
//!
//! The store holds an engine while sled takes writes and drops it when sled
//! stopped taking them (sled 0.34 refuses every write after one I/O error
//! until it is opened again). Whoever is using the engine at that moment
//! finishes with it; once the last user lets go, the engine's `Drop` says so
//! and `reopen.rs` may open the directory again.

use std::path::Path;

use sled::Tree;
use tokio::sync::oneshot;

use super::StoreError;
use super::commit::GroupCommit;
use super::datadir::DataDirError;

pub struct Engine {
    pub requests: Tree,
    pub outbox: Tree,
    pub leases: Tree,
    pub events: Tree,
    pub idempotency: Tree,
    pub owners: Tree,
    pub delayed: Tree,
    pub meta: Tree,
    pub commit: GroupCommit,
    /// Declared last, so it is dropped last: once it says so, sled's handles
    /// here are closed.
    _released: ReleaseSignal,
}

/// Resolves the engine's release receiver when dropped.
struct ReleaseSignal(Option<oneshot::Sender<()>>);

impl Drop for ReleaseSignal {
    fn drop(&mut self) {
        if let Some(released) = self.0.take() {
            let _ = released.send(());
        }
    }
}

/// Herald's sled trees, in the order [`Opened`] keeps them: anything else in
/// a database is another program's.
pub const TREES: [&str; 8] = [
    "requests",
    "outbox",
    "leases",
    "events",
    "idempotency",
    "meta",
    "owners",
    "delayed",
];

/// The sled database of a directory, before its group commit starts.
pub struct Opened {
    pub db: sled::Db,
    pub path: std::path::PathBuf,
    /// One per name of [`TREES`], in its order.
    trees: [Tree; 8],
}

impl Opened {
    /// Opens sled in `path` with a page cache of `cache_bytes`, and its trees.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(|error| opening_error(path, error))?;
        let tree = |name: &str| {
            db.open_tree(name)
                .map_err(|error| opening_error(path, error))
        };
        let [
            requests,
            outbox,
            leases,
            events,
            idempotency,
            meta,
            owners,
            delayed,
        ] = TREES;
        let trees = [
            tree(requests)?,
            tree(outbox)?,
            tree(leases)?,
            tree(events)?,
            tree(idempotency)?,
            tree(meta)?,
            tree(owners)?,
            tree(delayed)?,
        ];
        Ok(Self {
            db,
            path: path.to_path_buf(),
            trees,
        })
    }

    pub fn meta(&self) -> &Tree {
        &self.trees[5]
    }

    pub fn requests(&self) -> &Tree {
        &self.trees[0]
    }

    pub fn outbox(&self) -> &Tree {
        &self.trees[1]
    }

    pub fn leases(&self) -> &Tree {
        &self.trees[2]
    }

    pub fn delayed(&self) -> &Tree {
        &self.trees[7]
    }

    /// The engine, with the group commit that flushes it. Dropping the engine
    /// (its last `Arc`) resolves the returned receiver.
    pub fn into_engine(self, commit: GroupCommit) -> (Engine, oneshot::Receiver<()>) {
        let (released, on_release) = oneshot::channel();
        let [
            requests,
            outbox,
            leases,
            events,
            idempotency,
            meta,
            owners,
            delayed,
        ] = self.trees;
        let engine = Engine {
            requests,
            outbox,
            leases,
            events,
            idempotency,
            owners,
            delayed,
            meta,
            commit,
            _released: ReleaseSignal(Some(released)),
        };
        (engine, on_release)
    }
}

/// What sled's failure to open means, said plainly where it can be.
fn opening_error(path: &Path, error: sled::Error) -> StoreError {
    match error {
        sled::Error::Io(io) => {
            StoreError::from(DataDirError::from_io(path, "opening the database", io))
        }
        sled::Error::Corruption { .. } => StoreError::Corrupt(format!(
            "sled found damaged data in {} when opening it; `herald check --data-dir {}` reports what is readable and `herald export` saves it",
            path.display(),
            path.display()
        )),
        other => StoreError::Corrupt(format!("sled could not open {}: {other}", path.display())),
    }
}

/// sled's error for people: its `Io` variant prints the `Debug` form
/// (`Os { code: 28, kind: StorageFull, .. }`); the I/O error's own words are plainer.
pub fn describe(error: &sled::Error) -> String {
    match error {
        sled::Error::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}
