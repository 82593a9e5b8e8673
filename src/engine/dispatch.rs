//! The dispatcher: claims queued work in batches, as many operations of
//! each kind as that kind has free slots, and starts an attempt for each.
//!
//! Each kind runs at most its concurrency at once (its policy's, or the
//! operator's `--concurrency kind=N`), so kinds that only wait on I/O run
//! hundreds at once while CPU-bound ones run one per core, and one kind's
//! backlog never takes another's slots. Within a kind the store hands out
//! work with the tenants taking turns.
//!
//! The dispatcher sleeps until something could change what it may claim:
//! new work (the store's work signal), a freed slot, a retry coming due,
//! or shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{error, warn};

use super::error::EngineError;
use super::task::Registry;
use super::{Inner, attempt};
use crate::model::{Attempt, Lease, Operation};
use crate::store::{ClaimRequest, Health, StoreError};

/// The most operations of one kind claimed at once.
pub const CLAIM_BATCH: usize = 512;

/// How long the dispatcher waits after a failed claim.
const CLAIM_RETRY: Duration = Duration::from_secs(1);

/// The running count and limit of one kind.
struct Slot {
    limit: usize,
    running: AtomicUsize,
}

/// How many operations of each kind run, against their limits.
pub(crate) struct Slots {
    kinds: HashMap<&'static str, Slot>,
    freed: Notify,
}

impl Slots {
    /// A slot per registered kind, at its policy's concurrency unless
    /// `overrides` names the kind (by name or short name).
    pub(crate) fn new(
        registry: &Registry,
        overrides: &HashMap<String, usize>,
    ) -> Result<Self, EngineError> {
        for name in overrides.keys() {
            if registry.resolve(name).is_none() {
                return Err(EngineError::invalid(
                    "concurrency",
                    format!(
                        "no kind is called {name:?}; the kinds are {}",
                        registry.describe()
                    ),
                ));
            }
        }
        let kinds = registry
            .kinds()
            .map(|(name, kind)| {
                let limit = overrides
                    .iter()
                    .find(|(given, _)| registry.resolve(given) == Some(name))
                    .map_or(kind.policy.concurrency, |(_, n)| *n);
                (
                    name,
                    Slot {
                        limit: limit.max(1),
                        running: AtomicUsize::new(0),
                    },
                )
            })
            .collect();
        Ok(Self {
            kinds,
            freed: Notify::new(),
        })
    }

    /// What to ask the store for: each kind's free slots, up to `batch`.
    fn wants(&self, batch: usize) -> Vec<(String, usize)> {
        self.kinds
            .iter()
            .filter_map(|(name, slot)| {
                let free = slot
                    .limit
                    .saturating_sub(slot.running.load(Ordering::SeqCst));
                (free > 0).then(|| ((*name).to_owned(), free.min(batch)))
            })
            .collect()
    }

    fn take(&self, kind: &str) {
        if let Some(slot) = self.kinds.get(kind) {
            slot.running.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Gives a slot of `kind` back.
    pub(crate) fn release(&self, kind: &str) {
        if let Some(slot) = self.kinds.get(kind) {
            slot.running.fetch_sub(1, Ordering::SeqCst);
            self.freed.notify_one();
        }
    }

    /// How many operations of `kind` run now, and its limit.
    pub(crate) fn of(&self, kind: &str) -> Option<(usize, usize)> {
        self.kinds
            .get(kind)
            .map(|slot| (slot.running.load(Ordering::SeqCst), slot.limit))
    }

    /// How many operations run now, and the limit, of each kind.
    pub(crate) fn usage(&self) -> Vec<(&'static str, usize, usize)> {
        let mut usage: Vec<_> = self
            .kinds
            .iter()
            .map(|(name, slot)| (*name, slot.running.load(Ordering::SeqCst), slot.limit))
            .collect();
        usage.sort();
        usage
    }
}

/// Runs until shutdown.
pub(super) async fn run(inner: Arc<Inner>) {
    let mut work = inner.ops.work();
    let mut health = inner.ops.health();
    loop {
        if inner.shutdown.is_cancelled() {
            return;
        }
        // Listen before claiming, so that a slot freed or work queued while
        // the claim runs still wakes the wait below.
        let freed = inner.slots.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        work.borrow_and_update();
        let wants = inner.slots.wants(CLAIM_BATCH);
        let wanted: usize = wants.iter().map(|(_, n)| n).sum();
        let mut next_due = None;
        if wanted > 0 {
            // On a shared store a claim is leased, so that another node
            // takes the work back if this one dies.
            let lease = inner.ops.shared().then(|| Lease {
                holder: inner.config.node.clone(),
                expires: inner.clock.now() + inner.config.lease,
            });
            let request = ClaimRequest {
                wants,
                lease,
                tenant: None,
                by: Some(inner.config.node.clone()),
                weights: inner.weights(),
            };
            match inner.ops.claim(&request, inner.clock.now()).await {
                Ok(claimed) => {
                    let got = claimed.operations.len();
                    start(&inner, claimed.operations).await;
                    if got == wanted || claimed.more {
                        // The store may hold more.
                        continue;
                    }
                    next_due = claimed.next_due;
                }
                Err(StoreError::Full) => {
                    warn!("the disk is full; no work is claimed until there is room");
                    tokio::select! {
                        _ = inner.shutdown.cancelled() => return,
                        _ = health.wait_for(|h| *h == Health::Writable) => {}
                    }
                    continue;
                }
                Err(e) => {
                    error!(error = %e, "could not claim work; trying again shortly");
                    tokio::select! {
                        _ = inner.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(CLAIM_RETRY) => {}
                    }
                    continue;
                }
            }
        }
        let due = async {
            match next_due {
                Some(at) => tokio::time::sleep(inner.clock.until(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = work.changed() => {}
            _ = freed => {}
            _ = due => {}
        }
    }
}

/// Starts an attempt for each claimed operation. Kinds that must not run
/// twice wait until their claims are on disk, so that a crash is seen as an
/// interrupted attempt rather than a fresh one: one flush serves the whole
/// batch, and should it fail, each such attempt waits for a flush of its
/// own before its task runs.
async fn start(inner: &Arc<Inner>, operations: Vec<Operation>) {
    let operations = super::lease::fresh(inner, operations).await;
    let mut claims_durable = None;
    for op in operations {
        let Some(kind) = inner.kind(&op.tenant, &op.kind) else {
            // Only registered kinds are asked for.
            continue;
        };
        inner.slots.take(&op.kind);
        let on_disk = kind.policy.retry_safe
            || *match &mut claims_durable {
                Some(done) => done,
                none => none.insert(inner.ops.flush().await.is_ok()),
            };
        // The queue wait is counted for first attempts only: a retry's
        // claim no longer says when it became due.
        let waited = match (op.attempt.get(), op.start_time) {
            (1, Some(started)) => started.duration_since(op.create_time).unwrap_or_default(),
            _ => Duration::ZERO,
        };
        inner
            .config
            .metrics
            .started(&op.kind, waited, op.attempt == Attempt::new(1));
        inner.tracker.spawn({
            let span = attempt::span(&op);
            attempt::run(Arc::clone(inner), op, kind, on_disk, span)
        });
    }
}
