//! Reading without changing anything: a request, its history, an
//! idempotency key's binding, and when the next outbox entry falls due.

use std::collections::BTreeMap;

use super::{
    EmbeddedStore, Event, IdempotencyRecord, OutboxKey, RequestRecord, StoreError, decode, keys,
};
use crate::domain::{Notification, Priority, RequestId};

impl EmbeddedStore {
    pub fn get(&self, id: RequestId) -> Result<Option<RequestRecord>, StoreError> {
        let engine = self.engine()?;
        match engine
            .requests
            .get(id.as_bytes())
            .map_err(|e| self.sled_failed(e))?
        {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The request's history, oldest first; `None` for an unknown id.
    ///
    /// The events the record implies (`created`, `process_requested`: see
    /// [`RequestRecord::implied_events`]) are merged with the stored ones by
    /// sequence; where an older format stored one of them, the stored one is read.
    pub fn events(&self, id: RequestId) -> Result<Option<Vec<Event>>, StoreError> {
        let Some(record) = self.get(id)? else {
            return Ok(None);
        };
        let engine = self.engine()?;
        let mut history: BTreeMap<u32, Event> = record.implied_events().collect();
        for entry in engine.events.scan_prefix(id.as_bytes()) {
            let (key, bytes) = entry.map_err(|e| self.sled_failed(e))?;
            let sequence = keys::event_sequence(&key).ok_or_else(|| {
                StoreError::Corrupt(format!("an event key of {} bytes", key.len()))
            })?;
            history.insert(sequence, decode(&bytes)?);
        }
        Ok(Some(history.into_values().collect()))
    }

    /// The request `key` is bound to with this same body, if any: what a
    /// create with `key` would answer as a replay, without writing anything.
    pub fn replay_of(
        &self,
        key: &str,
        notification: &Notification,
    ) -> Result<Option<RequestId>, StoreError> {
        let engine = self.engine()?;
        match engine
            .idempotency
            .get(key)
            .map_err(|e| self.sled_failed(e))?
        {
            Some(bytes) => bound_id(&bytes, notification).map(Some),
            None => Ok(None),
        }
    }

    /// When the earliest outbox entry falls due, whatever its priority.
    pub fn next_due_ms(&self) -> Result<Option<u64>, StoreError> {
        let engine = self.engine()?;
        let mut earliest = None;
        for rank in rank_range() {
            if let Some(key) = engine.outbox.scan_prefix([rank]).keys().next() {
                let key = decode_outbox_key(&key.map_err(|e| self.sled_failed(e))?)?;
                earliest = Some(earliest.map_or(key.due_ms, |due: u64| due.min(key.due_ms)));
            }
        }
        Ok(earliest)
    }
}

pub(super) fn rank_range() -> impl Iterator<Item = u8> {
    Priority::ALL.iter().map(|p| p.rank())
}

pub(super) fn decode_outbox_key(bytes: &[u8]) -> Result<OutboxKey, StoreError> {
    OutboxKey::decode(bytes)
        .ok_or_else(|| StoreError::Corrupt(format!("an outbox key of {} bytes", bytes.len())))
}

pub(super) fn decode_lease(bytes: &[u8]) -> Result<super::keys::LeaseEntry, StoreError> {
    super::keys::LeaseEntry::decode(bytes)
        .ok_or_else(|| StoreError::Corrupt(format!("a lease of {} bytes", bytes.len())))
}

/// The id of an idempotency binding, or a conflict when it was made for
/// another body.
pub(super) fn bound_id(
    binding: &[u8],
    notification: &Notification,
) -> Result<RequestId, StoreError> {
    let existing: IdempotencyRecord = decode(binding)?;
    if existing.notification == *notification {
        Ok(existing.id)
    } else {
        Err(StoreError::IdempotencyConflict)
    }
}
