//! What the engine expects of new work, for the estimate every operation
//! carries (`Operation::estimated_end`): the median of its kind's recent
//! run times, and, while it waits, when an attempt should start given the
//! work ahead of it and the kind's concurrency. Both are fixed at the
//! create, which is a write anyway; progress then refines the estimate
//! from the stored record alone, so no estimate costs a write of its own.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::Inner;
use crate::model::to_micros_precision;

/// How many recent runs of a kind the median is taken over.
const RECENT_RUNS: usize = 32;

/// One kind's recent runs, and their median, kept up to date as runs end
/// so that a create only reads it.
#[derive(Default)]
struct Recent {
    runs: VecDeque<Duration>,
    median: Duration,
}

/// Recent run times of successful attempts, per kind.
#[derive(Default)]
pub(crate) struct RunTimes {
    kinds: Mutex<HashMap<String, Recent>>,
}

impl RunTimes {
    /// A successful attempt of `kind` ran for `took`.
    pub(crate) fn record(&self, kind: &str, took: Duration) {
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        let recent = match kinds.get_mut(kind) {
            Some(recent) => recent,
            None => kinds.entry(kind.to_owned()).or_default(),
        };
        recent.runs.push_back(took);
        if recent.runs.len() > RECENT_RUNS {
            recent.runs.pop_front();
        }
        let mut sorted: Vec<Duration> = recent.runs.iter().copied().collect();
        sorted.sort_unstable();
        recent.median = sorted[sorted.len() / 2];
    }

    /// The median of `kind`'s recent runs; None before the first.
    pub(crate) fn median(&self, kind: &str) -> Option<Duration> {
        let kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        kinds.get(kind).map(|recent| recent.median)
    }
}

/// How many whole runs must end before a new operation gets a slot, with
/// `before` operations ahead of it (running or queued) and `limit` slots.
fn waves_ahead(before: u64, limit: u64) -> u64 {
    let limit = limit.max(1);
    if before < limit {
        0
    } else {
        (before - limit) / limit + 1
    }
}

impl Inner {
    /// What a new operation of `kind` created at `now` can expect: its run
    /// time, and when an attempt should start. The start is known only
    /// for kinds with a fixed concurrency whose queue the store can count.
    pub(crate) fn expectations(
        &self,
        kind: &str,
        now: SystemTime,
    ) -> (Option<Duration>, Option<SystemTime>) {
        let Some(run) = self.run_times.median(kind) else {
            return (None, None);
        };
        let start = self.slots.of(kind).and_then(|(running, limit)| {
            let queued = self.ops.queued_of_kind(kind)?;
            let waves = waves_ahead(running as u64 + queued, limit as u64);
            Some(to_micros_precision(
                now + run * u32::try_from(waves).unwrap_or(u32::MAX),
            ))
        });
        (Some(run), start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_ahead_is_counted_in_waves_of_the_concurrency() {
        // A free slot: it starts now.
        assert_eq!(waves_ahead(0, 1), 0);
        assert_eq!(waves_ahead(3, 4), 0);
        // One running at concurrency 1: it waits one run; with one more
        // queued, two.
        assert_eq!(waves_ahead(1, 1), 1);
        assert_eq!(waves_ahead(2, 1), 2);
        // Four slots, eight ahead: two waves end before it starts.
        assert_eq!(waves_ahead(8, 4), 2);
        assert_eq!(waves_ahead(7, 4), 1);
        assert_eq!(waves_ahead(5, 0), 5, "no limit reads as one slot");
    }

    #[test]
    fn the_median_follows_the_recent_runs() {
        let runs = RunTimes::default();
        assert_eq!(runs.median("k"), None);
        for ms in [300, 100, 200] {
            runs.record("k", Duration::from_millis(ms));
        }
        assert_eq!(runs.median("k"), Some(Duration::from_millis(200)));
        for _ in 0..RECENT_RUNS {
            runs.record("k", Duration::from_secs(5));
        }
        assert_eq!(runs.median("k"), Some(Duration::from_secs(5)));
        assert_eq!(runs.median("other"), None);
    }
}
