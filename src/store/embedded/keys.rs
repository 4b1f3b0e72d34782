//! Byte layouts of the keys whose order matters.
//!
//! sled orders keys bytewise, so every number is big-endian:
//! - outbox: `[priority rank][due ms: u64][request id: 16 bytes]`, so a range scan
//!   per priority yields the earliest-due entry first, oldest id breaking ties;
//! - events: `[request id: 16 bytes][sequence: u32]`, so one prefix scan yields a
//!   request's history in order.
//!
//! And one value: a lease (`leases` tree, keyed by request id) is
//! `[outbox key it was leased from: 25 bytes][deadline ms: u64][owner: UTF-8]`
//! since format 4; format 3 stored the outbox key alone.

use crate::domain::{Priority, RequestId};

pub const OUTBOX_KEY_LEN: usize = 1 + 8 + 16;
pub const EVENT_KEY_LEN: usize = 16 + 4;

/// Where an entry sits in the outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct OutboxKey {
    pub rank: u8,
    pub due_ms: u64,
    pub id: RequestId,
}

impl OutboxKey {
    pub fn new(priority: Priority, due_ms: u64, id: RequestId) -> Self {
        Self {
            rank: priority.rank(),
            due_ms,
            id,
        }
    }

    pub fn encode(&self) -> [u8; OUTBOX_KEY_LEN] {
        let mut key = [0u8; OUTBOX_KEY_LEN];
        key[0] = self.rank;
        key[1..9].copy_from_slice(&self.due_ms.to_be_bytes());
        key[9..].copy_from_slice(self.id.as_bytes());
        key
    }

    /// The priority its rank stands for (a decoded key's rank is always known).
    pub fn priority(&self) -> Priority {
        Priority::ALL[usize::from(self.rank)]
    }

    /// `None` unless `bytes` is an encoded key of a known priority.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != OUTBOX_KEY_LEN || usize::from(bytes[0]) >= Priority::ALL.len() {
            return None;
        }
        let due_ms = u64::from_be_bytes(bytes[1..9].try_into().ok()?);
        let id = RequestId::from_bytes(bytes[9..].try_into().ok()?);
        Some(Self {
            rank: bytes[0],
            due_ms,
            id,
        })
    }

    /// The key range holding every entry of `rank` due at or before `due_ms`.
    pub fn due_range(rank: u8, due_ms: u64) -> std::ops::RangeInclusive<[u8; OUTBOX_KEY_LEN]> {
        let mut start = [0u8; OUTBOX_KEY_LEN];
        start[0] = rank;
        let mut end = [0xffu8; OUTBOX_KEY_LEN];
        end[0] = rank;
        end[1..9].copy_from_slice(&due_ms.to_be_bytes());
        start..=end
    }
}

/// A lease as the `leases` tree holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseEntry {
    pub leased_from: OutboxKey,
    /// 0 for a lease format 3 wrote (it had none).
    pub deadline_ms: u64,
    /// Empty for a lease format 3 wrote.
    pub owner: String,
}

impl LeaseEntry {
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(OUTBOX_KEY_LEN + 8 + self.owner.len());
        bytes.extend_from_slice(&self.leased_from.encode());
        bytes.extend_from_slice(&self.deadline_ms.to_be_bytes());
        bytes.extend_from_slice(self.owner.as_bytes());
        bytes
    }

    /// `None` unless `bytes` is a lease of format 3 or 4.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let leased_from = OutboxKey::decode(bytes.get(..OUTBOX_KEY_LEN)?)?;
        let rest = &bytes[OUTBOX_KEY_LEN..];
        if rest.is_empty() {
            return Some(Self {
                leased_from,
                deadline_ms: 0,
                owner: String::new(),
            });
        }
        let deadline_ms = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
        let owner = std::str::from_utf8(&rest[8..]).ok()?.to_string();
        Some(Self {
            leased_from,
            deadline_ms,
            owner,
        })
    }
}

