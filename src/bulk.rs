//! The kinds of longrun.v1.Bulk: CancelMatching, DeleteMatching and
//! RetryMatching, each an operation that walks the operations its filter
//! matches in the caller's tenant and reports what it did. The walk and
//! its checkpoints are the engine's (`engine::bulk`); this module makes
//! them kinds with the wire's request and response.

use std::marker::PhantomData;
use std::time::Duration;

use crate::engine::bulk::bulk_filter;
use crate::engine::schedules::WeakEngine;
use crate::engine::{Task, TaskContext, TaskError, TaskPolicy};
use crate::model::{BulkAction, Code, FieldViolation, Tally};
use crate::pb::longrun::v1::{BulkResult, MatchingRequest};

/// One of the three bulk actions, as a kind.
pub trait Matching: Send + Sync + 'static {
    const KIND: &'static str;
    const SHORT_NAME: &'static str;
    const ACTION: BulkAction;
}

/// Cancels every unfinished operation that matches.
pub struct CancelMatching;
/// Deletes every done operation that matches.
pub struct DeleteMatching;
/// Retries every failed, cancelled or aborted operation that matches.
pub struct RetryMatching;

impl Matching for CancelMatching {
    const KIND: &'static str = "longrun.v1.Bulk.CancelMatching";
    const SHORT_NAME: &'static str = "cancel-matching";
    const ACTION: BulkAction = BulkAction::Cancel;
}

impl Matching for DeleteMatching {
    const KIND: &'static str = "longrun.v1.Bulk.DeleteMatching";
    const SHORT_NAME: &'static str = "delete-matching";
    const ACTION: BulkAction = BulkAction::Delete;
}

impl Matching for RetryMatching {
    const KIND: &'static str = "longrun.v1.Bulk.RetryMatching";
    const SHORT_NAME: &'static str = "retry-matching";
    const ACTION: BulkAction = BulkAction::Retry;
}

/// A bulk kind, run through the engine it is registered on.
pub struct BulkTask<M> {
    engine: WeakEngine,
    action: PhantomData<M>,
}

impl<M> BulkTask<M> {
    /// A bulk kind for the engine `engine` will point at.
    pub fn new(engine: WeakEngine) -> Self {
        Self {
            engine,
            action: PhantomData,
        }
    }
}

/// What a bulk action did, as its response says it.
pub fn result(tally: &Tally) -> BulkResult {
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    BulkResult {
        matched: n(tally.matched),
        changed: n(tally.changed),
        skipped: n(tally.skipped),
    }
}

impl<M: Matching> Task for BulkTask<M> {
    type Request = MatchingRequest;
    type Response = BulkResult;

    const KIND: &'static str = M::KIND;
    const SHORT_NAME: Option<&'static str> = Some(M::SHORT_NAME);

    fn validate(&self, request: &MatchingRequest) -> Result<(), FieldViolation> {
        bulk_filter(&request.filter).map(|_| ())
    }

    fn policy(&self) -> TaskPolicy {
        TaskPolicy {
            timeout: Duration::from_secs(6 * 3600),
            concurrency: 2,
            // Every attempt goes on from the last page stored, so a few
            // more than usual cost nothing.
            max_attempts: 10,
            ..TaskPolicy::default()
        }
    }

    async fn run(
        &self,
        ctx: TaskContext,
        request: MatchingRequest,
    ) -> Result<BulkResult, TaskError> {
        let engine = self.engine.get().ok_or_else(|| {
            TaskError::retryable(Code::Unavailable, "SHUTTING_DOWN", "the engine is closing")
        })?;
        let tally = engine
            .run_bulk(&ctx, M::ACTION, &request.filter)
            .await
            .map_err(TaskError::from)?;
        if !tally.walked {
            return Err(TaskError::cancelled());
        }
        Ok(result(&tally))
    }
}
