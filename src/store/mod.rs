//! Durable state behind focused traits, so that backends can be swapped.
//!
//! - [`OperationStore`]: operations, their indexes and the change feed;
//! - [`OutboxStore`]: webhook deliveries;
//! - [`SecretStore`]: small named secrets shared by every process on the
//!   store;
//! - [`OrderStore`]: the orders reports are made from.
//!
//! A backend implements all four and hands them out together as
//! [`Stores`]. It persists decisions and never makes them: every state
//! change is an [`Edit`] that the model's [`Operation::apply`] turns into a
//! [`Transition`](crate::model::Transition), and the backend stores the
//! record and the delivery it was handed in one atomic write. The shapes are
//! meant for a shared database too: claims carry a fencing token (the
//! attempt), and changes are announced on a feed rather than assumed seen.
//!
//! **Invariant:** only `store/sled/` knows sled; this module knows only the
//! model.

mod codec;
mod error;
pub mod sled;

use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::model::order::{Month, Order};
use crate::model::{Delivery, Edit, Filter, Operation, OperationId, Tenant};

pub use self::error::{StoreError, StoreResult};
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
    /// Only operations that match.
    pub filter: &'a Filter,
    /// At most this many results.
    pub limit: usize,
    /// At most this many records examined, so that a selective filter
    /// cannot make one page scan the whole store. A page may therefore come
    /// back short, with a resume point.
    pub scan_budget: usize,
}

/// Whether a change must be on disk before the call that made it returns
/// (under `--sync always`). Claims and progress are lazy: a crash loses at
/// most a claim, which recovery then treats as never made, or a progress
/// report. Everything else a client may have been told about is durable.
pub fn is_durable(edit: &Edit) -> bool {
    !matches!(edit, Edit::Claim | Edit::Progress { .. })
}

/// Storage for operations.
///
/// Every successful write is announced on the change feed after it is
/// committed (and, when durable, after it is on disk).
#[async_trait]
pub trait OperationStore: Send + Sync + 'static {
    /// Stores a new operation durably, with the delivery its creation calls
    /// for. With a request_id seen before in its tenant, returns the earlier
    /// operation instead, or [`StoreError::RequestIdConflict`] when its
    /// request differed.
    async fn create(&self, operation: Operation) -> StoreResult<Created>;

    /// Reads one operation.
    async fn get(&self, id: OperationId) -> StoreResult<Option<Operation>>;

    /// Lists operations newest first.
    async fn list(&self, query: ListQuery<'_>) -> StoreResult<ListPage>;

    /// Applies `edit` to one operation at `now` (see [`Operation::apply`]),
    /// with whatever delivery it produces, and returns the operation as it
    /// now is (unchanged when the edit changed nothing). Durable as
    /// [`is_durable`] says. Fails with `NotFound`, or `Rejected` when the
    /// model refuses the edit.
    async fn update(&self, id: OperationId, edit: Edit, now: SystemTime) -> StoreResult<Operation>;

    /// Deletes a finished operation durably, with its deliveries.
    async fn delete(&self, id: OperationId) -> StoreResult<()>;

    /// Every operation that is not done, oldest first, for recovery.
    async fn unfinished(&self) -> StoreResult<Vec<Operation>>;

    /// Up to `limit` done operations that ended before `ended_before`,
    /// oldest first.
    async fn expired(&self, ended_before: SystemTime, limit: usize) -> StoreResult<Vec<Operation>>;

    /// Deletes these done operations (with their request_ids and
    /// deliveries) in one durable batch; ids that are gone or not done are
    /// skipped. Returns how many were deleted.
    async fn purge(&self, ids: &[OperationId]) -> StoreResult<usize>;

    /// Makes every write so far durable.
    async fn flush(&self) -> StoreResult<()>;

    /// Subscribes to the change feed.
    fn subscribe(&self) -> broadcast::Receiver<Change>;
}

/// The webhook outbox. Deliveries are added with the state change that
/// causes them (by [`OperationStore`]); this trait reads and updates them.
#[async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// Pending deliveries due by `now`, oldest due first.
    async fn due_deliveries(&self, now: SystemTime, limit: usize) -> StoreResult<Vec<Delivery>>;

    /// When the earliest pending delivery is due.
    async fn next_delivery_due(&self) -> StoreResult<Option<SystemTime>>;

    /// Records a delivery attempt's outcome, durably, and announces it on
    /// the change feed.
    async fn save_delivery(&self, delivery: &Delivery) -> StoreResult<()>;

    /// The deliveries of one operation, oldest first.
    async fn deliveries(&self, id: OperationId) -> StoreResult<Vec<Delivery>>;
}

/// Small named secrets (the page-token key, say), shared by every process
/// that uses the same store.
#[async_trait]
pub trait SecretStore: Send + Sync + 'static {
    /// Returns the named secret, creating it durably from `initial` on
    /// first use. Every caller gets the same value, whoever came first.
    async fn secret(&self, name: &str, initial: &[u8]) -> StoreResult<Vec<u8>>;
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
    /// step. The batch is applied atomically, or not at all when it would
    /// take the tenant past `limit` orders (replacements do not count); it
    /// is made durable by the next flush.
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

/// Every store a server uses, from one backend; cheap to clone.
#[derive(Clone)]
pub struct Stores {
    pub operations: Arc<dyn OperationStore>,
    pub outbox: Arc<dyn OutboxStore>,
    pub secrets: Arc<dyn SecretStore>,
    pub orders: Arc<dyn OrderStore>,
}

impl Stores {
    /// All four from one backend value.
    pub fn from_backend<B>(backend: B) -> Self
    where
        B: OperationStore + OutboxStore + SecretStore + OrderStore,
    {
        let backend = Arc::new(backend);
        Self {
            operations: backend.clone(),
            outbox: backend.clone(),
            secrets: backend.clone(),
            orders: backend,
        }
    }
}

/// Which backend to open, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded sled database in the data directory.
    Sled,
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "sled" => Ok(Backend::Sled),
            other => Err(format!(
                "unknown store backend {other:?}; expected \"sled\""
            )),
        }
    }
}
