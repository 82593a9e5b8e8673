//! What a console shows about the queues: per kind, what waits and runs,
//! the limit, the oldest waiting, whether it is paused, and how many
//! finished in each of the last minutes (its live list follows
//! `changes`); and an admin's pause and resume of a queue.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use super::{Engine, EngineError, Inner};
use crate::model::{Operation, Scope, State, Tenant};

/// How many minutes of finishes are kept per kind.
pub const THROUGHPUT_MINUTES: usize = 15;

/// (minute since the epoch, finishes in it), oldest first.
type Minutes = VecDeque<(u64, u64)>;

/// Finishes per minute, per tenant and kind, for the last minutes: this
/// node's own, in memory, since it started.
pub(crate) struct Throughput {
    since: SystemTime,
    minutes: Mutex<HashMap<(Tenant, String), Minutes>>,
}

impl Default for Throughput {
    fn default() -> Self {
        Throughput {
            since: SystemTime::now(),
            minutes: Mutex::default(),
        }
    }
}

fn minute_of(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        / 60
}

impl Throughput {
    /// One more operation of `kind` of `tenant` finished at `now`.
    pub(crate) fn count(&self, tenant: &Tenant, kind: &str, now: SystemTime) {
        let minute = minute_of(now);
        let mut minutes = self.minutes.lock().unwrap_or_else(|e| e.into_inner());
        let series = minutes
            .entry((tenant.clone(), kind.to_owned()))
            .or_default();
        match series.back_mut() {
            Some((m, n)) if *m == minute => *n += 1,
            _ => series.push_back((minute, 1)),
        }
        while series
            .front()
            .is_some_and(|(m, _)| *m + THROUGHPUT_MINUTES as u64 <= minute)
        {
            series.pop_front();
        }
    }

    /// Per kind: finishes in each of the last [`THROUGHPUT_MINUTES`]
    /// minutes, oldest first, of the tenants `scope` covers.
    fn series(&self, scope: &Scope, now: SystemTime) -> HashMap<String, Vec<u64>> {
        let current = minute_of(now);
        let first = current + 1 - THROUGHPUT_MINUTES as u64;
        let minutes = self.minutes.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: HashMap<String, Vec<u64>> = HashMap::new();
        for ((tenant, kind), series) in minutes.iter() {
            if !scope.permits(tenant) {
                continue;
            }
            let counts = out
                .entry(kind.clone())
                .or_insert_with(|| vec![0; THROUGHPUT_MINUTES]);
            for (minute, n) in series {
                if *minute >= first && *minute <= current {
                    counts[(minute - first) as usize] += n;
                }
            }
        }
        out
    }
}

/// The queue of one kind, as a console shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueStats {
    pub kind: String,
    pub queued: u64,
    pub running: u64,
    pub cancelling: u64,
    /// How many may run at once on this server; None for no fixed limit
    /// (outside kinds bounded by their workers' credits).
    pub concurrency: Option<u64>,
    pub oldest_queued: Option<SystemTime>,
    /// Finishes per minute, oldest first, the last minute last.
    pub finished_per_minute: Vec<u64>,
    /// Paused: its operations are queued and none starts.
    pub paused: bool,
    /// Its limits, and their use.
    pub limits: Vec<super::flow::LimitUse>,
}

impl Inner {
    /// Counts a finished operation in the metrics and the throughput.
    pub(crate) fn finished(&self, op: &Operation, outcome: &str) {
        self.config.metrics.finished(&op.kind, outcome);
        self.throughput.count(
            &op.tenant,
            &op.kind,
            op.end_time.unwrap_or_else(SystemTime::now),
        );
    }
}

impl Engine {
    /// Since when this node has counted finishes (its start): the
    /// throughput of [`Engine::queues`] begins there.
    pub fn counting_since(&self) -> SystemTime {
        self.inner.throughput.since
    }

    /// The queues of every kind, counting the operations `scope` covers.
    pub async fn queues(&self, scope: &Scope) -> Result<Vec<QueueStats>, EngineError> {
        let backlog = self
            .inner
            .ops
            .backlog(scope.tenant())
            .await
            .map_err(EngineError::from)?;
        let now = SystemTime::now();
        let mut series = self.inner.throughput.series(scope, now);
        let mut kinds: HashMap<String, QueueStats> = HashMap::new();
        let mut entry = |kind: &str| -> QueueStats {
            QueueStats {
                kind: kind.to_owned(),
                finished_per_minute: series
                    .remove(kind)
                    .unwrap_or_else(|| vec![0; THROUGHPUT_MINUTES]),
                ..QueueStats::default()
            }
        };
        for (kind, _, limit) in self.inner.slots.usage() {
            let mut stats = entry(kind);
            stats.concurrency = Some(limit as u64);
            kinds.insert(kind.to_owned(), stats);
        }
        for spec in self.outside_kinds(scope) {
            let mut stats = entry(&spec.name);
            stats.concurrency = spec.concurrency.map(|n| n as u64);
            kinds.insert(spec.name.clone(), stats);
        }
        for b in backlog {
            let stats = kinds
                .entry(b.kind.clone())
                .or_insert_with(|| entry(&b.kind));
            match State::from_name(b.state) {
                Some(State::Queued) => {
                    stats.queued += b.count;
                    stats.oldest_queued = b.oldest;
                }
                Some(State::Running) => stats.running += b.count,
                Some(State::Cancelling) => stats.cancelling += b.count,
                _ => {}
            }
        }
        for kind in self.inner.ops.paused().await.map_err(EngineError::from)? {
            if let Some(stats) = kinds.get_mut(&kind) {
                stats.paused = true;
            }
        }
        for (kind, uses) in self.limit_uses(scope).await? {
            kinds
                .entry(kind.clone())
                .or_insert_with(|| entry(&kind))
                .limits = uses;
        }
        let mut out: Vec<QueueStats> = kinds.into_values().collect();
        out.sort_by(|a, b| a.kind.cmp(&b.kind));
        Ok(out)
    }

    /// Pauses the queue of `kind` (or resumes it) on every node of this
    /// store: while paused, its operations are accepted and queued and
    /// none starts; running ones finish. Returns the kind's full name.
    /// The pause is stored, so it outlives restarts.
    pub async fn pause_queue(&self, kind: &str, paused: bool) -> Result<String, EngineError> {
        let kind = self.queue_kind(kind)?;
        self.inner
            .ops
            .set_paused(&kind, paused)
            .await
            .map_err(EngineError::from)?;
        if !paused {
            // The store woke this node's claim loop; outside workers' has
            // its own.
            self.inner.outside.wake();
        }
        Ok(kind)
    }

    /// The full name of a kind that has a queue: a built-in kind (by its
    /// full or short name) or a declared outside kind.
    pub(crate) fn queue_kind(&self, kind: &str) -> Result<String, EngineError> {
        if let Some(full) = self.inner.registry.resolve(kind) {
            return Ok(full.to_owned());
        }
        if self
            .outside_kinds(&Scope::All)
            .iter()
            .any(|spec| spec.name == kind)
        {
            return Ok(kind.to_owned());
        }
        Err(EngineError::invalid(
            "kind",
            format!(
                "there is no kind {kind:?}; queues exist for {} and the declared outside kinds",
                self.inner.registry.describe()
            ),
        ))
    }
}
