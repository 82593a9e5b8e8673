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
use super::task::Size;
use crate::model::to_micros_precision;

/// How many recent runs of a kind the median is taken over.
const RECENT_RUNS: usize = 32;

/// One kind's recent runs, and their median, kept up to date as runs end
/// so that a create only reads it; and, for kinds whose requests say how
/// much work they are, the recent rates (units per second) and theirs.
#[derive(Default)]
struct Recent {
    runs: VecDeque<Duration>,
    median: Duration,
    rates: VecDeque<f64>,
    rate: Option<f64>,
}

/// The middle of `values` (the upper one of an even count).
fn median_of<T: Copy + PartialOrd>(values: &VecDeque<T>) -> Option<T> {
    let mut sorted: Vec<T> = values.iter().copied().collect();
    sorted.sort_unstable_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    sorted.get(sorted.len() / 2).copied()
}

/// Recent run times of successful attempts, per kind.
#[derive(Default)]
pub(crate) struct RunTimes {
    kinds: Mutex<HashMap<String, Recent>>,
}

impl RunTimes {
    /// A successful attempt of `kind` ran for `took`, doing `work` units
    /// when its request said.
    pub(crate) fn record(&self, kind: &str, took: Duration, work: Option<u64>) {
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        let recent = match kinds.get_mut(kind) {
            Some(recent) => recent,
            None => kinds.entry(kind.to_owned()).or_default(),
        };
        recent.runs.push_back(took);
        if recent.runs.len() > RECENT_RUNS {
            recent.runs.pop_front();
        }
        recent.median = median_of(&recent.runs).unwrap_or(took);
        if let Some(work) = work.filter(|_| !took.is_zero()) {
            recent.rates.push_back(work as f64 / took.as_secs_f64());
            if recent.rates.len() > RECENT_RUNS {
                recent.rates.pop_front();
            }
            recent.rate = median_of(&recent.rates);
        }
    }

    /// The median of `kind`'s recent runs; None before the first.
    pub(crate) fn median(&self, kind: &str) -> Option<Duration> {
        let kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        kinds.get(kind).map(|recent| recent.median)
    }

    /// How long `size` of `kind` should take: its own length when known,
    /// else its work at the kind's recent rate, else the kind's median.
    pub(crate) fn expected(&self, kind: &str, size: Size) -> Option<Duration> {
        if let Some(length) = size.length {
            return Some(length);
        }
        let kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        let recent = kinds.get(kind)?;
        match (size.work, recent.rate) {
            (Some(work), Some(rate)) if rate > 0.0 => {
                Duration::try_from_secs_f64(work as f64 / rate).ok()
            }
            _ => Some(recent.median),
        }
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
    /// What a new operation of `kind`, of `size`, created at `now` can
    /// expect: its run time, and when an attempt should start. The start
    /// is known only for kinds with a fixed concurrency whose queue the
    /// store can count, with `behind` more not stored yet (a batch's
    /// siblings in the same write); the work ahead is counted in the
    /// kind's median runs (or this one's, before the kind has any).
    pub(crate) fn expectations(
        &self,
        kind: &str,
        size: Size,
        behind: u64,
        now: SystemTime,
    ) -> (Option<Duration>, Option<SystemTime>) {
        let Some(run) = self.run_times.expected(kind, size) else {
            return (None, None);
        };
        let ahead = self.run_times.median(kind).unwrap_or(run);
        let start = self.slots.of(kind).and_then(|(running, limit)| {
            let queued = self.ops.queued_of_kind(kind)?;
            let waves = waves_ahead(running as u64 + queued + behind, limit as u64);
            Some(to_micros_precision(
                now + ahead * u32::try_from(waves).unwrap_or(u32::MAX),
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
            runs.record("k", Duration::from_millis(ms), None);
        }
        assert_eq!(runs.median("k"), Some(Duration::from_millis(200)));
        for _ in 0..RECENT_RUNS {
            runs.record("k", Duration::from_secs(5), None);
        }
        assert_eq!(runs.median("k"), Some(Duration::from_secs(5)));
        assert_eq!(runs.median("other"), None);
    }

    #[test]
    fn a_known_length_or_amount_of_work_beats_the_median() {
        let runs = RunTimes::default();
        let sized = |length: Option<u64>, work: Option<u64>| Size {
            length: length.map(Duration::from_secs),
            work,
        };
        // Nothing known yet, but a length.
        assert_eq!(runs.expected("sleep", sized(None, None)), None);
        assert_eq!(
            runs.expected("sleep", sized(Some(600), None)),
            Some(Duration::from_secs(600))
        );
        // Imports of 1000 units took 2 s: 2000 units should take 4 s,
        // whatever the median of whole runs says.
        runs.record("import", Duration::from_secs(2), Some(1000));
        runs.record("import", Duration::from_secs(2), Some(1000));
        assert_eq!(
            runs.expected("import", sized(None, Some(2000))),
            Some(Duration::from_secs(4))
        );
        assert_eq!(
            runs.expected("import", sized(None, None)),
            Some(Duration::from_secs(2))
        );
    }
}
