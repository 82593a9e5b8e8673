//! The attempt number: which run of an operation this is, counted from 1
//! (0 before its first claim). It is also the fencing token of every
//! claim: only the holder of an operation's current attempt may write its
//! progress or its end, so a worker that lost its lease changes nothing.

use std::fmt;

/// An attempt number, and the fencing token of the claim that runs it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attempt(u32);

impl Attempt {
    /// Before the first claim: no attempt has run.
    pub const NONE: Self = Self(0);

    /// The attempt numbered `n` (as stored or sent on the wire).
    pub const fn new(n: u32) -> Self {
        Self(n)
    }

    /// Its number.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The attempt after this one.
    #[must_use]
    pub const fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::Attempt;

    #[test]
    fn attempts_count_up_from_none_and_never_wrap() {
        assert_eq!(Attempt::NONE.next(), Attempt::new(1));
        assert!(Attempt::new(2) > Attempt::new(1));
        assert_eq!(Attempt::new(u32::MAX).next(), Attempt::new(u32::MAX));
        assert_eq!(Attempt::new(3).to_string(), "3");
    }
}
