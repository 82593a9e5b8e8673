//! The operation record: its states, its outcome, the webhook it asked
//! for, and the limits fixed when it is created. How it moves between states lives in `transition`.

use std::fmt;
use std::time::{Duration, SystemTime};

use super::attempt::Attempt;
use super::bulk::Tally;
use super::flow::Holds;
use super::id::{OperationId, RequestId};
use super::payload::Payload;
use super::status::OperationError;
use super::tenant::Tenant;
use super::trace::TraceContext;

/// Where an operation is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Accepted, waiting for a worker.
    Queued,
    /// A worker holds a claim on it and runs it.
    Running,
    /// Finished with a response.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// A client asked to cancel while it ran; the task is winding down.
    Cancelling,
    /// Finished because it was cancelled.
    Cancelled,
}

impl State {
    /// Every state, in the order of the public enum.
    pub const ALL: [State; 6] = [
        State::Queued,
        State::Running,
        State::Succeeded,
        State::Failed,
        State::Cancelling,
        State::Cancelled,
    ];

    /// True for the three final states.
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Succeeded | State::Failed | State::Cancelled)
    }

    /// The name used by the public enum and the List filter.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "QUEUED",
            State::Running => "RUNNING",
            State::Succeeded => "SUCCEEDED",
            State::Failed => "FAILED",
            State::Cancelling => "CANCELLING",
            State::Cancelled => "CANCELLED",
        }
    }

    /// Parses the public enum name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// A stable small number, used by storage encodings.
    pub fn as_u8(self) -> u8 {
        match self {
            State::Queued => 1,
            State::Running => 2,
            State::Succeeded => 3,
            State::Failed => 4,
            State::Cancelling => 5,
            State::Cancelled => 6,
        }
    }

    /// The inverse of `as_u8`.
    pub fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_u8() == value)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of a finished operation: exactly one of these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The task's response.
    Response(Payload),
    /// The error it ended with.
    Error(OperationError),
}

/// Progress as a task reports it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Progress {
    /// 0 to 100.
    pub percent: u32,
    /// What the task is doing.
    pub message: String,
}

/// One operation, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub id: OperationId,
    /// The registered kind that runs it.
    pub kind: String,
    pub state: State,
    /// The attempt now or last running; [`Attempt::NONE`] before the first
    /// claim. Only the holder of the current attempt may write.
    pub attempt: Attempt,
    pub progress_percent: u32,
    pub status_message: String,
    pub requested_cancellation: bool,
    pub create_time: SystemTime,
    pub start_time: Option<SystemTime>,
    pub update_time: SystemTime,
    pub end_time: Option<SystemTime>,
    /// The request the task runs on.
    pub request: Payload,
    /// Set exactly when the state is terminal.
    pub outcome: Option<Outcome>,
    /// The idempotency key it was created with, if any.
    pub request_id: Option<RequestId>,
    /// A digest of kind and request, to tell a true retry from a reused
    /// key; all zero when there is no request_id.
    pub request_digest: [u8; 32],
    /// Grows by one with every stored change; watchers use it to drop
    /// updates that arrive out of order.
    pub version: u64,
    /// How long one attempt may run before it ends DEADLINE_EXCEEDED.
    pub timeout: Duration,
    /// The most attempts it gets (its kind's policy when it was created).
    pub max_attempts: u32,
    /// While queued for a retry: not to be claimed before this time.
    pub not_before: Option<SystemTime>,
    /// Why the previous attempt failed, while a retry is pending or after.
    pub last_error: Option<OperationError>,
    /// The attempts that ended without ending the operation (failed and
    /// retried, or stopped and run again), oldest first; the latest
    /// [`MAX_FAILED_ATTEMPTS`].
    pub failed_attempts: Vec<FailedAttempt>,
    /// The webhook to call on state changes, if one was asked for.
    pub notification: Option<Notification>,
    /// The tenant that owns it.
    pub tenant: Tenant,
    /// While running under a leased claim: who holds it, until when.
    pub lease: Option<Lease>,
    /// How long an attempt of its kind took lately (the median of recent
    /// runs), when known at its creation.
    pub expected_run: Option<Duration>,
    /// When an attempt was expected to start, at its creation: after the
    /// work ahead of it, at its kind's concurrency.
    pub expected_start: Option<SystemTime>,
    /// Who runs the current attempt: the node that claimed it, and, for an
    /// outside kind, the worker it was handed to ("node: worker").
    pub holder: Option<String>,
    /// Attempts stopped by a shutdown and run again: they do not count
    /// against `max_attempts`.
    pub stops: u32,
    /// Higher starts first among the queued operations of its kind; 0 by
    /// default. Fixed at the create.
    pub priority: i32,
    /// The key its kind's per-key limits count it under (a customer id,
    /// say), if it has one. Fixed at the create.
    pub concurrency_key: Option<String>,
    /// While running: the limit slots its claim took, given back when it
    /// stops running.
    pub holds: Holds,
    /// When it was asked to start, if later than its create; it is not
    /// claimed before (its first `not_before`). Fixed at the create.
    pub scheduled_start: Option<SystemTime>,
    /// When it is no longer worth starting: not started by then, it ends
    /// DEADLINE_EXCEEDED (`EXPIRED_BEFORE_START`) and never runs. Fixed at
    /// the create.
    pub expire_time: Option<SystemTime>,
    /// The schedule that made it (`schedules/{id}`) and the tick it ran
    /// for. Fixed at the create.
    pub schedule: Option<ScheduleTick>,
    /// The batch it is a child of, if any. Fixed at the create.
    pub parent: Option<OperationId>,
    /// For a batch's parent: its children rolled up (counts, progress,
    /// failures). Kept on the parent, changed in the same store write as
    /// the child that moved.
    pub batch: Option<Box<Rollup>>,
    /// For a bulk action: how far it has walked its matching set, and
    /// what it counted. Written with each page's edits.
    pub bulk: Option<Box<Tally>>,
    /// The trace it belongs to: its create's span, whose children its
    /// attempts and webhook deliveries are. Fixed at the create.
    pub trace: Option<Box<TraceContext>>,
}

