//! Byte layouts of the keys whose order matters.
//!
//! sled orders keys bytewise, so every number is big-endian:
//! - outbox (format 5): `[priority rank][channel][asked-for-delivery ms: u64][request id: 16 bytes]`:
//!   work that may go now. A prefix scan per priority and channel yields the
//!   request that asked for delivery first, retries included (they keep their
//!   place), so the oldest goes first; keeping channels apart lets a lease pass
//!   over a channel that must wait;
//! - delayed: `[due ms: u64][request id: 16 bytes]` → the outbox key the entry
//!   takes once due: retries in their backoff, earliest due first;
//! - events: `[request id: 16 bytes][sequence: u32]`, so one prefix scan yields a
//!   request's history in order.
//!
//! And one value: a lease (`leases` tree, keyed by request id) is
//! `[outbox key it was leased from][deadline ms: u64][owner: UTF-8]` since
//! format 4 (format 3 stored the outbox key alone; formats before 5 had
//! 25-byte outbox keys `[rank][due ms][id]`, read only by the upgrade).

use crate::domain::{Channel, Priority, RequestId};

pub const OUTBOX_KEY_LEN: usize = 1 + 1 + 8 + 16;
pub const DELAYED_KEY_LEN: usize = 8 + 16;
/// An outbox key of formats 1 to 4: `[rank][due ms][id]`.
pub const FORMAT_4_OUTBOX_KEY_LEN: usize = 1 + 8 + 16;
pub const EVENT_KEY_LEN: usize = 16 + 4;

/// Where an entry sits in the outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct OutboxKey {
    pub rank: u8,
    pub channel: u8,
    /// When delivery was first asked for: the entry's place in line.
    pub order_ms: u64,
    pub id: RequestId,
}

/// A channel's byte in outbox keys: its place in [`Channel::ALL`].
pub fn channel_byte(channel: Channel) -> u8 {
    Channel::ALL.iter().position(|c| *c == channel).unwrap_or(0) as u8
}

impl OutboxKey {
    pub fn new(priority: Priority, channel: Channel, order_ms: u64, id: RequestId) -> Self {
        Self {
            rank: priority.rank(),
            channel: channel_byte(channel),
            order_ms,
            id,
        }
    }

    pub fn encode(&self) -> [u8; OUTBOX_KEY_LEN] {
        let mut key = [0u8; OUTBOX_KEY_LEN];
        key[0] = self.rank;
        key[1] = self.channel;
        key[2..10].copy_from_slice(&self.order_ms.to_be_bytes());
        key[10..].copy_from_slice(self.id.as_bytes());
        key
    }

    /// The priority its rank stands for (a decoded key's rank is always known).
    pub fn priority(&self) -> Priority {
        Priority::ALL[usize::from(self.rank)]
    }

    pub fn channel(&self) -> Channel {
        Channel::ALL[usize::from(self.channel)]
    }

    /// `None` unless `bytes` is an encoded key of a known priority and channel.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != OUTBOX_KEY_LEN
            || usize::from(bytes[0]) >= Priority::ALL.len()
            || usize::from(bytes[1]) >= Channel::ALL.len()
        {
            return None;
        }
        let order_ms = u64::from_be_bytes(bytes[2..10].try_into().ok()?);
        let id = RequestId::from_bytes(bytes[10..].try_into().ok()?);
        Some(Self {
            rank: bytes[0],
            channel: bytes[1],
            order_ms,
            id,
        })
    }

    /// The prefix of every entry of `priority` in `channel`.
    pub fn prefix(priority: Priority, channel: Channel) -> [u8; 2] {
        [priority.rank(), channel_byte(channel)]
    }
}

/// A format-4 outbox key's priority rank, due time and id.
pub fn decode_format_4_outbox_key(bytes: &[u8]) -> Option<(u8, u64, RequestId)> {
    if bytes.len() != FORMAT_4_OUTBOX_KEY_LEN || usize::from(bytes[0]) >= Priority::ALL.len() {
        return None;
    }
    let due_ms = u64::from_be_bytes(bytes[1..9].try_into().ok()?);
    Some((
        bytes[0],
        due_ms,
        RequestId::from_bytes(bytes[9..].try_into().ok()?),
    ))
}

