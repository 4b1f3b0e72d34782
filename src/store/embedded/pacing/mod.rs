//! The embedded engine's rate gate: pacing provider calls in one process.
//! The provider's published limit is kept on Herald's side as a sliding
//! window (`window`), a lower limit learned when the provider's refusals
//! show it holds less (`learned`; `throttle` judges which refusals do), and
//! optional per-channel limiters on top.
//!
//! Its surface is a gate: [`Pacer::until_ready`] waits for a slot; the call
//! made in it is reported back with [`Pacer::throttled`] (a `429` and its
//! `Retry-After`) or [`Pacer::relieved`] (any other answer).
//!
//! A `429` the judge finds to be throttling teaches the learned limit and,
//! when it carries a `Retry-After`, holds every call that long. Any other
//! `429` only delays its own request, by its `Retry-After` (the retry policy
//! does that), and gives its slot back: the provider did not count it.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

mod channel;
mod learned;
#[cfg(test)]
mod model;
mod throttle;
mod window;

use async_trait::async_trait;

use crate::domain::Channel;
use crate::store::rate::{InvalidRate, RateSettings};
use crate::store::{RateGate, RateSlot as Slot};
use channel::ChannelPace;
use learned::LearnedLimit;
use throttle::{ThrottleJudge, Verdict};
use window::{CallId, SlidingLog};

#[derive(Debug)]
struct State {
    configured: SlidingLog,
    learned: LearnedLimit,
    judge: ThrottleJudge,
    paused_until: Option<Instant>,
    next_id: CallId,
}

impl State {
    /// Takes a slot if a call may go at `now`; otherwise the moment to look again.
    fn take_or_wait(&mut self, now: Instant, calls: u32) -> Result<Slot, Instant> {
        if let Some(until) = self.paused_until {
            if until > now {
                return Err(until);
            }
            self.paused_until = None;
        }
        self.learned.grow_if_due(now);
        self.configured.relax(now);
        let at = (self.configured.next_free(now)).max(self.learned.log().next_free(now));
        if at > now {
            return Err(at);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.record(id, now);
        Ok(Slot {
            id,
            filled_window: calls >= 2 && self.configured.is_full_at(now),
        })
    }

    fn record(&mut self, id: CallId, now: Instant) {
        self.configured.record(id, now);
        self.learned.log().record(id, now);
    }

    fn release(&mut self, id: CallId) {
        self.configured.release(id);
        self.learned.log().release(id);
    }
}

pub struct Pacer {
    per_channel: HashMap<Channel, ChannelPace>,
    /// The configured limit's calls per window.
    calls: u32,
    state: Mutex<State>,
}

impl Pacer {
    pub fn new(settings: &RateSettings) -> Result<Self, InvalidRate> {
        let limit = settings.limit()?;
        let mut per_channel = HashMap::new();
        for (channel, rate) in settings.per_channel() {
            per_channel.insert(channel, ChannelPace::new(rate)?);
        }
        Ok(Self {
            per_channel,
            calls: limit.calls,
            state: Mutex::new(State {
                configured: SlidingLog::new(limit),
                learned: LearnedLimit::new(limit),
                judge: ThrottleJudge::default(),
                paused_until: None,
                next_id: 0,
            }),
        })
    }

    /// Waits for a slot: after any pause, within the provider's window and
    /// within what its refusals taught.
    pub async fn until_ready(&self) -> Slot {
        loop {
            let taken = self.lock().take_or_wait(Instant::now(), self.calls);
            match taken {
                Ok(slot) => return slot,
                Err(at) => tokio::time::sleep_until(at).await,
            }
        }
    }

    /// How long the channel's own limit keeps its next call waiting.
    pub fn channel_wait(&self, channel: Channel) -> Option<Duration> {
        self.per_channel.get(&channel).and_then(ChannelPace::wait)
    }

    /// A call of `channel` was leased.
    pub fn take_channel(&self, channel: Channel) {
        if let Some(pace) = self.per_channel.get(&channel) {
            pace.take();
        }
    }

    /// The slot's call goes out now: the provider will count it from about now.
    pub fn sending(&self, slot: &Slot) {
        let mut state = self.lock();
        state.record(slot.id, Instant::now());
        state.judge.sent(slot.id);
    }

    /// The slot was not used (nothing was due after all).
    pub fn not_sent(&self, slot: Slot) {
        let mut state = self.lock();
        state.release(slot.id);
        state.judge.not_sent(slot.id);
    }

    /// The provider said "too many" to the slot's call.
    pub fn throttled(&self, slot: &Slot, retry_after: Option<Duration>) {
        let now = Instant::now();
        let mut state = self.lock();
        if slot.filled_window && state.learned.limit().is_none() && state.configured.widen(now) {
            // The window was right but too tight for the delay between our
            // stamp and the provider's count. The refused call stays counted,
            // so the next one waits for the provider's window to move on.
            tracing::info!(margin = ?state.configured.margin(), "provider counted calls closer together than they were sent: margin widened");
            return;
        }
        state.release(slot.id);
        if state.judge.refused(slot.id) != Verdict::Throttling {
            return;
        }
        let limit = state.learned.refused(now);
        if let Some(pause) = retry_after {
            let until = now + pause;
            if state.paused_until.is_none_or(|current| current < until) {
                state.paused_until = Some(until);
            }
        }
        tracing::info!(limit, window = ?state.learned.log().window(), ?retry_after, "provider throttling: limit learned from what it admitted");
    }

