//! How an operation moves between states, as pure functions.
//!
//! A caller asks for an [`Edit`]; [`Operation::apply`] decides whether it is
//! allowed and what it produces: the next record and, when the change is
//! one the operation's webhook asked for, the delivery to store with it.
//! Every backend applies these inside its own atomic write and stores what
//! it was handed, so the life-cycle rules (and when a webhook fires) exist
//! exactly once, whatever the backend.

use std::time::SystemTime;

use super::attempt::Attempt;
use super::batch::Mark;
use super::bulk::{BulkAction, Tally};
use super::delivery::Delivery;
use super::flow::Holds;
use super::id::OperationId;
use super::operation::{
    FailedAttempt, Lease, MAX_FAILED_ATTEMPTS, Operation, Outcome, Progress, State,
    to_micros_precision,
};
use super::reason::Reason;
use super::status::{Code, OperationError};

/// The token a worker holds while it runs an attempt. Writes made with a
/// claim whose attempt is no longer the operation's current one are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    pub id: OperationId,
    pub attempt: Attempt,
}

impl Claim {
    /// The claim of the attempt `op` is running now.
    pub fn of(op: &Operation) -> Self {
        Self {
            id: op.id,
            attempt: op.attempt,
        }
    }
}

/// How a claimed attempt ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finish {
    /// Failed in a way worth retrying: back to the queue, to be claimed
    /// again (as attempt + 1) no earlier than `not_before`.
    Retry {
        error: OperationError,
        not_before: SystemTime,
    },
    /// Done with this outcome. `progress` is the task's last report, when
    /// it had not been stored yet.
    Done {
        outcome: Outcome,
        progress: Option<Progress>,
    },
    /// Put back in the queue, as when the server shuts down mid-attempt.
    Release,
}

/// Whether an orphaned attempt may run again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrphanRetry {
    /// Run it again.
    Allowed,
    /// End it ABORTED, with this explanation.
    Refused(String),
}

/// A change asked of one operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    /// A worker takes the queued operation: RUNNING under attempt + 1,
    /// which becomes the fencing token of its claim, held under `lease`
    /// when it has one, by the node `by`, holding the limit slots
    /// `holds` its store's gate gave it.
    Claim {
        lease: Option<Lease>,
        by: Option<String>,
        holds: Holds,
    },
    /// The attempt held by `claim` was handed to the outside worker
    /// `worker`.
    Assign { claim: Claim, worker: String },
    /// Progress reported by the holder of `claim`.
    Progress { claim: Claim, progress: Progress },
    /// The attempt held by `claim` ends, or is released.
    Finish { claim: Claim, finish: Finish },
    /// A client asks the operation to stop.
    Cancel,
    /// A queued operation past its expire time ends without running.
    Expire,
    /// After a restart: the attempt that was running has no worker left.
    RecoverOrphan(OrphanRetry),
    /// A client puts a failed, cancelled or aborted operation back in the
    /// queue, as attempt + 1 with its history kept.
    Retry,
    /// A batch's child moved from `before` (None: it was created) to
    /// `after`, with its error when it did not succeed. The rulebook
    /// writes it to the parent in the same batch as the child's change.
    Child {
        child: OperationId,
        before: Option<Mark>,
        after: Mark,
        error: Option<OperationError>,
        /// A new child's estimated end, as it was created.
        expected: Option<SystemTime>,
    },
    /// A batch's last child has been added (`complete`), or the stream
    /// adding them is gone and the batch fails once its children end.
    Seal { complete: bool },
    /// The stream adding a batch's children is alive until `until`.
    HoldOpen { until: SystemTime },
    /// The bulk action running under `claim` has got this far. The
    /// rulebook writes it with the page of edits it counts.
    Tally {
        claim: Claim,
        action: BulkAction,
        tally: Box<Tally>,
    },
}

/// Why a state change was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The operation is not in a state that allows the change.
    #[error("{message}")]
    Precondition {
        /// An UPPER_SNAKE reason for google.rpc.ErrorInfo.
        reason: Reason,
        /// What is wrong, for people.
        message: &'static str,
    },
    /// The claim's attempt is not the current one: a newer attempt owns the
    /// operation, or it is already finished.
    #[error("the claim is stale: attempt {held} no longer owns the operation")]
    Stale { held: Attempt },
}

/// What a state change decided: the operation's next record and, when the
/// change is one its webhook asked for, the delivery to store with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub operation: Operation,
    pub delivery: Option<Delivery>,
}

