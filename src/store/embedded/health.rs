//! Whether the store can make writes durable, and why not.
//!
//! Three states: `Serving`; `Unavailable` after a write could not be made
//! durable (a full disk, an I/O error), from which the store recovers by
//! itself by opening sled again once the disk takes writes; and `Lost`, when
//! the data directory was deleted or replaced under the running gateway or
//! acknowledged data turned out missing, from which only an operator
//! recovers. Each change of state is logged once, not once per refused
//! request: a gateway under load would otherwise log thousands of lines a
//! second.

use std::sync::Mutex;

use tokio::sync::Notify;

use crate::instruments;
use crate::store::StorageState as State;

#[derive(Default)]
pub struct Health {
    state: Mutex<StateCell>,
    /// Wakes the recovery task when writes start failing.
    failed: Notify,
}

struct StateCell(State);

impl Default for StateCell {
    fn default() -> Self {
        Self(State::Serving)
    }
}

impl Health {
    pub fn state(&self) -> State {
        self.lock().0.clone()
    }

    /// `None` while serving; otherwise why writes are refused.
    pub fn refusal(&self) -> Option<String> {
        match &self.lock().0 {
            State::Serving => None,
            State::Unavailable(reason) | State::Lost(reason) => Some(reason.clone()),
        }
    }

    /// A write could not be made durable: refuse writes until the store is
    /// open again. A store already lost stays lost.
    pub fn fail(&self, reason: &str) {
        let mut state = self.lock();
        if state.0 == State::Serving {
            tracing::error!(
                reason,
                "storage unavailable: writes are refused (503) until the disk takes them again"
            );
            state.0 = State::Unavailable(reason.to_string());
            instruments::storage_state("unavailable");
            self.failed.notify_one();
        }
    }

    /// The data is gone from under the gateway: refuse every write for good.
    pub fn lose(&self, reason: &str) {
        let mut state = self.lock();
        if !matches!(state.0, State::Lost(_)) {
            tracing::error!(
                reason,
                "storage lost: every write is refused (503) and the gateway will exit non-zero"
            );
            state.0 = State::Lost(reason.to_string());
            instruments::storage_state("lost");
            self.failed.notify_one();
        }
    }

    /// The store is open again and takes writes.
    pub fn recovered(&self) {
        let mut state = self.lock();
        if matches!(state.0, State::Unavailable(_)) {
            tracing::info!("storage available again: writes are accepted");
            state.0 = State::Serving;
            instruments::storage_state("serving");
        }
    }

    /// Resolves once the store is not serving.
    pub async fn failure(&self) {
        loop {
            let notified = self.failed.notified();
            if self.state() != State::Serving {
                return;
            }
            notified.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StateCell> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_store_stays_lost_and_a_failed_one_recovers() {
        let health = Health::default();
        health.fail("disk full");
        assert_eq!(health.refusal().as_deref(), Some("disk full"));
        health.fail("another write failed");
        assert_eq!(
            health.refusal().as_deref(),
            Some("disk full"),
            "the first reason stays"
        );
        health.recovered();
        assert_eq!(health.state(), State::Serving);
        health.lose("directory deleted");
        health.recovered();
        health.fail("disk full");
        assert_eq!(health.state(), State::Lost("directory deleted".into()));
    }

    #[tokio::test]
    async fn failure_resolves_once_writes_fail() {
        let health = std::sync::Arc::new(Health::default());
        let waiter = tokio::spawn({
            let health = health.clone();
            async move { health.failure().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        health.fail("disk full");
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
