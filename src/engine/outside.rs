//! Kinds served by outside workers, in any language, over a lease stream.
//!
//! An outside kind is declared (by the configuration or by the first worker
//! that serves it) and then behaves like any other kind: operations are
//! created, listed, watched, cancelled, retried and expired the same way.
//! What differs is who claims and runs them. The dispatcher leaves them
//! alone; each connected worker has its own claim loop that takes as many
//! queued operations of its kinds (and of its tenant, unless it serves them
//! all) as it has credits, and hands each to the worker as an
//! [`Assignment`]. Every assignment runs as an ordinary attempt
//! (`attempt::run`) whose task ([`OutsideTask`]) waits for the worker:
//! heartbeats renew the lease and carry progress, Complete and Fail end it,
//! and a lost worker or an expired lease fails the attempt with a retryable
//! ABORTED, so the operation goes back to the queue under attempt + 1 (or
//! ends ABORTED after its last attempt). Timeouts, cancellation, retries,
//! progress writes and the fenced finish are the attempt's, as for a
//! built-in kind.
//!
//! Fencing: every call of a worker names the operation and the attempt it
//! was assigned. A call for any other attempt is refused with
//! FAILED_PRECONDITION (STALE_ATTEMPT) and changes nothing; the store's
//! finish is fenced by the same attempt number too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::error::EngineError;
use super::task::{ErasedTask, ExpireFuture, Kind, TaskContext, TaskError, TaskFuture, TaskPolicy};
use super::{Engine, Inner, attempt};
use crate::model::{Code, Lease, Operation, OperationId, Payload, Progress, Scope, State, Tenant};
use crate::store::ClaimRequest;

/// How long a lease lasts without a heartbeat, unless the kind says.
pub const DEFAULT_WORKER_LEASE: Duration = Duration::from_secs(30);

/// The most outside kinds one server keeps.
pub const MAX_OUTSIDE_KINDS: usize = 1024;

/// The most operations one claim of a worker takes.
const CLAIM_BATCH: usize = 256;

/// How long a worker's claim loop waits after a failed claim.
const CLAIM_RETRY: Duration = Duration::from_secs(1);

/// The longest a worker's claim loop sleeps without looking at the
/// queue, should a signal be missed.
const IDLE_LOOK: Duration = Duration::from_secs(5);

/// How long Complete and Fail wait for the result to be stored.
const RESULT_STORED: Duration = Duration::from_secs(30);

/// A kind served by outside workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindSpec {
    pub name: String,
    /// The most attempts an operation gets, counting the first.
    pub max_attempts: u32,
    /// How long one attempt may run.
    pub attempt_timeout: Duration,
    /// The most operations of the kind leased at once on this server;
    /// None for no limit beyond the workers' credits.
    pub concurrency: Option<usize>,
    /// How long a lease lasts without a heartbeat.
    pub lease: Duration,
}

impl KindSpec {
    /// A kind with the defaults: 3 attempts, an hour each, 30 s leases.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            max_attempts: 3,
            attempt_timeout: Duration::from_secs(3600),
            concurrency: None,
            lease: DEFAULT_WORKER_LEASE,
        }
    }

    fn check(&self) -> Result<(), EngineError> {
        let name = &self.name;
        let valid = !name.is_empty()
            && name.len() <= 128
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !valid {
            return Err(EngineError::invalid(
                "kind",
                format!("{name:?} is not a kind name: 1 to 128 letters, digits, '.', '-' and '_'"),
            ));
        }
        if self.lease < Duration::from_millis(100) {
            return Err(EngineError::invalid(
                "lease_duration",
                "a lease lasts at least 100 ms",
            ));
        }
        Ok(())
    }
}

