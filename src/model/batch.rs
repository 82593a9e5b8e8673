//! Batches: a parent operation whose children are ordinary operations.
//!
//! The parent never runs. It is created RUNNING, and what it shows is its
//! children rolled up ([`Rollup`]): counts by state, the sum of their
//! progress, the first failures. Every change of a child reaches its
//! parent as an [`Edit::Child`](super::Edit) in the same store write
//! (the rulebook adds it), so the counts never need the children re-read.
//! A sealed batch (its last child added) ends when its last child has
//! ended: CANCELLED if it was cancelled, FAILED when a child did not
//! succeed, else SUCCEEDED.

use std::time::SystemTime;

use super::id::OperationId;
use super::operation::{
    ChildFailure, Lease, Limits, MAX_BATCH_FAILURES, Operation, Outcome, Policy, Rollup, State,
};
use super::payload::Payload;
use super::reason::Reason;
use super::status::{Code, OperationError};
use super::tenant::Tenant;
use super::transition::Rejection;

/// The kind of every batch's parent.
pub const BATCH_KIND: &str = "longrun.v1.Batch";
/// The type of a succeeded batch's response. The stored response is
/// empty: the faces render it from the roll-up.
pub const BATCH_RESULT_TYPE: &str = "type.googleapis.com/longrun.v1.BatchResult";
/// How deep batches nest.
pub const MAX_BATCH_DEPTH: u32 = 8;

/// What a child looks like to its parent: its state and its share of
/// progress (100 once ended).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    pub state: State,
    pub weight: u32,
}

impl Mark {
    /// How `op` counts in its parent.
    pub fn of(op: &Operation) -> Self {
        let weight = if op.is_done() {
            100
        } else if let Some(rollup) = &op.batch {
            // A nested batch weighs as much as its own children's share.
            (rollup.done_share() * 100.0) as u32
        } else {
            op.progress_percent.min(100)
        };
        Self {
            state: op.state,
            weight,
        }
    }
}

fn slot(state: State) -> usize {
    usize::from(state.as_u8() - 1)
}

impl Operation {
    /// A new batch parent of `tenant`: RUNNING from its creation, nested
    /// `depth` deep, sealed when all its children come with it. While
    /// unsealed it may carry a `lease`: the node streaming its children
    /// holds it, and a lapsed one means the stream is gone.
    pub fn new_batch(
        tenant: Tenant,
        policy: Policy,
        depth: u32,
        sealed: bool,
        lease: Option<Lease>,
        now: SystemTime,
    ) -> Self {
        let mut op = Operation::new(
            BATCH_KIND,
            Payload::default(),
            None,
            [0; 32],
            Limits::default(),
            tenant,
            now,
        );
        op.state = State::Running;
        op.start_time = Some(op.create_time);
        op.lease = lease.filter(|_| !sealed);
        op.batch = Some(Box::new(Rollup {
            policy,
            depth,
            sealed,
            ..Rollup::default()
        }));
        op
    }

    /// Whether a child may be added now.
    pub fn takes_children(&self) -> Result<&Rollup, Rejection> {
        let closed = Rejection::Precondition {
            reason: Reason::BatchClosed,
            message: "the batch takes no more children: it is sealed or done",
        };
        match &self.batch {
            Some(r) if !r.sealed && !self.is_done() => Ok(r),
            Some(_) => Err(closed),
            None => Err(Rejection::Precondition {
                reason: Reason::BatchClosed,
                message: "the parent named is not a batch",
            }),
        }
    }

    /// How `child` joins this batch: refused once the batch is sealed or
    /// done; cancelled at birth (Some) while the batch is being cancelled
    /// or failing fast, so that the rest of a stream still counts, as
    /// cancelled.
    pub fn admit(
        &self,
        child: &Operation,
        now: SystemTime,
    ) -> Result<Option<Operation>, Rejection> {
        let rollup = self.takes_children()?;
        if !rollup.failing && !self.requested_cancellation {
            return Ok(None);
        }
        Ok(child
            .apply(&super::transition::Edit::Cancel, now)?
            .map(|t| t.operation))
    }

