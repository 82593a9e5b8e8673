//! The cascade: the children of a cancelled or failing batch are
//! cancelled, a page at a time.
//!
//! The batch itself says it must cascade (`Rollup::cascades`), in the
//! store, so nothing of the cascade is lost with a node: every node looks
//! through the open batches now and then and at its start, and at once
//! when it sees a batch change. Cancelling twice changes nothing, so two
//! nodes cascading one batch do no harm; the batch ends once its last
//! child has. A node walks a batch's children once: after that, what is
//! left is winding down on its own (or is recovered with its node).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tracing::warn;

use super::batches::BATCH_CHUNK;
use super::{EngineError, Inner};
use crate::model::{Edit, Filter, Operation, OperationId, State};
use crate::store::{Applied, Change, ListQuery, Write};

/// How often every open batch is looked at: on a shared store, for the
/// batches of a node that died mid-cascade.
const SWEEP_SHARED: Duration = Duration::from_secs(2);
const SWEEP_LOCAL: Duration = Duration::from_secs(60);
/// Open batches read at a time.
const BATCHES_AT_ONCE: usize = 100;

fn cascades(op: &Operation) -> bool {
    op.batch.as_ref().is_some_and(|r| r.cascades(op))
}

/// This node's cascade loop.
pub(super) async fn run(inner: Arc<Inner>) {
    let mut changes = inner.ops.subscribe();
    let every = if inner.ops.shared() {
        SWEEP_SHARED
    } else {
        SWEEP_LOCAL
    };
    let mut sweep = tokio::time::interval(every);
    // The batches this node has walked.
    let mut walked = HashSet::new();
    loop {
        let one = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = sweep.tick() => None,
            change = changes.recv() => match change {
                Ok(Change::Updated(op)) if cascades(&op) && !walked.contains(&op.id) => Some(op.id),
                Ok(_) => continue,
                Err(RecvError::Lagged(_)) => None,
                Err(RecvError::Closed) => return,
            },
        };
        let result = match one {
            Some(id) => cancel_children(&inner, id).await.map(|()| {
                walked.insert(id);
            }),
            None => sweep_all(&inner, &mut walked).await,
        };
        if let Err(e) = result {
            warn!(error = %e, "a batch's cascade stopped; it goes on later");
        }
    }
}

/// Cascades every open batch that must and has not been walked here;
/// forgets the walked batches that ended.
async fn sweep_all(inner: &Inner, walked: &mut HashSet<OperationId>) -> Result<(), EngineError> {
    let mut after = None;
    let mut open_now = HashSet::new();
    loop {
        let open = inner.ops.open_batches(after, BATCHES_AT_ONCE).await?;
        for batch in open.iter().filter(|op| cascades(op)) {
            open_now.insert(batch.id);
            if !walked.contains(&batch.id) {
                cancel_children(inner, batch.id).await?;
                walked.insert(batch.id);
            }
        }
        match open.last() {
            Some(last) if open.len() == BATCHES_AT_ONCE => after = Some(last.id),
            _ => break,
        }
    }
    walked.retain(|id| open_now.contains(id));
    Ok(())
}

/// Cancels the unfinished children of the batch `parent`.
pub(super) async fn cancel_children(inner: &Inner, parent: OperationId) -> Result<(), EngineError> {
    let filter = Filter::parse("done = false").expect("a constant filter");
    let mut after = None;
    loop {
        let page = inner
            .ops
            .list(ListQuery {
                after,
                tenant: None,
                parent: Some(parent),
                filter: &filter,
                limit: BATCH_CHUNK,
                scan_budget: BATCH_CHUNK * 8,
            })
            .await?;
        let writes: Vec<Write> = page
            .operations
            .iter()
            .filter(|op| op.state != State::Cancelling || op.is_batch())
            .map(|op| Write::Update {
                id: op.id,
                edit: Edit::Cancel,
            })
            .collect();
        for result in inner.committer.write_all(writes).await {
            match result {
                Ok(Applied::Updated(op)) => {
                    if op.state == State::Cancelled {
                        inner.finished(&op, "cancelled");
                    }
                    inner.deliver_cancellation(&op);
                }
                Ok(_) => {}
                // Ended meanwhile: nothing to cancel.
                Err(crate::store::StoreError::Rejected(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        match page.resume_after {
            Some(next) => after = Some(next),
            None => return Ok(()),
        }
    }
}
