//! The dispatcher: takes due work from the work source and delivers it.
//!
//! One loop owns the leasing side: it waits for a free slot, for the circuit
//! breaker and for the rate gate, then asks the work source for the next due
//! delivery (which waits inside until one is due; nothing here polls) and
//! hands the lease to an attempt task. On shutdown it stops leasing, lets
//! attempts finish up to a grace period, and has the work source take back
//! whatever they abandoned. It knows the store only through the traits of
//! `crate::store`.

mod attempt;
mod breaker;
mod provider;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use crate::retry::RetryPolicy;
pub use attempt::decide;
pub use breaker::{BreakerSettings, BreakerState, CircuitBreaker};
pub use provider::{CallOutcome, ProviderClient, ProviderSettings};

use crate::store::{Backend, Lease, RateSlot, StoreError, WorkSource};
use attempt::AttemptContext;

/// How long the loop rests after the store failed, before trying again.
const STORE_ERROR_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct DispatchSettings {
    pub provider: ProviderSettings,
    pub retry: RetryPolicy,
    pub breaker: BreakerSettings,
    /// Provider calls in flight at once.
    pub max_in_flight: usize,
    /// How long attempts may run on after shutdown begins.
    pub shutdown_grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("could not build the provider client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("max in flight must be at least 1")]
    NoSlots,
}

/// What the rest of the app holds to ask about the dispatcher.
#[derive(Clone)]
pub struct DispatcherHandle {
    running: Arc<AtomicBool>,
}

impl DispatcherHandle {
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }
}

pub struct Dispatcher {
    context: Arc<AttemptContext>,
    work: Arc<dyn WorkSource>,
    slots: Arc<Semaphore>,
    running: Arc<AtomicBool>,
    shutdown_grace: Duration,
}

impl Dispatcher {
    pub fn new(
        backend: &Backend,
        settings: &DispatchSettings,
    ) -> Result<(Self, DispatcherHandle), DispatchError> {
        if settings.max_in_flight == 0 {
            return Err(DispatchError::NoSlots);
        }
        let running = Arc::new(AtomicBool::new(false));
        let context = AttemptContext {
            records: backend.records.clone(),
            provider: ProviderClient::new(&settings.provider)?,
            gate: backend.gate.clone(),
            breaker: CircuitBreaker::new(settings.breaker.clone()),
            retry: settings.retry.clone(),
        };
        let dispatcher = Self {
            context: Arc::new(context),
            work: backend.work.clone(),
            slots: Arc::new(Semaphore::new(settings.max_in_flight)),
            running: running.clone(),
            shutdown_grace: settings.shutdown_grace,
        };
        Ok((dispatcher, DispatcherHandle { running }))
    }

    /// Runs until `shutdown` is cancelled, then drains. Marked running from
    /// this call, not from the future's first poll: the listener is open
    /// already, and `/ready` must not answer `503` for a dispatcher merely
    /// not scheduled yet on a busy machine.
    pub fn run(self, shutdown: CancellationToken) -> impl Future<Output = ()> + Send {
        let running = Running::set(self.running.clone());
        async move {
            let _running = running;
            self.dispatch_until(shutdown).await;
        }
    }

    async fn dispatch_until(self, shutdown: CancellationToken) {
        // Work recovered or scheduled before this start is picked up by the first scan.
        let mut attempts = JoinSet::new();
        loop {
            reap_finished(&mut attempts);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                step = self.dispatch_next(&mut attempts) => match step {
                    Ok(()) => {}
                    // The store logged that once, when it stopped taking writes.
                    Err(StoreError::Unavailable(_)) => tokio::time::sleep(STORE_ERROR_BACKOFF).await,
                    Err(error) => {
                        tracing::error!(%error, "dispatcher could not read the outbox");
                        tokio::time::sleep(STORE_ERROR_BACKOFF).await;
                    }
                }
            }
        }
        self.drain(attempts).await;
    }

    /// Waits for a slot, the breaker and the rate gate, then for the next due
    /// delivery, and starts its attempt. The rate slot is taken before the
    /// lease, so no request sits leased only waiting for one.
    async fn dispatch_next(&self, attempts: &mut JoinSet<()>) -> Result<(), StoreError> {
        let Ok(slot) = self.slots.clone().acquire_owned().await else {
            return Ok(()); // the semaphore is never closed
        };
        self.context.breaker.admitted().await;
        let waiting = std::time::Instant::now();
        let rate_slot = self.context.gate.until_ready().await;
        crate::instruments::rate_limiter_wait(waiting.elapsed());
        let gate = &self.context.gate;
        let admits = |channel| gate.channel_wait(channel);
        let lease = match self.work.next(&admits).await {
            Ok(lease) => lease,
            Err(error) => {
                self.context.gate.not_sent(rate_slot);
                self.context.breaker.probe_not_sent();
                return Err(error);
            }
        };
        gate.take_channel(lease.notification.channel);
        let span = tracing::info_span!("request", id = %lease.id);
        let context = self.context.clone();
        attempts.spawn(run_attempt(context, lease, rate_slot, slot).instrument(span));
        Ok(())
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
            match self.work.recover().await {
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
struct Running(Arc<AtomicBool>);

impl Running {
    fn set(flag: Arc<AtomicBool>) -> Self {
        flag.store(true, Ordering::Relaxed);
        Self(flag)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

async fn run_attempt(
    context: Arc<AttemptContext>,
    lease: Lease,
    rate_slot: RateSlot,
    _slot: OwnedSemaphorePermit,
) {
    context.run(lease, rate_slot).await;
}