impl Transition {
    /// Moving from `previous` (None at creation) to `next`, with the
    /// delivery that calls for.
    fn between(previous: Option<&Operation>, next: Operation, now: SystemTime) -> Self {
        let changed = previous.is_none_or(|p| p.state != next.state);
        let wanted = next
            .notification
            .as_ref()
            .is_some_and(|n| n.wants(next.state));
        let delivery = (changed && wanted)
            .then(|| Delivery::new(&next, now))
            .flatten();
        Self {
            operation: next,
            delivery,
        }
    }
}

impl Operation {
    /// The transition that brings a new operation into being.
    pub fn creation(&self, now: SystemTime) -> Transition {
        Transition::between(None, self.clone(), now)
    }

    /// Decides what `edit` does. Ok(None) means it is allowed and changes
    /// nothing (a second cancel, say); an error says why it is refused.
    /// Times are kept to the microsecond, as records are stored.
    pub fn apply(&self, edit: &Edit, now: SystemTime) -> Result<Option<Transition>, Rejection> {
        let now = to_micros_precision(now);
        let next = match edit {
            // One past its expire time ends instead of starting.
            Edit::Claim { .. } | Edit::Expire if self.expired(now) => Some(self.expire(now)),
            Edit::Expire => None,
            Edit::Claim { lease, by, holds } => Some(self.claim(lease, by, *holds, now)?),
            Edit::Assign { claim, worker } => Some(self.assign(claim, worker, now)?),
            Edit::Progress { claim, progress } => Some(self.progress(claim, progress, now)?),
            Edit::Finish { claim, finish } => Some(self.finish(claim, finish, now)?),
            Edit::Cancel => self.cancel(now)?,
            Edit::RecoverOrphan(retry) => self.recover_orphan(retry, now),
            Edit::Retry => Some(self.redrive(now)?),
            Edit::Child {
                child,
                before,
                after,
                error,
                expected,
            } => self
                .child(*child, *before, *after, error.as_ref(), *expected, now)?
                .map(|next| next.touched(now)),
            Edit::Seal { complete: true } => self.seal(now).map(|next| next.touched(now)),
            Edit::Seal { complete: false } => self.abandon(now).map(|next| next.touched(now)),
            Edit::HoldOpen { until } => self.hold_open(*until).map(|next| next.touched(now)),
            Edit::Tally {
                claim,
                action,
                tally,
            } => Some(self.tally(claim, tally, action.verb(), now)?),
        };
        Ok(next.map(|mut next| {
            // Slots are held while the work runs, and only then.
            if !matches!(next.state, State::Running | State::Cancelling) {
                next.holds = Holds::NONE;
            }
            Transition::between(Some(self), next, now)
        }))
    }

    /// Checks that the operation may be deleted: only finished ones may.
    pub fn check_deletable(&self) -> Result<(), Rejection> {
        if self.is_done() {
            Ok(())
        } else {
            Err(Rejection::Precondition {
                reason: Reason::OperationNotDone,
                message: "the operation is not done yet; cancel it first, then delete it once it is done",
            })
        }
    }

    fn touched(mut self, now: SystemTime) -> Self {
        self.update_time = now.max(self.update_time);
        self.version += 1;
        self
    }

    /// QUEUED -> RUNNING under a new attempt number.
    fn claim(
        &self,
        lease: &Option<Lease>,
        by: &Option<String>,
        holds: Holds,
        now: SystemTime,
    ) -> Result<Operation, Rejection> {
        if self.state != State::Queued {
            return Err(Rejection::Precondition {
                reason: Reason::OperationNotQueued,
                message: "only a queued operation can be claimed",
            });
        }
        let mut next = self.clone();
        next.state = State::Running;
        next.attempt = next.attempt.next();
        next.progress_percent = 0;
        next.status_message.clear();
        next.start_time = Some(now);
        next.not_before = None;
        next.lease = lease.as_ref().map(|lease| Lease {
            holder: lease.holder.clone(),
            expires: to_micros_precision(lease.expires),
        });
        next.holder.clone_from(by);
        next.holds = holds;
        Ok(next.touched(now))
    }

    /// Names the outside worker the running attempt was handed to.
    fn assign(&self, claim: &Claim, worker: &str, now: SystemTime) -> Result<Operation, Rejection> {
        self.check_claim(claim)?;
        let mut next = self.clone();
        next.holder = Some(match &self.holder {
            Some(node) => format!("{node}: {worker}"),
            None => worker.to_owned(),
        });
        Ok(next.touched(now))
    }

