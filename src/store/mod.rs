//! Durable state behind focused traits, so that backends can be swapped.
//!
//! - [`OperationStore`]: operations, their indexes, claims of queued work
//!   and the change feed;
//! - [`OutboxStore`]: webhook deliveries;
//! - [`SettledStore`]: small named values settled by whoever writes them
//!   first (the webhook signing secret, the page-token key, the kinds
//!   outside workers declared), shared by every process on the store;
//! - [`OrderStore`]: the orders reports are made from;
//! - [`ScheduleStore`]: schedules, and which of them are due;
//! - [`FileStore`] (`files`): files too large for a record, such as
//!   uploads and rendered reports.
//!
//! A backend implements all six and hands them out together as
//! [`Stores`]. It persists decisions and never makes them: `rules` (the
//! rulebook) decides what a batch of writes does, asking the model's
//! [`Operation::apply`] for every state change, and hands the backend a
//! plan that it carries out in one atomic write.
//!
//! The shapes are batch-shaped, for a shared database too: writes are
//! committed many at a time ([`OperationStore::commit`]), claims take up to
//! N operations at once and carry a fencing token (the attempt) and an
//! optional [`Lease`], and changes are announced on a feed rather than
//! assumed seen. `ready` is the in-memory queue of claimable work for
//! backends that keep one.
//!
//! **Invariant:** only `store/sled/` knows sled and only `store/postgres/`
//! knows sqlx; this module knows only the model.

mod codec;
mod error;
pub mod files;
pub mod postgres;
pub mod ready;
pub(crate) mod rules;
pub(crate) mod runs;
mod schedules;
pub mod sled;

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::sync::{broadcast, watch};

use crate::model::flow::{SlotId, Usage};
use crate::model::order::{Month, Order};
use crate::model::schedule::Schedule;
use crate::model::{
    Attempt, Backlog, BulkAction, Claim, Delivery, Edit, Filter, KindLimits, Lease, Limit,
    Operation, OperationId, Tally, Tenant,
};

pub use self::error::{StoreError, StoreResult};
pub use self::files::{DirFiles, FileRead, FileStore, FileWriter};
pub use self::postgres::PgStore;
pub use self::ready::QueueDepth;
pub(crate) use self::rules::check_delete;
pub use self::schedules::{Expect, PutSchedule};
pub use self::sled::{SledStore, SyncMode};

/// What `create` did.
#[derive(Debug, Clone)]
pub enum Created {
    /// A new operation was stored.
    New(Operation),
    /// The request_id was seen before with the same request: this is the
    /// operation the first call made.
    Existing(Operation),
}

/// A change to one operation, as announced on the feed.
#[derive(Debug, Clone)]
pub enum Change {
    /// The operation was created or changed; this is its new state.
    Updated(Arc<Operation>),
    /// The operation was deleted.
    Deleted(OperationId),
    /// A webhook delivery of the operation recorded an attempt.
    Delivery(OperationId),
    /// Another process sharing the store changed (or deleted) the
    /// operation: whoever follows it re-reads it. `delivery` when the
    /// change wrote a webhook delivery to send, `queued` when it left the
    /// operation waiting to be claimed.
    Elsewhere {
        id: OperationId,
        delivery: bool,
        queued: bool,
    },
    /// Changes may have been missed (the feed from a shared store was cut
    /// off for a while): whoever follows operations re-reads them.
    Resync,
}

/// One page of a newest-first listing.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    /// The matching operations, newest first.
    pub operations: Vec<Operation>,
    /// Where to continue: set when more records may follow.
    pub resume_after: Option<OperationId>,
}

/// A newest-first listing request.
#[derive(Debug, Clone)]
pub struct ListQuery<'a> {
    /// Start with the operation just older than this one.
    pub after: Option<OperationId>,
    /// Only this named tenant's operations, read through a per-tenant index
    /// rather than by filtering everything. The filter must agree.
    pub tenant: Option<&'a Tenant>,
    /// Only the children of this batch, read through its index of
    /// children. The filter must agree.
    pub parent: Option<OperationId>,
    /// Only operations that match.
    pub filter: &'a Filter,
    /// At most this many results.
    pub limit: usize,
    /// At most this many records examined, so that a selective filter
    /// cannot make one page scan the whole store. A page may therefore come
    /// back short, with a resume point.
    pub scan_budget: usize,
}

