//! What a restart does with the operations it finds unfinished.
//!
//! Queued ones stay queued: the store's queue of claimable work already
//! holds them (after their backoff, if they wait for a retry). One whose
//! process died mid-attempt runs again as attempt + 1, or ends ABORTED when
//! its kind is not retry-safe or it used up its attempts. One of a kind
//! this server does not run ends UNIMPLEMENTED, rather than waiting
//! forever for a worker, unless the store is shared: another node may run
//! it. On a shared store, an attempt whose lease has not lapsed belongs to
//! a live node and is left alone (the model refuses to recover it). All of
//! it is committed in batches.

use tracing::info;

use super::{EngineError, Inner, TaskPolicy};
use crate::model::{
    Attempt, Claim, Code, Edit, Finish, Holds, Operation, OperationError, OrphanRetry, Outcome,
    Reason, State,
};
use crate::store::{StoreError, Write};

/// Recovers every unfinished operation; done before the dispatcher starts.
pub(super) async fn recover(inner: &Inner) -> Result<(), EngineError> {
    let unfinished = inner.ops.unfinished().await.map_err(EngineError::from)?;
    let mut writes = Vec::new();
    let (mut orphans, mut unknown) = (0usize, 0usize);
    let shared = inner.ops.shared();
    for op in &unfinished {
        if op.is_batch() {
            // A batch runs nowhere. One still taking children lost the
            // stream that added them (on a shared store, once its lease
            // lapses: `lease.rs`).
            if !shared {
                writes.push(Write::Update {
                    id: op.id,
                    edit: Edit::RecoverOrphan(OrphanRetry::Allowed),
                });
            }
            continue;
        }
        let kind = inner.kind(&op.tenant, &op.kind);
        let policy = kind.as_ref().map(|k| &k.policy);
        match (op.state, policy) {
            // On a shared store another node may run this kind.
            (_, None) if shared => {}
            (State::Queued, Some(_)) => {}
            (State::Queued, None) => {
                unknown += 1;
                // A claim first, so that the attempt that ends it owns it.
                writes.push(Write::Update {
                    id: op.id,
                    edit: Edit::Claim {
                        lease: None,
                        by: None,
                        holds: Holds::NONE,
                    },
                });
                writes.push(finish_unknown(op, op.attempt.next()));
            }
            (_, None) => {
                unknown += 1;
                writes.push(finish_unknown(op, op.attempt));
            }
            (_, Some(policy)) => {
                orphans += 1;
                writes.push(Write::Update {
                    id: op.id,
                    edit: Edit::RecoverOrphan(orphan_retry(
                        policy,
                        op,
                        "was interrupted by a server restart",
                    )),
                });
            }
        }
    }
    for result in inner.committer.write_all(writes).await {
        match result {
            Ok(_) | Err(StoreError::NotFound | StoreError::Rejected(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    info!(
        unfinished = unfinished.len(),
        orphans, unknown, "recovery done"
    );
    Ok(())
}

/// Ends an operation of a kind this server does not run, under the claim
/// of `attempt`.
fn finish_unknown(op: &Operation, attempt: Attempt) -> Write {
    let error = OperationError::new(
        Code::Unimplemented,
        Reason::KindNotRegistered,
        format!(
            "no handler for kind {:?} is registered on this server",
            op.kind
        ),
    );
    Write::Update {
        id: op.id,
        edit: Edit::Finish {
            claim: Claim { id: op.id, attempt },
            finish: Finish::Done {
                outcome: Outcome::Error(error),
                progress: None,
            },
        },
    }
}

/// Decides whether an attempt that lost its worker (`why`) may run again.
pub(super) fn orphan_retry(policy: &TaskPolicy, op: &Operation, why: &str) -> OrphanRetry {
    if !policy.retry_safe {
        OrphanRetry::Refused(format!(
            "attempt {} {why}, and kind {:?} is not safe to run twice",
            op.attempt, op.kind
        ))
    } else if !op.attempts_left() {
        OrphanRetry::Refused(format!(
            "attempt {} ({} of {} allowed) {why}; no attempts are left",
            op.attempt,
            op.counted_attempts(),
            op.max_attempts
        ))
    } else {
        OrphanRetry::Allowed
    }
}
