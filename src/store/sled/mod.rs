//! The embedded backend: sled, in the data directory. The only module that
//! knows sled.
//!
//! Trees (key layouts in `keys`):
//! - `ops`: operation id to the encoded record;
//! - `active`: the ids of operations that are not done, so recovery reads
//!   only those;
//! - `request_ids`: idempotency key (with the tenant) to operation id;
//! - `by_tenant`: tenant, a zero byte, and operation id, for every
//!   operation of a named tenant, so that one tenant's listing reads only
//!   its own operations;
//! - `expiry`: end time and id of every done operation, so the retention
//!   sweeper reads only what has expired;
//! - `meta`: secrets and other small values;
//! - `orders`, and `orders/{tenant}` per named tenant: orders, so no key
//!   range is shared between tenants;
//! - `outbox`: webhook deliveries, written in the same transaction as the
//!   state change they announce.
//!
//! Files: `operations`, `outbox` and `orders` implement the store traits of
//! the same names; `commit` is the group commit every durable write waits
//! on: one `flush` covers every writer that finished writing before it
//! started.

mod commit;
mod keys;
mod operations;
mod orders;
mod outbox;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use sled::Tree;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use tokio::sync::broadcast;

use self::commit::GroupCommit;
use super::{Change, SecretStore, StoreError, StoreResult};

/// How hard the store works to keep acknowledged writes on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Durable writes wait for an fsync, shared by concurrent writers.
    #[default]
    Always,
    /// Durable writes return at once; a background flush runs every few
    /// milliseconds. A crash loses at most that window.
    Batch,
    /// No flush is forced; sled writes back when it chooses. A crash may
    /// lose any recent write.
    Never,
}

impl std::str::FromStr for SyncMode {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "always" => Ok(SyncMode::Always),
            "batch" => Ok(SyncMode::Batch),
            "never" => Ok(SyncMode::Never),
            other => Err(format!(
                "unknown sync mode {other:?}; expected always, batch or never"
            )),
        }
    }
}

/// sled's page cache by default. sled undercounts it: with 300,000
/// operations, 128 MiB let the server grow to 874 MiB and 32 MiB to 193 MiB,
/// but writing slows as the store outgrows a small cache (BENCHMARKS.md).
pub const DEFAULT_CACHE_BYTES: u64 = 128 * 1024 * 1024;

/// How often `SyncMode::Batch` flushes.
const BATCH_FLUSH_MS: u64 = 10;

/// Capacity of the change feed. A subscriber that falls further behind is
/// told it lagged and must re-read what it follows.
const FEED_CAPACITY: usize = 16 * 1024;

/// The sled backend; a cheap-clone handle.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    ops: Tree,
    active: Tree,
    request_ids: Tree,
    by_tenant: Tree,
    expiry: Tree,
    meta: Tree,
    /// One order writer at a time: replacing an order reads where it was
    /// stored, and two batches must not both move the same order.
    orders_writer: std::sync::Mutex<()>,
    outbox: Tree,
    feed: broadcast::Sender<Change>,
    commit: GroupCommit,
    mode: SyncMode,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => backend(e),
    }
}

impl SledStore {
    /// Opens (or creates) the database in `dir` with the default cache.
    pub fn open(dir: &Path, mode: SyncMode) -> StoreResult<Self> {
        Self::open_with_cache(dir, mode, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the database in `dir`, giving sled's page cache
    /// `cache_bytes`. sled counts its cache loosely: the process's memory
    /// grows to several times this figure under write load.
    pub fn open_with_cache(dir: &Path, mode: SyncMode, cache_bytes: u64) -> StoreResult<Self> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        let flush_every = match mode {
            SyncMode::Always => Some(500),
            SyncMode::Batch => Some(BATCH_FLUSH_MS),
            SyncMode::Never => None,
        };
        let db = sled::Config::new()
            .path(dir.join("sled"))
            .cache_capacity(cache_bytes)
            .flush_every_ms(flush_every)
            .open()
            .map_err(backend)?;
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let inner = Inner {
            ops: db.open_tree("ops").map_err(backend)?,
            active: db.open_tree("active").map_err(backend)?,
            request_ids: db.open_tree("request_ids").map_err(backend)?,
            by_tenant: db.open_tree("by_tenant").map_err(backend)?,
            expiry: db.open_tree("expiry").map_err(backend)?,
            meta: db.open_tree("meta").map_err(backend)?,
            outbox: db.open_tree("outbox").map_err(backend)?,
            orders_writer: std::sync::Mutex::new(()),
            commit: GroupCommit::new(db.clone()),
            db,
            feed,
            mode,
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// How many flushes group commit has made so far.
    pub fn flushes(&self) -> u64 {
        self.inner.commit.flushes.load(Ordering::Relaxed)
    }

    /// Waits until what was written is on disk, when the sync mode asks
    /// for that.
    async fn persist(&self) -> StoreResult<()> {
        if self.inner.mode == SyncMode::Always {
            self.inner.commit.sync().await?;
        }
        Ok(())
    }

    fn announce(&self, change: Change) {
        // No subscriber is not an error: nobody is watching.
        let _ = self.inner.feed.send(change);
    }
}

#[async_trait]
impl SecretStore for SledStore {
    async fn secret(&self, name: &str, initial: &[u8]) -> StoreResult<Vec<u8>> {
        let key = keys::secret(name);
        match self
            .inner
            .meta
            .compare_and_swap(key, None as Option<&[u8]>, Some(initial))
            .map_err(backend)?
        {
            Ok(()) => {
                self.inner.commit.sync().await?;
                Ok(initial.to_vec())
            }
            Err(cas) => Ok(cas.current.map(|v| v.to_vec()).unwrap_or_default()),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Best effort: whatever is still in sled's buffers goes to disk when
        // the last handle closes, whatever the sync mode.
        let _ = self.db.flush();
    }
}
