//! The engine: accepts operations, runs them on workers, and answers
//! questions about them. It speaks only the model's types and its own;
//! `grpc/` translates.
//!
//! - `commit`: the committer, the one caller of the store's `commit`,
//!   which commits whatever waits as one batch;
//! - `admission`: creates, from the checks to the durable write;
//! - `estimate`: what a new operation can expect, fixed at its create;
//! - `dispatch` and `attempt`: claiming queued work in batches, per kind
//!   up to its concurrency, and running each attempt;
//! - `lease`: on a shared store, the leases this node holds, renewed, and
//!   the work of nodes whose leases lapsed, taken back;
//! - `outside`: kinds run by outside workers over a lease stream;
//! - `listing`: List, with its filter and `page_token`'s signed tokens;
//! - `recovery`: what a restart does with unfinished operations;
//! - `retention`: the sweeper of expired operations;
//! - `schedules`: schedules as callers see them (create, change, run now,
//!   backfill a tick); `scheduler`: this node's loop that takes due
//!   schedules and makes each tick's run, exactly once;
//! - `batches`: batches made (in one call or streamed) and sealed, their
//!   children deleted with them, and the redrive of one operation;
//!   `cascade`: the children of a cancelled or failing batch cancelled;
//! - `feed`: follows the store's change feed into the watch hub;
//! - `changes`: the change log that change streams resume from;
//! - `activity`: per-kind queues and recent finishes, for consoles, and
//!   pausing and resuming a queue;
//! - `task`: the [`Task`] trait for operation kinds, and the registry;
//! - `watch`: the hub that Wait and Watch follow;
//! - `quota`: what each tenant may use; `clock`: the time source;
//! - `error`: [`EngineError`], the one error of this layer.
//!
//! **Invariant:** the engine knows neither tonic, sled nor sqlx.

pub mod activity;
mod admission;
mod attempt;
pub mod batches;
pub mod bulk;
mod cascade;
pub mod changes;
pub mod clock;
mod commit;
mod dispatch;
pub mod error;
mod estimate;
mod expiry;
mod feed;
pub mod flow;
mod lease;
mod listing;
pub mod outside;
pub mod page_token;
pub mod quota;
mod recovery;
mod retention;
mod scheduler;
pub mod schedules;
pub mod task;
pub mod watch;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use self::activity::{QueueStats, THROUGHPUT_MINUTES};
pub use self::admission::{CallbackGuard, SubmitOptions};
pub use self::batches::{BatchDraft, ChildDraft, OpenBatch};
pub use self::changes::{ChangeStream, ChangeType, StreamedChange};
pub use self::clock::Clock;
pub use self::dispatch::CLAIM_BATCH;
pub use self::error::EngineError;
pub use self::flow::{LimitRequest, TenantWeights};
pub use self::listing::{
    DEFAULT_PAGE_SIZE, LIST_SCAN_BUDGET, MAX_FILTER_LEN, MAX_PAGE_SIZE, OperationPage,
};
pub use self::outside::{
    Assignment, KindSpec, LeaseRef, Owner, ToWorker, WorkerCaller, WorkerSession, WorkerSpec,
};
pub use self::quota::{TenantQuotas, WatchPermit};
pub use self::task::{
    DEFAULT_CONCURRENCY, Registry, Size, Task, TaskContext, TaskError, TaskPolicy,
};
pub use self::watch::{Snapshot, Subscription};
/// The model types a [`Task`] implementation needs.
pub use crate::model::{Code, FieldViolation, OperationId, Payload};

use self::admission::Admission;
use self::attempt::Running;
use self::commit::Committer;
use self::dispatch::Slots;
use self::page_token::PageTokens;
use self::quota::Quotas;
use self::task::Kind;
use crate::metrics::{Metrics, WatchGauge};
use crate::model::{Backlog, Claim, Delivery, Edit, Operation, Scope, State, Tenant};
use crate::store::{
    Applied, Health, OperationStore, OutboxStore, QueueDepth, ScheduleStore, SettledStore,
    StoreError, Stores, Write,
};

