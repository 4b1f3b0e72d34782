//! The database's layout version (`meta/format_version`) and the upgrade from
//! each older layout (see `migrations-notes/`).
//!
//! - 1: the first layout;
//! - 2: the per-priority counts of undelivered requests are persisted
//!   ([`super::pending`]) and a create no longer stores its `created` event
//!   (the request record holds it). Records are unchanged.
//! - 3: `process` no longer stores its `process_requested` event either (the
//!   record's `process_requested_at_ms` holds it). Records are unchanged.
//! - 4: a lease also holds its deadline and its owner's instance id
//!   (`keys::LeaseEntry`). Format 3's leases (the outbox key alone) are read
//!   as they are, so nothing is rewritten.

use super::engine::Opened;
use super::{StoreError, pending};

/// The layout this build reads and writes.
pub const FORMAT_VERSION: u8 = 4;
pub(super) const FORMAT_VERSION_KEY: &[u8] = b"format_version";

/// Accepts a database of this layout, starts a new one, upgrades an older one,
/// and refuses a newer one (a downgrade is not supported) or a sled database
/// that is not Herald's.
pub(super) fn check_or_upgrade(trees: &Opened) -> Result<(), StoreError> {
    let found = trees.meta().get(FORMAT_VERSION_KEY)?;
    match found.as_deref() {
        Some([FORMAT_VERSION]) => return Ok(()),
        None => {
            refuse_foreign(trees)?;
            trees.meta().insert(FORMAT_VERSION_KEY, &[FORMAT_VERSION])?;
        }
        Some([1]) => upgrade_from_v1(trees)?,
        Some([old @ (2 | 3)]) => upgrade_from(trees, *old)?,
        Some(other) => {
            let found = other.first().copied().unwrap_or(0);
            return Err(StoreError::Refused(format!(
                "the data directory {} holds format version {found}, written by a newer Herald; this build reads version {FORMAT_VERSION}: run that newer Herald, or restore a backup",
                trees.path.display()
            )));
        }
    }
    trees.db.flush()?;
    Ok(())
}

/// A database with no format version is new, unless it holds something:
/// then another program wrote it.
fn refuse_foreign(trees: &Opened) -> Result<(), StoreError> {
    let ours = [
        "requests",
        "outbox",
        "leases",
        "events",
        "idempotency",
        "meta",
        "owners",
    ];
    let mut others = trees.db.tree_names().into_iter().filter(|name| {
        name.as_ref() != b"__sled__default"
            && !ours.iter().any(|ours| name.as_ref() == ours.as_bytes())
    });
    let holds_data =
        !trees.db.is_empty() || !trees.requests().is_empty() || others.next().is_some();
    if holds_data {
        return Err(super::DataDirError::Foreign {
            dir: trees.path.clone(),
            found: "a sled database without Herald's format version".into(),
        }
        .into());
    }
    Ok(())
}

/// Counts the undelivered requests once and stores the counts together with
/// the new version, in one transaction: an interrupted upgrade leaves version
/// 1 and runs again. Version 1's stored `created` and `process_requested`
/// events stay readable as they are.
fn upgrade_from_v1(trees: &Opened) -> Result<(), StoreError> {
    let counts = pending::count_by_scan(trees.outbox(), trees.leases())?;
    tracing::info!(
        ?counts,
        "upgrading the data directory from format 1 to {FORMAT_VERSION}"
    );
    trees.meta().transaction(|meta| {
        pending::store(meta, counts)?;
        meta.insert(FORMAT_VERSION_KEY, &[FORMAT_VERSION])?;
        Ok(())
    })?;
    Ok(())
}

