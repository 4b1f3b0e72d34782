//! The pacer against model providers, in paused time: a dispatcher-shaped
//! driver (a backlog that never runs dry, a bounded number of calls in
//! flight) sends through a [`Pacer`] to a provider that counts calls when they
//! arrive, a random delay after Herald stamped them, exactly as the reference
//! provider's sliding window does. The figures are counts in virtual time, so
//! a loaded machine cannot change them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{Pacer, RateSettings};
use crate::store::rate::{REFERENCE_LIMIT, RateLimit};

#[derive(Clone, Copy)]
struct Provider {
    /// At most this many calls admitted in any sliding window.
    capacity: Option<RateLimit>,
    /// Share of calls refused (429) whatever the pace.
    refusal: f64,
    retry_after: Option<Duration>,
    /// How long after Herald's stamp a call is counted: uniform in 0..=this.
    arrival_jitter: Duration,
    latency_ms: (u64, u64),
}

/// The reference provider, arriving up to 5 ms after the stamp.
const REFERENCE: Provider = Provider {
    capacity: Some(REFERENCE_LIMIT),
    refusal: 0.0,
    retry_after: None,
    arrival_jitter: Duration::from_millis(5),
    latency_ms: (100, 500),
};

#[derive(Default)]
struct Tally {
    /// Arrival of every call the provider admitted, in order.
    admitted: Vec<Instant>,
    refused: usize,
}

impl Tally {
    fn calls(&self) -> usize {
        self.admitted.len() + self.refused
    }

    fn refused_share(&self) -> f64 {
        self.refused as f64 / self.calls() as f64
    }

    /// Admitted calls per second between `from` and `to` after `start`.
    fn admitted_per_sec(&self, start: Instant, from: u64, to: u64) -> f64 {
        let (from, to) = (
            start + Duration::from_secs(from),
            start + Duration::from_secs(to),
        );
        let admitted = self
            .admitted
            .iter()
            .filter(|at| **at >= from && **at < to)
            .count();
        admitted as f64 / (to - from).as_secs_f64()
    }

    /// The most admissions any window of `span` holds.
    fn busiest_window(&self, span: Duration) -> usize {
        let mut window = VecDeque::new();
        let mut busiest = 0;
        for &at in &self.admitted {
            while window.front().is_some_and(|&first| at - first >= span) {
                window.pop_front();
            }
            window.push_back(at);
            busiest = busiest.max(window.len());
        }
        busiest
    }
}

struct World {
    provider: Provider,
    window: VecDeque<Instant>,
    rng: StdRng,
    tally: Tally,
}

impl World {
    /// The provider's verdict on a call arriving now: admitted, or a 429.
    fn arrive(&mut self, now: Instant) -> bool {
        if self.rng.random_bool(self.provider.refusal) {
            self.tally.refused += 1;
            return false;
        }
        if let Some(capacity) = self.provider.capacity {
            while self
                .window
                .front()
                .is_some_and(|&first| now - first >= capacity.window)
            {
                self.window.pop_front();
            }
            if self.window.len() >= capacity.calls as usize {
                self.tally.refused += 1;
                return false;
            }
            self.window.push_back(now);
        }
        self.tally.admitted.push(now);
        true
    }
}

/// Drives `limit` against `provider` for `duration` with `in_flight` calls at
/// most, as the dispatcher does; returns the start and what the provider saw.
async fn drive(limit: RateLimit, provider: Provider, duration: Duration) -> (Instant, Tally) {
    let pacer = Arc::new(
        Pacer::new(&RateSettings {
            limit: Some(limit),
            per_sec: None,
            burst: 1,
            email_per_sec: None,
            sms_per_sec: None,
            push_per_sec: None,
        })
        .unwrap(),
    );
    let world = Arc::new(Mutex::new(World {
        provider,
        window: VecDeque::new(),
        rng: StdRng::seed_from_u64(2026),
        tally: Tally::default(),
    }));
    let slots = Arc::new(Semaphore::new(32));
    let start = Instant::now();
    while start.elapsed() < duration {
        let permit = slots.clone().acquire_owned().await.unwrap();
        let slot = pacer.until_ready().await;
        let (pacer, world) = (pacer.clone(), world.clone());
        tokio::spawn(async move {
            let _permit = permit;
            pacer.sending(&slot);
            let (delay, latency) = {
                let mut world = world.lock().unwrap();
                let jitter = world.provider.arrival_jitter.as_micros() as u64;
                let (min, max) = world.provider.latency_ms;
                let delay = Duration::from_micros(world.rng.random_range(0..=jitter));
                (
                    delay,
                    Duration::from_millis(world.rng.random_range(min..=max)),
                )
            };
            tokio::time::sleep(delay).await;
            let admitted = world.lock().unwrap().arrive(Instant::now());
            if admitted {
                tokio::time::sleep(latency).await;
                pacer.relieved(&slot);
            } else {
                let retry_after = world.lock().unwrap().provider.retry_after;
                pacer.throttled(&slot, retry_after);
            }
        });
    }
    // Let the calls in flight land.
    let _all = slots.acquire_many(32).await.unwrap();
    let tally = std::mem::take(&mut world.lock().unwrap().tally);
    (start, tally)
}

