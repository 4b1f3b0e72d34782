//! What the simulator received: one [`ReceivedCall`] per call to the notify
//! endpoint, in arrival order, and the counts tests assert on ([`SimStats`],
//! [`IdStats`]).

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::lock;

/// One call the simulator answered.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReceivedCall {
    /// The caller's request id (`Idempotency-Key`, else `trace_id`, else "anonymous").
    pub id: String,
    /// The `priority` query parameter as sent.
    pub priority: Option<String>,
    /// The status code answered.
    pub status: u16,
    /// When the call arrived, in milliseconds since the simulator started.
    pub at_ms: u64,
}

impl ReceivedCall {
    /// The provider delivered the notification: it answered 2xx.
    pub fn is_delivery(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Counts over every call received.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    pub calls_total: u64,
    pub by_status: BTreeMap<u16, u64>,
    /// Calls answered 2xx.
    pub delivered: u64,
    /// Distinct request ids answered 2xx at least once.
    pub unique_delivered: u64,
    /// 2xx answers beyond the first for the same request id.
    pub duplicate_deliveries: u64,
}

impl SimStats {
    fn of<'a>(calls: impl IntoIterator<Item = &'a ReceivedCall>) -> Self {
        let mut stats = Self::default();
        let mut delivered_ids = HashSet::new();
        for call in calls {
            stats.calls_total += 1;
            *stats.by_status.entry(call.status).or_default() += 1;
            if call.is_delivery() {
                stats.delivered += 1;
                delivered_ids.insert(call.id.as_str());
            }
        }
        stats.unique_delivered = delivered_ids.len() as u64;
        stats.duplicate_deliveries = stats.delivered - stats.unique_delivered;
        stats
    }
}

/// What one request id received, as served by `GET /stats/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdStats {
    pub id: String,
    pub calls: u64,
    pub deliveries: u64,
    /// The status of each call, in arrival order.
    pub statuses: Vec<u16>,
}

/// A call that has arrived and not been answered yet; it keeps its place in
/// the arrival order however long the answer takes.
pub(super) struct Arrival {
    seq: u64,
    id: String,
    priority: Option<String>,
    at_ms: u64,
}

/// The record of every call, keyed by arrival sequence.
pub(super) struct Ledger {
    started: Instant,
    arrivals: AtomicU64,
    answered: Mutex<BTreeMap<u64, ReceivedCall>>,
}

impl Ledger {
    pub(super) fn new() -> Self {
        Self {
            started: Instant::now(),
            arrivals: AtomicU64::new(0),
            answered: Mutex::new(BTreeMap::new()),
        }
    }

    pub(super) fn arrive(&self, id: String, priority: Option<String>) -> Arrival {
        Arrival {
            seq: self.arrivals.fetch_add(1, Ordering::Relaxed),
            id,
            priority,
            at_ms: self.started.elapsed().as_millis() as u64,
        }
    }

    pub(super) fn record(&self, arrival: Arrival, status: u16) {
        let call = ReceivedCall {
            id: arrival.id,
            priority: arrival.priority,
            status,
            at_ms: arrival.at_ms,
        };
        lock(&self.answered).insert(arrival.seq, call);
    }

    pub(super) fn calls(&self) -> Vec<ReceivedCall> {
        lock(&self.answered).values().cloned().collect()
    }

    pub(super) fn calls_of(&self, id: &str) -> Vec<ReceivedCall> {
        let answered = lock(&self.answered);
        answered
            .values()
            .filter(|call| call.id == id)
            .cloned()
            .collect()
    }

    pub(super) fn stats(&self) -> SimStats {
        SimStats::of(lock(&self.answered).values())
    }

    pub(super) fn id_stats(&self, id: &str) -> IdStats {
        let calls = self.calls_of(id);
        IdStats {
            id: id.to_owned(),
            calls: calls.len() as u64,
            deliveries: calls.iter().filter(|call| call.is_delivery()).count() as u64,
            statuses: calls.iter().map(|call| call.status).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger_with(answers: &[(&str, u16)]) -> Ledger {
        let ledger = Ledger::new();
        for (id, status) in answers {
            let arrival = ledger.arrive(id.to_string(), Some("high".into()));
            ledger.record(arrival, *status);
        }
        ledger
    }

    #[test]
    fn stats_count_duplicates_per_id() {
        let ledger = ledger_with(&[("a", 500), ("a", 200), ("a", 200), ("b", 200), ("c", 429)]);
        let stats = ledger.stats();
        assert_eq!(stats.calls_total, 5);
        assert_eq!(
            stats.by_status,
            BTreeMap::from([(200, 3), (429, 1), (500, 1)])
        );
        assert_eq!(stats.delivered, 3);
        assert_eq!(stats.unique_delivered, 2);
        assert_eq!(stats.duplicate_deliveries, 1);
    }

    #[test]
    fn calls_keep_arrival_order_whatever_the_answer_order() {
        let ledger = Ledger::new();
        let first = ledger.arrive("slow".into(), None);
        let second = ledger.arrive("fast".into(), None);
        ledger.record(second, 200);
        ledger.record(first, 200);
        let ids: Vec<String> = ledger.calls().into_iter().map(|call| call.id).collect();
        assert_eq!(ids, ["slow", "fast"]);
    }

    #[test]
    fn id_stats_list_statuses_in_order() {
        let ledger = ledger_with(&[("a", 500), ("b", 200), ("a", 200)]);
        let id_stats = ledger.id_stats("a");
        assert_eq!(id_stats.calls, 2);
        assert_eq!(id_stats.deliveries, 1);
        assert_eq!(id_stats.statuses, vec![500, 200]);
    }
}
