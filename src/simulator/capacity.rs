//! The provider's two limits: a sliding-window admission log (how many calls
//! per window) and a semaphore (how many calls in service at once).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use super::lock;

/// Admission and service slots shared by every caller.
pub(super) struct Capacity {
    window: Mutex<SlidingWindow>,
    service_slots: Semaphore,
}

impl Capacity {
    pub(super) fn new(window_calls: u32, window_secs: u64, max_concurrent: usize) -> Self {
        Self {
            window: Mutex::new(SlidingWindow::new(
                window_calls as usize,
                Duration::from_secs(window_secs),
            )),
            // Semaphore::new panics above MAX_PERMITS; that many is unlimited in practice.
            service_slots: Semaphore::new(max_concurrent.min(Semaphore::MAX_PERMITS)),
        }
    }

    /// Admits the call if the window has room; a refused call leaves no trace.
    pub(super) fn try_admit(&self) -> bool {
        lock(&self.window).try_admit(Instant::now())
    }

    /// Waits for a free service slot; the call is in service while the permit lives.
    pub(super) async fn service_slot(&self) -> Option<SemaphorePermit<'_>> {
        // Acquiring fails only on a closed semaphore, and nothing closes this one.
        self.service_slots.acquire().await.ok()
    }
}

/// The instants of the calls admitted within the last `span`, oldest first.
struct SlidingWindow {
    admitted: VecDeque<Instant>,
    limit: usize,
    span: Duration,
}

impl SlidingWindow {
    fn new(limit: usize, span: Duration) -> Self {
        Self {
            admitted: VecDeque::new(),
            limit,
            span,
        }
    }

    fn try_admit(&mut self, now: Instant) -> bool {
        self.forget_before(now);
        if self.admitted.len() >= self.limit {
            return false;
        }
        self.admitted.push_back(now);
        true
    }

    /// Drops admissions that have slid out of the window ending at `now`.
    fn forget_before(&mut self, now: Instant) {
        while let Some(&oldest) = self.admitted.front() {
            if now.duration_since(oldest) < self.span {
                break;
            }
            self.admitted.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_refuses_beyond_limit_and_slides() {
        let start = Instant::now();
        let mut window = SlidingWindow::new(2, Duration::from_secs(10));
        assert!(window.try_admit(start));
        assert!(window.try_admit(start + Duration::from_secs(4)));
        assert!(!window.try_admit(start + Duration::from_secs(9)));
        // The first admission leaves the window at 10 s; the refusal above took no slot.
        assert!(window.try_admit(start + Duration::from_secs(10)));
        assert!(!window.try_admit(start + Duration::from_secs(13)));
        assert!(window.try_admit(start + Duration::from_secs(14)));
    }

    #[tokio::test]
    async fn service_slots_bound_concurrency() {
        let capacity = Capacity::new(10, 10, 1);
        let held = capacity.service_slot().await;
        assert_eq!(capacity.service_slots.available_permits(), 0);
        drop(held);
        assert!(capacity.service_slot().await.is_some());
    }
}
