//! The open connections: where each stands (waiting for a request, reading
//! its headers, in a handler), when it last moved bytes, which deadline it is
//! held to, and the cap on how many are open, with the rule for who makes
//! room when a new one arrives past it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a connection may take over each part of its life.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// From a connection's opening, or a request's first byte, to the end of its headers.
    pub header_read: Duration,
    /// With no bytes moving either way, outside a handler.
    pub idle: Duration,
}

/// Where a connection stands (the low bits of [`Connection::phase`]).
const AWAITING: u64 = 0;
const HEADERS: u64 = 1;
const HANDLER: u64 = 2;
const PHASE_BITS: u32 = 2;

/// Why a connection was closed by the server, not by its client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    HeaderRead,
    Idle,
}

/// One open connection's state, shared by its IO, its service and its task.
#[derive(Debug)]
pub struct Connection {
    id: u64,
    epoch: Instant,
    /// The phase and, above [`PHASE_BITS`], when it began (ms since `epoch`).
    phase: AtomicU64,
    /// When bytes last moved either way (ms since `epoch`).
    last_traffic: AtomicU64,
    /// Cancelled when the table closes this connection to make room.
    evicted: CancellationToken,
}

impl Connection {
    fn new(id: u64, epoch: Instant) -> Self {
        let now = millis_since(epoch, Instant::now());
        Self {
            id,
            epoch,
            // A new connection owes its first request's headers at once.
            phase: AtomicU64::new(pack(HEADERS, now)),
            last_traffic: AtomicU64::new(now),
            evicted: CancellationToken::new(),
        }
    }

    fn now(&self) -> u64 {
        millis_since(self.epoch, Instant::now())
    }