/// What a batch does when a child fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Every child runs; the batch fails at the end if any did.
    #[default]
    WaitAll,
    /// The first failure cancels the rest and fails the batch.
    FailFast,
}

/// A batch's children as its parent keeps them: counts by state, the
/// sum of their progress, and the first failures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rollup {
    pub policy: Policy,
    /// How deep it is nested: 0 for a batch that is no one's child.
    pub depth: u32,
    /// Children added so far.
    pub total: u64,
    /// Children per state, indexed by `State::as_u8() - 1`.
    pub counts: [u64; 6],
    /// The sum of the children's progress: 100 for each ended child, its
    /// percent for the others.
    pub progress: u64,
    /// Whether its last child has been added: only a sealed batch ends.
    pub sealed: bool,
    /// A FAIL_FAST batch had a child fail: the rest are being cancelled
    /// and the batch fails once they have ended.
    pub failing: bool,
    /// The first [`MAX_BATCH_FAILURES`] children that failed or were
    /// cancelled (not by the batch itself), in the order they ended.
    pub failures: Vec<ChildFailure>,
    /// When its first child started running, for the estimate.
    pub first_start: Option<SystemTime>,
    /// The latest end its children expected when they were added (each
    /// from its kind's run times and the queue ahead of it at the kind's
    /// concurrency): the batch's estimate before any child has run.
    pub expected_end: Option<SystemTime>,
}

/// How many failed children a batch names.
pub const MAX_BATCH_FAILURES: usize = 100;

/// A child that ended without succeeding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildFailure {
    pub id: OperationId,
    pub error: OperationError,
}

impl Rollup {
    /// Children in `state`.
    pub fn count(&self, state: State) -> u64 {
        self.counts[usize::from(state.as_u8() - 1)]
    }

    /// Children not ended yet.
    pub fn unfinished(&self) -> u64 {
        [State::Queued, State::Running, State::Cancelling]
            .into_iter()
            .map(|s| self.count(s))
            .sum()
    }

    /// The share of the batch's work done, 0.0 to 1.0.
    pub fn done_share(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        (self.progress as f64 / (100.0 * self.total as f64)).min(1.0)
    }

    /// Whether the children still running must be cancelled: the batch
    /// was cancelled, or is failing fast.
    pub fn cascades(&self, parent: &Operation) -> bool {
        (parent.requested_cancellation || self.failing) && self.unfinished() > 0
    }
}

/// Which schedule made a run, and for which tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleTick {
    /// The schedule's id (without `schedules/`).
    pub id: String,
    /// The tick it ran for.
    pub tick: SystemTime,
}

/// How many ended attempts an operation remembers.
pub const MAX_FAILED_ATTEMPTS: usize = 20;

/// An attempt that ended without ending its operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedAttempt {
    pub attempt: Attempt,
    pub start_time: Option<SystemTime>,
    pub end_time: SystemTime,
    pub error: OperationError,
}

/// Cuts a time to whole microseconds, the precision operations are stored
/// with, so that a record read back equals the one that was written.
pub fn to_micros_precision(time: SystemTime) -> SystemTime {
    match time.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => std::time::UNIX_EPOCH + std::time::Duration::from_micros(d.as_micros() as u64),
        Err(_) => time,
    }
}

