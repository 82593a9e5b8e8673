//! Kinds served by outside workers, in any language, over a lease stream.
//!
//! An outside kind is declared (by the configuration or by a worker; see
//! `kinds`) and then behaves like any other kind: operations are created,
//! listed, watched, cancelled, retried and expired the same way. What
//! differs is who runs them. This node's one claim loop (`dispatch`) takes
//! queued operations for its connected workers, as many as their credits
//! allow, and hands each to a worker as an [`Assignment`]. Every
//! assignment runs as an ordinary attempt whose task (`task`) waits for
//! the worker: heartbeats renew the lease and carry progress, Complete and
//! Fail end it, and a lost worker or an expired lease fails the attempt
//! with a retryable ABORTED, so the operation goes back to the queue under
//! attempt + 1 (or ends ABORTED after its last attempt). Timeouts,
//! cancellation, retries, progress writes and the fenced finish are the
//! attempt's, as for a built-in kind.
//!
//! Fencing: an assignment carries an unguessable lease token, and every
//! call of a worker names the operation, the attempt and the token, and is
//! refused unless its principal may serve the kind. A call for any other
//! attempt, or without the token, changes nothing; the store's finish is
//! fenced by the attempt number too.
//!
//! - `kinds`: declarations, their owners, bounds and storage;
//! - `dispatch`: the claim loop and the hand-out of assignments;
//! - `task`: the attempt's side, waiting for the worker.

mod dispatch;
pub mod kinds;
mod task;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use subtle::ConstantTimeEq;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::debug;

pub(crate) use self::dispatch::run as dispatch;
pub use self::kinds::{DEFAULT_WORKER_LEASE, KindSpec, MAX_OUTSIDE_KINDS, Owner};
use super::error::EngineError;
use super::task::TaskError;
use super::{Engine, Snapshot};
use crate::model::{OperationId, Payload, Progress, Scope, State, Tenant, bounded_message};

/// The most Lease streams one principal may have open on this server, by
/// default.
pub const DEFAULT_MAX_WORKER_STREAMS: usize = 64;

/// How long Complete and Fail wait for the result to be stored.
const RESULT_STORED: Duration = Duration::from_secs(30);

/// Who a worker is and what it takes.
#[derive(Clone, Debug)]
pub struct WorkerSpec {
    /// For logs.
    pub name: String,
    /// The principal it connected as; its streams are counted together.
    pub principal: String,
    /// The kinds it serves; each must be declared.
    pub kinds: Vec<String>,
    /// How many operations it can hold at once.
    pub capacity: usize,
    /// Only this tenant's operations; None for every tenant's.
    pub tenant: Option<Tenant>,
}

/// An operation handed to a worker.
#[derive(Clone, Debug)]
pub struct Assignment {
    pub id: OperationId,
    pub attempt: u32,
    pub kind: String,
    pub tenant: Tenant,
    pub max_attempts: u32,
    pub payload: Payload,
    pub lease_expires: SystemTime,
    pub deadline: SystemTime,
    /// The lease's secret, which every call about it must present.
    pub lease_token: String,
}

/// A message for a worker.
#[derive(Clone, Debug)]
pub enum ToWorker {
    Assign(Assignment),
    /// A client asked to cancel this attempt.
    Cancel {
        id: OperationId,
        attempt: u32,
    },
}

/// The lease a worker's call is about: the operation, the attempt it was
/// assigned and the assignment's token.
#[derive(Clone, Debug)]
pub struct LeaseRef {
    pub id: OperationId,
    pub attempt: u32,
    pub token: String,
}

/// Who calls about a lease: the operations it may reach and the kinds it
/// may serve.
pub struct WorkerCaller<'a> {
    pub scope: Scope,
    pub may_serve: &'a (dyn Fn(&str) -> bool + Send + Sync),
}

/// What a worker said about an attempt, for the attempt that waits on it.
enum Report {
    Heartbeat(Progress),
    Done(Result<Payload, TaskError>),
}

/// An attempt held by a worker.
struct Held {
    attempt: u32,
    /// The worker's session; `u64::MAX` when it has none.
    worker: u64,
    tenant: Tenant,
    kind: String,
    token: String,
    /// Taken by the attempt's task when it starts.
    reports: Option<mpsc::UnboundedReceiver<Report>>,
    sender: mpsc::UnboundedSender<Report>,
    lease: Duration,
    lease_expires: SystemTime,
    cancel_requested: bool,
}

/// A connected worker.
struct Connected {
    spec: WorkerSpec,
    credits: AtomicUsize,
    outbox: mpsc::UnboundedSender<ToWorker>,
}

