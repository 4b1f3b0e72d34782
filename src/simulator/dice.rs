//! Every random draw the simulator makes, from one RNG that a seed can pin so
//! a misbehaving run can be replayed.

use std::sync::Mutex;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::lock;

/// The simulator's single source of randomness.
pub(super) struct Dice {
    rng: Mutex<StdRng>,
}

impl Dice {
    pub(super) fn new(seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            rng: Mutex::new(rng),
        }
    }

    /// True for about `share` of the draws (0.0 never, 1.0 always).
    pub(super) fn chance(&self, share: f64) -> bool {
        // `random::<f64>()` lies in [0, 1), so shares outside that range saturate
        // instead of panicking as `random_bool` would.
        lock(&self.rng).random::<f64>() < share
    }

    /// A uniform draw from `min..=max`; an inverted range yields `min`.
    pub(super) fn between(&self, min: u64, max: u64) -> u64 {
        lock(&self.rng).random_range(min..=max.max(min))
    }

    /// One of `items`, uniformly; `None` when there are none.
    pub(super) fn pick<T: Copy>(&self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            return None;
        }
        items
            .get(lock(&self.rng).random_range(0..items.len()))
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extreme_shares_are_certain() {
        let dice = Dice::new(Some(7));
        assert!((0..100).all(|_| dice.chance(1.0)));
        assert!((0..100).all(|_| !dice.chance(0.0)));
    }

    #[test]
    fn draws_stay_in_range() {
        let dice = Dice::new(None);
        assert!((0..100).all(|_| (3..=5).contains(&dice.between(3, 5))));
        assert_eq!(dice.between(9, 2), 9);
        assert!((0..100).all(|_| [500, 503].contains(&dice.pick(&[500, 503]).unwrap())));
        assert_eq!(dice.pick::<u16>(&[]), None);
    }

    #[test]
    fn a_seed_replays_the_same_draws() {
        let draws = |dice: Dice| (0..20).map(|_| dice.between(0, 1_000)).collect::<Vec<_>>();
        assert_eq!(draws(Dice::new(Some(42))), draws(Dice::new(Some(42))));
    }
}
