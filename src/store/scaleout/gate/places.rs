//! Per-channel limits (`--sms-rate-per-sec` and the like) shared by the
//! cluster. The embedded engine spaces a channel's calls a gap (1/rate)
//! apart, one at a time, no credit piling up (`embedded/pacing/channel.rs`);
//! here the same spacing holds across every node.
//!
//! The truth is one key per channel in Redis, the start of the channel's next
//! free place (GCRA with a burst of one, `lua/gate_channel.lua`, on Redis'
//! clock): a claim takes the place `[max(next, now), +gap)` and moves `next`
//! to its end. Places are disjoint and each belongs to one node.
//!
//! `channel_wait` and `take_channel` are synchronous, on the lease path, so
//! they read and change only this node's cache: the place it holds (if any).
//! A node claims a place *before* it leases: [`ChannelPlaces::ask`] says "not
//! yet" until the node's place has begun, and starts a claim when it holds
//! none; the gate's report task runs the claim and stores its answer here.
//! [`ChannelPlaces::take`] spends the place and claims the next one at once
//! (a node that leased one call of a channel likely has more waiting), so a
//! busy node's next place is known before it begins.
//!
//! The place is kept in local time conservatively: the script ran at some
//! moment between sending and receiving, so the place begins no later than
//! `received + wait` and ends no earlier than `sent + wait + gap`; the node
//! admits the channel only between the two (both clocks measuring time
//! alike: Redis' is not stepped meanwhile, which every script assumes). So
//! every lease of the channel,
//! on any node, falls inside a place of its own: however many nodes, leases
//! are never more than one per place, so the cluster never exceeds the rate
//! over time, and two leases are a gap apart less only the lateness of the
//! earlier one within its place (how long after its place began it was
//! leased; the work source wakes when the place begins, so it is about the
//! time of one lease). The embedded engine's limit has the same slack where
//! the provider counts, between a lease and its call. In a window of any
//! length that allows `k` calls, the cluster leases at most `k + 1`, and
//! only when an earlier lease was late within its place.
//!
//! The price is capacity, not excess: a place claimed and then not used (its
//! node's demand for the channel ended, or its dispatcher was busy until the
//! place ended) is lost, at most one place per node each time; and a
//! round trip longer than half the gap (a channel limit of some hundreds per
//! second) would leave too little of a place to use, so the place is then
//! kept for half a gap, and two leases may be closer by what the round trip
//! exceeds that.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::domain::Channel;
use crate::store::rate::{InvalidRate, RateLimit, RateSettings};

/// How long `channel_wait` asks the work source to wait while a claim is on
/// its way to Redis: about a round trip. The gate cannot wake the work source
/// when the answer arrives, so the work source looks again after this.
const CLAIM_PENDING: Duration = Duration::from_millis(5);

/// What this node holds of one channel's places.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Place {
    /// Nothing: the next ask claims one.
    None,
    /// A claim is on its way to Redis.
    Claiming,
    /// This node's place: a call may be leased from `from` until `until`.
    Held { from: Instant, until: Instant },
    /// Redis did not answer the claim: claim again from then.
    Resting(Instant),
}

#[derive(Debug)]
struct Limited {
    gap: Duration,
    place: Mutex<Place>,
}

/// What [`ChannelPlaces::ask`] found.
#[derive(Debug, PartialEq)]
pub(super) struct Asked {
    /// How long the channel's next call waits (`None`: it may be leased now).
    pub wait: Option<Duration>,
    /// A claim must go to Redis.
    pub claim: bool,
}

/// This node's view of the channels' shared places.
#[derive(Debug)]
pub(super) struct ChannelPlaces {
    limited: HashMap<Channel, Limited>,
}

impl ChannelPlaces {
    /// The channels with a limit of their own, each a gap (1/rate) per call.
    pub fn new(settings: &RateSettings) -> Result<Self, InvalidRate> {
        let mut limited = HashMap::new();
        for (channel, per_sec) in settings.per_channel() {
            let gap = RateLimit::per_second(per_sec, 1)?.window;
            let place = Mutex::new(Place::None);
            limited.insert(channel, Limited { gap, place });
        }
        Ok(Self { limited })
    }

    /// The channel's gap between calls, if it has a limit.
    pub fn gap(&self, channel: Channel) -> Option<Duration> {
        self.limited.get(&channel).map(|limited| limited.gap)
    }

    /// May a call of `channel` be leased at `now`? A channel without a
    /// limit always may; one whose place has not begun waits for it; one
    /// without a place (or whose place ended unused) waits for a claim.
    pub fn ask(&self, channel: Channel, now: Instant) -> Asked {
        let Some(limited) = self.limited.get(&channel) else {
            return Asked {
                wait: None,
                claim: false,
            };
        };
        let mut place = lock(&limited.place);
        match *place {
            Place::Held { from, .. } if now < from => Asked {
                wait: Some(from - now),
                claim: false,
            },
            Place::Held { until, .. } if now < until => Asked {
                wait: None,
                claim: false,
            },
            Place::Resting(at) if now < at => Asked {
                wait: Some(at - now),
                claim: false,
            },
            Place::Claiming => Asked {
                wait: Some(CLAIM_PENDING),
                claim: false,
            },
            Place::None | Place::Held { .. } | Place::Resting(_) => {
                *place = Place::Claiming;
                Asked {
                    wait: Some(CLAIM_PENDING),
                    claim: true,
                }
            }
        }
    }