    /// A child moved from `before` (None: it is new) to `after`, ending
    /// with `error` when it did not succeed.
    pub(super) fn child(
        &self,
        child: OperationId,
        before: Option<Mark>,
        after: Mark,
        error: Option<&OperationError>,
        expected: Option<SystemTime>,
        now: SystemTime,
    ) -> Result<Option<Operation>, Rejection> {
        let Some(rollup) = &self.batch else {
            return Ok(None);
        };
        if before.is_none() {
            self.takes_children()?;
        }
        if before == Some(after) {
            return Ok(None);
        }
        let mut next = self.clone();
        let reopens = self.is_done() && !after.state.is_terminal();
        if self.is_done() && !reopens {
            // An ended batch keeps the counts it ended with.
            return Ok(None);
        }
        let cascading = rollup.failing || self.requested_cancellation;
        let r = next.batch.as_deref_mut().expect("a batch");
        match before {
            Some(b) => {
                r.counts[slot(b.state)] = r.counts[slot(b.state)].saturating_sub(1);
                r.progress = r.progress.saturating_sub(u64::from(b.weight));
            }
            None => {
                r.total += 1;
                r.expected_end = r.expected_end.max(expected);
            }
        }
        r.counts[slot(after.state)] += 1;
        r.progress += u64::from(after.weight);
        if after.state != State::Queued && r.first_start.is_none() {
            r.first_start = Some(now);
        }
        let failed = matches!(after.state, State::Failed | State::Cancelled);
        if failed && !cascading && before.is_none_or(|b| !b.state.is_terminal()) {
            if r.failures.len() < MAX_BATCH_FAILURES
                && let Some(error) = error
            {
                r.failures.push(ChildFailure {
                    id: child,
                    error: error.clone(),
                });
            }
            if r.policy == Policy::FailFast {
                r.failing = true;
            }
        }
        if reopens {
            // A child was retried: the batch is open again until it ends.
            next.state = State::Running;
            next.outcome = None;
            next.end_time = None;
            next.requested_cancellation = false;
            r.failing = false;
            r.failures.retain(|f| f.id != child);
            next.progress_percent = 0;
        }
        let percent = (r.done_share() * 100.0) as u32;
        next.progress_percent = next.progress_percent.max(percent.min(100));
        next.settle(now);
        Ok(Some(next))
    }

    /// Its last child has been added. A second seal changes nothing.
    pub(super) fn seal(&self, now: SystemTime) -> Option<Operation> {
        let rollup = self.batch.as_ref()?;
        if rollup.sealed {
            return None;
        }
        let mut next = self.clone();
        next.lease = None;
        if let Some(r) = next.batch.as_deref_mut() {
            r.sealed = true;
        }
        next.settle(now);
        Some(next)
    }

    /// The stream adding children is gone (its node died or stalled): the
    /// batch is sealed as it is and fails once its children end.
    pub(super) fn abandon(&self, now: SystemTime) -> Option<Operation> {
        let mut next = self.seal(now)?;
        if let Some(r) = next.batch.as_deref_mut() {
            r.failing = true;
        }
        next.settle(now);
        Some(next)
    }

    /// The stream adding children is alive: its lease runs to `until`.
    pub(super) fn hold_open(&self, until: SystemTime) -> Option<Operation> {
        let rollup = self.batch.as_ref()?;
        let lease = self.lease.as_ref()?;
        if rollup.sealed || self.is_done() {
            return None;
        }
        let mut next = self.clone();
        next.lease = Some(Lease {
            holder: lease.holder.clone(),
            expires: super::operation::to_micros_precision(until),
        });
        Some(next)
    }

