//! The engine: accepts operations, runs them on workers, and answers
//! questions about them. It speaks only its own types; `grpc/` translates.
//!
//! - `operation`: the record and its state transitions;
//! - `task`: the [`Task`] trait for operation kinds, and the registry;
//! - `queue` and `worker`: event-driven dispatch;
//! - `watch`: the hub that Wait and Watch follow;
//! - `filter` and `page_token`: List;
//! - `scope` and `quota`: tenants, and what each may use.

pub mod error;
pub mod filter;
pub mod id;
pub mod notify;
pub mod operation;
pub mod page_token;
mod queue;
pub mod quota;
mod schedule;
pub mod scope;
pub mod task;
pub mod watch;
mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub use self::error::EngineError;
pub use self::filter::Filter;
pub use self::id::{OperationId, RequestId};
pub use self::operation::{Code, Operation, OperationError, Outcome, Payload, Progress, State};
pub use self::quota::{TenantQuotas, WatchPermit};
pub use self::scope::{DEFAULT_TENANT, Scope};
pub use self::task::{FieldViolation, Registry, Task, TaskContext, TaskError, TaskPolicy};
pub use self::watch::{Snapshot, Subscription};

use self::page_token::PageTokens;
use self::queue::{Full, Queue};
use self::quota::Quotas;
use self::worker::Running;
use crate::store::{Change, Created, DynStore, ListQuery};

/// The default List page size.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// The largest List page; bigger requests are cut down to it.
pub const MAX_PAGE_SIZE: usize = 1000;
/// The most records one List page examines when a filter is selective.
pub const LIST_SCAN_BUDGET: usize = 10_000;
/// The longest filter accepted.
pub const MAX_FILTER_LEN: usize = 1024;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How many tasks run at once.
    pub workers: usize,
    /// How many operations may wait for a worker before creates are refused.
    pub max_queued: usize,
    /// The least time between two stored progress reports of one task.
    pub progress_interval: Duration,
    /// How long a task may take to stop when the server shuts down (or its
    /// deadline passes) before it is aborted.
    pub shutdown_grace: Duration,
    /// How long done operations are kept before they expire.
    pub retention: Duration,
    /// Whether webhook callbacks may point at loopback and private
    /// addresses.
    pub allow_private_callbacks: bool,
    /// What each tenant may use.
    pub quotas: TenantQuotas,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_queued: 100_000,
            progress_interval: Duration::from_millis(100),
            shutdown_grace: Duration::from_secs(10),
            retention: Duration::from_secs(7 * 24 * 3600),
            allow_private_callbacks: false,
            quotas: TenantQuotas::default(),
        }
    }
}

/// Per-call options of a create.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    /// The tenant that will own the operation.
    pub tenant: String,
    /// The idempotency key (AIP-155).
    pub request_id: Option<RequestId>,
    /// A shorter execution timeout per attempt than the kind's default.
    pub timeout: Option<Duration>,
    /// A webhook to call on the operation's state changes.
    pub notification: Option<notify::Notification>,
    /// What identifies the request for idempotency checks, when the encoded
    /// request does not (an upload stored under a fresh name, say). By
    /// default the encoded request itself is used.
    pub fingerprint: Option<[u8; 32]>,
}

/// How many expired operations the sweeper deletes in one batch.
const SWEEP_BATCH: usize = 1000;

/// A page of operations.
#[derive(Debug, Clone, Default)]
pub struct OperationPage {
    /// Newest first.
    pub operations: Vec<Operation>,
    /// Empty on the last page.
    pub next_page_token: String,
}

/// The running engine; a cheap-clone handle.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    store: DynStore,
    registry: Registry,
    config: EngineConfig,
    queue: Queue,
    schedule: schedule::Schedule,
    hub: Arc<watch::Hub>,
    running: Mutex<HashMap<OperationId, Running>>,
    page_tokens: PageTokens,
    quotas: Arc<Quotas>,
    tracker: TaskTracker,
    /// Fires when shutdown begins: workers stop taking work, tasks are asked
    /// to stop, watch streams end.
    shutdown: CancellationToken,
    /// Fires when the grace period is over: remaining tasks are aborted.
    hard_stop: CancellationToken,
}