/// Key of the `seq`-th event of request `id`.
pub fn event_key(id: RequestId, seq: u32) -> [u8; EVENT_KEY_LEN] {
    let mut key = [0u8; EVENT_KEY_LEN];
    key[..16].copy_from_slice(id.as_bytes());
    key[16..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// The sequence number of an event key; `None` if it is not one.
pub fn event_sequence(key: &[u8]) -> Option<u32> {
    if key.len() != EVENT_KEY_LEN {
        return None;
    }
    let sequence: [u8; 4] = key[16..].try_into().ok()?;
    Some(u32::from_be_bytes(sequence))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_keys_round_trip() {
        let key = OutboxKey::new(Priority::Low, 1_700_000_000_123, RequestId::new());
        assert_eq!(OutboxKey::decode(&key.encode()), Some(key));
        assert_eq!(OutboxKey::decode(&key.encode()[1..]), None);
        let mut unknown_priority = key.encode();
        unknown_priority[0] = 3;
        assert_eq!(OutboxKey::decode(&unknown_priority), None);
    }

    #[test]
    fn outbox_bytes_order_by_priority_then_due_time_then_id() {
        let (a, b) = (RequestId::new(), RequestId::new());
        let mut keys = vec![
            OutboxKey::new(Priority::Low, 1, a),
            OutboxKey::new(Priority::Normal, 500, b),
            OutboxKey::new(Priority::Normal, 500, a),
            OutboxKey::new(Priority::High, u64::MAX, b),
            OutboxKey::new(Priority::Normal, 2, b),
        ];
        let mut by_bytes: Vec<_> = keys.iter().map(OutboxKey::encode).collect();
        by_bytes.sort();
        keys.sort();
        let decoded: Vec<_> = by_bytes
            .iter()
            .filter_map(|k| OutboxKey::decode(k))
            .collect();
        assert_eq!(decoded, keys);
        assert_eq!(decoded[0].rank, Priority::High.rank());
        assert_eq!((decoded[1].due_ms, decoded[2].id), (2, a));
    }

    #[test]
    fn leases_round_trip_and_format_3_leases_still_read() {
        let leased_from = OutboxKey::new(Priority::High, 42, RequestId::new());
        let entry = LeaseEntry {
            leased_from,
            deadline_ms: 1_700_000_060_000,
            owner: "host-1:4242".into(),
        };
        assert_eq!(LeaseEntry::decode(&entry.encode()), Some(entry));
        let old = LeaseEntry::decode(&leased_from.encode()).unwrap();
        assert_eq!(
            (old.leased_from, old.deadline_ms, old.owner.as_str()),
            (leased_from, 0, "")
        );
        assert_eq!(LeaseEntry::decode(&leased_from.encode()[..20]), None);
    }

    #[test]
    fn due_range_stops_at_the_due_time() {
        let id = RequestId::new();
        let range = OutboxKey::due_range(1, 100);
        assert!(range.contains(&OutboxKey::new(Priority::Normal, 100, id).encode()));
        assert!(!range.contains(&OutboxKey::new(Priority::Normal, 101, id).encode()));
        assert!(!range.contains(&OutboxKey::new(Priority::High, 0, id).encode()));
    }

    #[test]
    fn event_keys_order_by_sequence_within_a_request() {
        let id = RequestId::new();
        assert!(event_key(id, 1) < event_key(id, 2));
        assert!(event_key(id, 255) < event_key(id, 256));
        assert_eq!(&event_key(id, 7)[..16], id.as_bytes());
    }

    #[test]
    fn event_keys_give_back_their_sequence() {
        let id = RequestId::new();
        assert_eq!(event_sequence(&event_key(id, 0)), Some(0));
        assert_eq!(event_sequence(&event_key(id, 70_000)), Some(70_000));
        assert_eq!(event_sequence(&event_key(id, 7)[..19]), None);
    }
}
