//! This node's scheduler: it takes the schedules that are due (held for
//! [`HOLD`], so no other node takes them meanwhile), makes each due tick's
//! run as the overlap policy says, moves the clock on and lets them go.
//!
//! A run's request_id is its tick's own (`Schedule::tick_request_id`): if
//! this node dies after making a run and before moving the clock, the node
//! that takes the schedule after the hold makes the same tick again and
//! finds the run already there. So a tick has exactly one run, whichever
//! node fires it and however often.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use tracing::{debug, warn};

use super::{Engine, EngineError, Inner};
use crate::model::OperationError;
use crate::model::schedule::{MAX_TICKS_PER_TURN, Schedule, ScheduleRun, TickAction};
use crate::store::{Expect, PutSchedule};

/// How long a node holds a due schedule while it makes its runs.
pub const HOLD: Duration = Duration::from_secs(5);

/// How many due schedules one take asks for.
const TAKE: usize = 512;

/// How many of them are fired at once: enough for their creates to share
/// the committer's batches, few enough to leave it to other callers too
/// while the scheduler is behind.
const FIRING: usize = 64;

/// How soon a schedule is looked at again when a run could not be made for
/// now (a full queue, storage away), or while a buffered tick waits.
const RECHECK: Duration = Duration::from_millis(500);

/// The longest sleep between looks on a shared store, where another node
/// may have made a schedule due sooner without telling this one.
const SHARED_POLL: Duration = Duration::from_secs(1);

/// The longest sleep on a store of this process alone.
const LOCAL_POLL: Duration = Duration::from_secs(60);

