//! The time that state changes are stamped with.
//!
//! By default this is the system clock. A clock that follows tokio's timer
//! instead lets tests of backoff, deadlines and retention pause time and
//! move it on at will, with stored times moving in step.

use std::time::SystemTime;

use tokio::time::Instant;

use crate::model::to_micros_precision;

/// A source of wall-clock times; cheap to copy.
#[derive(Clone, Copy, Debug, Default)]
pub struct Clock {
    /// When set, time is this wall-clock time plus what tokio's timer has
    /// counted since the instant.
    anchor: Option<(SystemTime, Instant)>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock that starts at the system time now and then moves exactly as
    /// tokio's timer does, including when a test pauses or advances it.
    pub fn following_tokio() -> Self {
        Self {
            anchor: Some((SystemTime::now(), Instant::now())),
        }
    }

    /// The time now, to the microsecond (the precision records keep).
    pub fn now(&self) -> SystemTime {
        to_micros_precision(match self.anchor {
            None => SystemTime::now(),
            Some((wall, instant)) => wall + instant.elapsed(),
        })
    }

    /// How long from now until `at`; zero when it has passed.
    pub fn until(&self, at: SystemTime) -> std::time::Duration {
        at.duration_since(self.now()).unwrap_or_default()
    }
}
