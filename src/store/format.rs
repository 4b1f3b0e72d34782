//! The database's layout version (`meta/format_version`) and the upgrade from
//! each older layout (see `migrations-notes/`).
//!
//! - 1: the first layout;
//! - 2: the per-priority counts of undelivered requests are persisted
//!   ([`super::pending`]) and a create no longer stores its `created` event
//!   (the request record holds it). Records are unchanged.
//! - 3: `process` no longer stores its `process_requested` event either (the
//!   record's `process_requested_at_ms` holds it). Records are unchanged.

use super::{StoreError, pending};

/// The layout this build reads and writes.
pub const FORMAT_VERSION: u8 = 3;
pub(super) const FORMAT_VERSION_KEY: &[u8] = b"format_version";

/// The trees the check and the upgrades need.
pub(super) struct Trees<'a> {
    pub meta: &'a sled::Tree,
    pub outbox: &'a sled::Tree,
    pub leases: &'a sled::Tree,
}

/// Accepts a database of this layout, starts a new one, upgrades an older one,
/// and refuses a newer one (a downgrade is not supported).
pub(super) fn check_or_upgrade(db: &sled::Db, trees: &Trees) -> Result<(), StoreError> {
    let found = trees.meta.get(FORMAT_VERSION_KEY)?;
    match found.as_deref() {
        Some([FORMAT_VERSION]) => return Ok(()),
        None => {
            trees.meta.insert(FORMAT_VERSION_KEY, &[FORMAT_VERSION])?;
        }
        Some([1]) => upgrade_from_v1(trees)?,
        Some([2]) => upgrade_from_v2(trees)?,
        Some(other) => {
            let found = other.first().copied().unwrap_or(0);
            return Err(StoreError::IncompatibleFormat { found });
        }
    }
    db.flush()?;
    Ok(())
}

/// Counts the undelivered requests once and stores the counts together with
/// the new version, in one transaction: an interrupted upgrade leaves version
/// 1 and runs again. Version 1's stored `created` and `process_requested`
/// events stay readable as they are.
fn upgrade_from_v1(trees: &Trees) -> Result<(), StoreError> {
    let counts = pending::count_by_scan(trees.outbox, trees.leases)?;
    tracing::info!(
        ?counts,
        "upgrading the data directory from format 1 to {FORMAT_VERSION}"
    );
    trees.meta.transaction(|meta| {
        pending::store(meta, counts)?;
        meta.insert(FORMAT_VERSION_KEY, &[FORMAT_VERSION])?;
        Ok(())
    })?;
    Ok(())
}

/// Nothing to rewrite: version 2's stored `process_requested` events stay
/// readable as they are, and new ones are implied by the record.
fn upgrade_from_v2(trees: &Trees) -> Result<(), StoreError> {
    tracing::info!("upgrading the data directory from format 2 to {FORMAT_VERSION}");
    trees.meta.insert(FORMAT_VERSION_KEY, &[FORMAT_VERSION])?;
    Ok(())
}