/// One change in a commit.
#[derive(Clone, Debug)]
pub enum Write {
    /// A new operation, with the delivery its creation calls for. With a
    /// request_id seen before in its tenant, the earlier operation is the
    /// answer instead, or [`StoreError::RequestIdConflict`] when its
    /// request differed.
    Create(Operation),
    /// An edit of one operation (see [`Operation::apply`]), with whatever
    /// delivery it produces.
    Update { id: OperationId, edit: Edit },
    /// Deletes a finished operation with its request_id and deliveries;
    /// `NotFound`, or `Rejected` when it is not done.
    Delete(OperationId),
    /// Deletes a finished operation if it still is one, and skips it
    /// otherwise (the retention sweeper's delete).
    Purge(OperationId),
    /// Records a webhook delivery attempt.
    SaveDelivery(Delivery),
    /// One page of a bulk action: `action` applied to each of `items`
    /// (those refused, or of another tenant, counted as skipped), and
    /// the action's `tally`, with this page's counts added, recorded on
    /// its operation under `claim`: all or nothing, so that a resumed
    /// action never counts a page twice.
    Bulk(Box<BulkPage>),
}

/// The page a [`Write::Bulk`] applies.
#[derive(Clone, Debug)]
pub struct BulkPage {
    /// The attempt of the bulk action's own operation.
    pub claim: Claim,
    pub action: BulkAction,
    pub items: Vec<OperationId>,
    /// The tally after this page, its counts of `items` not yet added.
    pub tally: Tally,
}

impl Write {
    /// Whether the write must be on disk before its caller hears of it
    /// (under `--sync always`). Claims and progress are lazy: a crash loses
    /// at most a claim, which recovery then treats as never made, or a
    /// progress report. Everything a client may have been told is durable.
    pub fn is_durable(&self) -> bool {
        !matches!(
            self,
            Write::Update {
                edit: Edit::Claim { .. } | Edit::Progress { .. } | Edit::Assign { .. },
                ..
            }
        )
    }

    /// Whether the write adds to what is stored (a new operation), so that
    /// a store short of disk space refuses it first.
    pub fn grows(&self) -> bool {
        matches!(self, Write::Create(_))
    }
}

/// What a write did.
#[derive(Clone, Debug)]
pub enum Applied {
    /// A create: new, or the earlier operation of its request_id.
    Created(Created),
    /// An edit: the operation as it now is (unchanged when the edit
    /// changed nothing).
    Updated(Operation),
    /// A delete or purge: whether an operation was removed.
    Deleted(bool),
    /// A delivery attempt was recorded.
    DeliverySaved,
    /// A bulk page: the action's operation as it now is, and the items
    /// the action changed (as they now are; a deleted one as it was).
    Bulk {
        operation: Operation,
        changed: Vec<Operation>,
    },
}

/// A claim of queued work.
#[derive(Clone, Debug, Default)]
pub struct ClaimRequest {
    /// How many operations of each kind the caller can take now.
    pub wants: Vec<(String, usize)>,
    /// The lease every claimed attempt is held under, if claims lapse.
    pub lease: Option<Lease>,
    /// Only this tenant's operations (an outside worker of one tenant);
    /// None for every tenant's, taking turns.
    pub tenant: Option<Tenant>,
    /// Who claims (the node's name), to show who runs each attempt.
    pub by: Option<String>,
    /// The tenants whose weight is not 1: each takes that many operations
    /// per turn when tenants take turns.
    pub weights: Arc<HashMap<Tenant, u32>>,
}

/// What a claim took.
#[derive(Clone, Debug, Default)]
pub struct Claimed {
    /// The operations now RUNNING for the caller, each under attempt + 1.
    pub operations: Vec<Operation>,
    /// When the earliest operation that waits out a backoff becomes due,
    /// or a spent rate limit fills again.
    pub next_due: Option<SystemTime>,
    /// Limits held back some of the work this claim looked at, while it
    /// took other work: claim again at once, as there may be more.
    pub more: bool,
}

