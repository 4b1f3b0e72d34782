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

    /// When the earliest waiting entry falls due, whatever its priority:
    /// an entry of the outbox is due since it asked for delivery; a delayed
    /// one (a retry in its backoff) at its due time.
    pub fn next_due_ms(&self) -> Result<Option<u64>, StoreError> {
        let engine = self.engine()?;
        let mut earliest = self.next_delayed_ms(&engine)?;
        for head in self.ready_heads(&engine)? {
            earliest = Some(earliest.map_or(head.order_ms, |due: u64| due.min(head.order_ms)));
        }
        Ok(earliest)
    }

    /// The first outbox entry of each priority and channel, most urgent
    /// priority first.
    pub(super) fn ready_heads(
        &self,
        engine: &super::engine::Engine,
    ) -> Result<Vec<OutboxKey>, StoreError> {
        let mut heads = Vec::new();
        for &priority in Priority::ALL {
            for &channel in crate::domain::Channel::ALL {
                let prefix = OutboxKey::prefix(priority, channel);
                if let Some(key) = engine.outbox.scan_prefix(prefix).keys().next() {
                    heads.push(decode_outbox_key(&key.map_err(|e| self.sled_failed(e))?)?);
                }
            }
        }
        Ok(heads)
    }

    /// When the earliest delayed entry falls due.
    pub(super) fn next_delayed_ms(
        &self,
        engine: &super::engine::Engine,
    ) -> Result<Option<u64>, StoreError> {
        match engine.delayed.iter().keys().next() {
            None => Ok(None),
            Some(key) => {
                let key = key.map_err(|e| self.sled_failed(e))?;
                keys::delayed_due_ms(&key).map(Some).ok_or_else(|| {
                    StoreError::Corrupt(format!("a delayed key of {} bytes", key.len()))
                })
            }
        }
    }
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