/// Engine settings.
#[derive(Clone)]
pub struct EngineConfig {
    /// How many operations of a kind may run at once, for the kinds named
    /// here (by name or short name); the others run as their policy says.
    pub concurrency: HashMap<String, usize>,
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
    /// This node's name, which holds its claims' leases on a shared store.
    pub node: String,
    /// How long a claim on a shared store lasts unless its node renews it:
    /// how soon another node takes back the work of a node that died.
    pub lease: Duration,
    /// Where the engine counts what it does.
    pub metrics: Arc<Metrics>,
    /// The most Lease streams one worker principal may have open.
    pub max_worker_streams: usize,
    /// The largest response or error an outside worker may store, in
    /// bytes.
    pub max_result_size: usize,
    /// Limits given by flag, stored at start for every node to enforce.
    pub limits: Vec<flow::LimitRequest>,
    /// Where tenants' weights come from; None gives every tenant 1.
    pub weights: Option<Arc<dyn flow::TenantWeights>>,
    /// The most schedules one tenant may have.
    pub max_schedules: u64,
}

/// The largest response or error an outside worker may store by default.
pub const DEFAULT_MAX_RESULT_SIZE: usize = 1024 * 1024;

/// The lease of claims on a shared store by default.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            concurrency: HashMap::new(),
            max_queued: 100_000,
            progress_interval: Duration::from_millis(100),
            shutdown_grace: Duration::from_secs(10),
            retention: Duration::from_secs(7 * 24 * 3600),
            quotas: TenantQuotas::default(),
            callback_guard: None,
            clock: Clock::system(),
            node: format!("node-{:016x}", rand::random::<u64>()),
            lease: DEFAULT_LEASE,
            metrics: Arc::default(),
            max_worker_streams: outside::DEFAULT_MAX_WORKER_STREAMS,
            max_result_size: DEFAULT_MAX_RESULT_SIZE,
            limits: Vec::new(),
            weights: None,
            max_schedules: schedules::DEFAULT_MAX_SCHEDULES,
        }
    }
}

impl fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineConfig")
            .field("concurrency", &self.concurrency)
            .field("max_queued", &self.max_queued)
            .field("progress_interval", &self.progress_interval)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("retention", &self.retention)
            .field("quotas", &self.quotas)
            .field("callback_guard", &self.callback_guard.is_some())
            .field("clock", &self.clock)
            .field("node", &self.node)
            .field("lease", &self.lease)
            .field("max_worker_streams", &self.max_worker_streams)
            .field("max_result_size", &self.max_result_size)
            .field("limits", &self.limits)
            .field("weights", &self.weights.is_some())
            .field("max_schedules", &self.max_schedules)
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
    settled: Arc<dyn SettledStore>,
    schedules: Arc<dyn ScheduleStore>,
    /// Wakes this node's scheduler: a schedule changed here.
    schedule_changed: tokio::sync::Notify,
    committer: Committer,
    registry: Registry,
    /// Kinds served by outside workers, and the workers.
    outside: Arc<outside::Roster>,
    /// Finishes per minute, for consoles.
    throughput: activity::Throughput,
    /// Every change seen, for streams of all changes.
    changes: changes::ChangeLog,
    /// Recent run times per kind, for estimates.
    run_times: estimate::RunTimes,
    config: EngineConfig,
    clock: Clock,
    slots: Slots,
    admission: Admission,
    hub: Arc<watch::Hub>,
    running: Mutex<RunningHere>,
    /// On a shared store: the leases of the attempts this node holds.
    leases: lease::Leases,
    page_tokens: PageTokens,
    quotas: Arc<Quotas>,
    tracker: TaskTracker,
    /// The committer's task, apart from `tracker`: it must outlive every
    /// task that writes.
    writer: TaskTracker,
    /// Fires when shutdown begins: the dispatcher stops, tasks are asked to
    /// stop, watch streams end.
    shutdown: CancellationToken,
    /// Fires when the grace period is over: remaining tasks are aborted.
    hard_stop: CancellationToken,
    /// Fires once every task has stopped: the committer finishes.
    stop_writes: CancellationToken,
}

/// The attempts running on this process, and cancellations that arrived
/// for an operation claimed here before its attempt was under way.
#[derive(Default)]
struct RunningHere {
    attempts: HashMap<OperationId, Running>,
    cancelled: HashSet<OperationId>,
}

impl Inner {
    fn running_lock(&self) -> std::sync::MutexGuard<'_, RunningHere> {
        // Each critical section is one insert, remove or lookup, so a
        // poisoned lock holds consistent data.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers an attempt; true when its operation was cancelled before.
    fn register_running(&self, id: OperationId, running: Running) -> bool {
        let mut here = self.running_lock();
        here.attempts.insert(id, running);
        here.cancelled.remove(&id)
    }