/// Everything about outside work on this server.
#[derive(Default)]
pub(crate) struct Hub {
    pub(crate) kinds: kinds::Declarations,
    held: Mutex<HashMap<OperationId, Held>>,
    workers: Mutex<HashMap<u64, Arc<Connected>>>,
    next_worker: AtomicU64,
    /// Wakes the claim loop.
    wake: Notify,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a few map operations.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh lease token: 128 random bits, in hex.
fn lease_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn stale(id: OperationId, attempt: u32, why: &str) -> EngineError {
    EngineError::FailedPrecondition {
        reason: "STALE_ATTEMPT",
        message: format!(
            "attempt {attempt} of {} no longer holds the operation: {why}; its result changes nothing",
            id.name()
        ),
    }
}

impl Hub {
    /// Tells the claim loop that outside work may be claimable.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Whether any worker is connected here.
    pub(crate) fn has_workers(&self) -> bool {
        !lock(&self.workers).is_empty()
    }

    /// Hands a report to the attempt that holds the lease `lease`, when
    /// `caller` may: it reaches the operation's tenant, may serve its
    /// kind, and names the attempt and token the assignment gave.
    fn report(
        &self,
        caller: &WorkerCaller<'_>,
        lease: &LeaseRef,
        report: Report,
    ) -> Result<(SystemTime, bool), EngineError> {
        let id = lease.id;
        let mut held = lock(&self.held);
        let Some(entry) = held.get_mut(&id) else {
            return Err(EngineError::NotFound { name: id.name() });
        };
        if !caller.scope.permits(&entry.tenant) {
            return Err(EngineError::NotFound { name: id.name() });
        }
        if !(caller.may_serve)(&entry.kind) {
            return Err(EngineError::PermissionDenied {
                reason: "KIND_NOT_ALLOWED",
                message: format!(
                    "this worker may not serve kind {:?}; the auth file lists the kinds it may lease",
                    entry.kind
                ),
            });
        }
        if entry.attempt != lease.attempt {
            return Err(stale(id, lease.attempt, "a later attempt holds it"));
        }
        if !bool::from(entry.token.as_bytes().ct_eq(lease.token.as_bytes())) {
            return Err(EngineError::FailedPrecondition {
                reason: "LEASE_NOT_HELD",
                message: format!(
                    "attempt {} of {} is not held with this lease_token; only the worker it was assigned to may report on it",
                    lease.attempt,
                    id.name()
                ),
            });
        }
        if let Report::Heartbeat(_) = report {
            entry.lease_expires = SystemTime::now() + entry.lease;
        }
        entry
            .sender
            .send(report)
            .map_err(|_| stale(id, lease.attempt, "the attempt has ended"))?;
        Ok((entry.lease_expires, entry.cancel_requested))
    }

    /// Forgets an attempt and gives its worker the credit back.
    fn release(&self, id: OperationId, attempt: u32) {
        let entry = {
            let mut held = lock(&self.held);
            match held.get(&id) {
                Some(entry) if entry.attempt == attempt => held.remove(&id),
                _ => None,
            }
        };
        let Some(entry) = entry else { return };
        if let Some(declared) = self.kinds.find(&entry.tenant, &entry.kind) {
            declared.leased.fetch_sub(1, Ordering::SeqCst);
        }
        if let Some(worker) = lock(&self.workers).get(&entry.worker) {
            worker.credits.fetch_add(1, Ordering::SeqCst);
        }
        self.wake();
    }
}

/// A worker's end of its session: what to send it, until it is dropped,
/// which is when the worker is gone and loses every lease it holds.
pub struct WorkerSession {
    id: u64,
    hub: Arc<Hub>,
    messages: mpsc::UnboundedReceiver<ToWorker>,
    /// Fires when the server shuts down.
    stopping: CancellationToken,
}

impl WorkerSession {
    /// The next message for the worker; None when the server stops.
    pub async fn next(&mut self) -> Option<ToWorker> {
        tokio::select! {
            message = self.messages.recv() => message,
            () = self.stopping.cancelled() => None,
        }
    }

    /// Gives the worker `count` more credits, up to a total of
    /// `u32::MAX`.
    pub fn add_credits(&self, count: usize) {
        if let Some(worker) = lock(&self.hub.workers).get(&self.id) {
            let _ = worker
                .credits
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| {
                    Some(c.saturating_add(count).min(u32::MAX as usize))
                });
        }
        self.hub.wake();
    }
}

impl Drop for WorkerSession {
    fn drop(&mut self) {
        let Some(worker) = lock(&self.hub.workers).remove(&self.id) else {
            return;
        };
        // Its attempts end: each waiting task sees its reports close.
        let mut held = lock(&self.hub.held);
        for entry in held.values_mut().filter(|h| h.worker == self.id) {
            let (closed, _) = mpsc::unbounded_channel();
            entry.sender = closed;
            entry.reports = None;
        }
        debug!(worker = %worker.spec.name, "worker gone");
    }
}