impl Inner {
    fn running_lock(&self) -> std::sync::MutexGuard<'_, HashMap<OperationId, Running>> {
        // Each critical section is one insert, remove or lookup, so a
        // poisoned lock holds consistent data.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes what a done operation left outside the store.
    async fn expire_artifacts(&self, op: &Operation) {
        if let Some(kind) = self.registry.get(&op.kind) {
            kind.task.expire(op.id, op.request.clone()).await;
        }
    }

    /// Puts a queued operation in line: now, or when its backoff ends.
    fn enqueue(&self, op: &Operation) {
        match op.not_before {
            Some(at) => self.schedule.add(op.id, &op.tenant, at),
            None => self.queue.push_recovered(op.id, &op.tenant),
        }
    }

    /// Tells the task running `op` on this process to stop, when a client
    /// asked for that.
    fn deliver_cancellation(&self, op: &Operation) {
        if op.state == State::Cancelling
            && let Some(running) = self.running_lock().get(&op.id)
        {
            running.cancel_by_client();
        }
    }
}

impl Engine {
    /// Opens the engine over a store. Nothing runs until [`Engine::start`];
    /// reads already work, so a server can answer while it recovers.
    pub async fn open(
        store: DynStore,
        registry: Registry,
        config: EngineConfig,
    ) -> Result<Self, EngineError> {
        let fresh_key: [u8; 32] = rand::random();
        let key = store
            .secret("page-token-key", &fresh_key)
            .await
            .map_err(EngineError::Store)?;
        let inner = Arc::new(Inner {
            queue: Queue::new(config.max_queued, config.quotas.max_queued),
            quotas: Quotas::new(&config.quotas),
            schedule: schedule::Schedule::default(),
            store,
            registry,
            config,
            hub: Arc::default(),
            running: Mutex::default(),
            page_tokens: PageTokens::new(key),
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
        });
        inner.tracker.spawn(follow_feed(Arc::clone(&inner)));
        Ok(Self { inner })
    }

    /// Recovers unfinished operations and starts the workers, the retry
    /// scheduler and the retention sweeper. Queued operations are queued
    /// again (after their backoff, if they wait for a retry); ones whose
    /// process died mid-attempt run again as attempt + 1, or end ABORTED
    /// when their kind is not retry-safe or they used up their attempts.
    pub async fn start(&self) -> Result<(), EngineError> {
        let inner = &self.inner;
        let unfinished = inner.store.unfinished().await.map_err(EngineError::Store)?;
        let (mut requeued, mut ended) = (0usize, 0usize);
        for op in unfinished {
            let op = if op.state == State::Queued {
                op
            } else {
                let retry = orphan_retry(inner.registry.policy(&op.kind), &op);
                match inner.store.recover_orphan(op.id, retry).await {
                    Ok(Some(op)) => op,
                    Ok(None) => continue,
                    Err(e) => return Err(EngineError::Store(e)),
                }
            };
            if op.state == State::Queued {
                inner.enqueue(&op);
                requeued += 1;
            } else {
                ended += 1;
            }
        }
        info!(requeued, ended, "recovery done");
        let scheduler = Arc::clone(inner);
        inner.tracker.spawn(async move {
            scheduler
                .schedule
                .run(&scheduler.queue, &scheduler.shutdown)
                .await
        });
        inner.tracker.spawn(sweep(Arc::clone(inner)));
        for n in 0..inner.config.workers.max(1) {
            inner
                .tracker
                .spawn(worker::run_worker(Arc::clone(inner), n));
        }
        Ok(())
    }

