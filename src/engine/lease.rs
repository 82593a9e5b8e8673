//! Leases on a shared store: this node renews the leases of the attempts
//! it holds, stops the ones it can no longer prove are its own, and takes
//! back the work of nodes whose leases lapsed.
//!
//! A node holds a lease from the claim of an attempt until the attempt's
//! end is stored ([`Leases`]); only those are renewed, so a claim whose
//! answer was lost (the database committed it, the connection broke
//! before the node heard) lapses and is taken back like a dead node's.
//! Every third of the lease the node extends its leases by a whole lease.
//! When renewing fails (the database is out of reach) for longer than a
//! lease, the node can no longer prove that an attempt is its own: another
//! node may have taken it back. It stops those attempts, writes nothing for
//! them, and leaves them to whoever takes them back. A renewal that finds
//! an attempt no longer this node's stops it at once.
//!
//! Every second, the node looks for running operations whose lease ran
//! out: their node died or lost the database. Each is recovered as after a
//! crash (attempt + 1, or ABORTED when its kind is not retry-safe or it has
//! no attempts left); the model refuses a lease that was renewed
//! meanwhile, and the attempt number fences a late write from the node
//! that lost it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::Inner;
use super::recovery::orphan_retry;
use crate::model::{Attempt, Claim, Edit, Operation, OperationId, OrphanRetry};
use crate::store::{Applied, Write};

/// The most lapsed operations taken back in one round.
const TAKE_BACK: usize = 512;

/// How often lapsed leases are looked for at most: a dead node's work
/// starts again within the lease and this.
const LOOK: Duration = Duration::from_secs(1);

/// The attempts whose leases this node holds, and when each was last known
/// to be set in the store.
#[derive(Default)]
pub(crate) struct Leases {
    held: Mutex<HashMap<OperationId, Held>>,
}

struct Held {
    attempt: Attempt,
    /// When the lease was last set in the store (claimed or renewed): it
    /// lasts a lease from then.
    proven: Instant,
}

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OperationId, Held>> {
        // Each critical section is one map operation or a pass over it.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds the lease of an attempt just claimed, which lasts `left` more
    /// (its expiry, less now) out of a whole `lease`.
    pub(crate) fn hold(&self, claim: Claim, left: Duration, lease: Duration) {
        let now = Instant::now();
        let proven = now.checked_sub(lease.saturating_sub(left)).unwrap_or(now);
        self.lock().insert(
            claim.id,
            Held {
                attempt: claim.attempt,
                proven,
            },
        );
    }

    /// Lets go of an attempt's lease: its end is stored, or it was stopped.
    pub(crate) fn release(&self, claim: Claim) {
        let mut held = self.lock();
        if held
            .get(&claim.id)
            .is_some_and(|h| h.attempt == claim.attempt)
        {
            held.remove(&claim.id);
        }
    }

    /// Every lease held, as (operation, attempt).
    fn all(&self) -> Vec<(OperationId, Attempt)> {
        self.lock().iter().map(|(id, h)| (*id, h.attempt)).collect()
    }

    /// Takes in a renewal sent at `sent` for `asked`, of which the store
    /// extended `renewed`; returns the attempts it did not extend, which
    /// are no longer this node's, and forgets them.
    fn renewed(
        &self,
        asked: &[(OperationId, Attempt)],
        renewed: &[OperationId],
        sent: Instant,
    ) -> Vec<Claim> {
        let renewed: HashSet<&OperationId> = renewed.iter().collect();
        let mut held = self.lock();
        let mut lost = Vec::new();
        for (id, attempt) in asked {
            let Some(entry) = held.get_mut(id).filter(|h| h.attempt == *attempt) else {
                continue;
            };
            if renewed.contains(id) {
                entry.proven = entry.proven.max(sent);
            } else {
                held.remove(id);
                lost.push(Claim {
                    id: *id,
                    attempt: *attempt,
                });
            }
        }
        lost
    }

    /// The attempts whose lease may have lapsed: not proven within `lease`.
    fn unproven(&self, lease: Duration) -> Vec<Claim> {
        self.lock()
            .iter()
            .filter(|(_, h)| h.proven.elapsed() >= lease)
            .map(|(id, h)| Claim {
                id: *id,
                attempt: h.attempt,
            })
            .collect()
    }
}