    /// Bytes were read: the traffic clock restarts, and a connection that
    /// was waiting for a request is now reading one's headers.
    pub fn on_read(&self) {
        let now = self.now();
        self.last_traffic.store(now, Ordering::Relaxed);
        let current = self.phase.load(Ordering::Relaxed);
        if current & phase_mask() == AWAITING {
            // Lost only to a phase change, which wins.
            let _ = self.phase.compare_exchange(
                current,
                pack(HEADERS, now),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Bytes were written.
    pub fn on_write(&self) {
        self.last_traffic.store(self.now(), Ordering::Relaxed);
    }

    /// A request's headers are in: it is in a handler until the guard drops.
    pub fn enter_handler(self: &Arc<Self>) -> HandlerGuard {
        self.phase
            .store(pack(HANDLER, self.now()), Ordering::Relaxed);
        HandlerGuard(self.clone())
    }

    /// Whether the current request's headers are still arriving (no handler
    /// has seen them).
    pub fn is_reading_headers(&self) -> bool {
        self.phase.load(Ordering::Relaxed) & phase_mask() == HEADERS
    }

    fn in_handler(&self) -> bool {
        self.phase.load(Ordering::Relaxed) & phase_mask() == HANDLER
    }

    /// When this connection should next be looked at: its earliest deadline,
    /// or (in a handler, which has none) one idle period from now.
    pub fn next_check(&self, timeouts: &Timeouts) -> Instant {
        let at = match self.deadline(timeouts) {
            Some((_, at)) => at,
            None => self.now() + millis(timeouts.idle),
        };
        self.epoch + Duration::from_millis(at)
    }

    /// Whether a deadline has passed, and which.
    pub fn expired(&self, timeouts: &Timeouts) -> Option<Expiry> {
        let now = self.now();
        self.deadline(timeouts)
            .and_then(|(expiry, at)| (at <= now).then_some(expiry))
    }

    /// The earliest deadline and its kind; none while in a handler (whose
    /// body has its own timeout, and whose work is the server's own).
    fn deadline(&self, timeouts: &Timeouts) -> Option<(Expiry, u64)> {
        let phase = self.phase.load(Ordering::Relaxed);
        let idle = self.last_traffic.load(Ordering::Relaxed) + millis(timeouts.idle);
        match phase & phase_mask() {
            HANDLER => None,
            HEADERS => {
                let headers = (phase >> PHASE_BITS) + millis(timeouts.header_read);
                Some(if headers <= idle {
                    (Expiry::HeaderRead, headers)
                } else {
                    (Expiry::Idle, idle)
                })
            }
            _ => Some((Expiry::Idle, idle)),
        }
    }

    /// Resolves when the table closed this connection to make room.
    pub async fn evicted(&self) {
        self.evicted.cancelled().await;
    }
}

/// Leaves the handler phase when dropped: the connection awaits its next request.
pub struct HandlerGuard(Arc<Connection>);

impl Drop for HandlerGuard {
    fn drop(&mut self) {
        let now = self.0.now();
        self.0.phase.store(pack(AWAITING, now), Ordering::Relaxed);
    }
}

fn phase_mask() -> u64 {
    (1 << PHASE_BITS) - 1
}

fn pack(phase: u64, since_ms: u64) -> u64 {
    (since_ms << PHASE_BITS) | phase
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX >> PHASE_BITS)
}

fn millis_since(epoch: Instant, now: Instant) -> u64 {
    millis(now.saturating_duration_since(epoch))
}

/// What [`ConnectionTable::admit`] decided.
pub enum Admission {
    /// Serve it; its entry leaves the table when the [`Entry`] drops.
    Open(Entry),
    /// At the cap with every connection in a handler: refuse it.
    Full,
}

/// A connection's place in the table, given back on drop.
pub struct Entry {
    pub connection: Arc<Connection>,
    table: Arc<ConnectionTable>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.table.lock().remove(&self.connection.id);
    }
}

/// Every open connection, and the cap on how many.
#[derive(Debug)]
pub struct ConnectionTable {
    cap: usize,
    epoch: Instant,
    open: Mutex<Slots>,
}

#[derive(Debug, Default)]
struct Slots {
    next_id: u64,
    by_id: HashMap<u64, Arc<Connection>>,
}

impl Slots {
    fn remove(&mut self, id: &u64) {
        self.by_id.remove(id);
    }
}

impl ConnectionTable {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap,
            epoch: Instant::now(),
            open: Mutex::new(Slots::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn open_count(&self) -> usize {
        self.lock().by_id.len()
    }

    /// Takes a new connection in. Past the cap, the connection that has moved
    /// no bytes for longest, outside a handler, is closed to make room: a
    /// flood of slow or idle connections then only displaces itself, while a
    /// client that sends its request at once is served. Only when every open
    /// connection is in a handler is the new one refused.
    pub fn admit(self: &Arc<Self>) -> Admission {
        let mut slots = self.lock();
        if slots.by_id.len() >= self.cap {
            let Some(victim) = least_active(&slots) else {
                return Admission::Full;
            };
            slots.remove(&victim.id);
            victim.evicted.cancel();
        }
        let id = slots.next_id;
        slots.next_id += 1;
        let connection = Arc::new(Connection::new(id, self.epoch));
        slots.by_id.insert(id, connection.clone());
        Admission::Open(Entry {
            connection,
            table: self.clone(),
        })
    }

    /// Closes the least active connection outside a handler, if any, to free
    /// its descriptor (when `accept` itself fails for the lack of one).
    pub fn shed_one(&self) -> bool {
        let mut slots = self.lock();
        let Some(victim) = least_active(&slots) else {
            return false;
        };
        slots.remove(&victim.id);
        victim.evicted.cancel();
        true
    }
}

fn least_active(slots: &Slots) -> Option<Arc<Connection>> {
    slots
        .by_id
        .values()
        .filter(|connection| !connection.in_handler())
        .min_by_key(|connection| connection.last_traffic.load(Ordering::Relaxed))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        header_read: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    fn open(table: &Arc<ConnectionTable>) -> Entry {
        match table.admit() {
            Admission::Open(entry) => entry,
            Admission::Full => panic!("refused"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_owes_its_headers_within_the_header_timeout() {
        let table = ConnectionTable::new(10);
        let entry = open(&table);
        let connection = &entry.connection;
        tokio::time::sleep(Duration::from_secs(9)).await;
        connection.on_read(); // a byte, then nothing more: slowloris
        assert_eq!(connection.expired(&TIMEOUTS), None);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(connection.expired(&TIMEOUTS), Some(Expiry::HeaderRead));
    }

    #[tokio::test(start_paused = true)]
    async fn between_requests_only_the_idle_timeout_applies() {
        let table = ConnectionTable::new(10);
        let entry = open(&table);
        let connection = &entry.connection;
        drop(connection.enter_handler());
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert_eq!(connection.expired(&TIMEOUTS), None, "keep-alive waits");
        assert!(!connection.is_reading_headers());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(connection.expired(&TIMEOUTS), Some(Expiry::Idle));

        // The next request's first byte starts its header clock.
        connection.on_read();
        assert!(connection.is_reading_headers());
        assert_eq!(connection.expired(&TIMEOUTS), None);
        let expected = Instant::now() + TIMEOUTS.header_read;
        assert_eq!(connection.next_check(&TIMEOUTS), expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_has_no_deadline_here() {
        let table = ConnectionTable::new(10);
        let entry = open(&table);
        let handler = entry.connection.enter_handler();
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(entry.connection.expired(&TIMEOUTS), None);
        drop(handler);
        tokio::time::sleep(TIMEOUTS.idle).await;
        assert_eq!(entry.connection.expired(&TIMEOUTS), Some(Expiry::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_cap_the_least_active_connection_outside_a_handler_makes_room() {
        let table = ConnectionTable::new(3);
        let busy = open(&table);
        let _in_handler = busy.connection.enter_handler();
        let silent = open(&table);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let talking = open(&table);
        talking.connection.on_read();

        tokio::time::sleep(Duration::from_millis(5)).await;
        let newcomer = open(&table);
        assert!(
            silent.connection.evicted.is_cancelled(),
            "the silent one goes"
        );
        assert!(!talking.connection.evicted.is_cancelled());
        assert!(!busy.connection.evicted.is_cancelled());
        assert_eq!(table.open_count(), 3);

        drop(silent);
        assert_eq!(table.open_count(), 3, "an evicted entry is gone already");
        drop(newcomer);
        drop(talking);
        assert_eq!(table.open_count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_connection_is_in_a_handler_a_newcomer_is_refused() {
        let table = ConnectionTable::new(2);
        let (first, second) = (open(&table), open(&table));
        let _handlers = (
            first.connection.enter_handler(),
            second.connection.enter_handler(),
        );
        assert!(matches!(table.admit(), Admission::Full));
        assert!(!table.shed_one(), "nothing to shed");
        drop(_handlers);
        assert!(table.shed_one());
        assert!(matches!(table.admit(), Admission::Open(_)));
    }
}