    /// Fires once shutdown has begun.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Stops the engine: no new work, running tasks asked to stop and given
    /// the grace period, then aborted. Interrupted attempts are put back in
    /// the queue so they run again after restart. Ends with a flush.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.shutdown.cancel();
        inner.tracker.close();
        if tokio::time::timeout(inner.config.shutdown_grace, inner.tracker.wait())
            .await
            .is_err()
        {
            warn!("tasks still running after the grace period; aborting them");
            inner.hard_stop.cancel();
            inner.tracker.wait().await;
        }
        if let Err(e) = inner.store.flush().await {
            warn!(error = %e, "final flush failed");
        }
    }

    /// The kinds this engine runs.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Creates an operation of kind `T` and queues it. With a request_id
    /// seen before, returns the earlier operation (or ALREADY_EXISTS when
    /// the request differs).
    pub async fn submit<T: Task>(
        &self,
        request: &T::Request,
        options: SubmitOptions,
    ) -> Result<Operation, EngineError> {
        self.submit_payload(T::KIND, Payload::pack(request), options)
            .await
    }

    /// Creates an operation of a registered kind from an encoded request.
    pub async fn submit_payload(
        &self,
        kind: &str,
        request: Payload,
        options: SubmitOptions,
    ) -> Result<Operation, EngineError> {
        let inner = &self.inner;
        if inner.shutdown.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        let registered = inner
            .registry
            .get(kind)
            .ok_or_else(|| EngineError::Unimplemented {
                reason: "KIND_NOT_REGISTERED",
                message: format!("kind {kind:?} is not registered on this server"),
            })?;
        registered.task.validate(&request)?;
        if let Some(notification) = &options.notification {
            crate::webhook::guard::check_url(
                &notification.callback_url,
                inner.config.allow_private_callbacks,
            )
            .await
            .map_err(|reason| EngineError::invalid("notification.callback_url", reason))?;
        }
        let timeout = match options.timeout {
            Some(t) if t.is_zero() => {
                return Err(EngineError::invalid("timeout", "timeout must be positive"));
            }
            Some(t) => t.min(registered.policy.timeout),
            None => registered.policy.timeout,
        };
        let identity: &[u8] = match &options.fingerprint {
            Some(fingerprint) => fingerprint,
            None => &request.value,
        };
        let digest = request_digest(kind, &request.type_url, identity);
        let tenant = options.tenant;
        inner.quotas.create(&tenant)?;
        match inner.queue.admit(&tenant) {
            Ok(()) => {}
            Err(Full::Server) => {
                return Err(EngineError::ResourceExhausted {
                    reason: "QUEUE_FULL",
                    message: "the server has as many operations waiting for a worker as it may; retry later".into(),
                    retry_after: Duration::from_secs(1),
                });
            }
            Err(Full::Tenant) => {
                return Err(EngineError::ResourceExhausted {
                    reason: "TENANT_QUEUE_FULL",
                    message: "this tenant has as many operations waiting for a worker as it may; retry later".into(),
                    retry_after: Duration::from_secs(1),
                });
            }
        }
        let limits = operation::Limits {
            timeout,
            max_attempts: registered.policy.max_attempts.max(1),
        };
        let mut op = Operation::new(
            kind,
            request,
            options.request_id,
            digest,
            limits,
            crate::store::now(),
        );
        op.notification = options.notification;
        op.tenant = tenant.clone();
        let name = op.id.name();
        let created = inner.store.create(op).await;
        match &created {
            Ok(Created::New(op)) => inner.queue.push_admitted(op.id, &tenant),
            Ok(Created::Existing(_)) | Err(_) => inner.queue.cancel_admission(&tenant),
        }
        match created {
            Ok(Created::New(op) | Created::Existing(op)) => Ok(op),
            Err(e) => Err(EngineError::from_store(name, e)),
        }
    }

    /// Reads one operation, if `scope` reaches it.
    pub async fn get(&self, scope: &Scope, id: OperationId) -> Result<Operation, EngineError> {
        match self.inner.store.get(id).await.map_err(EngineError::Store)? {
            Some(op) if scope.permits(&op.tenant) => Ok(op),
            _ => Err(EngineError::NotFound { name: id.name() }),
        }
    }

    /// Lists the operations `scope` reaches, newest first.
    pub async fn list(
        &self,
        scope: &Scope,
        filter: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<OperationPage, EngineError> {
        let limit = match page_size {
            n if n < 0 => {
                return Err(EngineError::invalid(
                    "page_size",
                    format!("page_size must not be negative (got {n})"),
                ));
            }
            0 => DEFAULT_PAGE_SIZE,
            n => (n as usize).min(MAX_PAGE_SIZE),
        };
        if filter.len() > MAX_FILTER_LEN {
            return Err(EngineError::invalid(
                "filter",
                format!(
                    "filter is {} bytes long; the limit is {MAX_FILTER_LEN}",
                    filter.len()
                ),
            ));
        }
        let mut filter =
            Filter::parse(filter).map_err(|e| EngineError::invalid("filter", e.to_string()))?;
        if let Scope::Tenant(tenant) = scope {
            filter.restrict_to_tenant(tenant);
        }
        let after = if page_token.is_empty() {
            None
        } else {
            Some(
                self.inner
                    .page_tokens
                    .open(page_token, &filter)
                    .map_err(|e| EngineError::invalid("page_token", e.to_string()))?,
            )
        };
        let page = self
            .inner
            .store
            .list(ListQuery {
                after,
                tenant: match scope {
                    Scope::Tenant(tenant) if !tenant.is_empty() => Some(tenant),
                    _ => None,
                },
                filter: &filter,
                limit,
                scan_budget: LIST_SCAN_BUDGET.max(limit),
            })
            .await
            .map_err(EngineError::Store)?;
        Ok(OperationPage {
            next_page_token: page
                .resume_after
                .map(|id| self.inner.page_tokens.issue(id, &filter))
                .unwrap_or_default(),
            operations: page.operations,
        })
    }

    /// Asks for an operation to stop; see [`Operation::cancel`].
    pub async fn cancel(&self, scope: &Scope, id: OperationId) -> Result<Operation, EngineError> {
        if *scope != Scope::All {
            // The tenant never changes, so checking it first is enough.
            self.get(scope, id).await?;
        }
        let op = self
            .inner
            .store
            .cancel(id)
            .await
            .map_err(|e| EngineError::from_store(id.name(), e))?;
        // The change feed tells the worker too (on every node); doing it here
        // as well saves a hop on this one.
        self.inner.deliver_cancellation(&op);
        if op.state == State::Cancelled {
            self.inner.queue.remove(id);
        }
        Ok(op)
    }

    /// Deletes a finished operation, with whatever it left outside the
    /// store.
    pub async fn delete(&self, scope: &Scope, id: OperationId) -> Result<(), EngineError> {
        let op = self.get(scope, id).await?;
        op.check_deletable()
            .map_err(|e| EngineError::from_store(id.name(), e.into()))?;
        self.inner.expire_artifacts(&op).await;
        self.inner
            .store
            .delete(id)
            .await
            .map_err(|e| EngineError::from_store(id.name(), e))
    }

    /// Follows one operation that `scope` reaches. The subscription starts
    /// at its current state.
    pub async fn subscribe(
        &self,
        scope: &Scope,
        id: OperationId,
    ) -> Result<Subscription, EngineError> {
        let mut sub = self.inner.hub.subscribe(id);
        if let Snapshot::Loading = sub.current() {
            let loaded = match self.inner.store.get(id).await.map_err(EngineError::Store)? {
                Some(op) => Snapshot::Present(Arc::new(op)),
                None => Snapshot::Gone,
            };
            self.inner.hub.offer(id, loaded);
        }
        match sub.current() {
            Snapshot::Present(op) if scope.permits(&op.tenant) => Ok(sub),
            _ => Err(EngineError::NotFound { name: id.name() }),
        }
    }

    /// Counts one more Watch stream against `tenant`'s limit, until the
    /// permit is dropped.
    pub fn watch_permit(&self, tenant: &str) -> Result<WatchPermit, EngineError> {
        self.inner.quotas.watch(tenant)
    }

    /// Waits until the operation is done, the timeout passes or the server
    /// shuts down, and returns its latest state.
    pub async fn wait(
        &self,
        scope: &Scope,
        id: OperationId,
        timeout: Duration,
    ) -> Result<Operation, EngineError> {
        let mut sub = self.subscribe(scope, id).await?;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            let latest = match sub.current() {
                Snapshot::Present(op) => op,
                Snapshot::Gone => return Err(EngineError::NotFound { name: id.name() }),
                Snapshot::Loading => unreachable!("subscribe loads the state"),
            };
            if latest.is_done() {
                return Ok(Arc::unwrap_or_clone(latest));
            }
            tokio::select! {
                _ = sub.changed() => {}
                _ = &mut deadline => return Ok(Arc::unwrap_or_clone(latest)),
                _ = self.inner.shutdown.cancelled() => return Ok(Arc::unwrap_or_clone(latest)),
            }
        }
    }

    /// The webhook deliveries of an operation, oldest first.
    pub async fn deliveries(
        &self,
        scope: &Scope,
        id: OperationId,
    ) -> Result<Vec<notify::Delivery>, EngineError> {
        self.get(scope, id).await?;
        self.inner
            .store
            .deliveries(id)
            .await
            .map_err(EngineError::Store)
    }

    /// The store, for components that run beside the engine (the webhook
    /// deliverer).
    pub fn store(&self) -> &DynStore {
        &self.inner.store
    }

    /// How many operations wait for a worker.
    pub fn queue_depth(&self) -> usize {
        self.inner.queue.depth()
    }

    /// How many operations have at least one watcher.
    pub fn watched_operations(&self) -> usize {
        self.inner.hub.len()
    }
}

