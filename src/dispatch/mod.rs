//! The dispatcher: leases due work from the outbox and delivers it.
//!
//! One loop owns the outbox side: it waits for a free slot, for work that is
//! due (woken by `process`, by a finished attempt, or by the timer of the next
//! retry; it never polls), for the circuit breaker and for the rate limiter,
//! then leases the most urgent entry and hands it to an attempt task. On
//! shutdown it stops leasing, lets attempts finish up to a grace period, and
//! returns whatever they abandoned to the outbox.

mod attempt;
mod breaker;
mod learned;
mod pacer;
#[cfg(test)]
mod pacing_model;
mod provider;
mod rate_limit;
mod retry;
mod throttle;
mod window;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use attempt::decide;
pub use breaker::{BreakerSettings, BreakerState, CircuitBreaker};
pub use pacer::{Pacer, RateSettings};
pub use provider::{CallOutcome, ProviderClient, ProviderSettings};
pub use rate_limit::{InvalidRate, REFERENCE_LIMIT, RateLimit};
pub use retry::RetryPolicy;

use crate::domain::now_ms;
use crate::store::{Store, StoreError};
use attempt::AttemptContext;
use pacer::Slot;

/// How long the loop rests after the store failed, before trying again.
const STORE_ERROR_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct DispatchSettings {
    pub provider: ProviderSettings,
    pub rate: RateSettings,
    pub retry: RetryPolicy,
    pub breaker: BreakerSettings,
    /// Provider calls in flight at once.
    pub max_in_flight: usize,
    /// How long attempts may run on after shutdown begins.
    pub shutdown_grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("invalid rate limit: {0}")]
    Rate(#[from] InvalidRate),
    #[error("could not build the provider client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("max in flight must be at least 1")]
    NoSlots,
}

/// What the rest of the app holds to talk to the dispatcher.
#[derive(Clone)]
pub struct DispatcherHandle {
    wake: Arc<Notify>,
    running: Arc<AtomicBool>,
}

impl DispatcherHandle {
    /// New work is in the outbox.
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }
}

pub struct Dispatcher {
    context: Arc<AttemptContext>,
    slots: Arc<Semaphore>,
    running: Arc<AtomicBool>,
    shutdown_grace: Duration,
}

impl Dispatcher {
    pub fn new(
        store: Arc<Store>,
        settings: &DispatchSettings,
    ) -> Result<(Self, DispatcherHandle), DispatchError> {
        if settings.max_in_flight == 0 {
            return Err(DispatchError::NoSlots);
        }
        let wake = Arc::new(Notify::new());
        let running = Arc::new(AtomicBool::new(false));
        let context = AttemptContext {
            store,
            provider: ProviderClient::new(&settings.provider)?,
            pacer: Pacer::new(&settings.rate)?,
            breaker: CircuitBreaker::new(settings.breaker.clone()),
            retry: settings.retry.clone(),
            wake: wake.clone(),
        };
        let dispatcher = Self {
            context: Arc::new(context),
            slots: Arc::new(Semaphore::new(settings.max_in_flight)),
            running: running.clone(),
            shutdown_grace: settings.shutdown_grace,
        };
        Ok((dispatcher, DispatcherHandle { wake, running }))
    }

    /// Runs until `shutdown` is cancelled, then drains.
    pub async fn run(self, shutdown: CancellationToken) {
        let _running = Running::set(&self.running);
        // Work recovered or scheduled before this start is picked up by the first scan.
        let mut attempts = JoinSet::new();
        loop {
            reap_finished(&mut attempts);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                step = self.dispatch_next(&mut attempts) => {
                    if let Err(error) = step {
                        tracing::error!(%error, "dispatcher could not read the outbox");
                        tokio::time::sleep(STORE_ERROR_BACKOFF).await;
                    }
                }
            }
        }
        self.drain(attempts).await;
    }

    /// Waits for a slot, due work, the breaker and the pacer, then leases the
    /// most urgent due entry and starts its attempt.
    async fn dispatch_next(&self, attempts: &mut JoinSet<()>) -> Result<(), StoreError> {
        let Ok(slot) = self.slots.clone().acquire_owned().await else {
            return Ok(()); // the semaphore is never closed
        };
        self.wait_for_due_work().await?;
        self.context.breaker.admitted().await;
        let waiting = std::time::Instant::now();
        let rate_slot = self.context.pacer.until_ready().await;
        crate::instruments::rate_limiter_wait(waiting.elapsed());
        let leased = self.context.store.lease_next_due(now_ms());
        let Ok(Some(lease)) = leased else {
            self.context.pacer.not_sent(rate_slot);
            self.context.breaker.probe_not_sent();
            return leased.map(drop);
        };
        let span = tracing::info_span!("request", id = %lease.id);
        let context = self.context.clone();
        attempts.spawn(run_attempt(context, lease, rate_slot, slot).instrument(span));
        Ok(())
    }

    async fn wait_for_due_work(&self) -> Result<(), StoreError> {
        loop {
            // Register before looking, so a wake between the look and the wait is kept.
            let woken = self.context.wake.notified();
            let now = now_ms(); // read once: a second read could pass `due`
            let wait = match self.context.store.next_due_ms()? {
                Some(due) if due <= now => return Ok(()),
                Some(due) => Some(Duration::from_millis(due - now)),
                None => None,
            };
            match wait {
                Some(wait) => tokio::select! {
                    _ = woken => {}
                    _ = tokio::time::sleep(wait) => {}
                },
                None => woken.await,
            }
        }
    }

    async fn drain(&self, mut attempts: JoinSet<()>) {
        reap_finished(&mut attempts);
        let in_flight = attempts.len();
        if in_flight > 0 {
            tracing::info!(in_flight, grace = ?self.shutdown_grace, "waiting for provider calls to finish");
        }
        let finished = tokio::time::timeout(self.shutdown_grace, async {
            while attempts.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            tracing::warn!(
                abandoned = attempts.len(),
                "grace period over; abandoning attempts"
            );
            attempts.shutdown().await;
            match self.context.store.recover_leases() {
                Ok(returned) => {
                    tracing::info!(returned, "abandoned attempts returned to the outbox")
                }
                Err(error) => tracing::error!(%error, "abandoned leases stay until the next start"),
            }
        }
    }
}

/// Collects finished attempts. One that panicked left its lease: the request
/// stays `processing` until the next start returns it to the outbox.
fn reap_finished(attempts: &mut JoinSet<()>) {
    while let Some(finished) = attempts.try_join_next() {
        if let Err(error) = finished {
            tracing::error!(%error, "an attempt failed; its request returns to the outbox at the next start");
        }
    }
}

/// Marks the dispatcher running for `/ready` until dropped, even by a panic.
struct Running<'a>(&'a AtomicBool);

impl<'a> Running<'a> {
    fn set(flag: &'a AtomicBool) -> Self {
        flag.store(true, Ordering::Relaxed);
        Self(flag)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

async fn run_attempt(
    context: Arc<AttemptContext>,
    lease: crate::store::Lease,
    rate_slot: Slot,
    _slot: OwnedSemaphorePermit,
) {
    context.run(lease, rate_slot).await;
}
