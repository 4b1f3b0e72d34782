//! The circuit breaker: after a run of consecutive provider failures, stop
//! calling for a cool-down, then let a single probe decide whether to resume.
//! While it is open, work waits in the outbox: no failure fails a request
//! then. The failures that open it are judged by the retry budget as usual,
//! except one that would end its request: that waits to see whether the
//! breaker opens before another call succeeds ([`CircuitBreaker::opens_before_a_success`]).

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker.
    pub threshold: u32,
    /// How long it stays open before a probe.
    pub cooldown: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is in flight; everything else waits for its outcome.
    HalfOpen,
}

pub struct CircuitBreaker {
    settings: BreakerSettings,
    state: Mutex<BreakerState>,
    changed: Notify,
}

impl CircuitBreaker {
    pub fn new(settings: BreakerSettings) -> Self {
        let breaker = Self {
            settings,
            state: Mutex::new(BreakerState::Closed { failures: 0 }),
            changed: Notify::new(),
        };
        breaker.changed(BreakerState::Closed { failures: 0 });
        breaker
    }

    /// How long the breaker stays open before it lets a probe through.
    pub fn cooldown(&self) -> std::time::Duration {
        self.settings.cooldown
    }

    #[cfg(test)]
    pub fn state(&self) -> BreakerState {
        *self.lock()
    }

    /// Waits until a call may start. After a cool-down the first caller becomes the probe.
    pub async fn admitted(&self) {
        loop {
            let changed = self.changed.notified();
            let open_until = {
                let mut state = self.lock();
                match *state {
                    BreakerState::Closed { .. } => return,
                    BreakerState::Open { until } if Instant::now() >= until => {
                        *state = BreakerState::HalfOpen;
                        drop(state);
                        tracing::info!("circuit breaker half-open: sending a probe");
                        self.changed(BreakerState::HalfOpen);
                        return;
                    }
                    BreakerState::Open { until } => Some(until),
                    BreakerState::HalfOpen => None,
                }
            };
            match open_until {
                Some(until) => tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = changed => {}
                },
                None => changed.await,
            }
        }
    }

    /// The probe admitted last was not sent after all (nothing was due, or
    /// the outbox could not be read): let the next caller be the probe.
    pub fn probe_not_sent(&self) {
        let mut state = self.lock();
        if *state == BreakerState::HalfOpen {
            *state = BreakerState::Open {
                until: Instant::now(),
            };
            let now = *state;
            drop(state);
            self.changed(now);
        }
    }

    /// The provider answered: close the breaker.
    pub fn record_success(&self) {
        let mut state = self.lock();
        if !matches!(*state, BreakerState::Closed { .. }) {
            tracing::info!("circuit breaker closed: the provider answers again");
        }
        *state = BreakerState::Closed { failures: 0 };
        let now = *state;
        drop(state);
        self.changed(now);
    }

    /// The provider failed (5xx, timeout, unreachable). Returns whether the breaker
    /// is open now, i.e. whether this failure is part of an outage.
    pub fn record_failure(&self) -> bool {
        let mut state = self.lock();
        let open_until = Instant::now() + self.settings.cooldown;
        *state = match *state {
            BreakerState::Closed { failures } if failures + 1 < self.settings.threshold => {
                BreakerState::Closed {
                    failures: failures + 1,
                }
            }
            BreakerState::Open { until } => BreakerState::Open { until },
            _ => {
                tracing::warn!(cooldown = ?self.settings.cooldown, "circuit breaker open: provider failing");
                BreakerState::Open { until: open_until }
            }
        };
        let now = *state;
        drop(state);
        self.changed(now);
        !matches!(now, BreakerState::Closed { .. })
    }

    /// Called after a failure was recorded: waits until the next calls tell
    /// whether it began an outage. `true` once the breaker opens; `false` once
    /// a call succeeds (the failure was one request's), or when a cool-down
    /// passes with neither.
    pub async fn opens_before_a_success(&self) -> bool {
        let deadline = Instant::now() + self.settings.cooldown;
        loop {
            let changed = self.changed.notified();
            match *self.lock() {
                BreakerState::Open { .. } | BreakerState::HalfOpen => return true,
                BreakerState::Closed { failures: 0 } => return false,
                BreakerState::Closed { .. } => {}
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline) => return false,
            }
        }
    }

    /// Publishes the state for `herald_circuit_breaker_state` and wakes the dispatcher.
    fn changed(&self, state: BreakerState) {
        crate::instruments::circuit_breaker_state(match state {
            BreakerState::Closed { .. } => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open { .. } => 2,
        });
        self.changed.notify_waiters();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        // The state is a plain value: a panic elsewhere cannot leave it half-written.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32) -> CircuitBreaker {
        CircuitBreaker::new(BreakerSettings {
            threshold,
            cooldown: Duration::from_secs(30),
        })
    }

    #[tokio::test]
    async fn opens_after_threshold_consecutive_failures() {
        let breaker = breaker(3);
        assert!(!breaker.record_failure());
        assert!(!breaker.record_failure());
        breaker.record_success();
        assert!(!breaker.record_failure());
        assert!(!breaker.record_failure());
        assert!(breaker.record_failure());
        assert!(matches!(breaker.state(), BreakerState::Open { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_after_the_cooldown_decides() {
        let breaker = breaker(1);
        assert!(breaker.record_failure());
        breaker.admitted().await; // paused clock: auto-advances through the cool-down
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(breaker.record_failure());
        assert!(matches!(breaker.state(), BreakerState::Open { .. }));
        breaker.admitted().await;
        breaker.record_success();
        assert_eq!(breaker.state(), BreakerState::Closed { failures: 0 });
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_learns_whether_an_outage_followed_it() {
        let breaker = std::sync::Arc::new(breaker(3));
        breaker.record_failure();
        let watching = breaker.clone();
        let verdict = tokio::spawn(async move { watching.opens_before_a_success().await });
        tokio::task::yield_now().await;
        breaker.record_failure();
        assert!(!verdict.is_finished(), "two failures are not an outage yet");
        breaker.record_failure(); // the third opens it
        assert!(verdict.await.unwrap());
        assert!(breaker.opens_before_a_success().await, "still open");

        breaker.record_success();
        breaker.record_failure();
        let watching = breaker.clone();
        let verdict = tokio::spawn(async move { watching.opens_before_a_success().await });
        tokio::task::yield_now().await;
        breaker.record_success();
        assert!(
            !verdict.await.unwrap(),
            "another call succeeded: its own failure"
        );

        breaker.record_failure();
        let started = Instant::now();
        assert!(!breaker.opens_before_a_success().await, "nothing known");
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(30),
            "waits one cool-down"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_not_sent_lets_the_next_caller_probe() {
        let breaker = breaker(1);
        assert!(breaker.record_failure());
        breaker.admitted().await;
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        breaker.probe_not_sent();
        tokio::time::timeout(Duration::from_secs(1), breaker.admitted())
            .await
            .expect("admitted again at once, as the probe");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);

        breaker.record_success();
        breaker.probe_not_sent();
        assert_eq!(breaker.state(), BreakerState::Closed { failures: 0 });
    }
}