/// Decides whether an attempt interrupted by a crash may run again.
fn orphan_retry(policy: Option<&TaskPolicy>, op: &Operation) -> operation::OrphanRetry {
    use operation::OrphanRetry;
    match policy {
        Some(policy) if !policy.retry_safe => OrphanRetry::Refused(format!(
            "attempt {} was interrupted by a server restart, and kind {:?} is not safe to run twice",
            op.attempt, op.kind
        )),
        Some(_) if op.attempt >= op.max_attempts => OrphanRetry::Refused(format!(
            "attempt {} of {} was interrupted by a server restart; no attempts are left",
            op.attempt, op.max_attempts
        )),
        // An unknown kind is queued again: its worker ends it with a clear
        // error, and registering the kind later lets it run.
        _ => OrphanRetry::Allowed,
    }
}

/// Deletes done operations once they are older than the retention, in
/// bounded batches, often enough that none outlives its expiry by much.
async fn sweep(inner: Arc<Inner>) {
    let retention = inner.config.retention;
    let interval = (retention / 4).clamp(Duration::from_millis(250), Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let Some(cutoff) = std::time::SystemTime::now().checked_sub(retention) else {
            continue;
        };
        loop {
            let batch = match inner.store.expired(cutoff, SWEEP_BATCH).await {
                Ok(batch) => batch,
                Err(e) => {
                    warn!(error = %e, "could not read expired operations");
                    break;
                }
            };
            for op in &batch {
                inner.expire_artifacts(op).await;
            }
            let ids: Vec<OperationId> = batch.iter().map(|op| op.id).collect();
            match inner.store.purge(&ids).await {
                Ok(purged) => debug!(purged, "expired operations deleted"),
                Err(e) => {
                    warn!(error = %e, "could not delete expired operations");
                    break;
                }
            }
            if ids.len() < SWEEP_BATCH || inner.shutdown.is_cancelled() {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
}

/// Identifies a request for idempotency checks: kind, type, and the bytes
/// (or fingerprint) that stand for its content.
fn request_digest(kind: &str, type_url: &str, identity: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in [kind.as_bytes(), type_url.as_bytes(), identity] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// Follows the store's change feed: updates the watch hub, and delivers
/// cancellation requests to tasks running here (they may have been made on
/// another node).
async fn follow_feed(inner: Arc<Inner>) {
    let mut feed = inner.store.subscribe();
    loop {
        let change = tokio::select! {
            _ = inner.shutdown.cancelled() => break,
            change = feed.recv() => change,
        };
        match change {
            Ok(change) => {
                inner.hub.publish(&change);
                if let Change::Updated(op) = &change {
                    inner.deliver_cancellation(op);
                }
            }
            Err(RecvError::Lagged(missed)) => {
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
    let running: Vec<OperationId> = inner.running_lock().keys().copied().collect();
    for id in inner.hub.watched().into_iter().chain(running) {
        match inner.store.get(id).await {
            Ok(Some(op)) => {
                inner.deliver_cancellation(&op);
                inner.hub.offer(id, Snapshot::Present(Arc::new(op)));
            }
            Ok(None) => inner.hub.offer(id, Snapshot::Gone),
            Err(e) => warn!(%id, error = %e, "could not re-read operation"),
        }
    }
}
