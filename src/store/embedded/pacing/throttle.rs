//! Whether a `429` says "too fast" or only "not this one, not now".
//!
//! A provider whose window is full refuses every call until the window moves
//! on; a per-recipient or per-destination limit refuses a share of calls at
//! any pace, and the next call goes through. So a `429` raises a suspicion,
//! and the next [`PROBES`] calls sent after it settle it: all refused, the
//! provider is throttling Herald (the pace must come down); any admitted,
//! the `429` was that request's alone (it waits for its own `Retry-After`,
//! nothing else slows down). A background share `b` of refusals passes for
//! throttling with a chance of `b²` per `429` (1% at the 10% of the
//! `per-recipient` profile); a full window costs two calls more per episode.
//! Calls already in flight when the `429` came say nothing about the
//! provider after it, so they are not probes.

use super::window::CallId;

/// Calls after a `429` that must be refused too before it counts as throttling.
pub const PROBES: usize = 2;

/// A `429` under judgement.
#[derive(Debug)]
struct Suspicion {
    /// Calls sent since it was raised, up to `PROBES`.
    probes: Vec<CallId>,
    refused: usize,
}

/// What an answer settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing yet (or nothing to judge).
    Open,
    /// A call after the suspected `429` went through: it was that request's.
    Background,
    /// The calls after it were refused too: the provider is throttling.
    Throttling,
}

#[derive(Debug, Default)]
pub struct ThrottleJudge {
    suspicion: Option<Suspicion>,
}

impl ThrottleJudge {
    /// Call `id` goes out: it is a probe if a suspicion needs one.
    pub fn sent(&mut self, id: CallId) {
        if let Some(suspicion) = self.suspicion.as_mut()
            && suspicion.probes.len() < PROBES
        {
            suspicion.probes.push(id);
        }
    }

    /// Call `id` did not go out after all.
    pub fn not_sent(&mut self, id: CallId) {
        if let Some(suspicion) = self.suspicion.as_mut() {
            suspicion.probes.retain(|probe| *probe != id);
        }
    }

    /// Call `id` got a `429`.
    pub fn refused(&mut self, id: CallId) -> Verdict {
        let Some(suspicion) = self.suspicion.as_mut() else {
            self.suspicion = Some(Suspicion {
                probes: Vec::with_capacity(PROBES),
                refused: 0,
            });
            return Verdict::Open;
        };
        if !suspicion.probes.contains(&id) {
            return Verdict::Open;
        }
        suspicion.refused += 1;
        if suspicion.refused < PROBES {
            return Verdict::Open;
        }
        self.suspicion = None;
        Verdict::Throttling
    }

    /// Call `id` was admitted (any answer but a `429`).
    pub fn admitted(&mut self, id: CallId) -> Verdict {
        match &self.suspicion {
            Some(suspicion) if suspicion.probes.contains(&id) => {
                self.suspicion = None;
                Verdict::Background
            }
            _ => Verdict::Open,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(judge: &mut ThrottleJudge, ids: std::ops::RangeInclusive<CallId>) {
        ids.for_each(|id| judge.sent(id));
    }

    #[test]
    fn a_429_the_next_calls_share_is_throttling() {
        let mut judge = ThrottleJudge::default();
        send(&mut judge, 0..=1);
        // 1 was in flight before the 429 came: not a probe.
        assert_eq!([judge.refused(0), judge.refused(1)], [Verdict::Open; 2]);
        send(&mut judge, 2..=4);
        // 4 is no probe either: two are enough.
        let verdicts = [judge.refused(3), judge.admitted(4), judge.refused(2)];
        assert_eq!(
            verdicts,
            [Verdict::Open, Verdict::Open, Verdict::Throttling]
        );
        // Settled: the next 429 raises a new suspicion.
        assert_eq!(judge.refused(4), Verdict::Open);
    }

    #[test]
    fn a_429_the_next_call_does_not_share_was_that_requests() {
        let mut judge = ThrottleJudge::default();
        judge.refused(0);
        send(&mut judge, 1..=2);
        let verdicts = [judge.refused(1), judge.admitted(2), judge.admitted(1)];
        assert_eq!(
            verdicts,
            [Verdict::Open, Verdict::Background, Verdict::Open]
        );
    }

    #[test]
    fn a_probe_not_sent_is_replaced() {
        let mut judge = ThrottleJudge::default();
        judge.refused(0);
        judge.sent(1);
        judge.not_sent(1);
        send(&mut judge, 2..=3);
        assert_eq!(
            (judge.refused(2), judge.refused(3)),
            (Verdict::Open, Verdict::Throttling)
        );
    }
}