    fn forget_running(&self, id: OperationId) {
        let mut here = self.running_lock();
        here.attempts.remove(&id);
        here.cancelled.remove(&id);
    }

    /// Stops the task running `claim`'s attempt here, if there is one:
    /// this node can no longer prove the attempt's lease is its own.
    fn stop_unproven(&self, claim: Claim) {
        if let Some(running) = self
            .running_lock()
            .attempts
            .get(&claim.id)
            .filter(|r| r.attempt == claim.attempt)
        {
            running.lose_lease();
        }
    }

    /// Removes what a done operation left outside the store.
    async fn expire_artifacts(&self, op: &Operation) {
        if let Some(kind) = self.kind(&op.tenant, &op.kind) {
            kind.task.expire(op.id, op.request.clone()).await;
        }
    }

    /// Tells the task running `op` on this process to stop, when a client
    /// asked for that. A cancellation that finds no attempt here is kept
    /// until the operation is done, for an attempt that is about to start
    /// (its claim was made before the cancellation, but it is not
    /// registered yet).
    fn deliver_cancellation(&self, op: &Operation) {
        let mut here = self.running_lock();
        match op.state {
            State::Cancelling => match here.attempts.get(&op.id) {
                Some(running) => running.cancel_by_client(),
                None => {
                    here.cancelled.insert(op.id);
                }
            },
            state if state.is_terminal() => {
                here.cancelled.remove(&op.id);
            }
            _ => {}
        }
    }

    /// The kind called `name` for `tenant`'s operations: built in, or
    /// served by outside workers under the declaration that governs them.
    fn kind(&self, tenant: &Tenant, name: &str) -> Option<Kind> {
        self.registry.get(name).cloned().or_else(|| {
            self.outside
                .kinds
                .find(tenant, name)
                .map(|declared| declared.kind.clone())
        })
    }

    /// Commits one edit of the operation called `name`.
    async fn edit(&self, id: OperationId, edit: Edit) -> Result<Operation, EngineError> {
        match self.committer.write(Write::Update { id, edit }).await {
            Ok(Applied::Updated(op)) => Ok(op),
            Ok(other) => Err(unexpected(&other)),
            Err(e) => Err(EngineError::from_store(id.name(), e)),
        }
    }
}