    /// A call of `channel` was leased in this node's place: the place is
    /// spent. Whether the next one must be claimed now: for a channel with
    /// a limit, unless a claim is on its way already.
    pub fn take(&self, channel: Channel) -> bool {
        let Some(limited) = self.limited.get(&channel) else {
            return false;
        };
        let mut place = lock(&limited.place);
        if *place == Place::Claiming {
            return false;
        }
        *place = Place::Claiming;
        true
    }

    /// The claim sent at `sent` was answered at `received`: this node's
    /// place begins `wait` after the script ran.
    pub fn claimed(&self, channel: Channel, sent: Instant, received: Instant, wait: Duration) {
        let Some(limited) = self.limited.get(&channel) else {
            return;
        };
        let from = received + wait;
        let round_trip = received - sent;
        let until = from + limited.gap.saturating_sub(round_trip).max(limited.gap / 2);
        *lock(&limited.place) = Place::Held { from, until };
    }

    /// The claim got no answer: claim again at `at`.
    pub fn unanswered(&self, channel: Channel, at: Instant) {
        if let Some(limited) = self.limited.get(&channel) {
            *lock(&limited.place) = Place::Resting(at);
        }
    }
}

fn lock(place: &Mutex<Place>) -> std::sync::MutexGuard<'_, Place> {
    // A plain value: a panic elsewhere cannot leave it half-written.
    place
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places(sms_per_sec: f64) -> ChannelPlaces {
        ChannelPlaces::new(&RateSettings {
            limit: None,
            per_sec: None,
            burst: 1,
            email_per_sec: None,
            sms_per_sec: Some(sms_per_sec),
            push_per_sec: None,
        })
        .unwrap()
    }

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn a_channel_waits_for_a_claimed_place_and_admits_only_inside_it() {
        let places = places(4.0); // a gap of 250 ms
        let start = Instant::now();
        let free = places.ask(Channel::Email, start);
        assert_eq!(free.wait, None, "no limit, no wait");
        let first = places.ask(Channel::Sms, start);
        assert_eq!((first.wait, first.claim), (Some(CLAIM_PENDING), true));
        let again = places.ask(Channel::Sms, start);
        assert!(!again.claim, "one claim at a time");
        // Sent at 0, answered at 10 ms: the place begins 100 ms after the
        // script ran, so by 110 ms, and lasts until 350 ms at least.
        places.claimed(Channel::Sms, start, start + 10 * MS, 100 * MS);
        assert_eq!(
            places.ask(Channel::Sms, start + 20 * MS).wait,
            Some(90 * MS)
        );
        assert_eq!(places.ask(Channel::Sms, start + 110 * MS).wait, None);
        assert_eq!(places.ask(Channel::Sms, start + 349 * MS).wait, None);
        let lapsed = places.ask(Channel::Sms, start + 350 * MS);
        assert!(lapsed.claim, "a place that ended unused is claimed again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_spends_the_place_and_claims_the_next() {
        let places = places(2.0);
        let start = Instant::now();
        assert!(places.ask(Channel::Sms, start).claim);
        places.claimed(Channel::Sms, start, start, Duration::ZERO);
        assert_eq!(places.ask(Channel::Sms, start).wait, None);
        assert!(places.take(Channel::Sms));
        let spent = places.ask(Channel::Sms, start);
        assert_eq!((spent.wait, spent.claim), (Some(CLAIM_PENDING), false));
        assert!(!places.take(Channel::Email), "no limit, nothing to claim");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_claim_rests_then_claims_again_and_a_slow_answer_keeps_half_a_gap() {
        let places = places(10.0); // 100 ms
        let start = Instant::now();
        assert!(places.ask(Channel::Sms, start).claim);
        places.unanswered(Channel::Sms, start + 500 * MS);
        assert_eq!(places.ask(Channel::Sms, start).wait, Some(500 * MS));
        assert!(places.ask(Channel::Sms, start + 500 * MS).claim);
        // A round trip of 80 ms leaves 20 ms of the place; half a gap is kept.
        places.claimed(Channel::Sms, start, start + 80 * MS, Duration::ZERO);
        assert_eq!(places.ask(Channel::Sms, start + 129 * MS).wait, None);
        assert!(places.ask(Channel::Sms, start + 130 * MS).claim);
    }

    #[test]
    fn refuses_channel_rates_that_are_not_positive() {
        let settings = |rate| RateSettings {
            limit: None,
            per_sec: None,
            burst: 1,
            email_per_sec: Some(rate),
            sms_per_sec: None,
            push_per_sec: None,
        };
        assert!(ChannelPlaces::new(&settings(0.0)).is_err());
        assert!(ChannelPlaces::new(&settings(f64::NAN)).is_err());
        let places = ChannelPlaces::new(&settings(3.0)).unwrap();
        assert_eq!(
            places.gap(Channel::Email),
            Some(Duration::from_nanos(333_333_333))
        );
        assert_eq!(places.gap(Channel::Push), None);
    }
}