#[tokio::test(start_paused = true)]
async fn no_window_the_provider_counts_holds_more_than_n_calls() {
    // Arrivals jitter by up to 15 ms, within the 20 ms margin; the provider
    // here refuses nothing, so every call Herald sends is counted.
    let counting = Provider {
        capacity: None,
        arrival_jitter: Duration::from_millis(15),
        ..REFERENCE
    };
    let (start, tally) = drive(REFERENCE_LIMIT, counting, Duration::from_secs(120)).await;
    assert_eq!(tally.busiest_window(REFERENCE_LIMIT.window), 50);
    let rate = tally.admitted_per_sec(start, 0, 120);
    assert!(rate >= 0.99 * 5.0, "{rate} calls/s");
}

#[tokio::test(start_paused = true)]
async fn the_reference_provider_is_used_whole_without_429s() {
    let (start, tally) = drive(REFERENCE_LIMIT, REFERENCE, Duration::from_secs(300)).await;
    let rate = tally.admitted_per_sec(start, 0, 300);
    assert!(rate >= 0.99 * 5.0, "{rate} admitted calls/s");
    assert_eq!(tally.refused, 0);
}

#[tokio::test(start_paused = true)]
async fn jitter_beyond_the_margin_widens_it_at_a_few_429s() {
    let jittery = Provider {
        arrival_jitter: Duration::from_millis(60),
        ..REFERENCE
    };
    let (start, tally) = drive(REFERENCE_LIMIT, jittery, Duration::from_secs(300)).await;
    let rate = tally.admitted_per_sec(start, 0, 300);
    assert!(rate >= 0.98 * 5.0, "{rate} admitted calls/s");
    assert!(tally.refused_share() <= 0.01, "{} refused", tally.refused);
    assert!(tally.refused > 0, "the margin had to widen");
}

#[tokio::test(start_paused = true)]
async fn a_limit_above_the_providers_converges_to_its_capacity_within_a_minute() {
    let smaller = Provider {
        capacity: Some("100/10s".parse().unwrap()),
        ..REFERENCE
    };
    let told = RateLimit::per_second(20.0, 1).unwrap();
    let (start, tally) = drive(told, smaller, Duration::from_secs(180)).await;
    let second_minute = tally.admitted_per_sec(start, 60, 180);
    assert!(
        second_minute >= 0.95 * 10.0,
        "{second_minute} admitted calls/s"
    );
    assert!(
        tally.refused_share() <= 0.02,
        "{} of {} calls refused",
        tally.refused,
        tally.calls()
    );
}

#[tokio::test(start_paused = true)]
async fn refusals_at_any_pace_do_not_collapse_it() {
    let (refusal, rate, retry_after) = (0.1, 20.0, 1.0);
    let per_recipient = Provider {
        capacity: None,
        refusal,
        retry_after: Some(Duration::from_secs_f64(retry_after)),
        arrival_jitter: Duration::from_millis(1),
        latency_ms: (20, 80),
    };
    let told = RateLimit::per_second(rate, 1).unwrap();
    let (start, tally) = drive(told, per_recipient, Duration::from_secs(120)).await;
    // Honouring every Retry-After as a pause of all calls (BENCHMARKS.md).
    let bound = (1.0 - refusal) * rate / (1.0 + refusal * rate * retry_after);
    let delivered = tally.admitted_per_sec(start, 0, 120);
    assert!(delivered >= 0.8 * bound, "{delivered}/s against {bound}/s");
}
