//! What the simulator received: one [`ReceivedCall`] per call to the notify
//! endpoint, in arrival order, and the counts tests assert on ([`SimStats`],
//! [`IdStats`]).

use std::collections::{BTreeMap, HashMap};
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
    /// The call stalled (took `stall_ms`) before it was answered.
    pub stalled: bool,
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
    /// The duplicates a stall explains: a caller that timed out on a stalled
    /// call tries again, so per request id each stalled delivery accounts for
    /// at most one duplicate. The rest come from elsewhere (say, a crash).
    pub duplicates_after_stall: u64,
}

impl SimStats {
    fn of<'a>(calls: impl IntoIterator<Item = &'a ReceivedCall>) -> Self {
        let mut stats = Self::default();
        let mut deliveries_per_id: HashMap<&str, Deliveries> = HashMap::new();
        for call in calls {
            stats.calls_total += 1;
            *stats.by_status.entry(call.status).or_default() += 1;
            if call.is_delivery() {
                stats.delivered += 1;
                deliveries_per_id.entry(&call.id).or_default().count(call);
            }
        }
        stats.unique_delivered = deliveries_per_id.len() as u64;
        for deliveries in deliveries_per_id.values() {
            stats.duplicate_deliveries += deliveries.duplicates();
            stats.duplicates_after_stall += deliveries.duplicates_after_stall();
        }
        stats
    }
}

/// The deliveries of one request id.
#[derive(Default)]
struct Deliveries {
    total: u64,
    stalled: u64,
}

impl Deliveries {
    fn count(&mut self, call: &ReceivedCall) {
        self.total += 1;
        self.stalled += u64::from(call.stalled);
    }

    fn duplicates(&self) -> u64 {
        self.total.saturating_sub(1)
    }

    fn duplicates_after_stall(&self) -> u64 {
        self.duplicates().min(self.stalled)
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
            seq: self.arrivals.fetch_add(1, Ordering::SeqCst),
            id,
            priority,
            at_ms: self.started.elapsed().as_millis() as u64,
        }
    }

    pub(super) fn record(&self, arrival: Arrival, status: u16, stalled: bool) {
        let call = ReceivedCall {
            id: arrival.id,
            priority: arrival.priority,
            status,
            stalled,
            at_ms: arrival.at_ms,
        };
        lock(&self.answered).insert(arrival.seq, call);
    }

    /// Calls that have arrived and are not answered yet.
    pub(super) fn in_progress(&self) -> u64 {
        // Read the answers first: a call answered in between then counts as
        // still in progress, never as a negative.
        let answered = lock(&self.answered).len() as u64;
        self.arrivals
            .load(Ordering::SeqCst)
            .saturating_sub(answered)
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
            ledger.record(arrival, *status, false);
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
        assert_eq!(stats.duplicates_after_stall, 0);
    }

    #[test]
    fn each_stalled_delivery_explains_at_most_one_duplicate() {
        let ledger = Ledger::new();
        let answers = [
            ("timed-out-once", true),
            ("timed-out-once", false),
            ("timed-out-then-crashed", true),
            ("timed-out-then-crashed", false),
            ("timed-out-then-crashed", false),
            ("stalled-alone", true),
        ];
        for (id, stalled) in answers {
            let arrival = ledger.arrive(id.into(), None);
            ledger.record(arrival, 200, stalled);
        }
        let stats = ledger.stats();
        assert_eq!(stats.duplicate_deliveries, 3);
        assert_eq!(stats.duplicates_after_stall, 2);
    }

    #[test]
    fn answers_in_any_order_keep_arrival_order_and_count_down_progress() {
        let ledger = Ledger::new();
        let first = ledger.arrive("slow".into(), None);
        let second = ledger.arrive("fast".into(), None);
        assert_eq!(ledger.in_progress(), 2);
        ledger.record(second, 200, false);
        assert_eq!(ledger.in_progress(), 1);
        ledger.record(first, 200, false);
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