    fn check_claim(&self, claim: &Claim) -> Result<(), Rejection> {
        let owns = self.attempt == claim.attempt
            && matches!(self.state, State::Running | State::Cancelling);
        if owns {
            Ok(())
        } else {
            Err(Rejection::Stale {
                held: claim.attempt,
            })
        }
    }

    /// Records the tally of the bulk action running under `claim`.
    fn tally(
        &self,
        claim: &Claim,
        tally: &Tally,
        verb: &str,
        now: SystemTime,
    ) -> Result<Operation, Rejection> {
        self.check_claim(claim)?;
        let mut next = self.clone();
        next.progress_percent = tally.percent().max(self.progress_percent);
        next.status_message = format!(
            "{} of {} matching {verb}, {} skipped",
            tally.changed, tally.matched, tally.skipped
        );
        next.bulk = Some(Box::new(tally.clone()));
        Ok(next.touched(now))
    }

    /// Progress never goes down within an attempt.
    fn progress(
        &self,
        claim: &Claim,
        progress: &Progress,
        now: SystemTime,
    ) -> Result<Operation, Rejection> {
        self.check_claim(claim)?;
        let mut next = self.clone();
        next.progress_percent = progress.percent.min(100).max(self.progress_percent);
        next.status_message.clone_from(&progress.message);
        Ok(next.touched(now))
    }

    fn finish(
        &self,
        claim: &Claim,
        finish: &Finish,
        now: SystemTime,
    ) -> Result<Operation, Rejection> {
        self.check_claim(claim)?;
        let mut next = self.clone();
        // However it ends, the attempt holds nothing any more.
        next.lease = None;
        next.holder = None;
        match finish {
            Finish::Release if self.state == State::Cancelling => {
                // Nobody wants the rest of this work: end it as cancelled
                // rather than running it again after a restart.
                next.end(Outcome::Error(OperationError::cancelled()), now);
            }
            Finish::Release => {
                // A stop, not a failure: it does not count against the
                // operation's attempts.
                next.stops += 1;
                next.requeue(
                    self,
                    OperationError::new(
                        Code::Aborted,
                        Reason::AttemptStopped,
                        "the attempt was stopped before it ended (a shutdown or a restart); it runs again",
                    ),
                    now,
                );
            }
            Finish::Retry { error, not_before } => {
                next.remember_failure(self, error.clone(), now);
                next.state = State::Queued;
                next.start_time = None;
                next.not_before = Some(to_micros_precision(*not_before));
                next.last_error = Some(error.clone());
                next.status_message = format!(
                    "attempt {} failed ({}); retrying",
                    self.attempt, error.message
                );
            }
            Finish::Done { outcome, progress } => {
                if let Some(p) = progress {
                    next.progress_percent = p.percent.min(100).max(next.progress_percent);
                    next.status_message.clone_from(&p.message);
                }
                next.end(outcome.clone(), now);
            }
        }
        Ok(next.touched(now))
    }

    /// Puts the operation back in the queue after the attempt `before`
    /// ran ended with `error`.
    fn requeue(&mut self, before: &Operation, error: OperationError, now: SystemTime) {
        self.remember_failure(before, error, now);
        self.state = State::Queued;
        self.start_time = None;
    }

    /// Adds the attempt `before` ran to the failed ones, keeping the latest.
    fn remember_failure(&mut self, before: &Operation, error: OperationError, now: SystemTime) {
        self.failed_attempts.push(FailedAttempt {
            attempt: before.attempt,
            start_time: before.start_time,
            end_time: to_micros_precision(now),
            error,
        });
        let extra = self
            .failed_attempts
            .len()
            .saturating_sub(MAX_FAILED_ATTEMPTS);
        self.failed_attempts.drain(..extra);
    }

    pub(super) fn end(&mut self, outcome: Outcome, now: SystemTime) {
        self.state = match &outcome {
            Outcome::Response(_) => State::Succeeded,
            Outcome::Error(e) if e.code == Code::Cancelled => State::Cancelled,
            Outcome::Error(_) => State::Failed,
        };
        if self.state == State::Succeeded {
            self.progress_percent = 100;
        }
        self.outcome = Some(outcome);
        self.end_time = Some(now);
    }