/// Who a worker is and what it takes.
#[derive(Clone, Debug)]
pub struct WorkerSpec {
    /// For logs.
    pub name: String,
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

/// What a worker said about an attempt, for the attempt that waits on it.
enum Report {
    Heartbeat(Progress),
    Done(Result<Payload, TaskError>),
}

/// An attempt held by a worker.
struct Held {
    attempt: u32,
    worker: u64,
    tenant: Tenant,
    kind: String,
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
    changed: Notify,
    outbox: mpsc::UnboundedSender<ToWorker>,
    gone: CancellationToken,
}

/// A declared kind and how much of it is leased here.
struct Declared {
    spec: KindSpec,
    kind: Kind,
    leased: AtomicUsize,
}

/// Everything about outside work on this server.
#[derive(Default)]
pub(crate) struct Hub {
    kinds: Mutex<HashMap<String, Arc<Declared>>>,
    held: Mutex<HashMap<OperationId, Held>>,
    workers: Mutex<HashMap<u64, Arc<Connected>>>,
    next_worker: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
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
    /// The kind `name`, when it is an outside kind.
    pub(crate) fn kind(&self, name: &str) -> Option<Kind> {
        lock(&self.kinds).get(name).map(|d| d.kind.clone())
    }

    /// The standing declaration of `name`, if any.
    fn standing(&self, name: &str) -> Option<KindSpec> {
        lock(&self.kinds).get(name).map(|d| d.spec.clone())
    }

    /// Every outside kind declared, for listings.
    pub(crate) fn declared(&self) -> Vec<KindSpec> {
        let mut specs: Vec<_> = lock(&self.kinds).values().map(|d| d.spec.clone()).collect();
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        specs
    }

    fn declare(self: &Arc<Self>, spec: KindSpec) -> Result<KindSpec, EngineError> {
        spec.check()?;
        let mut kinds = lock(&self.kinds);
        if let Some(existing) = kinds.get(&spec.name) {
            return Ok(existing.spec.clone());
        }
        if kinds.len() >= MAX_OUTSIDE_KINDS {
            return Err(EngineError::ResourceExhausted {
                reason: "TOO_MANY_KINDS",
                message: format!("this server keeps at most {MAX_OUTSIDE_KINDS} outside kinds"),
                retry_after: Duration::from_secs(60),
            });
        }
        let policy = TaskPolicy {
            retry_safe: true,
            max_attempts: spec.max_attempts.max(1),
            timeout: spec.attempt_timeout,
            concurrency: spec.concurrency.unwrap_or(usize::MAX),
            ..TaskPolicy::default()
        };
        let kind = Kind {
            task: Arc::new(OutsideTask {
                hub: Arc::downgrade(self),
            }),
            policy,
            short_name: None,
        };
        kinds.insert(
            spec.name.clone(),
            Arc::new(Declared {
                spec: spec.clone(),
                kind,
                leased: AtomicUsize::new(0),
            }),
        );
        Ok(spec)
    }

    /// Hands a report to the attempt that holds `id`, when it is
    /// `attempt` and `scope` may see it.
    fn report(
        &self,
        scope: &Scope,
        id: OperationId,
        attempt: u32,
        report: Report,
    ) -> Result<(), EngineError> {
        let mut held = lock(&self.held);
        let Some(entry) = held.get_mut(&id) else {
            return Err(EngineError::NotFound { name: id.name() });
        };
        if !scope.permits(&entry.tenant) {
            return Err(EngineError::NotFound { name: id.name() });
        }
        if entry.attempt != attempt {
            return Err(stale(id, attempt, "a later attempt holds it"));
        }
        if let Report::Heartbeat(_) = report {
            entry.lease_expires = SystemTime::now() + entry.lease;
        }
        entry
            .sender
            .send(report)
            .map_err(|_| stale(id, attempt, "the attempt has ended"))
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
        let limited = lock(&self.kinds).get(&entry.kind).is_some_and(|declared| {
            declared.leased.fetch_sub(1, Ordering::SeqCst);
            declared.spec.concurrency.is_some()
        });
        let workers = lock(&self.workers);
        if let Some(worker) = workers.get(&entry.worker) {
            worker.credits.fetch_add(1, Ordering::SeqCst);
            worker.changed.notify_one();
        }
        if limited {
            // The kind's concurrency has room again: its other workers may
            // claim now. Without a limit only credits bound a worker, and
            // its own came back above.
            for worker in workers
                .values()
                .filter(|w| w.spec.kinds.contains(&entry.kind))
            {
                worker.changed.notify_one();
            }
        }
    }
}

/// The task of every outside kind: waits for the worker that holds the
/// attempt.
struct OutsideTask {
    hub: std::sync::Weak<Hub>,
}

impl ErasedTask for OutsideTask {
    fn validate(&self, _request: &Payload) -> Result<(), EngineError> {
        Ok(())
    }