/// A store that answered a write with another write's kind of answer.
fn unexpected(applied: &Applied) -> EngineError {
    EngineError::Store(StoreError::Backend(format!(
        "the store answered with {applied:?}"
    )))
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
            .settled
            .settle("page-token-key", &fresh_key)
            .await
            .map_err(EngineError::from)?;
        let slots = Slots::new(&registry, &config.concurrency)?;
        let writer = TaskTracker::new();
        let stop_writes = CancellationToken::new();
        let committer = Committer::start(
            Arc::clone(&stores.operations),
            config.clock,
            Arc::clone(&config.metrics),
            &writer,
            stop_writes.clone(),
        );
        let inner = Arc::new(Inner {
            quotas: Quotas::new(&config.quotas),
            ops: Arc::clone(&stores.operations),
            outbox: Arc::clone(&stores.outbox),
            settled: Arc::clone(&stores.settled),
            schedules: Arc::clone(&stores.schedules),
            schedule_changed: tokio::sync::Notify::new(),
            outside: Arc::default(),
            throughput: activity::Throughput::default(),
            changes: changes::ChangeLog::default(),
            run_times: estimate::RunTimes::default(),
            committer,
            slots,
            admission: Admission::default(),
            registry,
            clock: config.clock,
            config,
            hub: Arc::default(),
            running: Mutex::default(),
            leases: lease::Leases::default(),
            page_tokens: PageTokens::new(key),
            tracker: TaskTracker::new(),
            writer,
            shutdown: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            stop_writes,
        });
        inner.tracker.spawn(feed::follow(Arc::clone(&inner)));
        let engine = Self { inner };
        // Outside kinds declared before (by workers or a configuration)
        // are known before recovery looks at their operations.
        engine.load_declared_kinds().await?;
        Ok(engine)
    }

    /// Recovers unfinished operations (see `recovery`) and starts the
    /// dispatcher and the retention sweeper. A store too full to take
    /// recovery's writes does not stop the start: recovery runs once there
    /// is room, and reads are served meanwhile.
    pub async fn start(&self) -> Result<(), EngineError> {
        let inner = &self.inner;
        // The kinds are all registered and declared by now.
        self.set_configured_limits().await?;
        match recovery::recover(inner).await {
            Ok(()) => {}
            Err(e) if e.is_storage_full() => {
                warn!("the disk is full: recovery waits until there is room");
                let later = Arc::clone(inner);
                inner.tracker.spawn(async move {
                    let mut health = later.ops.health();
                    loop {
                        tokio::select! {
                            _ = later.shutdown.cancelled() => return,
                            _ = health.wait_for(|h| *h == Health::Writable) => {}
                        }
                        match recovery::recover(&later).await {
                            Err(e) if e.is_storage_full() => continue,
                            Err(e) => return warn!(error = %e, "recovery failed"),
                            Ok(()) => return,
                        }
                    }
                });
            }
            Err(e) => return Err(e),
        }
        inner.tracker.spawn(dispatch::run(Arc::clone(inner)));
        inner.tracker.spawn(outside::dispatch(Arc::clone(inner)));
        inner.tracker.spawn(retention::sweep(Arc::clone(inner)));
        inner.tracker.spawn(expiry::sweep(Arc::clone(inner)));
        inner.tracker.spawn(scheduler::run(Arc::clone(inner)));
        inner.tracker.spawn(cascade::run(Arc::clone(inner)));
        if inner.ops.shared() {
            inner.tracker.spawn(lease::keep(Arc::clone(inner)));
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
        // Every attempt has handed over its last write; commit them.
        inner.stop_writes.cancel();
        inner.writer.close();
        inner.writer.wait().await;
        let (batches, writes) = inner.committer.stats();
        info!(batches, writes, "writes committed since start");
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
        match self.inner.ops.get(id).await.map_err(EngineError::from)? {
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
        let op = self.inner.edit(id, Edit::Cancel).await?;
        if op.state == State::Cancelled {
            // Cancelled while queued; a running one ends through its attempt.
            self.inner.finished(&op, "cancelled");
        }
        // The change feed tells the attempt too (on every node); doing it
        // here as well saves a hop on this one.
        self.inner.deliver_cancellation(&op);
        Ok(op)
    }

    /// Deletes a finished operation, with whatever it left outside the
    /// store.
    pub async fn delete(&self, scope: &Scope, id: OperationId) -> Result<(), EngineError> {
        let op = self.get(scope, id).await?;
        crate::store::check_delete(&op).map_err(|e| EngineError::from_store(id.name(), e))?;
        if op.is_batch() {
            // Its children go first: a batch is never gone while they stay.
            self.delete_children(id).await?;
        }
        self.inner.expire_artifacts(&op).await;
        match self.inner.committer.write(Write::Delete(id)).await {
            Ok(_) => Ok(()),
            Err(e) => Err(EngineError::from_store(id.name(), e)),
        }
    }

    /// Records a webhook delivery attempt (the deliverer's write).
    pub async fn save_delivery(&self, delivery: Delivery) -> Result<(), EngineError> {
        self.inner
            .committer
            .write(Write::SaveDelivery(delivery))
            .await
            .map(|_| ())
            .map_err(EngineError::from)
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
            let loaded = match self.inner.ops.get(id).await.map_err(EngineError::from)? {
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
        let mut permit = self.inner.quotas.watch(tenant)?;
        permit.gauge = Some(WatchGauge::open(&self.inner.config.metrics));
        Ok(permit)
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
            .map_err(EngineError::from)
    }

    /// How many operations wait for a worker, in all and for `tenant`.
    pub fn queue_depth(&self, tenant: &Tenant) -> QueueDepth {
        self.inner.ops.queued(tenant)
    }

    /// Batches the committer has committed since start, and the writes in
    /// them.
    pub fn commit_stats(&self) -> (u64, u64) {
        self.inner.committer.stats()
    }

    /// How many operations of each kind run on this process, against the
    /// kind's concurrency: (kind, running, limit).
    pub fn running(&self) -> Vec<(&'static str, usize, usize)> {
        self.inner.slots.usage()
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.config.metrics
    }

    /// What is unfinished in the store, by kind and state, and the kinds
    /// paused now, for a metrics scrape.
    pub async fn backlog(&self) -> Result<(Vec<Backlog>, Vec<String>), EngineError> {
        let backlog = self.inner.ops.backlog(None).await?;
        let paused = self.inner.ops.paused().await?;
        Ok((backlog, paused))
    }

    /// How many operations have at least one watcher.
    pub fn watched_operations(&self) -> usize {
        self.inner.hub.len()
    }
}
