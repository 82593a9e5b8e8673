//! The retention sweeper: deletes done operations once they are older than
//! the retention, with whatever they left outside the store, in bounded
//! batches, often enough that none outlives its expiry by much.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

use super::Inner;
use crate::store::{Applied, Write};

/// How many expired operations the sweeper deletes in one batch.
const SWEEP_BATCH: usize = 1000;

/// Runs until shutdown.
pub(super) async fn sweep(inner: Arc<Inner>) {
    let retention = inner.config.retention;
    let interval = (retention / 4).clamp(Duration::from_millis(250), Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let Some(cutoff) = inner.clock.now().checked_sub(retention) else {
            continue;
        };
        loop {
            let batch = match inner.ops.expired(cutoff, SWEEP_BATCH).await {
                Ok(batch) => batch,
                Err(e) => {
                    warn!(error = %e, "could not read expired operations");
                    break;
                }
            };
            for op in &batch {
                inner.expire_artifacts(op).await;
            }
            let writes = batch.iter().map(|op| Write::Purge(op.id)).collect();
            let mut purged = 0usize;
            for result in inner.committer.write_all(writes).await {
                match result {
                    Ok(Applied::Deleted(true)) => purged += 1,
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "could not delete an expired operation"),
                }
            }
            debug!(purged, "expired operations deleted");
            if batch.len() < SWEEP_BATCH || purged == 0 || inner.shutdown.is_cancelled() {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
}