/// Whether the store can take writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Reads and writes work.
    Writable,
    /// The disk is (nearly) full: new operations are refused, and below a
    /// smaller floor every write is; reads still work.
    Full,
    /// The backend cannot take writes: the database cannot be reached, or
    /// the disk failed. Calls fail until it is back.
    Unavailable,
}

/// Storage for operations.
///
/// Every change is a [`Write`] in a batch handed to
/// [`OperationStore::commit`]: the batch is applied atomically, made
/// durable once, and then announced on the change feed.
#[async_trait]
pub trait OperationStore: Send + Sync + 'static {
    /// Applies `writes` in order, at `now`, as one atomic batch, and makes
    /// it durable once (under `--sync always`, when any write
    /// [`is_durable`](Write::is_durable)). Each write succeeds or fails on
    /// its own, and sees the writes before it. The results come in the
    /// same order; a failure of the batch as a whole fails every write.
    async fn commit(&self, writes: Vec<Write>, now: SystemTime) -> Vec<StoreResult<Applied>>;

    /// Takes up to the wanted number of queued, due operations of each
    /// kind, oldest first, with the tenants of a kind taking turns. Each
    /// becomes RUNNING under attempt + 1 (the claim's fencing token),
    /// lazily: a crash may lose a claim, never a finish.
    async fn claim(&self, request: &ClaimRequest, now: SystemTime) -> StoreResult<Claimed>;

    /// How many operations wait to be claimed.
    fn queued(&self, tenant: &Tenant) -> QueueDepth;

    /// How many operations of `kind` wait to be claimed, when the backend
    /// can say without a query.
    fn queued_of_kind(&self, _kind: &str) -> Option<u64> {
        None
    }

    /// Bumps whenever work may have become claimable (a create, a retry, a
    /// release), so that a dispatcher can wait for it.
    fn work(&self) -> watch::Receiver<u64>;

    /// Reads one operation.
    async fn get(&self, id: OperationId) -> StoreResult<Option<Operation>>;

    /// Reads several operations, in the order of `ids` (None for one that
    /// is gone). By default one by one; a backend whose every read pays a
    /// trip (a query, a hop to the blocking pool) reads them all in one.
    async fn get_many(&self, ids: &[OperationId]) -> StoreResult<Vec<Option<Operation>>> {
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            found.push(self.get(*id).await?);
        }
        Ok(found)
    }

    /// Lists operations newest first.
    async fn list(&self, query: ListQuery<'_>) -> StoreResult<ListPage>;

    /// Every operation that is not done, oldest first, for recovery.
    async fn unfinished(&self) -> StoreResult<Vec<Operation>>;

    /// Up to `limit` batch parents that are not done, oldest first, from
    /// `after` on: the batches whose children a cascade may have to
    /// cancel.
    async fn open_batches(
        &self,
        after: Option<OperationId>,
        limit: usize,
    ) -> StoreResult<Vec<Operation>>;

    /// How many operations of each kind (of `tenant`, or of all) are
    /// unfinished, by state, with the creation time of the oldest: what a
    /// metrics scrape and a console show. By default
    /// counted from [`unfinished`](Self::unfinished); a backend that can
    /// count without reading every record does.
    async fn backlog(&self, tenant: Option<&Tenant>) -> StoreResult<Vec<Backlog>> {
        let mut counts: std::collections::BTreeMap<(String, &'static str), Backlog> =
            std::collections::BTreeMap::new();
        for op in self.unfinished().await? {
            if tenant.is_some_and(|t| *t != op.tenant) {
                continue;
            }
            let state = op.state.as_str();
            let entry = counts
                .entry((op.kind.clone(), state))
                .or_insert_with(|| Backlog {
                    kind: op.kind.clone(),
                    state,
                    count: 0,
                    oldest: None,
                });
            entry.count += 1;
            entry.oldest = Some(
                entry
                    .oldest
                    .map_or(op.create_time, |t| t.min(op.create_time)),
            );
        }
        Ok(counts.into_values().collect())
    }

    /// Up to `limit` done operations that ended before `ended_before`, in
    /// no promised order (the retention sweeper asks again until none is
    /// left).
    async fn expired(&self, ended_before: SystemTime, limit: usize) -> StoreResult<Vec<Operation>>;

    /// Makes every write so far durable.
    async fn flush(&self) -> StoreResult<()>;

    /// Subscribes to the change feed.
    fn subscribe(&self) -> broadcast::Receiver<Change>;

    /// Whether writes work; changes as the disk fills and frees.
    fn health(&self) -> watch::Receiver<Health>;

    /// Looks again at what limits writes (free disk space, the database's
    /// reach), so that health recovers without waiting for the next write.
    async fn probe(&self);

    /// The most batches committed at once. One for an embedded store,
    /// which applies batches in turn; a database server takes several and
    /// flushes them together (the committer keeps half as many in flight
    /// while its batches are large).
    fn parallel_commits(&self) -> usize {
        1
    }

    /// Whether other processes share this store, so that a claim must be
    /// held under a lease that its holder renews, and taken back by anyone
    /// once it lapses.
    fn shared(&self) -> bool {
        false
    }

    /// Extends to `until` the leases `holder` holds on the attempts in
    /// `held` (each an operation and its attempt), and returns the
    /// operations whose lease it extended. An attempt missing from the
    /// answer is no longer `holder`'s: it ended, or was taken back after
    /// its lease lapsed. Leases of other attempts are left alone, so a
    /// claim that `holder` made but never ran (its answer was lost) lapses.
    async fn renew(
        &self,
        _holder: &str,
        held: &[(OperationId, Attempt)],
        _until: SystemTime,
    ) -> StoreResult<Vec<OperationId>> {
        Ok(held.iter().map(|(id, _)| *id).collect())
    }

    /// Up to `limit` queued operations whose expire time passed by `now`
    /// (they must end without running), and when the next one expires.
    async fn expiring(
        &self,
        now: SystemTime,
        limit: usize,
    ) -> StoreResult<(Vec<OperationId>, Option<SystemTime>)>;

    /// Up to `limit` running operations whose lease lapsed before `now`:
    /// their holder died or lost touch, and they wait to be taken back.
    async fn lapsed(&self, _now: SystemTime, _limit: usize) -> StoreResult<Vec<Operation>> {
        Ok(Vec::new())
    }

    /// Pauses `kind` (or resumes it): while it is paused, no claim of any
    /// process on this store takes its operations, and creates still queue
    /// them. Durable before it returns; resuming wakes every claimer.
    async fn set_paused(&self, kind: &str, paused: bool) -> StoreResult<()>;

    /// The kinds paused now, by name.
    async fn paused(&self) -> StoreResult<Vec<String>>;

    /// Sets one limit of a kind (replacing the one of its scope), or with
    /// `limit.concurrency` and `limit.rates` both empty, removes it. Every
    /// claim that starts after it returns, on any process, obeys it.
    async fn set_limit(&self, limit: &Limit) -> StoreResult<()>;

    /// Every kind's limits, by kind and scope.
    async fn limits(&self) -> StoreResult<Vec<Limit>>;

    /// A kind's limits and what runs against them now: for the slots
    /// `slots` names, or, when it is None, the busiest slots (at most
    /// [`USAGE_ROWS`]) and the kind's own buckets.
    async fn usage(&self, kind: &str, slots: Option<&[SlotId]>)
    -> StoreResult<(KindLimits, Usage)>;
}

/// The most slots [`OperationStore::usage`] lists when asked for all.
pub const USAGE_ROWS: usize = 100;

/// The webhook outbox. Deliveries are added with the state change that
/// causes them, and updated with [`Write::SaveDelivery`]; this trait reads
/// them.
#[async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// Pending deliveries due by `now`, oldest due first.
    async fn due_deliveries(&self, now: SystemTime, limit: usize) -> StoreResult<Vec<Delivery>>;

    /// Takes due deliveries to send now, as `take` says: up to its limit,
    /// the oldest due first, none already `in_flight` here, and of each
    /// tenant no more than its room (see [`DeliveryTake::room`]). Every
    /// delivery returned is the caller's to send. A shared store
    /// holds each one taken back from every other taker for the take's
    /// lease, so that one node sends it; the attempt's record (or the
    /// lease running out) settles it.
    async fn take_deliveries(
        &self,
        now: SystemTime,
        take: &DeliveryTake,
    ) -> StoreResult<Vec<Delivery>> {
        let due = self.due_deliveries(now, DELIVERY_SCAN).await?;
        Ok(take.pick(due))
    }

    /// When the earliest pending delivery is due.
    async fn next_delivery_due(&self) -> StoreResult<Option<SystemTime>>;

    /// The deliveries of one operation, oldest first.
    async fn deliveries(&self, id: OperationId) -> StoreResult<Vec<Delivery>>;
}