    /// Ends a sealed batch whose children have all ended; cancels at
    /// once one cancelled with no child left running.
    fn settle(&mut self, now: SystemTime) {
        let Some(r) = self.batch.as_deref() else {
            return;
        };
        if self.is_done() || !r.sealed || r.unfinished() > 0 {
            if self.requested_cancellation && !self.is_done() {
                self.state = State::Cancelling;
            }
            return;
        }
        let failed = r.count(State::Failed) + r.count(State::Cancelled);
        let outcome = if self.requested_cancellation {
            Outcome::Error(OperationError::cancelled())
        } else if failed > 0 {
            Outcome::Error(OperationError::new(
                Code::Aborted,
                Reason::ChildrenFailed,
                format!(
                    "{failed} of the batch's {} children did not succeed",
                    r.total
                ),
            ))
        } else if r.failing {
            Outcome::Error(OperationError::new(
                Code::Aborted,
                Reason::BatchIncomplete,
                "the stream that created the batch ended before its last child",
            ))
        } else {
            Outcome::Response(Payload {
                type_url: BATCH_RESULT_TYPE.to_owned(),
                value: Default::default(),
            })
        };
        self.lease = None;
        self.end(outcome, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn mark(state: State, weight: u32) -> Mark {
        Mark { state, weight }
    }

    fn batch(policy: Policy, sealed: bool) -> Operation {
        Operation::new_batch(
            Tenant::default(),
            policy,
            0,
            sealed,
            None,
            SystemTime::now(),
        )
    }

    fn add(parent: &Operation, n: usize) -> (Operation, Vec<OperationId>) {
        let now = SystemTime::now();
        let mut p = parent.clone();
        let mut ids = Vec::new();
        for _ in 0..n {
            let id = OperationId::at(now);
            p = p
                .child(
                    id,
                    None,
                    mark(State::Queued, 0),
                    None,
                    Some(now + Duration::from_secs(60)),
                    now,
                )
                .unwrap()
                .unwrap();
            ids.push(id);
        }
        (p, ids)
    }

    #[test]
    fn before_any_child_runs_the_batch_expects_what_its_children_did() {
        let (p, _) = add(&batch(Policy::WaitAll, false), 3);
        let now = SystemTime::now();
        let expected = p.batch.as_ref().unwrap().expected_end.unwrap();
        assert!(expected > now);
        assert_eq!(p.estimated_end(now), Some(expected));
        // Later than it, it is due now.
        let later = expected + Duration::from_secs(5);
        assert_eq!(p.estimated_end(later), Some(later));
    }

    #[test]
    fn a_sealed_batch_ends_with_its_last_child_and_counts_exactly() {
        let now = SystemTime::now();
        let (p, ids) = add(&batch(Policy::WaitAll, false), 3);
        let mut p = p.seal(now).unwrap();
        for id in &ids {
            p = p
                .child(
                    *id,
                    Some(mark(State::Queued, 0)),
                    mark(State::Running, 50),
                    None,
                    None,
                    now,
                )
                .unwrap()
                .unwrap();
            assert_eq!(p.state, State::Running);
        }
        assert_eq!(p.progress_percent, 50);
        for id in &ids {
            p = p
                .child(
                    *id,
                    Some(mark(State::Running, 50)),
                    mark(State::Succeeded, 100),
                    None,
                    None,
                    now,
                )
                .unwrap()
                .unwrap();
        }
        assert_eq!(p.state, State::Succeeded);
        let r = p.batch.as_ref().unwrap();
        assert_eq!(
            (r.total, r.count(State::Succeeded), r.unfinished()),
            (3, 3, 0)
        );
        assert_eq!(p.progress_percent, 100);
    }

    #[test]
    fn fail_fast_fails_and_names_the_first_failure_but_not_the_cancelled_rest() {
        let now = SystemTime::now();
        let (p, ids) = add(&batch(Policy::FailFast, false), 3);
        let p = p.seal(now).unwrap();
        let error = OperationError::new(Code::Internal, "BOOM", "boom");
        let p = p
            .child(
                ids[0],
                Some(mark(State::Queued, 0)),
                mark(State::Failed, 100),
                Some(&error),
                None,
                now,
            )
            .unwrap()
            .unwrap();
        let r = p.batch.as_ref().unwrap();
        assert!(r.failing && r.cascades(&p));
        let cancelled = OperationError::cancelled();
        let mut p = p;
        for id in &ids[1..] {
            p = p
                .child(
                    *id,
                    Some(mark(State::Queued, 0)),
                    mark(State::Cancelled, 100),
                    Some(&cancelled),
                    None,
                    now,
                )
                .unwrap()
                .unwrap();
        }
        assert_eq!(p.state, State::Failed);
        let r = p.batch.as_ref().unwrap();
        assert_eq!(r.failures.len(), 1);
        assert_eq!(r.failures[0].id, ids[0]);
    }

    #[test]
    fn a_closed_batch_takes_no_child_and_progress_never_goes_back() {
        let now = SystemTime::now();
        let (p, ids) = add(&batch(Policy::WaitAll, false), 1);
        let p = p
            .child(
                ids[0],
                Some(mark(State::Queued, 0)),
                mark(State::Running, 80),
                None,
                None,
                now,
            )
            .unwrap()
            .unwrap();
        // Retried: its progress starts again, the batch's does not.
        let p = p
            .child(
                ids[0],
                Some(mark(State::Running, 80)),
                mark(State::Queued, 0),
                None,
                None,
                now,
            )
            .unwrap()
            .unwrap();
        assert_eq!(p.progress_percent, 80);
        let sealed = p.seal(now).unwrap();
        assert!(
            sealed
                .child(
                    OperationId::at(now),
                    None,
                    mark(State::Queued, 0),
                    None,
                    None,
                    now
                )
                .is_err()
        );
    }
}
