//! The one claim loop of outside work on this node. Connected workers are
//! grouped by what they take (a kind, and their tenant unless they serve
//! every tenant); each wake claims, per group, as many queued operations
//! as its workers have credits (within the kind's concurrency), and hands
//! each to the worker of the group with the most credits left.
//!
//! It wakes only when outside work may be claimable: a worker connected
//! or got credits back, an operation of an outside kind was queued here,
//! another node queued something (it cannot say what), a retry comes due,
//! or, as a fallback, every [`IDLE_LOOK`]. However many workers are
//! connected, a wake costs one claim per group, and creates of other kinds
//! never wake it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tracing::warn;

use super::kinds::Owner;
use super::{Assignment, Connected, Held, ToWorker, lock};
use crate::engine::{Inner, attempt};
use crate::model::{Attempt, Claim, Edit, Lease, Operation, Tenant};
use crate::store::{ClaimRequest, Write};

/// The most operations one claim takes.
const CLAIM_BATCH: usize = 256;

/// How long the loop waits after a failed claim.
const CLAIM_RETRY: Duration = Duration::from_secs(1);

/// The longest the loop sleeps without looking at the queue, should a
/// signal be missed.
const IDLE_LOOK: Duration = Duration::from_secs(2);

/// Workers that take the same work.
struct Group {
    kind: String,
    /// Their tenant; None for workers that serve every tenant.
    tenant: Option<Tenant>,
    /// Their credits together.
    credits: usize,
}

/// The groups of the connected workers, with their credits.
fn groups(workers: &HashMap<u64, Arc<Connected>>) -> Vec<Group> {
    let mut groups: HashMap<(String, Option<Tenant>), usize> = HashMap::new();
    for worker in workers.values() {
        let credits = worker.credits.load(Ordering::SeqCst);
        for kind in &worker.spec.kinds {
            *groups
                .entry((kind.clone(), worker.spec.tenant.clone()))
                .or_default() += credits;
        }
    }
    groups
        .into_iter()
        .map(|((kind, tenant), credits)| Group {
            kind,
            tenant,
            credits,
        })
        .collect()
}

/// Runs until shutdown.
pub(crate) async fn run(inner: Arc<Inner>) {
    let hub = Arc::clone(&inner.outside);
    loop {
        let woken = hub.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if inner.shutdown.is_cancelled() {
            return;
        }
        let groups = groups(&lock(&hub.workers));
        let mut took = 0;
        let mut next_due: Option<SystemTime> = None;
        for group in groups.into_iter().filter(|g| g.credits > 0) {
            let owner = group.tenant.clone().map_or(Owner::Everyone, Owner::Tenant);
            let Some(declared) = hub.kinds.governing(&owner, &group.kind) else {
                continue;
            };
            let room = declared.spec.concurrency.map_or(usize::MAX, |limit| {
                limit.saturating_sub(declared.leased.load(Ordering::SeqCst))
            });
            let n = group.credits.min(room).min(CLAIM_BATCH);
            if n == 0 {
                continue;
            }
            let request = ClaimRequest {
                wants: vec![(group.kind.clone(), n)],
                lease: inner.ops.shared().then(|| Lease {
                    holder: inner.config.node.clone(),
                    expires: inner.clock.now() + inner.config.lease,
                }),
                tenant: group.tenant.clone(),
                by: Some(inner.config.node.clone()),
                weights: inner.weights(),
            };
            match inner.ops.claim(&request, inner.clock.now()).await {
                Ok(claimed) => {
                    next_due = match (next_due, claimed.next_due) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    for op in crate::engine::lease::fresh(&inner, claimed.operations).await {
                        took += 1;
                        assign(&inner, &group, op);
                    }
                }
                Err(e) => {
                    warn!(error = %e, "claiming outside work failed; trying again shortly");
                    tokio::select! {
                        () = inner.shutdown.cancelled() => return,
                        () = tokio::time::sleep(CLAIM_RETRY) => {}
                    }
                }
            }
        }
        if took > 0 {
            continue;
        }
        let idle = next_due.map_or(IDLE_LOOK, |due| inner.clock.until(due).min(IDLE_LOOK));
        tokio::select! {
            () = inner.shutdown.cancelled() => return,
            () = &mut woken => {}
            () = tokio::time::sleep(idle) => {}
        }
    }
}

/// Hands a claimed operation to the worker of `group` with the most
/// credits left, and starts its attempt. Should none be left (they went
/// between the claim and now), the attempt finds nobody and the operation
/// goes back to the queue.
fn assign(inner: &Arc<Inner>, group: &Group, op: Operation) {
    let hub = &inner.outside;
    let Some(declared) = hub.kinds.find(&op.tenant, &op.kind) else {
        return;
    };
    let worker = lock(&hub.workers)
        .iter()
        .filter(|(_, w)| w.spec.tenant == group.tenant && w.spec.kinds.contains(&op.kind))
        .max_by_key(|(_, w)| w.credits.load(Ordering::SeqCst))
        .filter(|(_, w)| w.credits.load(Ordering::SeqCst) > 0)
        .map(|(id, w)| (*id, Arc::clone(w)));
    declared.leased.fetch_add(1, Ordering::SeqCst);
    let now = SystemTime::now();
    let lease_expires = now + declared.spec.lease;
    let (sender, reports) = mpsc::unbounded_channel();
    let token = super::lease_token();
    let worker_id = worker.as_ref().map_or(u64::MAX, |(id, _)| *id);
    lock(&hub.held).insert(
        op.id,
        Held {
            attempt: op.attempt,
            worker: worker_id,
            tenant: op.tenant.clone(),
            kind: op.kind.clone(),
            token: token.clone(),
            reports: Some(reports),
            sender,
            lease: declared.spec.lease,
            lease_expires,
            cancel_requested: false,
        },
    );
    inner.config.metrics.started(
        &op.kind,
        op.start_time
            .and_then(|s| s.duration_since(op.create_time).ok())
            .unwrap_or_default(),
        op.attempt == Attempt::new(1),
    );
    // The attempt's span, made now so that the worker continues it.
    let span = attempt::span(&op);
    let trace = crate::telemetry::context_of(&span).or_else(|| op.trace.as_deref().cloned());
    let assignment = Assignment {
        trace,
        id: op.id,
        attempt: op.attempt,
        kind: op.kind.clone(),
        tenant: op.tenant.clone(),
        max_attempts: op.max_attempts,
        payload: op.request.clone(),
        lease_expires,
        deadline: now + op.timeout,
        lease_token: token,
    };
    let named = worker.as_ref().map(|(id, w)| (*id, w.spec.name.clone()));
    let sent = worker.is_some_and(|(_, worker)| {
        let took = worker
            .credits
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_sub(1))
            .is_ok();
        took && worker
            .outbox
            .send(ToWorker::Assign(Box::new(assignment)))
            .is_ok()
    });
    if sent && let Some((_, worker)) = &named {
        // Who holds it, for people: lazy, like progress.
        let edit = Edit::Assign {
            claim: Claim::of(&op),
            worker: worker.clone(),
        };
        inner
            .committer
            .write_and_forget(Write::Update { id: op.id, edit });
    }
    if !sent && let Some(h) = lock(&hub.held).get_mut(&op.id) {
        // Gone between the claim and now: the attempt finds nobody and
        // goes back to the queue, and no credit is owed.
        h.reports = None;
        h.worker = u64::MAX;
    }
    let kind = declared.kind.clone();
    inner
        .tracker
        .spawn(attempt::run(Arc::clone(inner), op, kind, true, span));
}