/// Where a retry waits out its backoff.
pub fn delayed_key(due_ms: u64, id: RequestId) -> [u8; DELAYED_KEY_LEN] {
    let mut key = [0u8; DELAYED_KEY_LEN];
    key[..8].copy_from_slice(&due_ms.to_be_bytes());
    key[8..].copy_from_slice(id.as_bytes());
    key
}

/// The due time of a delayed key; `None` if it is not one.
pub fn delayed_due_ms(key: &[u8]) -> Option<u64> {
    if key.len() != DELAYED_KEY_LEN {
        return None;
    }
    Some(u64::from_be_bytes(key[..8].try_into().ok()?))
}

/// Every delayed key due at or before `now_ms`.
pub fn delayed_due_by(now_ms: u64) -> std::ops::RangeInclusive<[u8; DELAYED_KEY_LEN]> {
    let mut end = [0xffu8; DELAYED_KEY_LEN];
    end[..8].copy_from_slice(&now_ms.to_be_bytes());
    [0u8; DELAYED_KEY_LEN]..=end
}

/// A lease as the `leases` tree holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseEntry {
    pub leased_from: OutboxKey,
    pub deadline_ms: u64,
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

    /// `None` unless `bytes` is a lease of format 5.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let leased_from = OutboxKey::decode(bytes.get(..OUTBOX_KEY_LEN)?)?;
        let rest = &bytes[OUTBOX_KEY_LEN..];
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
        let key = OutboxKey::new(
            Priority::Low,
            Channel::Push,
            1_700_000_000_123,
            RequestId::new(),
        );
        assert_eq!(OutboxKey::decode(&key.encode()), Some(key));
        assert_eq!(key.channel(), Channel::Push);
        assert_eq!(OutboxKey::decode(&key.encode()[1..]), None);
        let mut unknown = key.encode();
        unknown[0] = 3;
        assert_eq!(OutboxKey::decode(&unknown), None, "no such priority");
        let mut unknown = key.encode();
        unknown[1] = 3;
        assert_eq!(OutboxKey::decode(&unknown), None, "no such channel");
    }

    #[test]
    fn outbox_bytes_order_by_priority_channel_then_age_then_id() {
        let (a, b) = (RequestId::new(), RequestId::new());
        let mut keys = vec![
            OutboxKey::new(Priority::Low, Channel::Email, 1, a),
            OutboxKey::new(Priority::Normal, Channel::Sms, 500, b),
            OutboxKey::new(Priority::Normal, Channel::Email, 500, b),
            OutboxKey::new(Priority::Normal, Channel::Email, 500, a),
            OutboxKey::new(Priority::High, Channel::Push, u64::MAX, b),
            OutboxKey::new(Priority::Normal, Channel::Email, 2, b),
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
        assert_eq!((decoded[1].order_ms, decoded[2].id), (2, a));
        assert!(
            decoded[1]
                .encode()
                .starts_with(&OutboxKey::prefix(Priority::Normal, Channel::Email))
        );
    }

    #[test]
    fn delayed_keys_order_by_due_time_and_the_range_stops_at_now() {
        let id = RequestId::new();
        assert!(delayed_key(5, id) < delayed_key(6, RequestId::from_bytes([0; 16])));
        assert_eq!(delayed_due_ms(&delayed_key(77, id)), Some(77));
        let due = delayed_due_by(100);
        assert!(due.contains(&delayed_key(100, id)));
        assert!(!due.contains(&delayed_key(101, id)));
    }

    #[test]
    fn format_4_outbox_keys_are_read_for_the_upgrade() {
        let id = RequestId::new();
        let mut old = [0u8; FORMAT_4_OUTBOX_KEY_LEN];
        old[0] = 2;
        old[1..9].copy_from_slice(&42u64.to_be_bytes());
        old[9..].copy_from_slice(id.as_bytes());
        assert_eq!(decode_format_4_outbox_key(&old), Some((2, 42, id)));
        assert_eq!(decode_format_4_outbox_key(&old[1..]), None);
    }

    #[test]
    fn leases_round_trip() {
        let leased_from = OutboxKey::new(Priority::High, Channel::Sms, 42, RequestId::new());
        let entry = LeaseEntry {
            leased_from,
            deadline_ms: 1_700_000_060_000,
            owner: "host-1:4242".into(),
        };
        assert_eq!(LeaseEntry::decode(&entry.encode()), Some(entry));
        assert_eq!(
            LeaseEntry::decode(&leased_from.encode()),
            None,
            "no deadline"
        );
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
