//! The persisted count of undelivered requests per priority (in the outbox or
//! leased), kept in the `meta` tree.
//!
//! Every transaction that puts a request into the outbox or takes it out for
//! good adjusts the count in the same transaction, so `Store::open` reads three
//! keys instead of scanning the outbox (a scan of 1M entries took 0.58 s).
//! Moving an entry between the outbox and the leases leaves the count alone.

use sled::Tree;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::StoreError;
use super::reads::decode_outbox_key;
use super::writes::TxResult;
use crate::domain::Priority;

/// `meta` key of the count of `priority`: `pending/` then the priority's rank.
pub(super) fn key(priority: Priority) -> [u8; 9] {
    let mut key = *b"pending/\0";
    key[8] = priority.rank();
    key
}

fn decode_count(bytes: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("a pending count of {} bytes", bytes.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Adds `delta` to the count of `priority`, inside the caller's transaction.
pub fn adjust(meta: &TransactionalTree, priority: Priority, delta: i64) -> TxResult<()> {
    let key = key(priority);
    let current = match meta.get(key)? {
        Some(bytes) => decode_count(&bytes).map_err(ConflictableTransactionError::Abort)?,
        None => 0,
    };
    let adjusted = current.checked_add_signed(delta).unwrap_or_else(|| {
        // Every decrement follows its increment; one that would go below zero
        // is a bug worth seeing, and zero is the closest true count.
        tracing::error!(
            priority = priority.as_str(),
            current,
            delta,
            "pending count would go below zero"
        );
        0
    });
    meta.insert(&key, &adjusted.to_be_bytes())?;
    Ok(())
}

/// The persisted counts, indexed by priority rank; an absent count is zero.
pub fn load(meta: &Tree) -> Result<[u64; 3], StoreError> {
    let mut counts = [0; 3];
    for &priority in Priority::ALL {
        if let Some(bytes) = meta.get(key(priority))? {
            counts[usize::from(priority.rank())] = decode_count(&bytes)?;
        }
    }
    Ok(counts)
}

/// Counts by scanning the outbox and the leases: how an upgrade from a format
/// without persisted counts starts them.
pub fn count_by_scan(outbox: &Tree, leases: &Tree) -> Result<[u64; 3], StoreError> {
    let mut counts = [0u64; 3];
    for key in outbox.iter().keys() {
        let key = decode_outbox_key(&key?)?;
        counts[usize::from(key.rank)] += 1;
    }
    for leased_from in leases.iter().values() {
        let key = decode_outbox_key(&leased_from?)?;
        counts[usize::from(key.rank)] += 1;
    }
    Ok(counts)
}

/// Writes `counts` (indexed by rank) inside the caller's transaction.
pub fn store(meta: &TransactionalTree, counts: [u64; 3]) -> TxResult<()> {
    for &priority in Priority::ALL {
        let count = counts[usize::from(priority.rank())];
        meta.insert(&key(priority), &count.to_be_bytes())?;
    }
    Ok(())
}