impl Engine {
    /// Connects a worker: from now on it is assigned operations of its
    /// kinds, up to its credits, until the session is dropped. A principal
    /// may hold at most the configured number of sessions at once.
    pub fn connect_worker(&self, spec: WorkerSpec) -> Result<WorkerSession, EngineError> {
        let inner = &self.inner;
        if inner.shutdown.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        if spec.kinds.is_empty() || spec.capacity == 0 {
            return Err(EngineError::invalid(
                "subscribe",
                "a worker names at least one kind and a capacity of at least 1",
            ));
        }
        let owner = spec.tenant.clone().map_or(Owner::Everyone, Owner::Tenant);
        for kind in &spec.kinds {
            if inner.outside.kinds.governing(&owner, kind).is_none() {
                return Err(unknown_kind(kind));
            }
        }
        let hub = Arc::clone(&inner.outside);
        let (outbox, messages) = mpsc::unbounded_channel();
        let id = hub.next_worker.fetch_add(1, Ordering::SeqCst);
        {
            let mut workers = lock(&hub.workers);
            let open = workers
                .values()
                .filter(|w| w.spec.principal == spec.principal)
                .count();
            let most = inner.config.max_worker_streams;
            if open >= most {
                return Err(EngineError::ResourceExhausted {
                    reason: "TOO_MANY_WORKER_STREAMS",
                    message: format!(
                        "{} has {open} Lease streams open; a principal may have at most {most}",
                        spec.principal
                    ),
                    retry_after: Duration::from_secs(5),
                });
            }
            workers.insert(
                id,
                Arc::new(Connected {
                    credits: AtomicUsize::new(spec.capacity),
                    spec,
                    outbox,
                }),
            );
        }
        hub.wake();
        Ok(WorkerSession {
            id,
            hub,
            messages,
            stopping: inner.shutdown.clone(),
        })
    }

    /// Renews the lease `lease` names and records its progress; returns
    /// when the lease now expires and whether a client asked to cancel.
    pub async fn heartbeat(
        &self,
        caller: &WorkerCaller<'_>,
        lease: &LeaseRef,
        mut progress: Progress,
    ) -> Result<(SystemTime, bool), EngineError> {
        progress.message = bounded_message(progress.message);
        match self
            .inner
            .outside
            .report(caller, lease, Report::Heartbeat(progress))
        {
            Ok(answer) => Ok(answer),
            Err(e) => self.explain(&caller.scope, e, lease).await,
        }
    }

    /// Ends the attempt `lease` names with `result`, and returns once that
    /// is stored. A response or error larger than the configured bound is
    /// refused (the worker may send a smaller one, or fail the attempt).
    pub async fn finish_outside(
        &self,
        caller: &WorkerCaller<'_>,
        lease: &LeaseRef,
        mut result: Result<Payload, TaskError>,
    ) -> Result<(), EngineError> {
        let most = self.inner.config.max_result_size;
        let (field, size) = match &mut result {
            Ok(response) => ("response", response.value.len() + response.type_url.len()),
            Err(failure) => {
                failure.error.message = bounded_message(std::mem::take(&mut failure.error.message));
                ("error", failure.error.size())
            }
        };
        if size > most {
            return Err(EngineError::invalid(
                field,
                format!("the {field} is {size} bytes; this server stores at most {most}"),
            ));
        }
        let id = lease.id;
        let mut sub = self.subscribe(&caller.scope, id).await?;
        if let Err(e) = self
            .inner
            .outside
            .report(caller, lease, Report::Done(result))
        {
            return self.explain(&caller.scope, e, lease).await;
        }
        // The attempt stores the result; wait until the record moved on.
        let attempt = lease.attempt;
        let stored = tokio::time::timeout(RESULT_STORED, async {
            loop {
                match sub.current() {
                    Snapshot::Present(op)
                        if op.attempt != attempt
                            || !matches!(op.state, State::Running | State::Cancelling) =>
                    {
                        return Ok(());
                    }
                    Snapshot::Gone => return Ok(()),
                    _ => {}
                }
                sub.changed().await;
            }
        })
        .await;
        stored.unwrap_or(Err(EngineError::Unavailable {
            reason: "RESULT_NOT_STORED",
            message:
                "the result was taken but is not stored yet; it will be, or the attempt is retried"
                    .into(),
            retry_after: Duration::from_secs(1),
        }))
    }

    /// Turns "not held here" into what it means for the attempt `lease`
    /// names: a stale attempt, a lease held by another node, or nothing at
    /// all.
    async fn explain<T>(
        &self,
        scope: &Scope,
        error: EngineError,
        lease: &LeaseRef,
    ) -> Result<T, EngineError> {
        let EngineError::NotFound { .. } = error else {
            return Err(error);
        };
        let (id, attempt) = (lease.id, lease.attempt);
        let Ok(op) = self.get(scope, id).await else {
            return Err(error);
        };
        if op.attempt != attempt || !matches!(op.state, State::Running | State::Cancelling) {
            return Err(stale(id, attempt, "the operation has moved on"));
        }
        Err(EngineError::FailedPrecondition {
            reason: "LEASED_ELSEWHERE",
            message: format!(
                "attempt {attempt} of {} is held through another server; call the one whose Lease stream it came on",
                id.name()
            ),
        })
    }
}

fn unknown_kind(kind: &str) -> EngineError {
    EngineError::NotFound {
        name: format!("kind {kind:?} (no worker or configuration declared it for this caller)"),
    }
}