impl Operation {
    /// When it will likely be done, from what it knows; None when nothing
    /// is known (never a guess). Done: when it ended. Running with
    /// progress: its own rate so far. Running without: its start plus the
    /// expected run. Queued: the expected start (not before `now`) plus
    /// the expected run.
    pub fn estimated_end(&self, now: SystemTime) -> Option<SystemTime> {
        if self.state.is_terminal() {
            return self.end_time;
        }
        if let Some(rollup) = &self.batch
            && let Some(started) = rollup.first_start
        {
            // A batch: the rate of its work so far, carried to the end.
            let share = rollup.done_share();
            if share > 0.0 {
                let spent = self.update_time.duration_since(started).ok()?;
                return Some(started + spent.div_f64(share));
            }
        }
        if let Some(rollup) = &self.batch {
            // Nothing done yet: what its children expected.
            return rollup.expected_end.map(|end| end.max(now));
        }
        let run = self.expected_run;
        match (self.state, self.start_time) {
            (State::Running | State::Cancelling, Some(started)) => {
                let percent = self.progress_percent;
                if (1..100).contains(&percent) {
                    let spent = self.update_time.duration_since(started).ok()?;
                    let whole = spent.mul_f64(100.0 / f64::from(percent));
                    Some(started + whole)
                } else {
                    run.map(|r| started + r)
                }
            }
            _ => {
                let start = self.expected_start?.max(now);
                run.map(|r| start + r)
            }
        }
    }

    /// A new queued operation of `tenant`, with no webhook.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kind: impl Into<String>,
        request: Payload,
        request_id: Option<RequestId>,
        request_digest: [u8; 32],
        limits: Limits,
        tenant: Tenant,
        now: SystemTime,
    ) -> Self {
        let now = to_micros_precision(now);
        // The digest tells a retry of a request_id from a reuse; without a
        // request_id there is nothing to tell apart.
        let request_digest = if request_id.is_some() {
            request_digest
        } else {
            [0; 32]
        };
        Self {
            id: OperationId::at(now),
            kind: kind.into(),
            state: State::Queued,
            attempt: Attempt::NONE,
            progress_percent: 0,
            status_message: String::new(),
            requested_cancellation: false,
            create_time: now,
            start_time: None,
            update_time: now,
            end_time: None,
            request,
            outcome: None,
            request_id,
            request_digest,
            version: 1,
            timeout: limits.timeout,
            max_attempts: limits.max_attempts,
            not_before: None,
            last_error: None,
            failed_attempts: Vec::new(),
            expected_run: None,
            expected_start: None,
            notification: None,
            tenant,
            lease: None,
            holder: None,
            stops: 0,
            priority: 0,
            concurrency_key: None,
            holds: Holds::NONE,
            scheduled_start: None,
            expire_time: None,
            schedule: None,
            parent: None,
            batch: None,
            bulk: None,
            trace: None,
        }
    }

    /// Whether it is a batch's parent.
    pub fn is_batch(&self) -> bool {
        self.batch.is_some()
    }

    /// Whether it is queued and past its expire time at `now`: it must not
    /// start.
    pub fn expired(&self, now: SystemTime) -> bool {
        self.state == State::Queued && self.expire_time.is_some_and(|at| at <= now)
    }

    /// The attempts that count against `max_attempts`: all but those a
    /// shutdown stopped.
    pub fn counted_attempts(&self) -> u32 {
        self.attempt.get().saturating_sub(self.stops)
    }

    /// Whether another attempt may follow this one's failure.
    pub fn attempts_left(&self) -> bool {
        self.counted_attempts() < self.max_attempts
    }

    /// About how many bytes it takes on the wire: its response or error,
    /// the messages it keeps, and the rest of its metadata. Pages of
    /// operations are bounded by it.
    pub fn size_hint(&self) -> usize {
        let outcome = match &self.outcome {
            Some(Outcome::Response(payload)) => payload.type_url.len() + payload.value.len(),
            Some(Outcome::Error(error)) => error.size(),
            None => 0,
        };
        let failures: usize = self
            .failed_attempts
            .iter()
            .map(|f| f.error.size() + 48)
            .sum();
        outcome
            + failures
            + self.status_message.len()
            + self.last_error.as_ref().map_or(0, OperationError::size)
            + self.kind.len()
            + 256
    }

    /// True once the operation has its final outcome.
    pub fn is_done(&self) -> bool {
        self.state.is_terminal()
    }
}

/// What a create request asked to be notified of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// Where to POST.
    pub callback_url: String,
    /// The states to notify on; empty means the final ones.
    pub states: Vec<State>,
}

impl Notification {
    /// Whether reaching `state` calls for a notification.
    pub fn wants(&self, state: State) -> bool {
        if self.states.is_empty() {
            state.is_terminal()
        } else {
            self.states.contains(&state)
        }
    }
}

/// Who holds a claim and until when, for claims that must be renewed (an
/// attempt run by another node or an outside worker). A claim without a
/// lease lasts until its attempt ends or the process that holds it dies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The node or worker that holds it.
    pub holder: String,
    /// When it lapses unless renewed.
    pub expires: SystemTime,
}

/// The per-operation limits fixed when it is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// How long one attempt may run.
    pub timeout: Duration,
    /// How many attempts it gets.
    pub max_attempts: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(3600),
            max_attempts: 1,
        }
    }
}
