//! Leases on a shared store: this node renews the leases of the attempts
//! it runs, and takes back the work of nodes whose leases lapsed.
//!
//! Every third of the lease, the node extends its leases by a whole lease;
//! every second, it looks for running operations whose lease ran out: their
//! node died
//! or lost the database. Each is recovered as after a crash (attempt + 1,
//! or ABORTED when its kind is not retry-safe or it has no attempts left);
//! the model refuses a lease that was renewed meanwhile, and the attempt
//! number fences a late write from the node that lost it.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::Inner;
use super::recovery::orphan_retry;
use crate::model::Edit;
use crate::store::{Applied, Write};

/// The most lapsed operations taken back in one round.
const TAKE_BACK: usize = 512;

/// How often lapsed leases are looked for at most: a dead node's work
/// starts again within the lease and this.
const LOOK: Duration = Duration::from_secs(1);

/// Runs until shutdown.
pub(super) async fn keep(inner: Arc<Inner>) {
    let lease = inner.config.lease;
    let renew_every = (lease / 3).max(Duration::from_millis(100));
    let tick = renew_every.min(LOOK);
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        if renewed.elapsed() >= renew_every {
            renewed = tokio::time::Instant::now();
            let until = inner.clock.now() + lease;
            if let Err(e) = inner.ops.renew(&inner.config.node, until).await {
                warn!(error = %e, "could not renew this node's leases");
            }
        }
        take_back(&inner).await;
    }
}

/// Recovers the running operations whose lease lapsed.
async fn take_back(inner: &Inner) {
    let lapsed = match inner.ops.lapsed(inner.clock.now(), TAKE_BACK).await {
        Ok(lapsed) => lapsed,
        Err(e) => return warn!(error = %e, "could not look for lapsed leases"),
    };
    let mut writes = Vec::new();
    for op in &lapsed {
        // A kind this node does not run is left for a node that does.
        let Some(policy) = inner.kind(&op.kind).map(|k| k.policy) else {
            continue;
        };
        let holder = op.lease.as_ref().map_or("", |l| l.holder.as_str());
        let reason = format!("its node ({holder}) stopped renewing its lease");
        writes.push(Write::Update {
            id: op.id,
            edit: Edit::RecoverOrphan(orphan_retry(&policy, op, &reason)),
        });
    }
    let mut taken = 0usize;
    for result in inner.committer.write_all(writes).await {
        if let Ok(Applied::Updated(op)) = result
            && op.lease.is_none()
        {
            taken += 1;
        }
    }
    if taken > 0 {
        info!(taken, "took back operations whose lease lapsed");
    }
}