/// Runs until shutdown.
pub(super) async fn keep(inner: Arc<Inner>) {
    let lease = inner.config.lease;
    let renew_every = (lease / 3).max(Duration::from_millis(100));
    let tick = renew_every.min(LOOK);
    let mut renewed = Instant::now();
    let mut reachable = true;
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        // After a failure, every tick tries again: the sooner a lease is
        // renewed once the store is back, the fewer attempts are lost.
        if !reachable || renewed.elapsed() >= renew_every {
            let sent = Instant::now();
            let ok = renew(&inner, renew_every).await;
            if ok {
                renewed = sent;
                if !reachable {
                    info!("leases renewed again");
                }
            } else if reachable {
                warn!(
                    "could not renew this node's leases; attempts it cannot prove its own stop after a lease"
                );
            }
            reachable = ok;
        }
        // Attempts whose lease may have lapsed meanwhile may be another
        // node's by now: those still running here stop. One whose result
        // waits to be stored keeps trying; the store fences it if the
        // attempt was taken back.
        for claim in inner.leases.unproven(lease) {
            inner.stop_unproven(claim);
        }
        if reachable {
            take_back(&inner).await;
        }
    }
}

/// Renews every lease this node holds, within `within`; stops the
/// attempts the store says are no longer this node's. False when the store
/// could not be reached.
async fn renew(inner: &Inner, within: Duration) -> bool {
    let held = inner.leases.all();
    let until = inner.clock.now() + inner.config.lease;
    let sent = Instant::now();
    let answer = tokio::time::timeout(within, inner.ops.renew(&inner.config.node, &held, until));
    match answer.await {
        Ok(Ok(renewed)) => {
            for claim in inner.leases.renewed(&held, &renewed, sent) {
                inner.stop_unproven(claim);
            }
            true
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "renewing leases failed");
            false
        }
        Err(_) => false,
    }
}

/// Makes sure every claimed operation's lease has at least half a lease
/// left before its attempt starts: a claim that took long to commit (the
/// database stalled meanwhile) may come back with a lease about to lapse,
/// which another node would take back while the attempt runs here. Those
/// are renewed first; one the store no longer gives this node is dropped
/// (another node took it back). Returns the operations to start.
pub(super) async fn fresh(inner: &Inner, mut claimed: Vec<Operation>) -> Vec<Operation> {
    if !inner.ops.shared() {
        return claimed;
    }
    let lease = inner.config.lease;
    let now = inner.clock.now();
    let left = |op: &Operation| {
        op.lease
            .as_ref()
            .and_then(|l| l.expires.duration_since(now).ok())
            .unwrap_or_default()
    };
    let stale: Vec<(OperationId, Attempt)> = claimed
        .iter()
        .filter(|op| left(op) < lease / 2)
        .map(|op| (op.id, op.attempt))
        .collect();
    if stale.is_empty() {
        return claimed;
    }
    let until = now + lease;
    let renewed: HashSet<OperationId> = match inner
        .ops
        .renew(&inner.config.node, &stale, until)
        .await
    {
        Ok(renewed) => renewed.into_iter().collect(),
        Err(e) => {
            warn!(error = %e, "could not renew the leases of fresh claims; they are left to lapse");
            HashSet::new()
        }
    };
    let stale: HashSet<OperationId> = stale.into_iter().map(|(id, _)| id).collect();
    claimed.retain_mut(|op| {
        if !stale.contains(&op.id) {
            return true;
        }
        match (renewed.contains(&op.id), op.lease.as_mut()) {
            (true, Some(l)) => {
                l.expires = until;
                true
            }
            _ => false,
        }
    });
    claimed
}

/// Recovers the running operations whose lease lapsed.
async fn take_back(inner: &Inner) {
    let lapsed = match inner.ops.lapsed(inner.clock.now(), TAKE_BACK).await {
        Ok(lapsed) => lapsed,
        Err(e) => return warn!(error = %e, "could not look for lapsed leases"),
    };
    let mut writes = Vec::new();
    for op in &lapsed {
        if op.is_batch() {
            // The stream adding its children is gone: any node seals it.
            writes.push(Write::Update {
                id: op.id,
                edit: Edit::RecoverOrphan(OrphanRetry::Allowed),
            });
            continue;
        }
        // A kind this node does not run is left for a node that does.
        let Some(policy) = inner.kind(&op.tenant, &op.kind).map(|k| k.policy) else {
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
