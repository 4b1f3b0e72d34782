//! The 5xx statuses a failing call may answer, as a set of the ones a
//! provider plausibly sends (500, 502, 503, 504). One byte, so the config
//! that carries it stays small enough to embed in `herald dev`'s command.

use std::fmt;
use std::str::FromStr;

use super::dice::Dice;

/// The statuses a set can hold, one bit each.
const KNOWN: [u16; 4] = [500, 502, 503, 504];

#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ErrorStatuses(u8);

impl ErrorStatuses {
    /// Just 500, the reference provider's only error.
    pub const REFERENCE: Self = Self(1);
    /// 500, 502 and 503: what provider.md says misbehaving providers send.
    pub const SERVER_ERRORS: Self = Self(0b111);

    /// A set of `statuses`; `None` if one is not a status a set can hold.
    pub fn of(statuses: &[u16]) -> Option<Self> {
        statuses.iter().try_fold(Self(0), |set, status| {
            let bit = KNOWN.iter().position(|known| known == status)?;
            Some(Self(set.0 | 1 << bit))
        })
    }

    /// The statuses in the set, in ascending order.
    pub fn statuses(self) -> Vec<u16> {
        KNOWN
            .iter()
            .enumerate()
            .filter(|(bit, _)| self.0 & 1 << bit != 0)
            .map(|(_, status)| *status)
            .collect()
    }

    /// One status of the set, uniformly; `None` for an empty set.
    pub(super) fn pick(self, dice: &Dice) -> Option<u16> {
        dice.pick(&self.statuses())
    }
}

impl fmt::Debug for ErrorStatuses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.statuses()).finish()
    }
}

/// A comma-separated list, as `--error-statuses` takes it: `500,502,503`.
impl FromStr for ErrorStatuses {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let statuses: Option<Vec<u16>> = text
            .split(',')
            .map(|status| status.trim().parse().ok())
            .collect();
        statuses
            .and_then(|statuses| Self::of(&statuses))
            .ok_or_else(|| format!("`{text}` is not a list drawn from {KNOWN:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_holds_exactly_its_statuses() {
        let set = ErrorStatuses::of(&[503, 500, 503]).unwrap();
        assert_eq!(set.statuses(), [500, 503]);
        assert_eq!(ErrorStatuses::SERVER_ERRORS.statuses(), [500, 502, 503]);
        assert_eq!(format!("{:?}", ErrorStatuses::REFERENCE), "{500}");
        assert!(ErrorStatuses::of(&[501]).is_none());
    }

    #[test]
    fn picks_come_from_the_set() {
        let dice = Dice::new(Some(1));
        let set = ErrorStatuses::of(&[502, 504]).unwrap();
        assert!((0..50).all(|_| [502, 504].contains(&set.pick(&dice).unwrap())));
        assert_eq!(ErrorStatuses::of(&[]).unwrap().pick(&dice), None);
    }

    #[test]
    fn parsing_takes_a_list_of_known_statuses() {
        let parsed: ErrorStatuses = "502, 503".parse().unwrap();
        assert_eq!(parsed.statuses(), [502, 503]);
        assert!("500,418".parse::<ErrorStatuses>().is_err());
        assert!("five".parse::<ErrorStatuses>().is_err());
    }
}
