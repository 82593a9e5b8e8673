//! The engine: accepts operations, runs them on workers, and answers
//! questions about them. It speaks only the model's types and its own;
//! `grpc/` translates.
//!
//! - `admission`: creates, from the checks to the durable write;
//! - `listing`: List, with its filter and signed page tokens;
//! - `recovery`: what a restart does with unfinished operations;
//! - `retention`: the sweeper of expired operations;
//! - `feed`: follows the store's change feed into the watch hub;
//! - `task`: the [`Task`] trait for operation kinds, and the registry;
//! - `queue`, `schedule` and `worker`: event-driven dispatch;
//! - `watch`: the hub that Wait and Watch follow;
//! - `quota`: what each tenant may use; `clock`: the time source.
//!
//! **Invariant:** the engine knows neither tonic nor sled.

mod admission;
pub mod clock;
pub mod error;
mod feed;
mod listing;
pub mod page_token;
mod queue;
pub mod quota;
mod recovery;
mod retention;
mod schedule;
pub mod task;
pub mod watch;
mod worker;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

pub use self::admission::{CallbackGuard, SubmitOptions};
pub use self::clock::Clock;
pub use self::error::EngineError;
pub use self::listing::{
    DEFAULT_PAGE_SIZE, LIST_SCAN_BUDGET, MAX_FILTER_LEN, MAX_PAGE_SIZE, OperationPage,
};
pub use self::quota::{TenantQuotas, WatchPermit};
pub use self::task::{Registry, Task, TaskContext, TaskError, TaskPolicy};
pub use self::watch::{Snapshot, Subscription};
/// The model types a [`Task`] implementation needs.
pub use crate::model::{Code, FieldViolation, OperationId, Payload};

use self::page_token::PageTokens;
use self::queue::Queue;
use self::quota::Quotas;
use self::worker::Running;
use crate::model::{Delivery, Edit, Operation, Scope, State, Tenant};
use crate::store::{OperationStore, OutboxStore, Stores};

/// Engine settings.
#[derive(Clone)]
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
    /// What each tenant may use.
    pub quotas: TenantQuotas,
    /// Checks webhook callback URLs before an operation that names one is
    /// created; None accepts any URL.
    pub callback_guard: Option<Arc<dyn CallbackGuard>>,
    /// Where times come from.
    pub clock: Clock,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_queued: 100_000,
            progress_interval: Duration::from_millis(100),
            shutdown_grace: Duration::from_secs(10),
            retention: Duration::from_secs(7 * 24 * 3600),
            quotas: TenantQuotas::default(),
            callback_guard: None,
            clock: Clock::system(),
        }
    }
}

impl fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineConfig")
            .field("workers", &self.workers)
            .field("max_queued", &self.max_queued)
            .field("progress_interval", &self.progress_interval)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("retention", &self.retention)
            .field("quotas", &self.quotas)
            .field("callback_guard", &self.callback_guard.is_some())
            .field("clock", &self.clock)
            .finish()
    }
}

/// The running engine; a cheap-clone handle.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    ops: Arc<dyn OperationStore>,
    outbox: Arc<dyn OutboxStore>,
    registry: Registry,
    config: EngineConfig,
    clock: Clock,
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
            Some(at) => self.schedule.add(op.id, &op.tenant, self.clock.until(at)),
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
    /// Opens the engine over a backend's stores. Nothing runs until
    /// [`Engine::start`]; reads already work, so a server can answer while
    /// it recovers.
    pub async fn open(
        stores: &Stores,
        registry: Registry,
        config: EngineConfig,
    ) -> Result<Self, EngineError> {
        let fresh_key: [u8; 32] = rand::random();
        let key = stores
            .secrets
            .secret("page-token-key", &fresh_key)
            .await
            .map_err(EngineError::Store)?;
        let inner = Arc::new(Inner {
            queue: Queue::new(config.max_queued, config.quotas.max_queued),
            quotas: Quotas::new(&config.quotas),
            schedule: schedule::Schedule::default(),
            ops: Arc::clone(&stores.operations),
            outbox: Arc::clone(&stores.outbox),
            registry,
            clock: config.clock,
            config,
            hub: Arc::default(),
            running: Mutex::default(),
            page_tokens: PageTokens::new(key),
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
        });
        inner.tracker.spawn(feed::follow(Arc::clone(&inner)));
        Ok(Self { inner })
    }

    /// Recovers unfinished operations (see `recovery`) and starts the
    /// workers, the retry scheduler and the retention sweeper.
    pub async fn start(&self) -> Result<(), EngineError> {
        let inner = &self.inner;
        recovery::recover(inner).await?;
        let scheduler = Arc::clone(inner);
        inner.tracker.spawn(async move {
            scheduler
                .schedule
                .run(&scheduler.queue, &scheduler.shutdown)
                .await
        });
        inner.tracker.spawn(retention::sweep(Arc::clone(inner)));
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
        if let Err(e) = inner.ops.flush().await {
            warn!(error = %e, "final flush failed");
        }
    }

    /// The kinds this engine runs.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Reads one operation, if `scope` reaches it.
    pub async fn get(&self, scope: &Scope, id: OperationId) -> Result<Operation, EngineError> {
        match self.inner.ops.get(id).await.map_err(EngineError::Store)? {
            Some(op) if scope.permits(&op.tenant) => Ok(op),
            _ => Err(EngineError::NotFound { name: id.name() }),
        }
    }

    /// Asks for an operation to stop: a queued one ends at once, a running
    /// one's task is told to stop. Cancelling twice is fine; cancelling a
    /// finished operation is not.
    pub async fn cancel(&self, scope: &Scope, id: OperationId) -> Result<Operation, EngineError> {
        if *scope != Scope::All {
            // The tenant never changes, so checking it first is enough.
            self.get(scope, id).await?;
        }
        let op = self
            .inner
            .ops
            .update(id, Edit::Cancel, self.inner.clock.now())
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
            .ops
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
            let loaded = match self.inner.ops.get(id).await.map_err(EngineError::Store)? {
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
    pub fn watch_permit(&self, tenant: &Tenant) -> Result<WatchPermit, EngineError> {
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
                Snapshot::Gone | Snapshot::Loading => {
                    return Err(EngineError::NotFound { name: id.name() });
                }
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
    ) -> Result<Vec<Delivery>, EngineError> {
        self.get(scope, id).await?;
        self.inner
            .outbox
            .deliveries(id)
            .await
            .map_err(EngineError::Store)
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