/// The most due deliveries a store without a query of its own looks
/// through for one take.
pub const DELIVERY_SCAN: usize = 10_000;

/// What one take of due deliveries may hold: tenants share the deliverer,
/// so that one tenant's many (or slow) callbacks never hold up another's.
#[derive(Debug, Clone, Default)]
pub struct DeliveryTake {
    /// The most deliveries to take.
    pub limit: usize,
    /// The most of one tenant in flight at once, counting those it has in
    /// flight already.
    pub per_tenant: usize,
    /// How many deliveries each tenant has in flight with this taker.
    pub busy: HashMap<Tenant, usize>,
    /// Deliveries this taker sends already.
    pub in_flight: HashSet<uuid::Uuid>,
    /// How long a shared store keeps what it hands out from other takers.
    pub lease: std::time::Duration,
}

impl DeliveryTake {
    /// How many more of `tenant`'s deliveries the take may hold.
    pub fn room(&self, tenant: &Tenant) -> usize {
        self.per_tenant
            .saturating_sub(self.busy.get(tenant).copied().unwrap_or(0))
    }

    /// The deliveries of `due` (oldest due first) that the take may hold.
    pub fn pick(&self, due: Vec<Delivery>) -> Vec<Delivery> {
        let mut taken: HashMap<Tenant, usize> = HashMap::new();
        let mut picked = Vec::new();
        for delivery in due {
            if picked.len() >= self.limit {
                break;
            }
            let tenant = &delivery.snapshot.tenant;
            if self.in_flight.contains(&delivery.id) {
                continue;
            }
            let taken = taken.entry(tenant.clone()).or_default();
            if *taken >= self.room(tenant) {
                continue;
            }
            *taken += 1;
            picked.push(delivery);
        }
        picked
    }
}

