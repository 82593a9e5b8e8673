//! What a restart does with the operations it finds unfinished.
//!
//! Queued ones are queued again (after their backoff, if they wait for a
//! retry). One whose process died mid-attempt runs again as attempt + 1, or
//! ends ABORTED when its kind is not retry-safe or it used up its attempts.

use tracing::info;

use super::{EngineError, Inner, TaskPolicy};
use crate::model::{Edit, Operation, OrphanRetry, State};
use crate::store::StoreError;

/// Recovers every unfinished operation; done before the workers start.
pub(super) async fn recover(inner: &Inner) -> Result<(), EngineError> {
    let unfinished = inner.ops.unfinished().await.map_err(EngineError::Store)?;
    let (mut requeued, mut ended) = (0usize, 0usize);
    for op in unfinished {
        let op = if op.state == State::Queued {
            op
        } else {
            let retry = orphan_retry(inner.registry.policy(&op.kind), &op);
            match inner
                .ops
                .update(op.id, Edit::RecoverOrphan(retry), inner.clock.now())
                .await
            {
                Ok(op) => op,
                Err(StoreError::NotFound) => continue,
                Err(e) => return Err(EngineError::Store(e)),
            }
        };
        if op.state == State::Queued {
            inner.enqueue(&op);
            requeued += 1;
        } else {
            ended += 1;
        }
    }
    info!(requeued, ended, "recovery done");
    Ok(())
}

/// Decides whether an attempt interrupted by a crash may run again.
fn orphan_retry(policy: Option<&TaskPolicy>, op: &Operation) -> OrphanRetry {
    match policy {
        Some(policy) if !policy.retry_safe => OrphanRetry::Refused(format!(
            "attempt {} was interrupted by a server restart, and kind {:?} is not safe to run twice",
            op.attempt, op.kind
        )),
        Some(_) if op.attempt >= op.max_attempts => OrphanRetry::Refused(format!(
            "attempt {} of {} was interrupted by a server restart; no attempts are left",
            op.attempt, op.max_attempts
        )),
        // An unknown kind is queued again: its worker ends it with a clear
        // error, and registering the kind later lets it run.
        _ => OrphanRetry::Allowed,
    }
}