    fn run(&self, ctx: TaskContext, _request: Payload) -> TaskFuture {
        let hub = self.hub.clone();
        Box::pin(async move {
            let Some(hub) = hub.upgrade() else {
                return Err(lost("the server is stopping"));
            };
            let id = ctx.operation_id();
            let attempt = ctx.attempt();
            let taken = {
                let mut held = lock(&hub.held);
                held.get_mut(&id)
                    .filter(|h| h.attempt == attempt)
                    .and_then(|h| h.reports.take().map(|r| (r, h.lease)))
            };
            // However the attempt ends (even aborted at its deadline), the
            // worker gets its credit back.
            let _release = Release {
                hub: Arc::clone(&hub),
                id,
                attempt,
            };
            let Some((mut reports, lease)) = taken else {
                // Claimed by a worker that is gone, or recovered from a
                // restart: nobody holds it.
                return Err(lost("no worker holds this attempt"));
            };
            wait_for_worker(&hub, &ctx, &mut reports, lease).await
        })
    }

    fn expire(&self, _id: OperationId, _request: Payload) -> ExpireFuture {
        Box::pin(async {})
    }
}

/// Releases an attempt's hold when dropped.
struct Release {
    hub: Arc<Hub>,
    id: OperationId,
    attempt: u32,
}

impl Drop for Release {
    fn drop(&mut self) {
        self.hub.release(self.id, self.attempt);
    }
}

fn lost(why: &str) -> TaskError {
    TaskError::retryable(Code::Aborted, "WORKER_LOST", why.to_owned())
}

async fn wait_for_worker(
    hub: &Hub,
    ctx: &TaskContext,
    reports: &mut mpsc::UnboundedReceiver<Report>,
    lease: Duration,
) -> Result<Payload, TaskError> {
    let id = ctx.operation_id();
    let attempt = ctx.attempt();
    let mut expires = Instant::now() + lease;
    let mut cancel_sent = false;
    loop {
        tokio::select! {
            report = reports.recv() => match report {
                Some(Report::Heartbeat(progress)) => {
                    expires = Instant::now() + lease;
                    ctx.set_progress(progress.percent, progress.message);
                }
                Some(Report::Done(result)) => return result,
                None => return Err(lost("the worker's lease stream ended")),
            },
            () = tokio::time::sleep_until(expires) => {
                return Err(TaskError::retryable(
                    Code::Aborted,
                    "LEASE_EXPIRED",
                    format!(
                        "the worker sent no heartbeat for {}",
                        humantime::format_duration(lease)
                    ),
                ));
            }
            () = ctx.cancellation().cancelled(), if !cancel_sent => {
                cancel_sent = true;
                let worker = {
                    let mut held = lock(&hub.held);
                    held.get_mut(&id).filter(|h| h.attempt == attempt).map(|h| {
                        h.cancel_requested = true;
                        h.worker
                    })
                };
                if let Some(worker) = worker.and_then(|w| lock(&hub.workers).get(&w).cloned()) {
                    let _ = worker.outbox.send(ToWorker::Cancel { id, attempt });
                }
            }
        }
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

    /// Gives the worker `count` more credits.
    pub fn add_credits(&self, count: usize) {
        if let Some(worker) = lock(&self.hub.workers).get(&self.id) {
            worker.credits.fetch_add(count, Ordering::SeqCst);
            worker.changed.notify_one();
        }
    }
}

impl Drop for WorkerSession {
    fn drop(&mut self) {
        let Some(worker) = lock(&self.hub.workers).remove(&self.id) else {
            return;
        };
        worker.gone.cancel();
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
    /// Declares an outside kind. The first declaration of a name stands,
    /// across restarts and across the nodes of a shared store; the
    /// standing one is returned.
    pub async fn declare_kind(&self, spec: KindSpec) -> Result<KindSpec, EngineError> {
        if self.inner.registry.contains(&spec.name) {
            return Err(EngineError::FailedPrecondition {
                reason: "KIND_IS_BUILT_IN",
                message: format!("{} is a built-in kind, not an outside one", spec.name),
            });
        }
        spec.check()?;
        if let Some(kind) = self.inner.outside.standing(&spec.name) {
            return Ok(kind);
        }
        let stored = self
            .inner
            .secrets
            .secret(&format!("{DECLARED}{}", spec.name), &encode(&spec))
            .await
            .map_err(EngineError::from)?;
        let standing = decode(&spec.name, &stored).unwrap_or(spec);
        self.inner.outside.declare(standing)
    }

    /// Declares the outside kinds the store remembers.
    pub(super) async fn load_declared_kinds(&self) -> Result<(), EngineError> {
        let stored = self
            .inner
            .secrets
            .secrets_named(DECLARED)
            .await
            .map_err(EngineError::from)?;
        for (key, value) in stored {
            let name = &key[DECLARED.len()..];
            match decode(name, &value) {
                Some(spec) if !self.inner.registry.contains(name) => {
                    self.inner.outside.declare(spec)?;
                }
                Some(_) => {}
                None => warn!(
                    kind = name,
                    "a stored kind declaration is unreadable; skipped"
                ),
            }
        }
        Ok(())
    }

    /// Whether `name` is a declared outside kind.
    pub fn is_outside_kind(&self, name: &str) -> bool {
        self.inner.outside.kind(name).is_some()
    }

    /// Whether `name` is a declared outside kind, here or in the store (a
    /// worker of another node may have declared it since this one opened).
    pub async fn find_outside_kind(&self, name: &str) -> Result<bool, EngineError> {
        if self.is_outside_kind(name) {
            return Ok(true);
        }
        let key = format!("{DECLARED}{name}");
        let stored = self
            .inner
            .secrets
            .secrets_named(&key)
            .await
            .map_err(EngineError::from)?;
        let Some(spec) = stored
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| decode(name, v))
        else {
            return Ok(false);
        };
        self.inner.outside.declare(spec)?;
        Ok(true)
    }

    /// The outside kinds declared so far.
    pub fn outside_kinds(&self) -> Vec<KindSpec> {
        self.inner.outside.declared()
    }

    /// Connects a worker: from now on it is assigned operations of its
    /// kinds, up to its credits, until the session is dropped.
    pub fn connect_worker(&self, spec: WorkerSpec) -> Result<WorkerSession, EngineError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        for kind in &spec.kinds {
            if self.inner.outside.kind(kind).is_none() {
                return Err(unknown_kind(kind));
            }
        }
        if spec.kinds.is_empty() || spec.capacity == 0 {
            return Err(EngineError::invalid(
                "subscribe",
                "a worker names at least one kind and a capacity of at least 1",
            ));
        }
        let hub = Arc::clone(&self.inner.outside);
        let id = hub.next_worker.fetch_add(1, Ordering::SeqCst);
        let (outbox, messages) = mpsc::unbounded_channel();
        let connected = Arc::new(Connected {
            credits: AtomicUsize::new(spec.capacity),
            spec,
            changed: Notify::new(),
            outbox,
            gone: self.inner.shutdown.child_token(),
        });
        lock(&hub.workers).insert(id, Arc::clone(&connected));
        self.inner
            .tracker
            .spawn(claim_loop(Arc::clone(&self.inner), id, connected));
        Ok(WorkerSession {
            id,
            hub,
            messages,
            stopping: self.inner.shutdown.clone(),
        })
    }

    /// Renews the lease of `attempt` of `id` and records its progress;
    /// returns when the lease now expires and whether a client asked to
    /// cancel.
    pub async fn heartbeat(
        &self,
        scope: &Scope,
        id: OperationId,
        attempt: u32,
        progress: Progress,
    ) -> Result<(SystemTime, bool), EngineError> {
        let hub = &self.inner.outside;
        if let Err(e) = hub.report(scope, id, attempt, Report::Heartbeat(progress)) {
            return self.explain(scope, e, id, attempt).await;
        }
        let held = lock(&hub.held);
        let entry = held
            .get(&id)
            .ok_or_else(|| stale(id, attempt, "the attempt has ended"))?;
        Ok((entry.lease_expires, entry.cancel_requested))
    }

    /// Ends `attempt` of `id` with `result`, and returns once that is
    /// stored.
    pub async fn finish_outside(
        &self,
        scope: &Scope,
        id: OperationId,
        attempt: u32,
        result: Result<Payload, TaskError>,
    ) -> Result<(), EngineError> {
        let mut sub = self.subscribe(scope, id).await?;
        if let Err(e) = self
            .inner
            .outside
            .report(scope, id, attempt, Report::Done(result))
        {
            return self.explain(scope, e, id, attempt).await;
        }
        // The attempt stores the result; wait until the record moved on.
        let stored = tokio::time::timeout(RESULT_STORED, async {
            loop {
                match sub.current() {
                    super::Snapshot::Present(op)
                        if op.attempt != attempt
                            || !matches!(op.state, State::Running | State::Cancelling) =>
                    {
                        return Ok(());
                    }
                    super::Snapshot::Gone => return Ok(()),
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

    /// Turns "not held here" into what it means for `attempt` of `id`:
    /// a stale attempt, a lease held by another node, or nothing at all.
    async fn explain<T>(
        &self,
        scope: &Scope,
        error: EngineError,
        id: OperationId,
        attempt: u32,
    ) -> Result<T, EngineError> {
        let EngineError::NotFound { .. } = error else {
            return Err(error);
        };
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

/// Where declarations are kept in the store, before the kind's name.
const DECLARED: &str = "outside-kind:";

/// A declaration as stored: JSON, so that it can gain fields.
fn encode(spec: &KindSpec) -> Vec<u8> {
    serde_json::json!({
        "max_attempts": spec.max_attempts,
        "attempt_timeout_ms": u64::try_from(spec.attempt_timeout.as_millis()).unwrap_or(u64::MAX),
        "concurrency": spec.concurrency,
        "lease_ms": u64::try_from(spec.lease.as_millis()).unwrap_or(u64::MAX),
    })
    .to_string()
    .into_bytes()
}

fn decode(name: &str, bytes: &[u8]) -> Option<KindSpec> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    Some(KindSpec {
        name: name.to_owned(),
        max_attempts: u32::try_from(value["max_attempts"].as_u64()?).ok()?,
        attempt_timeout: Duration::from_millis(value["attempt_timeout_ms"].as_u64()?),
        concurrency: value["concurrency"]
            .as_u64()
            .and_then(|n| usize::try_from(n).ok()),
        lease: Duration::from_millis(value["lease_ms"].as_u64()?),
    })
}

fn unknown_kind(kind: &str) -> EngineError {
    EngineError::NotFound {
        name: format!("kind {kind:?} (no worker or configuration declared it)"),
    }
}

/// Takes work for one worker while it has credits, until it is gone.
async fn claim_loop(inner: Arc<Inner>, worker_id: u64, worker: Arc<Connected>) {
    let hub = Arc::clone(&inner.outside);
    let mut work = inner.ops.work();
    loop {
        if worker.gone.is_cancelled() {
            return;
        }
        let changed = worker.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        work.borrow_and_update();
        let credits = worker.credits.load(Ordering::SeqCst);
        let mut took = 0;
        let mut next_due: Option<SystemTime> = None;
        if credits > 0 {
            let wants: Vec<(String, usize)> = worker
                .spec
                .kinds
                .iter()
                .filter_map(|name| {
                    let declared = lock(&hub.kinds).get(name).cloned()?;
                    let room = declared.spec.concurrency.map_or(usize::MAX, |limit| {
                        limit.saturating_sub(declared.leased.load(Ordering::SeqCst))
                    });
                    let n = credits.min(room).min(CLAIM_BATCH);
                    (n > 0).then(|| (name.clone(), n))
                })
                .collect();
            // One claim per kind at most, so that credits are never
            // overdrawn across kinds.
            for (kind, n) in wants {
                let n = n.min(worker.credits.load(Ordering::SeqCst));
                if n == 0 {
                    break;
                }
                let lease = inner.ops.shared().then(|| Lease {
                    holder: inner.config.node.clone(),
                    expires: inner.clock.now() + inner.config.lease,
                });
                let request = ClaimRequest {
                    wants: vec![(kind, n)],
                    lease,
                    tenant: worker.spec.tenant.clone(),
                };
                match inner.ops.claim(&request, inner.clock.now()).await {
                    Ok(claimed) => {
                        next_due = match (next_due, claimed.next_due) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                        for op in super::lease::fresh(&inner, claimed.operations).await {
                            took += 1;
                            assign(&inner, worker_id, &worker, op);
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "a worker's claim failed; trying again shortly");
                        tokio::select! {
                            () = worker.gone.cancelled() => return,
                            () = tokio::time::sleep(CLAIM_RETRY) => {}
                        }
                    }
                }
            }
        }
        if took > 0 {
            continue;
        }
        tokio::select! {
            () = worker.gone.cancelled() => return,
            _ = work.changed() => {}
            () = &mut changed => {}
            // A retry coming due signals nothing: wake when it is due.
            () = tokio::time::sleep(next_due.map_or(IDLE_LOOK, |due| inner.clock.until(due).min(IDLE_LOOK))) => {}
        }
    }
}

/// Hands a claimed operation to `worker` and starts its attempt.
fn assign(inner: &Arc<Inner>, worker_id: u64, worker: &Connected, op: Operation) {
    let hub = &inner.outside;
    let Some(declared) = lock(&hub.kinds).get(&op.kind).cloned() else {
        return;
    };
    worker.credits.fetch_sub(1, Ordering::SeqCst);
    declared.leased.fetch_add(1, Ordering::SeqCst);
    let now = SystemTime::now();
    let lease_expires = now + declared.spec.lease;
    let (sender, reports) = mpsc::unbounded_channel();
    lock(&hub.held).insert(
        op.id,
        Held {
            attempt: op.attempt,
            worker: worker_id,
            tenant: op.tenant.clone(),
            kind: op.kind.clone(),
            reports: Some(reports),
            sender,
            lease: declared.spec.lease,
            lease_expires,
            cancel_requested: false,
        },
    );
    let assignment = Assignment {
        id: op.id,
        attempt: op.attempt,
        kind: op.kind.clone(),
        tenant: op.tenant.clone(),
        max_attempts: op.max_attempts,
        payload: op.request.clone(),
        lease_expires,
        deadline: now + op.timeout,
    };
    inner.config.metrics.started(
        &op.kind,
        op.start_time
            .and_then(|s| s.duration_since(op.create_time).ok())
            .unwrap_or_default(),
        op.attempt == 1,
    );
    if worker.outbox.send(ToWorker::Assign(assignment)).is_err() {
        // Gone between the claim and now: the attempt finds nobody and
        // goes back to the queue.
        if let Some(h) = lock(&hub.held).get_mut(&op.id) {
            h.reports = None;
        }
    }
    let kind = declared.kind.clone();
    inner
        .tracker
        .spawn(attempt::run(Arc::clone(inner), op, kind, true));
}