/// Small named values settled by their first writer and never changed
/// after: the webhook signing secret, the page-token key and the kinds
/// outside workers declared. Every process on the same store sees the same
/// value.
#[async_trait]
pub trait SettledStore: Send + Sync + 'static {
    /// Returns the named value, settling it durably as `initial` on first
    /// use. Every caller gets the same value, whoever came first.
    async fn settle(&self, name: &str, initial: &[u8]) -> StoreResult<Vec<u8>>;

    /// Every settled value whose name starts with `prefix`, with its name.
    async fn settled(&self, prefix: &str) -> StoreResult<Vec<(String, Vec<u8>)>>;
}

/// What `put_orders` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOrders {
    /// The batch is stored.
    Stored,
    /// Nothing was stored: the batch would pass the limit. The tenant
    /// stores this many orders.
    OverLimit { stored: u64 },
}

/// Where a month listing continues: an opaque position in the month.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderCursor(pub(crate) Vec<u8>);

/// Storage for the orders that reports are made from.
///
/// Each tenant's orders are apart from every other tenant's: an order_id is
/// unique within a tenant, and a report reads only its own tenant's orders.
/// Within a tenant, orders are kept in month order, then `created_at`, then
/// `order_id`, so that one month is one contiguous range and a report never
/// reads the rest.
#[async_trait]
pub trait OrderStore: Send + Sync + 'static {
    /// Inserts orders of `tenant`, replacing any of its stored orders with
    /// the same order_id (wherever its month), and keeps per-month counts in
    /// step. Nothing is stored when the call would take the tenant past
    /// `limit` orders (replacements do not count). A store may apply a
    /// large call in slices, each atomic with its counts, so that one
    /// import never holds the store up for long: a failure part-way keeps
    /// the slices before it, which a retry of the call replaces. It is made
    /// durable by the next flush.
    async fn put_orders(
        &self,
        tenant: &Tenant,
        orders: Vec<Order>,
        limit: Option<u64>,
    ) -> StoreResult<PutOrders>;

    /// How many orders `tenant` has in `month`.
    async fn month_count(&self, tenant: &Tenant, month: Month) -> StoreResult<u64>;

    /// Up to `limit` orders of `tenant` in `month` after `after`, in order;
    /// the cursor continues the listing and is None at the end.
    async fn month_page(
        &self,
        tenant: &Tenant,
        month: Month,
        after: Option<OrderCursor>,
        limit: usize,
    ) -> StoreResult<(Vec<Order>, Option<OrderCursor>)>;
}

