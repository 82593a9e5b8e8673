//! Durable state behind one trait, so that backends can be swapped.
//!
//! The engine only ever sees [`Store`]; `sled.rs` is the embedded backend and
//! the only file that knows sled. The trait is shaped for a shared database
//! too: work is taken with claims that carry a fencing token (the attempt
//! number), and changes are announced on a feed that the watch hub follows
//! rather than assuming one process sees every write.

mod codec;
pub mod sled;

use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::engine::OperationId;
use crate::engine::filter::Filter;
use crate::engine::notify::Delivery;
use crate::engine::operation::{Claim, Finish, Operation, OrphanRetry, Progress, Rejection};
use crate::reports::order::{Month, Order};

pub use self::sled::{SledStore, SyncMode};

/// A shared handle on an order store.
pub type DynOrderStore = Arc<dyn OrderStore>;

/// A shared handle on a backend.
pub type DynStore = Arc<dyn Store>;

/// What a backend can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No operation has that id.
    #[error("operation not found")]
    NotFound,
    /// The state change is not allowed from the operation's current state.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The request_id was used before with a different request.
    #[error("request_id {request_id} was already used for a different request ({existing})")]
    RequestIdConflict {
        request_id: String,
        existing: OperationId,
    },
    /// A stored record could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The backend itself failed (I/O, connection, ...).
    #[error("storage failed: {0}")]
    Backend(String),
}

/// Result alias for store calls.
pub type StoreResult<T> = Result<T, StoreError>;

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
    /// Only this (named, non-empty) tenant's operations, read through a
    /// per-tenant index rather than by filtering everything. The filter
    /// must agree.
    pub tenant: Option<&'a str>,
    /// Only operations that match.
    pub filter: &'a Filter,
    /// At most this many results.
    pub limit: usize,
    /// At most this many records examined, so that a selective filter
    /// cannot make one page scan the whole store. A page may therefore come
    /// back short, with a resume point.
    pub scan_budget: usize,
}

/// When a write must be on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Before the call returns.
    Durable,
    /// Whenever the backend next flushes.
    Lazy,
}

/// Storage for operations.
///
/// Every state change goes through the pure transition functions of
/// [`Operation`], applied atomically by the backend. Every successful write
/// is announced on the change feed after it is committed.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new operation durably. With a request_id that was seen
    /// before, returns the earlier operation instead, or
    /// [`StoreError::RequestIdConflict`] when its request differed.
    async fn create(&self, operation: Operation) -> StoreResult<Created>;

    /// Reads one operation.
    async fn get(&self, id: OperationId) -> StoreResult<Option<Operation>>;

    /// Lists operations newest first.
    async fn list(&self, query: ListQuery<'_>) -> StoreResult<ListPage>;

    /// Takes a queued operation for a worker: it becomes RUNNING under the
    /// next attempt number, which is the claim's fencing token. Returns None
    /// when the operation is gone or no longer queued.
    async fn claim(
        &self,
        id: OperationId,
        durability: Durability,
    ) -> StoreResult<Option<Operation>>;

    /// Records progress under a claim. Progress is never made durable on its
    /// own. Fails with `Rejected(Stale)` when the claim was superseded.
    async fn progress(&self, claim: Claim, progress: Progress) -> StoreResult<Operation>;

    /// Ends or releases an attempt under its claim, durably.
    async fn finish(&self, claim: Claim, finish: Finish) -> StoreResult<Operation>;

    /// Applies a client's cancellation durably. Returns the operation as it
    /// now is (unchanged when it was already cancelling or cancelled).
    async fn cancel(&self, id: OperationId) -> StoreResult<Operation>;

    /// Deletes a finished operation durably.
    async fn delete(&self, id: OperationId) -> StoreResult<()>;

    /// Every operation that is not done, oldest first, for recovery.
    async fn unfinished(&self) -> StoreResult<Vec<Operation>>;

    /// Deals with an attempt whose process died, durably: back to the queue
    /// or ended, as `retry` says (see [`Operation::recover_orphan`]).
    async fn recover_orphan(
        &self,
        id: OperationId,
        retry: OrphanRetry,
    ) -> StoreResult<Option<Operation>>;

    /// Up to `limit` done operations that ended before `ended_before`,
    /// oldest first.
    async fn expired(&self, ended_before: SystemTime, limit: usize) -> StoreResult<Vec<Operation>>;

    /// Deletes these done operations (and their request_ids) in one durable
    /// batch; ids that are gone or not done are skipped. Returns how many
    /// were deleted.
    async fn purge(&self, ids: &[OperationId]) -> StoreResult<usize>;

    /// Pending webhook deliveries due by `now`, oldest due first. Each was
    /// written to the outbox in the same transaction as the state change
    /// that caused it.
    async fn due_deliveries(&self, now: SystemTime, limit: usize) -> StoreResult<Vec<Delivery>>;

    /// When the earliest pending delivery is due.
    async fn next_delivery_due(&self) -> StoreResult<Option<SystemTime>>;

    /// Records a delivery attempt's outcome, durably.
    async fn save_delivery(&self, delivery: &Delivery) -> StoreResult<()>;

    /// The deliveries of one operation, oldest first.
    async fn deliveries(&self, id: OperationId) -> StoreResult<Vec<Delivery>>;

    /// Returns the named secret, creating it from `initial` on first use.
    /// Secrets are shared by every process that uses the same store.
    async fn secret(&self, name: &str, initial: &[u8]) -> StoreResult<Vec<u8>>;

    /// Makes every write so far durable.
    async fn flush(&self) -> StoreResult<()>;

    /// Subscribes to the change feed.
    fn subscribe(&self) -> broadcast::Receiver<Change>;
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
        tenant: &str,
        orders: Vec<Order>,
        limit: Option<u64>,
    ) -> StoreResult<PutOrders>;

    /// How many orders `tenant` has in `month`.
    async fn month_count(&self, tenant: &str, month: Month) -> StoreResult<u64>;

    /// Up to `limit` orders of `tenant` in `month` after `after`, in order;
    /// the cursor continues the listing and is None at the end.
    async fn month_page(
        &self,
        tenant: &str,
        month: Month,
        after: Option<OrderCursor>,
        limit: usize,
    ) -> StoreResult<(Vec<Order>, Option<OrderCursor>)>;
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

/// The clock used for state changes. One function, so that every backend
/// stamps times the same way. Times are cut to whole microseconds, the
/// precision records are stored with, so that an operation read back from
/// disk equals the one announced on the change feed.
pub(crate) fn now() -> SystemTime {
    crate::engine::operation::to_micros_precision(SystemTime::now())
}