    /// QUEUED past its expire time -> FAILED, DEADLINE_EXCEEDED.
    fn expire(&self, now: SystemTime) -> Operation {
        let mut next = self.clone();
        next.end(
            Outcome::Error(OperationError::new(
                Code::DeadlineExceeded,
                Reason::ExpiredBeforeStart,
                "the operation had not started by its expire time, so it never ran",
            )),
            now,
        );
        next.touched(now)
    }

    /// A queued operation ends at once; a running one moves to CANCELLING
    /// and its task is told to stop. Cancelling twice is fine; cancelling a
    /// finished operation is not.
    fn cancel(&self, now: SystemTime) -> Result<Option<Operation>, Rejection> {
        match self.state {
            State::Cancelling | State::Cancelled => Ok(None),
            State::Succeeded | State::Failed => Err(Rejection::Precondition {
                reason: Reason::OperationAlreadyDone,
                message: "the operation is already done and can no longer be cancelled",
            }),
            State::Queued => {
                let mut next = self.clone();
                next.requested_cancellation = true;
                next.end(Outcome::Error(OperationError::cancelled()), now);
                Ok(Some(next.touched(now)))
            }
            State::Running => {
                let mut next = self.clone();
                next.requested_cancellation = true;
                next.state = State::Cancelling;
                Ok(Some(next.touched(now)))
            }
        }
    }

    /// A failed, cancelled or aborted operation goes back to the queue: its
    /// last attempt joins the failed ones, and it gets one attempt more
    /// than it has had. A batch's parent is not retried itself (its
    /// children are).
    fn redrive(&self, now: SystemTime) -> Result<Operation, Rejection> {
        let error = match (&self.outcome, self.state) {
            (Some(Outcome::Error(error)), State::Failed | State::Cancelled) if !self.is_batch() => {
                error.clone()
            }
            _ => {
                return Err(Rejection::Precondition {
                    reason: Reason::OperationNotRetryable,
                    message: "only a failed, cancelled or aborted operation (not a batch) can be retried",
                });
            }
        };
        let mut next = self.clone();
        if self.attempt != Attempt::NONE {
            next.remember_failure(self, error.clone(), now);
        }
        next.state = State::Queued;
        next.outcome = None;
        next.end_time = None;
        next.start_time = None;
        next.not_before = None;
        next.requested_cancellation = false;
        // Asked for by a client: it may start whenever it is claimed.
        next.expire_time = None;
        next.progress_percent = 0;
        next.status_message = format!("retried by a client after attempt {}", self.attempt);
        next.last_error = Some(error);
        next.max_attempts = next.max_attempts.max(self.counted_attempts() + 1);
        Ok(next.touched(now))
    }

    /// An attempt that was running when its process died goes back to the
    /// queue (the next claim makes attempt + 1) when `retry` allows;
    /// otherwise it ends ABORTED with `retry`'s reason. One that was being
    /// cancelled ends CANCELLED. None when the operation is not orphaned,
    /// which includes an attempt whose lease has not lapsed by `now`: its
    /// holder may still be alive.
    fn recover_orphan(&self, retry: &OrphanRetry, now: SystemTime) -> Option<Operation> {
        if let Some(rollup) = &self.batch {
            // A batch runs nowhere; only the stream still adding its
            // children can be lost, once its lease lapses.
            let lapsed = self.lease.as_ref().is_none_or(|lease| lease.expires <= now);
            return (!rollup.sealed && lapsed)
                .then(|| self.abandon(now))
                .flatten()
                .map(|next| next.touched(now));
        }
        let running = matches!(self.state, State::Running | State::Cancelling);
        if !running || self.lease.as_ref().is_some_and(|lease| lease.expires > now) {
            return None;
        }
        let finish = match retry {
            _ if self.state == State::Cancelling => Finish::Release,
            OrphanRetry::Allowed => {
                // Its process died, or lost its lease: unlike a shutdown's
                // stop, this counts as an attempt.
                let mut next = self.clone();
                next.lease = None;
                next.holder = None;
                next.requeue(
                    self,
                    OperationError::new(
                        Code::Aborted,
                        Reason::AttemptInterrupted,
                        "the attempt was interrupted (its server died or lost its lease); it runs again",
                    ),
                    now,
                );
                return Some(next.touched(now));
            }
            OrphanRetry::Refused(message) => Finish::Done {
                outcome: Outcome::Error(OperationError::new(
                    Code::Aborted,
                    Reason::AttemptInterrupted,
                    message.clone(),
                )),
                progress: None,
            },
        };
        self.finish(&Claim::of(self), &finish, now).ok()
    }
}
