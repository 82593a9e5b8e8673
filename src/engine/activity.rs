//! What a console shows about the work as a whole: every change of the
//! operations a caller may see, as a stream (a dashboard's live list), and
//! the queues (per kind: what waits and runs, the limit, the oldest
//! waiting, and how many finished in each of the last minutes).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use super::{Engine, EngineError, Inner, WatchPermit};
use crate::model::{Filter, Operation, Scope, State, Tenant};
use crate::store::Change;

/// How many minutes of finishes are kept per kind.
pub const THROUGHPUT_MINUTES: usize = 15;

/// (minute since the epoch, finishes in it), oldest first.
type Minutes = VecDeque<(u64, u64)>;

/// Finishes per minute, per tenant and kind, for the last minutes.
#[derive(Default)]
pub(crate) struct Throughput {
    minutes: Mutex<HashMap<(Tenant, String), Minutes>>,
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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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
}

/// The changes of every operation a caller may see.
pub struct ActivityStream {
    feed: broadcast::Receiver<Change>,
    scope: Scope,
    filter: Filter,
    engine: Engine,
    /// Counts the stream against its tenant's watch limit.
    _permit: WatchPermit,
}

impl ActivityStream {
    /// The next change that matches; an error when changes were missed
    /// (the caller should list again) or the server is stopping.
    pub async fn next(&mut self) -> Result<Operation, EngineError> {
        loop {
            let change = tokio::select! {
                () = self.engine.inner.shutdown.cancelled() => return Err(EngineError::ShuttingDown),
                change = self.feed.recv() => change,
            };
            let op = match change {
                Ok(Change::Updated(op)) => Operation::clone(&op),
                Ok(Change::Elsewhere { id, .. }) => match self.engine.get(&self.scope, id).await {
                    Ok(op) => op,
                    Err(_) => continue,
                },
                Ok(Change::Deleted(_) | Change::Delivery(_)) => continue,
                Ok(Change::Resync) | Err(RecvError::Lagged(_)) => {
                    return Err(EngineError::Unavailable {
                        reason: "CHANGES_MISSED",
                        message: "changes were missed; list the operations again and reconnect"
                            .into(),
                        retry_after: Duration::from_millis(100),
                    });
                }
                Err(RecvError::Closed) => return Err(EngineError::ShuttingDown),
            };
            if self.scope.permits(&op.tenant) && self.filter.matches(&op) {
                return Ok(op);
            }
        }
    }
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
    /// Follows every change of the operations `scope` covers that match
    /// `filter` (the List filter), from now on. Counts against the tenant's
    /// watch limit.
    pub fn activity(
        &self,
        scope: Scope,
        tenant: &Tenant,
        filter: &str,
    ) -> Result<ActivityStream, EngineError> {
        if filter.len() > super::MAX_FILTER_LEN {
            return Err(EngineError::invalid(
                "filter",
                format!(
                    "filter is {} bytes long; the limit is {}",
                    filter.len(),
                    super::MAX_FILTER_LEN
                ),
            ));
        }
        let filter =
            Filter::parse(filter).map_err(|e| EngineError::invalid("filter", e.to_string()))?;
        let permit = self.watch_permit(tenant)?;
        Ok(ActivityStream {
            feed: self.inner.ops.subscribe(),
            scope,
            filter,
            engine: self.clone(),
            _permit: permit,
        })
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
        let mut out: Vec<QueueStats> = kinds.into_values().collect();
        out.sort_by(|a, b| a.kind.cmp(&b.kind));
        Ok(out)
    }
}