/// Storage for schedules, and the index of when each is due.
///
/// A schedule is unique by tenant and id. Every write names what it
/// expects to find ([`Expect`]) and bumps the revision, so that two
/// writers (an update and a scheduler, or two nodes) never lose each
/// other's change: the second is refused as `Stale` and reads again.
#[async_trait]
pub trait ScheduleStore: Send + Sync + 'static {
    /// Stores `schedule` if the stored one is as `expect` says; made
    /// durable before it returns when `durable` (a scheduler moving its
    /// clock need not be: a tick made again finds its run by request_id).
    async fn put_schedule(
        &self,
        schedule: &Schedule,
        expect: Expect,
        durable: bool,
    ) -> StoreResult<PutSchedule>;

    /// One schedule.
    async fn get_schedule(&self, tenant: &Tenant, id: &str) -> StoreResult<Option<Schedule>>;

    /// Up to `limit` of the tenant's schedules with ids after `after`, by
    /// id.
    async fn list_schedules(
        &self,
        tenant: &Tenant,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Schedule>>;

    /// Removes a schedule; false when there was none.
    async fn delete_schedule(&self, tenant: &Tenant, id: &str) -> StoreResult<bool>;

    /// Takes up to `limit` schedules due at `now` (soonest first) that no
    /// scheduler holds, and holds each until `until`: no other take
    /// returns it before then. They come back at their new revision, for
    /// the write that lets them go.
    async fn take_due_schedules(
        &self,
        now: SystemTime,
        until: SystemTime,
        limit: usize,
    ) -> StoreResult<Vec<Schedule>>;

    /// When the soonest schedule comes due (or its hold ends), if any is.
    async fn next_schedule_due(&self) -> StoreResult<Option<SystemTime>>;
}

/// Every store a server uses, from one backend; cheap to clone.
#[derive(Clone)]
pub struct Stores {
    pub operations: Arc<dyn OperationStore>,
    pub outbox: Arc<dyn OutboxStore>,
    pub settled: Arc<dyn SettledStore>,
    pub orders: Arc<dyn OrderStore>,
    pub files: Arc<dyn FileStore>,
    pub schedules: Arc<dyn ScheduleStore>,
}

impl Stores {
    /// All six from one backend value.
    pub fn from_backend<B>(backend: B) -> Self
    where
        B: OperationStore + OutboxStore + SettledStore + OrderStore + FileStore + ScheduleStore,
    {
        let backend = Arc::new(backend);
        Self {
            operations: backend.clone(),
            outbox: backend.clone(),
            settled: backend.clone(),
            orders: backend.clone(),
            schedules: backend.clone(),
            files: backend,
        }
    }
}

/// Which backend to open, as named on the command line.
#[derive(Clone, PartialEq, Eq)]
pub enum Backend {
    /// The embedded sled database in the data directory.
    Sled,
    /// A PostgreSQL database, at this URL, that several nodes may share.
    Postgres(String),
}

impl std::fmt::Debug for Backend {
    /// Never shows the URL's password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Sled => f.write_str("Sled"),
            Backend::Postgres(url) => write!(f, "Postgres({})", postgres::redacted(url)),
        }
    }
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "sled" => Ok(Backend::Sled),
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Backend::Postgres(url.to_owned()))
            }
            other => Err(format!(
                "unknown store {other:?}; expected \"sled\" or a postgres://user@host:port/db URL"
            )),
        }
    }
}
