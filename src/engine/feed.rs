//! Follows the store's change feed: updates the watch hub, and delivers
//! cancellation requests to tasks running here (they may have been made on
//! another node). A feed that lagged, or that says changes may have been
//! missed, is made good by re-reading what is watched or running; a change
//! made by another node is re-read when it is watched or running here.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tracing::warn;

use super::{Inner, Snapshot};
use crate::model::{OperationId, State};
use crate::store::Change;

/// Runs until shutdown or until the store closes its feed.
pub(super) async fn follow(inner: Arc<Inner>) {
    let mut feed = inner.ops.subscribe();
    loop {
        let change = tokio::select! {
            _ = inner.shutdown.cancelled() => break,
            change = feed.recv() => change,
        };
        match &change {
            Ok(Change::Updated(op)) => inner.changes.updated(std::sync::Arc::clone(op)),
            Ok(Change::Deleted(id)) => inner.changes.deleted(*id),
            Ok(Change::Elsewhere { id, .. }) => inner.changes.elsewhere(*id),
            Ok(Change::Resync) | Err(RecvError::Lagged(_)) => inner.changes.resync(),
            Ok(Change::Delivery(_)) | Err(RecvError::Closed) => {}
        }
        match change {
            Ok(Change::Elsewhere { id, queued, .. }) => {
                if queued && inner.outside.has_workers() {
                    // It may be of an outside kind: the claim loop looks.
                    inner.outside.wake();
                }
                if inner.hub.is_watched(id) || inner.running_lock().attempts.contains_key(&id) {
                    reread(&inner, id).await;
                }
            }
            Ok(Change::Resync) => {
                inner.outside.wake();
                resync(&inner).await;
            }
            Ok(change) => {
                inner.hub.publish(&change);
                if let Change::Updated(op) = &change {
                    inner.deliver_cancellation(op);
                    if op.state == State::Queued && inner.outside.kinds.anyone_declared(&op.kind) {
                        inner.outside.wake();
                    }
                }
            }
            Err(RecvError::Lagged(missed)) => {
                inner.outside.wake();
                warn!(
                    missed,
                    "change feed lagged; re-reading watched and running operations"
                );
                resync(&inner).await;
            }
            Err(RecvError::Closed) => break,
        }
    }
}

async fn resync(inner: &Inner) {
    let running: Vec<OperationId> = inner.running_lock().attempts.keys().copied().collect();
    for id in inner.hub.watched().into_iter().chain(running) {
        reread(inner, id).await;
    }
}

/// Reads one operation again and hands it to its watchers and its attempt.
async fn reread(inner: &Inner, id: OperationId) {
    match inner.ops.get(id).await {
        Ok(Some(op)) => {
            inner.deliver_cancellation(&op);
            inner.hub.offer(id, Snapshot::Present(Arc::new(op)));
        }
        Ok(None) => inner.hub.offer(id, Snapshot::Gone),
        Err(e) => warn!(%id, error = %e, "could not re-read operation"),
    }
}