/// Nothing to rewrite from version 2 or 3: version 2's stored
/// `process_requested` events stay readable as they are (and new ones are
/// implied by the record), and version 3's leases read as leases without a
/// deadline or an owner.
fn upgrade_from(trees: &Opened, old: u8) -> Result<(), StoreError> {
    tracing::info!("upgrading the data directory from format {old} to {FORMAT_VERSION}");
    trees.meta().insert(FORMAT_VERSION_KEY, &[FORMAT_VERSION])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::domain::{Priority, RequestId, Status, now_ms};
    use crate::store::embedded::tests::{engine, processed};
    use crate::store::embedded::{EmbeddedStore, encode, keys};
    use crate::store::{Event, EventKind};

    /// Marks `store` as written by format `version`, closes it, opens its
    /// directory again and checks that the open upgraded it.
    async fn reopened_as_format(store: EmbeddedStore, dir: &Path, version: u8) -> EmbeddedStore {
        engine(&store)
            .meta
            .insert(FORMAT_VERSION_KEY, &[version])
            .unwrap();
        store.close().await.unwrap();
        let store = EmbeddedStore::open(dir).unwrap();
        let found = engine(&store).meta.get(FORMAT_VERSION_KEY).unwrap();
        assert_eq!(found.as_deref(), Some(&[FORMAT_VERSION][..]));
        store
    }

    /// An event as an older format stored it, at sequence `seq` of `id`.
    fn store_event(store: &EmbeddedStore, id: RequestId, seq: u32, at_ms: u64, kind: EventKind) {
        let event = Event {
            at_ms,
            status: Status::Queued,
            kind,
        };
        let key = keys::event_key(id, seq);
        engine(store)
            .events
            .insert(key, encode(&event).unwrap())
            .unwrap();
    }

    #[tokio::test]
    async fn a_format_1_database_is_upgraded_and_keeps_its_stored_created_events() {
        let dir = tempfile::tempdir().unwrap();
        let created_at = 1_700_000_000_000;
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let id = processed(&store, Priority::High).await;
        processed(&store, Priority::Low).await;
        store.lease_next_due(now_ms() + 1).unwrap().unwrap();
        // What format 1 left: no counts, a stored `created` event.
        for &priority in Priority::ALL {
            engine(&store).meta.remove(pending::key(priority)).unwrap();
        }
        let seq = crate::store::records::CREATED_SEQUENCE;
        store_event(&store, id, seq, created_at, EventKind::Created);

        let store = reopened_as_format(store, dir.path(), 1).await;
        assert_eq!((store.pending(), store.recovered_at_open()), (2, 1));
        let events = store.events(id).unwrap().unwrap();
        let created: Vec<_> = events
            .iter()
            .filter(|e| e.kind == EventKind::Created)
            .collect();
        assert_eq!(created.len(), 1, "{events:?}");
        assert_eq!(created[0].at_ms, created_at);
        assert_eq!(events[0].kind, EventKind::Created);
    }

    #[tokio::test]
    async fn a_format_2_database_is_upgraded_and_keeps_its_stored_process_events() {
        let dir = tempfile::tempdir().unwrap();
        let requested_at = 1_700_000_000_000;
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let id = processed(&store, Priority::Normal).await;
        // What format 2 left: a stored `process_requested` event.
        let seq = crate::store::records::PROCESS_REQUESTED_SEQUENCE;
        store_event(&store, id, seq, requested_at, EventKind::ProcessRequested);

        let store = reopened_as_format(store, dir.path(), 2).await;
        assert_eq!(store.pending(), 1);
        let events = store.events(id).unwrap().unwrap();
        let kinds: Vec<_> = events.iter().map(|e| e.kind.clone()).collect();
        assert_eq!(kinds, [EventKind::Created, EventKind::ProcessRequested]);
        assert_eq!(events[1].at_ms, requested_at, "the stored event is read");
    }

    #[tokio::test]
    async fn a_database_of_another_format_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("meta")
                .unwrap()
                .insert(FORMAT_VERSION_KEY, &[FORMAT_VERSION + 1])
                .unwrap();
            db.flush().unwrap();
        }
        let refused = EmbeddedStore::open(dir.path()).err().map(|e| e.to_string());
        let expected = format!("holds format version {}", FORMAT_VERSION + 1);
        assert!(
            refused.as_deref().is_some_and(|e| e.contains(&expected)),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_sled_database_of_another_program_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("users")
                .unwrap()
                .insert(b"ada", &b"x"[..])
                .unwrap();
            db.flush().unwrap();
        }
        let refused = EmbeddedStore::open(dir.path()).err().map(|e| e.to_string());
        assert!(
            refused
                .as_deref()
                .is_some_and(|e| e.contains("not a Herald data directory")),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_format_3_lease_is_read_and_returned_to_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let id = processed(&store, Priority::High).await;
        let lease = store.lease_next_due(now_ms() + 1).unwrap().unwrap();
        assert_eq!(lease.owner, store_options_instance());
        // What format 3 wrote: the outbox key alone.
        {
            let engine = engine(&store);
            let bytes = engine.leases.get(id.as_bytes()).unwrap().unwrap();
            let entry = crate::store::embedded::keys::LeaseEntry::decode(&bytes).unwrap();
            let format_3 = entry.leased_from.encode();
            engine.leases.insert(id.as_bytes(), &format_3[..]).unwrap();
        } // the engine handle goes before the close waits for every handle

        let store = reopened_as_format(store, dir.path(), 3).await;
        assert_eq!((store.recovered_at_open(), store.pending()), (1, 1));
        let again = store.lease_next_due(now_ms() + 1).unwrap().unwrap();
        assert_eq!((again.id, again.attempt), (id, 2));
    }

    fn store_options_instance() -> crate::store::InstanceId {
        crate::store::embedded::StoreOptions::default().instance
    }
}