    /// The provider answered the slot's call without throttling.
    pub fn relieved(&self, slot: &Slot) {
        self.lock().judge.admitted(slot.id);
    }

    /// The limit the provider's refusals taught, if any.
    #[cfg(test)]
    pub fn learned_limit(&self) -> Option<usize> {
        self.lock().learned.limit()
    }

    /// The margin the window keeps for the delay between stamp and count.
    #[cfg(test)]
    pub fn margin(&self) -> Duration {
        self.lock().configured.margin()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is plain values: a panic elsewhere cannot leave it half-written.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl RateGate for Pacer {
    async fn until_ready(&self) -> Slot {
        Pacer::until_ready(self).await
    }

    fn channel_wait(&self, channel: Channel) -> Option<Duration> {
        Pacer::channel_wait(self, channel)
    }

    fn take_channel(&self, channel: Channel) {
        Pacer::take_channel(self, channel)
    }

    fn sending(&self, slot: &Slot) {
        Pacer::sending(self, slot)
    }

    fn not_sent(&self, slot: Slot) {
        Pacer::not_sent(self, slot)
    }

    fn throttled(&self, slot: &Slot, retry_after: Option<Duration>) {
        Pacer::throttled(self, slot, retry_after)
    }

    fn relieved(&self, slot: &Slot) {
        Pacer::relieved(self, slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(limit: &str) -> RateSettings {
        RateSettings {
            limit: Some(limit.parse().unwrap()),
            per_sec: None,
            burst: 1,
            email_per_sec: None,
            sms_per_sec: Some(2.0),
            push_per_sec: None,
        }
    }

    /// A slot taken and sent.
    async fn sent(pacer: &Pacer) -> Slot {
        let slot = pacer.until_ready().await;
        pacer.sending(&slot);
        slot
    }

    /// Three calls refused in a row: a 429 and both its probes.
    async fn throttled_thrice(pacer: &Pacer, retry_after: Option<Duration>) {
        for _ in 0..3 {
            let slot = sent(pacer).await;
            pacer.throttled(&slot, retry_after);
        }
    }

    #[test]
    fn refuses_channel_rates_that_are_not_positive() {
        let mut bad = settings("5/1s");
        bad.sms_per_sec = Some(0.0);
        assert!(Pacer::new(&bad).is_err());
        assert!(Pacer::new(&settings("5/1s")).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_teaches_the_limit_the_provider_holds() {
        let pacer = Pacer::new(&settings("100/1s")).unwrap();
        for _ in 0..30 {
            let slot = sent(&pacer).await;
            pacer.relieved(&slot);
        }
        throttled_thrice(&pacer, None).await;
        assert_eq!(pacer.learned_limit(), Some(30));
        // No Retry-After: no pause, but the next call waits for the window
        // of 10 s (the learning window) to move past the first 30.
        let started = Instant::now();
        sent(&pacer).await;
        assert_eq!(started.elapsed(), Duration::from_millis(10_020));
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_whose_next_call_goes_through_slows_nothing() {
        let pacer = Pacer::new(&settings("100/1s")).unwrap();
        let refused = sent(&pacer).await;
        pacer.throttled(&refused, Some(Duration::from_secs(5)));
        let probe = sent(&pacer).await;
        pacer.relieved(&probe);
        throttled_thrice(&pacer, None).await; // a new suspicion, settled by the next two
        assert_eq!(
            pacer.learned_limit(),
            Some(1),
            "only the relieved probe counted"
        );

        let pacer = Pacer::new(&settings("100/1s")).unwrap();
        for _ in 0..10 {
            let refused = sent(&pacer).await;
            pacer.throttled(&refused, Some(Duration::from_secs(1)));
            let probe = sent(&pacer).await;
            pacer.relieved(&probe);
        }
        assert_eq!(pacer.learned_limit(), None);
        let started = Instant::now();
        sent(&pacer).await;
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "no pause: each Retry-After was its request's"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_with_retry_after_pauses_every_caller() {
        let pacer = Pacer::new(&settings("1000/1s")).unwrap();
        throttled_thrice(&pacer, Some(Duration::from_secs(2))).await;
        let started = Instant::now();
        pacer.until_ready().await;
        assert!(started.elapsed() >= Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_not_used_is_given_back() {
        let pacer = Pacer::new(&settings("1/10s")).unwrap();
        let slot = pacer.until_ready().await;
        pacer.not_sent(slot);
        let started = Instant::now();
        pacer.until_ready().await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_on_the_call_that_filled_the_window_widens_the_margin_first() {
        let pacer = Pacer::new(&settings("2/10s")).unwrap();
        let first = sent(&pacer).await;
        pacer.relieved(&first);
        let second = sent(&pacer).await;
        pacer.throttled(&second, None);
        assert_eq!(pacer.margin(), Duration::from_millis(40));
        assert_eq!(pacer.learned_limit(), None, "no slowdown");
        // The refused call still holds its place until the window moves on.
        let started = Instant::now();
        pacer.until_ready().await;
        assert_eq!(started.elapsed(), Duration::from_millis(10_040));
    }
}