/// Runs until shutdown.
pub(super) async fn run(inner: Arc<Inner>) {
    let engine = Engine {
        inner: Arc::clone(&inner),
    };
    let poll = if inner.ops.shared() {
        SHARED_POLL
    } else {
        LOCAL_POLL
    };
    loop {
        if inner.shutdown.is_cancelled() {
            return;
        }
        let now = inner.clock.now();
        let taken = match inner
            .schedules
            .take_due_schedules(now, now + HOLD, TAKE)
            .await
        {
            Ok(taken) => taken,
            Err(e) => {
                warn!(error = %e, "taking due schedules failed; trying again");
                Vec::new()
            }
        };
        let full = taken.len() == TAKE;
        futures_util::stream::iter(taken)
            .for_each_concurrent(FIRING, |s| fire(&engine, s, now))
            .await;
        if full {
            continue;
        }
        let wait = match inner.schedules.next_schedule_due().await {
            Ok(Some(due)) => inner.clock.until(due).min(poll),
            Ok(None) => poll,
            Err(_) => RECHECK,
        };
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = inner.schedule_changed.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Makes the due runs of one schedule, then moves its clock on and lets
/// it go.
async fn fire(engine: &Engine, mut s: Schedule, now: SystemTime) {
    let metrics = &engine.inner.config.metrics;
    let due = s.due_ticks(now, MAX_TICKS_PER_TURN);
    s.skipped += due.skipped;
    let mut next = due.next;
    let mut going = match s.last_run() {
        Some(last) if s.overlap != crate::model::Overlap::AllowAll => {
            match engine.still_going(last.operation).await {
                Ok(going) => going,
                // Not known: look again soon, changing nothing.
                Err(e) => return let_go_later(engine, s, &e).await,
            }
        }
        _ => false,
    };
    let mut retry = false;
    // A buffered tick is older than any due one: it goes first.
    let buffered = s.buffered.filter(|_| !going);
    for tick in buffered.into_iter().chain(due.ticks.iter().copied()) {
        let action = if Some(tick) == buffered {
            TickAction::Run
        } else {
            s.overlap.decide(going)
        };
        match action {
            TickAction::Skip => {
                s.skipped += 1;
                metrics.tick("skipped", None);
                continue;
            }
            TickAction::Buffer => {
                if s.buffered.is_some() {
                    s.skipped += 1;
                    metrics.tick("skipped", None);
                } else {
                    s.buffered = Some(tick);
                    metrics.tick("buffered", None);
                }
                continue;
            }
            TickAction::CancelThenRun => {
                if let Some(last) = s.last_run() {
                    engine.cancel_run(last.operation).await;
                }
            }
            TickAction::Run => {}
        }
        match engine.make_run(&s, tick, None).await {
            Ok(Some((op, _))) => {
                metrics.tick("run", op.create_time.duration_since(tick).ok());
                going = !op.state.is_terminal();
                s.record_run(ScheduleRun {
                    operation: op.id,
                    tick,
                });
                if Some(tick) == buffered {
                    s.buffered = None;
                }
            }
            // It would have expired before starting (or its run exists).
            Ok(None) => {
                s.skipped += 1;
                metrics.tick("skipped", None);
            }
            Err(e) if transient(&e) => {
                // This tick and the rest wait for the next look.
                metrics.tick("retrying", None);
                s.last_error = Some(error_of(&e));
                if Some(tick) != buffered {
                    next = Some(tick);
                }
                retry = true;
                break;
            }
            Err(e) => {
                debug!(schedule = %s.name(), error = %e, "a tick made no run");
                metrics.tick("failed", None);
                s.last_error = Some(error_of(&e));
                s.skipped += 1;
                if Some(tick) == buffered {
                    s.buffered = None;
                }
            }
        }
    }
    s.next_tick = next;
    s.recheck = (retry || s.buffered.is_some()).then(|| now + RECHECK);
    let_go(engine, s).await;
}

/// Lets a held schedule go as it is, to be looked at again soon.
async fn let_go_later(engine: &Engine, mut s: Schedule, e: &EngineError) {
    s.last_error = Some(error_of(e));
    s.recheck = Some(engine.inner.clock.now() + RECHECK);
    let_go(engine, s).await;
}

/// Writes the schedule back without its hold. When another writer got in
/// first (an update, a run made now), the turn's outcome is laid over what
/// it wrote: the clock moves on, unless the writer gave it a new clock or
/// paused it, and the runs made are remembered.
async fn let_go(engine: &Engine, mut s: Schedule) {
    let store = &engine.inner.schedules;
    let turn = s.clone();
    for _ in 0..3 {
        s.lease_until = None;
        match store
            .put_schedule(&s, Expect::Revision(s.revision), false)
            .await
        {
            Ok(PutSchedule::Stale) => {}
            Ok(_) => return,
            Err(e) => {
                return warn!(schedule = %s.name(), error = %e, "a schedule's clock was not moved on");
            }
        }
        let Ok(Some(fresh)) = store.get_schedule(&turn.tenant, &turn.id).await else {
            return;
        };
        s = merged(fresh, &turn);
    }
}

/// A schedule another writer changed during a turn, with the turn's
/// outcome laid over it.
fn merged(mut fresh: Schedule, turn: &Schedule) -> Schedule {
    if fresh.when == turn.when && !fresh.paused && fresh.create_time == turn.create_time {
        fresh.next_tick = turn.next_tick;
        fresh.buffered = turn.buffered;
        fresh.recheck = turn.recheck;
    }
    for run in turn.recent.iter().rev() {
        if !fresh.recent.iter().any(|r| r.operation == run.operation) {
            fresh.record_run(*run);
        }
    }
    fresh.recent.sort_by_key(|run| std::cmp::Reverse(run.tick));
    fresh.skipped = fresh.skipped.max(turn.skipped);
    fresh.last_error.clone_from(&turn.last_error);
    fresh
}

/// Whether a tick's refusal waits for the next look: one that may pass,
/// and a storage failure, so that no tick is lost to one.
fn transient(e: &EngineError) -> bool {
    e.is_transient() || matches!(e, EngineError::Store(_))
}

/// What the schedule shows of a refusal.
fn error_of(e: &EngineError) -> OperationError {
    OperationError::new(e.code(), e.reason().as_str(), e.to_string())
}
