//! The expiry sweeper: a queued operation that has not started by its
//! expire time (`RunOptions.expire_time` or `ttl`) ends DEADLINE_EXCEEDED
//! with `EXPIRED_BEFORE_START`, even while nothing would claim it (its
//! queue paused, a limit full, no worker). A claim that meets one ends it
//! the same way instead of starting it, so it never runs either way. Every
//! node sweeps; an expiry written twice changes nothing the second time.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::Inner;
use crate::model::Edit;
use crate::store::{Applied, Write};

/// How many expired operations one write ends.
const EXPIRE_BATCH: usize = 512;

/// The longest the sweeper sleeps: an operation created meanwhile may
/// expire sooner than any it knew of.
const LOOK_AGAIN: Duration = Duration::from_secs(1);

/// Runs until shutdown.
pub(super) async fn sweep(inner: Arc<Inner>) {
    loop {
        let now = inner.clock.now();
        let next = match inner.ops.expiring(now, EXPIRE_BATCH).await {
            Ok((expired, next)) if !expired.is_empty() => {
                let full = expired.len() == EXPIRE_BATCH;
                let writes = expired
                    .into_iter()
                    .map(|id| Write::Update {
                        id,
                        edit: Edit::Expire,
                    })
                    .collect();
                for result in inner.committer.write_all(writes).await {
                    if let Ok(Applied::Updated(op)) = result
                        && op.is_done()
                    {
                        inner.finished(&op, "failed");
                    }
                }
                // More may be waiting.
                if full { Some(now) } else { next }
            }
            Ok((_, next)) => next,
            Err(e) => {
                warn!(error = %e, "could not look for expired operations");
                None
            }
        };
        let wait = next.map_or(LOOK_AGAIN, |at| inner.clock.until(at).min(LOOK_AGAIN));
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
