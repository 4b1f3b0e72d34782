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
//!   (`keys::LeaseEntry`).
//! - 5: the outbox is ordered by priority, channel and the time delivery was
//!   asked for (oldest first); retries wait out their backoff in `delayed`.
//!   Every outbox entry and lease is rewritten (`rewrite_for_format_5`).

use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use super::engine::{Opened, TREES};
use super::keys::{self, LeaseEntry, OutboxKey};
use super::{RequestRecord, StoreError, decode, pending};
use crate::domain::{RequestId, now_ms};

/// The layout this build reads and writes.
pub const FORMAT_VERSION: u8 = 5;
/// `meta` key set once an interrupted upgrade to format 5 rewrote the leases.
const LEASES_AT_FORMAT_5_KEY: &[u8] = b"upgrade/leases_at_5";
/// Outbox entries one upgrade transaction rewrites.
const UPGRADE_BATCH: usize = 1_000;
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
        Some([1]) => {
            upgrade_from_v1(trees)?;
            upgrade_to_format_5(trees, 1)?;
        }
        Some([old @ 2..=4]) => upgrade_to_format_5(trees, *old)?,
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
    let mut others = trees.db.tree_names().into_iter().filter(|name| {
        name.as_ref() != b"__sled__default"
            && !TREES.iter().any(|ours| name.as_ref() == ours.as_bytes())
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

/// Counts the undelivered requests once and stores the counts, with the
/// version 2 they belong to, in one transaction: an interrupted upgrade
/// leaves version 1 and runs again. Version 1's stored `created` and
/// `process_requested` events stay readable as they are.
fn upgrade_from_v1(trees: &Opened) -> Result<(), StoreError> {
    let counts = pending::count_by_scan(trees.outbox(), trees.delayed(), trees.leases())?;
    tracing::info!(?counts, "upgrading the data directory from format 1");
    trees.meta().transaction(|meta| {
        pending::store(meta, counts)?;
        meta.insert(FORMAT_VERSION_KEY, &[2])?;
        Ok(())
    })?;
    Ok(())
}

/// From formats 2 to 4 (their stored `created`/`process_requested` events
/// stay readable as they are): every lease, then every outbox entry, gets
/// its format-5 key, made from its request's priority, channel and the time
/// delivery was asked for; an entry not yet due moves to `delayed`. Reads
/// each pending request once. An interrupted upgrade runs again: the leases
/// are rewritten in one transaction that marks them done, and an outbox key
/// tells its format by its length.
fn upgrade_to_format_5(trees: &Opened, old: u8) -> Result<(), StoreError> {
    tracing::info!("upgrading the data directory from format {old} to {FORMAT_VERSION}");
    if trees.meta().get(LEASES_AT_FORMAT_5_KEY)?.is_none() {
        rewrite_leases(trees)?;
    }
    let now = now_ms();
    loop {
        let old_keys: Vec<_> = trees
            .outbox()
            .iter()
            .keys()
            .filter(|key| {
                key.as_ref()
                    .map_or(true, |k| k.len() == keys::FORMAT_4_OUTBOX_KEY_LEN)
            })
            .take(UPGRADE_BATCH)
            .collect::<Result<_, _>>()?;
        if old_keys.is_empty() {
            break;
        }
        let batch = (
            trees.outbox(),
            trees.delayed(),
            trees.requests(),
            trees.meta(),
        );
        batch.transaction(|(outbox, delayed, requests, meta)| {
            for old_key in &old_keys {
                outbox.remove(old_key)?;
                let Some((rank, due_ms, id)) = keys::decode_format_4_outbox_key(old_key) else {
                    continue;
                };
                let Some(key) = format_5_key(requests.get(id.as_bytes())?, id)? else {
                    tracing::error!(%id, "outbox entry without a request; removed");
                    pending::adjust(meta, crate::domain::Priority::ALL[usize::from(rank)], -1)?;
                    continue;
                };
                if due_ms > now {
                    delayed.insert(&keys::delayed_key(due_ms, id), &key.encode()[..])?;
                } else {
                    outbox.insert(&key.encode(), &b""[..])?;
                }
            }
            Ok::<_, ConflictableTransactionError<StoreError>>(())
        })?;
    }
    trees.meta().transaction(|meta| {
        meta.insert(FORMAT_VERSION_KEY, &[FORMAT_VERSION])?;
        meta.remove(LEASES_AT_FORMAT_5_KEY)?;
        Ok::<_, ConflictableTransactionError<StoreError>>(())
    })?;
    Ok(())
}

/// Gives every lease its format-5 outbox key, in one transaction (there are
/// at most as many as calls were in flight).
fn rewrite_leases(trees: &Opened) -> Result<(), StoreError> {
    let leases: Vec<_> = trees.leases().iter().collect::<Result<_, _>>()?;
    let batch = (trees.leases(), trees.requests(), trees.meta());
    batch.transaction(|(lease_tree, requests, meta)| {
        for (id_bytes, _) in &leases {
            let id = <[u8; 16]>::try_from(id_bytes.as_ref()).map(RequestId::from_bytes);
            let key = match id {
                Ok(id) => format_5_key(requests.get(id.as_bytes())?, id)?,
                Err(_) => None,
            };
            match key {
                Some(leased_from) => {
                    let lease = LeaseEntry {
                        leased_from,
                        deadline_ms: 0,
                        owner: String::new(),
                    };
                    lease_tree.insert(id_bytes, lease.encode())?;
                }
                // Dropped here, as the open would drop it: no request to send.
                None => {
                    lease_tree.remove(id_bytes)?;
                }
            }
        }
        meta.insert(LEASES_AT_FORMAT_5_KEY, &[1])?;
        Ok::<_, ConflictableTransactionError<StoreError>>(())
    })?;
    Ok(())
}

/// The format-5 outbox key of request `id` from its stored record; `None`
/// when there is no record.
fn format_5_key(
    record: Option<sled::IVec>,
    id: RequestId,
) -> Result<Option<OutboxKey>, ConflictableTransactionError<StoreError>> {
    let Some(bytes) = record else {
        return Ok(None);
    };
    let record: RequestRecord =
        decode(&bytes).map_err(|e| ConflictableTransactionError::Abort(e.into()))?;
    let asked = record
        .process_requested_at_ms
        .unwrap_or(record.created_at_ms);
    let notification = &record.notification;
    Ok(Some(OutboxKey::new(
        notification.priority,
        notification.channel,
        asked,
        id,
    )))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::domain::{Priority, RequestId, Status, now_ms};
    use crate::store::embedded::keys::OutboxKey;
    use crate::store::embedded::tests::{engine, processed};
    use crate::store::embedded::{EmbeddedStore, encode, keys, pending};
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

    /// A format-4 outbox key: `[rank][due ms][id]`.
    fn format_4_key(key: &OutboxKey, due_ms: u64) -> Vec<u8> {
        let mut old = vec![key.rank];
        old.extend_from_slice(&due_ms.to_be_bytes());
        old.extend_from_slice(key.id.as_bytes());
        old
    }

    #[tokio::test]
    async fn a_format_4_database_gets_oldest_first_keys_and_its_delayed_retries() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let (waiting, retrying) = (
            processed(&store, Priority::Normal).await,
            processed(&store, Priority::Normal).await,
        );
        let leased = processed(&store, Priority::Normal).await;
        let later = now_ms() + 3_600_000;
        {
            // What format 4 left: 25-byte outbox keys (a retry due in an
            // hour among them) and a lease holding one.
            let engine = engine(&store);
            let keys: Vec<_> = engine
                .outbox
                .iter()
                .keys()
                .map(|k| OutboxKey::decode(&k.unwrap()).unwrap())
                .collect();
            engine.outbox.clear().unwrap();
            for key in &keys {
                let due_ms = if key.id == retrying {
                    later
                } else {
                    key.order_ms
                };
                if key.id != leased {
                    engine
                        .outbox
                        .insert(format_4_key(key, due_ms), &b""[..])
                        .unwrap();
                }
            }
            let leased_key = keys.iter().find(|k| k.id == leased).unwrap();
            let mut lease = format_4_key(leased_key, 0);
            lease.extend_from_slice(&u64::MAX.to_be_bytes());
            lease.extend_from_slice(b"old-host:1");
            engine.leases.insert(leased.as_bytes(), lease).unwrap();
        }
        let store = reopened_as_format(store, dir.path(), 4).await;
        assert_eq!((store.recovered_at_open(), store.pending()), (1, 3));
        let now = now_ms();
        let order: Vec<_> = (0..2)
            .map(|_| store.lease_next_due(now).unwrap().unwrap().id)
            .collect();
        assert_eq!(order, [waiting, leased], "oldest first; the retry waits");
        assert!(store.lease_next_due(now).unwrap().is_none());
        assert_eq!(store.lease_next_due(later).unwrap().unwrap().id, retrying);
        let engine = engine(&store);
        let scanned =
            pending::count_by_scan(&engine.outbox, &engine.delayed, &engine.leases).unwrap();
        assert_eq!(scanned, pending::load(&engine.meta).unwrap());
    }
}
