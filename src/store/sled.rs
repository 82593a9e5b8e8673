//! The embedded backend: sled, in the data directory. The only file that
//! knows sled.
//!
//! Trees:
//! - `ops`: operation id (16 bytes, UUIDv7, so key order is creation order)
//!   to the encoded record;
//! - `active`: the ids of operations that are not done, so recovery reads
//!   only those;
//! - `request_ids`: idempotency key to operation id;
//! - `by_tenant`: tenant, a zero byte, and operation id, for every
//!   operation of a named tenant, so that one tenant's listing reads only
//!   its own operations (the default tenant of an open server is not
//!   indexed: it is only ever listed whole);
//! - `expiry`: end time (microseconds, big-endian) and id of every done
//!   operation, so the retention sweeper reads only what has expired;
//! - `meta`: secrets and other small values;
//! - `orders`: the default tenant's orders, which reports are made from (see
//!   `order_keys`); every other tenant has a tree `orders/{tenant}` of the
//!   same layout, so no key range is shared between tenants;
//! - `outbox`: webhook deliveries (see `outbox_keys`), written in the same
//!   transaction as the state change they announce.
//!
//! Every change runs in one sled transaction over the trees it touches, and
//! durable changes then wait for a group commit: one `flush` covers every
//! writer that finished writing before it started.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{Transactional, Tree};
use tokio::sync::{broadcast, watch};

use super::codec::{decode, decode_delivery, encode, encode_delivery};
use super::{
    Change, Created, Durability, ListPage, ListQuery, OrderCursor, OrderStore, PutOrders, Store,
    StoreError, StoreResult, now,
};
use crate::engine::OperationId;
use crate::engine::notify::{self, Delivery, DeliveryState};
use crate::engine::operation::{Claim, Finish, Operation, OrphanRetry, Progress, Rejection};
use crate::reports::order::{Month, Order};

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
    orders: Tree,
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

/// A time as 8 big-endian bytes of microseconds, so byte order is time
/// order.
fn time_key(time: SystemTime) -> [u8; 8] {
    let micros = time
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    micros.to_be_bytes()
}

/// The `expiry` key of a done operation: end time, then id.
fn expiry_key(op: &Operation) -> Option<[u8; 24]> {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&time_key(op.end_time?));
    key[8..].copy_from_slice(op.id.as_bytes());
    Some(key)
}

/// Keys of the `outbox` tree:
/// - `d` delivery id: the delivery;
/// - `q` due time(8) delivery id: pending deliveries by due time;
/// - `o` operation id delivery id: deliveries by operation.
mod outbox_keys {
    use crate::engine::notify::Delivery;

    pub(super) fn record(d: &Delivery) -> Vec<u8> {
        [b"d".as_slice(), d.id.as_bytes()].concat()
    }

    pub(super) fn due(d: &Delivery) -> Option<Vec<u8>> {
        let at = d.next_attempt?;
        Some([b"q".as_slice(), &super::time_key(at), d.id.as_bytes()].concat())
    }

    pub(super) fn by_operation(d: &Delivery) -> Vec<u8> {
        [operation_prefix(d.operation).as_slice(), d.id.as_bytes()].concat()
    }

    /// The prefix of an operation's `o` keys.
    pub(super) fn operation_prefix(id: crate::engine::OperationId) -> Vec<u8> {
        [b"o".as_slice(), id.as_bytes()].concat()
    }

    /// The record key a `q` or `o` index key points at: both end with the
    /// delivery id.
    pub(super) fn record_of(index_key: &[u8]) -> Vec<u8> {
        [b"d".as_slice(), &index_key[index_key.len() - 16..]].concat()
    }
}

/// Adds a pending delivery of `op`'s new state to the outbox.
fn enqueue_delivery(outbox: &TransactionalTree, op: &Operation) -> TxResult<()> {
    let Some(delivery) = Delivery::new(op, now()) else {
        return Ok(());
    };
    outbox.insert(outbox_keys::record(&delivery), encode_delivery(&delivery))?;
    if let Some(due) = outbox_keys::due(&delivery) {
        outbox.insert(due, &[])?;
    }
    outbox.insert(outbox_keys::by_operation(&delivery), &[])?;
    Ok(())
}

/// The request_ids key of an operation: its key's 16 bytes, then its
/// tenant, so that tenants never share idempotency keys. (The default
/// tenant's keys are the bare 16 bytes.)
fn request_id_key(op: &Operation) -> Option<Vec<u8>> {
    let request_id = op.request_id?;
    let mut key = Vec::with_capacity(16 + op.tenant.len());
    key.extend_from_slice(request_id.as_bytes());
    key.extend_from_slice(op.tenant.as_bytes());
    Some(key)
}

/// The `by_tenant` key of an operation; None for the default tenant.
fn tenant_key(op: &Operation) -> Option<Vec<u8>> {
    if op.tenant.is_empty() {
        return None;
    }
    let mut key = tenant_prefix(&op.tenant);
    key.extend_from_slice(op.id.as_bytes());
    Some(key)
}

/// Where a tenant's `by_tenant` keys start: the name and a zero byte
/// (which no tenant name contains).
fn tenant_prefix(tenant: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(tenant.len() + 17);
    key.extend_from_slice(tenant.as_bytes());
    key.push(0);
    key
}

fn read_op(ops: &TransactionalTree, key: &[u8]) -> TxResult<Option<Operation>> {
    match ops.get(key)? {
        None => Ok(None),
        Some(bytes) => match decode(&bytes) {
            Ok(op) => Ok(Some(op)),
            Err(e) => abort(e),
        },
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
            orders: db.open_tree("orders").map_err(backend)?,
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

    async fn persist(&self, durability: Durability) -> StoreResult<()> {
        if durability == Durability::Durable && self.inner.mode == SyncMode::Always {
            self.inner.commit.sync().await?;
        }
        Ok(())
    }

    fn announce(&self, change: Change) {
        // No subscriber is not an error: nobody is watching.
        let _ = self.inner.feed.send(change);
    }

    /// Applies `change` to one operation atomically, keeping the `active`
    /// index in step. `change` returns None to leave the record unchanged.
    fn modify<F>(&self, id: OperationId, change: F) -> StoreResult<(Operation, bool)>
    where
        F: Fn(&Operation) -> Result<Option<Operation>, Rejection>,
    {
        let key = id.as_bytes();
        let inner = &self.inner;
        (&inner.ops, &inner.active, &inner.expiry, &inner.outbox)
            .transaction(|(ops, active, expiry, outbox)| {
                let Some(current) = read_op(ops, key)? else {
                    return abort(StoreError::NotFound);
                };
                match change(&current) {
                    Err(rejection) => abort(StoreError::Rejected(rejection)),
                    Ok(None) => Ok((current, false)),
                    Ok(Some(next)) => {
                        ops.insert(key, encode(&next))?;
                        if notify::event(Some(&current), &next).is_some() {
                            enqueue_delivery(outbox, &next)?;
                        }
                        if current.is_done() != next.is_done() {
                            active.remove(key)?;
                            if let Some(end) = expiry_key(&next) {
                                expiry.insert(&end, &[])?;
                            }
                        }
                        Ok((next, true))
                    }
                }
            })
            .map_err(tx_error)
    }

    /// Drops the outbox entries of deleted operations. Done after the
    /// records go (sled transactions cannot scan a prefix); an entry left by
    /// a crash in between is only a finished delivery nobody can list.
    fn forget_deliveries(&self, ids: &[OperationId]) -> StoreResult<()> {
        let outbox = &self.inner.outbox;
        for id in ids {
            for entry in outbox.scan_prefix(outbox_keys::operation_prefix(*id)) {
                let (key, _) = entry.map_err(backend)?;
                let record = outbox_keys::record_of(&key);
                if let Some(bytes) = outbox.remove(&record).map_err(backend)?
                    && let Ok(d) = decode_delivery(&bytes)
                    && let Some(due) = outbox_keys::due(&d)
                {
                    outbox.remove(due).map_err(backend)?;
                }
                outbox.remove(&key).map_err(backend)?;
            }
        }
        Ok(())
    }

    /// Removes done operations with their index entries in one
    /// transaction. With `strict`, a missing or unfinished one fails the
    /// whole call; otherwise it is skipped. Returns the ids removed.
    fn remove_done(&self, ids: &[OperationId], strict: bool) -> StoreResult<Vec<OperationId>> {
        let inner = &self.inner;
        (
            &inner.ops,
            &inner.request_ids,
            &inner.expiry,
            &inner.by_tenant,
        )
            .transaction(|(ops, request_ids, expiry, by_tenant)| {
                let mut removed = Vec::with_capacity(ids.len());
                for id in ids {
                    let key = id.as_bytes();
                    let op = match read_op(ops, key)? {
                        Some(op) => op,
                        None if strict => return abort(StoreError::NotFound),
                        None => continue,
                    };
                    if let Err(rejection) = op.check_deletable() {
                        if strict {
                            return abort(StoreError::Rejected(rejection));
                        }
                        continue;
                    }
                    ops.remove(key)?;
                    if let Some(rid) = request_id_key(&op) {
                        request_ids.remove(rid)?;
                    }
                    if let Some(end) = expiry_key(&op) {
                        expiry.remove(&end)?;
                    }
                    if let Some(tenant) = tenant_key(&op) {
                        by_tenant.remove(tenant)?;
                    }
                    removed.push(*id);
                }
                Ok(removed)
            })
            .map_err(tx_error)
    }

    async fn modify_and_announce<F>(
        &self,
        id: OperationId,
        durability: Durability,
        change: F,
    ) -> StoreResult<Operation>
    where
        F: Fn(&Operation) -> Result<Option<Operation>, Rejection>,
    {
        let (op, changed) = self.modify(id, change)?;
        if changed {
            self.persist(durability).await?;
            self.announce(Change::Updated(Arc::new(op.clone())));
        }
        Ok(op)
    }
}

#[async_trait]
impl Store for SledStore {
    async fn create(&self, operation: Operation) -> StoreResult<Created> {
        let key = *operation.id.as_bytes();
        let encoded = encode(&operation);
        let rid_key = request_id_key(&operation);
        let tenant = tenant_key(&operation);
        let inner = &self.inner;
        let created = (
            &inner.ops,
            &inner.active,
            &inner.request_ids,
            &inner.outbox,
            &inner.by_tenant,
        )
            .transaction(|(ops, active, request_ids, outbox, by_tenant)| {
                if let (Some(request_id), Some(rid)) = (operation.request_id, &rid_key) {
                    let rid = rid.as_slice();
                    if let Some(existing_key) = request_ids.get(rid)?
                        && let Some(existing) = read_op(ops, &existing_key)?
                    {
                        if existing.request_digest == operation.request_digest {
                            return Ok(Created::Existing(existing));
                        }
                        return abort(StoreError::RequestIdConflict {
                            request_id: request_id.to_string(),
                            existing: existing.id,
                        });
                    }
                    request_ids.insert(rid, &key)?;
                }
                ops.insert(&key, encoded.as_slice())?;
                active.insert(&key, &[])?;
                if let Some(tenant) = &tenant {
                    by_tenant.insert(tenant.as_slice(), &[])?;
                }
                if notify::event(None, &operation).is_some() {
                    enqueue_delivery(outbox, &operation)?;
                }
                Ok(Created::New(operation.clone()))
            })
            .map_err(tx_error)?;
        if let Created::New(op) = &created {
            self.persist(Durability::Durable).await?;
            self.announce(Change::Updated(Arc::new(op.clone())));
        }
        Ok(created)
    }

    async fn get(&self, id: OperationId) -> StoreResult<Option<Operation>> {
        match self.inner.ops.get(id.as_bytes()).map_err(backend)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some),
        }
    }

    async fn list(&self, query: ListQuery<'_>) -> StoreResult<ListPage> {
        let ops = &self.inner.ops;
        // Newest first: every operation, or one tenant's through its index
        // (so neither the page nor its resume point ever touches another
        // tenant's).
        let mut iter: Box<dyn Iterator<Item = StoreResult<Operation>>> =
            match query.tenant {
                None => {
                    let range = match query.after {
                        Some(after) => ops.range(..*after.as_bytes()),
                        None => ops.range::<&[u8], _>(..),
                    };
                    Box::new(range.rev().map(|entry| {
                        let (_, bytes) = entry.map_err(backend)?;
                        decode(&bytes)
                    }))
                }
                Some(tenant) => {
                    let start = tenant_prefix(tenant);
                    let end = match query.after {
                        Some(after) => [start.as_slice(), after.as_bytes()].concat(),
                        None => {
                            let mut end = start.clone();
                            *end.last_mut().expect("the prefix ends in a zero byte") = 1;
                            end
                        }
                    };
                    Box::new(self.inner.by_tenant.range(start..end).rev().filter_map(
                        move |entry| {
                            let id = match entry {
                                Ok((key, _)) => key[key.len() - 16..].to_vec(),
                                Err(e) => return Some(Err(backend(e))),
                            };
                            // Gone between the index and the record: skip.
                            match ops.get(&id) {
                                Ok(Some(bytes)) => Some(decode(&bytes)),
                                Ok(None) => None,
                                Err(e) => Some(Err(backend(e))),
                            }
                        },
                    ))
                }
            };
        let mut page = ListPage::default();
        let mut scanned = 0usize;
        let mut last_scanned = None;
        while page.operations.len() < query.limit {
            if scanned >= query.scan_budget {
                page.resume_after = last_scanned;
                return Ok(page);
            }
            let Some(op) = iter.next() else {
                return Ok(page);
            };
            let op = op?;
            scanned += 1;
            last_scanned = Some(op.id);
            if query.filter.matches(&op) {
                page.operations.push(op);
            }
        }
        if iter.next().is_some() {
            page.resume_after = last_scanned;
        }
        Ok(page)
    }

    async fn claim(
        &self,
        id: OperationId,
        durability: Durability,
    ) -> StoreResult<Option<Operation>> {
        let time = now();
        match self
            .modify_and_announce(id, durability, |op| op.claim(time).map(Some))
            .await
        {
            Ok(op) => Ok(Some(op)),
            Err(StoreError::NotFound | StoreError::Rejected(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn progress(&self, claim: Claim, progress: Progress) -> StoreResult<Operation> {
        let time = now();
        self.modify_and_announce(claim.id, Durability::Lazy, |op| {
            op.progress(&claim, &progress, time).map(Some)
        })
        .await
    }

    async fn finish(&self, claim: Claim, finish: Finish) -> StoreResult<Operation> {
        let time = now();
        self.modify_and_announce(claim.id, Durability::Durable, |op| {
            op.finish(&claim, &finish, time).map(Some)
        })
        .await
    }

    async fn cancel(&self, id: OperationId) -> StoreResult<Operation> {
        let time = now();
        self.modify_and_announce(id, Durability::Durable, |op| op.cancel(time))
            .await
    }

    async fn delete(&self, id: OperationId) -> StoreResult<()> {
        let found = self.remove_done(&[id], true)?;
        debug_assert_eq!(found.len(), 1);
        self.forget_deliveries(&found)?;
        self.persist(Durability::Durable).await?;
        self.announce(Change::Deleted(id));
        Ok(())
    }

    async fn expired(&self, ended_before: SystemTime, limit: usize) -> StoreResult<Vec<Operation>> {
        let mut out = Vec::new();
        for entry in self
            .inner
            .expiry
            .range(..time_key(ended_before))
            .take(limit)
        {
            let (key, _) = entry.map_err(backend)?;
            let id: [u8; 16] = key[8..]
                .try_into()
                .map_err(|_| StoreError::Corrupt("expiry key".into()))?;
            match self.inner.ops.get(id).map_err(backend)? {
                Some(bytes) => out.push(decode(&bytes)?),
                // The record is gone; drop the dangling index entry.
                None => {
                    self.inner.expiry.remove(&key).map_err(backend)?;
                }
            }
        }
        Ok(out)
    }

    async fn purge(&self, ids: &[OperationId]) -> StoreResult<usize> {
        let removed = self.remove_done(ids, false)?;
        self.forget_deliveries(&removed)?;
        if !removed.is_empty() {
            self.persist(Durability::Durable).await?;
            for id in &removed {
                self.announce(Change::Deleted(*id));
            }
        }
        Ok(removed.len())
    }

    async fn unfinished(&self) -> StoreResult<Vec<Operation>> {
        let mut out = Vec::new();
        for entry in self.inner.active.iter() {
            let (key, _) = entry.map_err(backend)?;
            if let Some(bytes) = self.inner.ops.get(&key).map_err(backend)? {
                out.push(decode(&bytes)?);
            }
        }
        Ok(out)
    }

    async fn recover_orphan(
        &self,
        id: OperationId,
        retry: OrphanRetry,
    ) -> StoreResult<Option<Operation>> {
        let time = now();
        match self
            .modify_and_announce(id, Durability::Durable, |op| {
                Ok(op.recover_orphan(retry.clone(), time))
            })
            .await
        {
            Ok(op) => Ok(Some(op)),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn due_deliveries(&self, now: SystemTime, limit: usize) -> StoreResult<Vec<Delivery>> {
        let end = [b"q".as_slice(), &time_key(now), &[0xff; 16]].concat();
        let mut out = Vec::new();
        for entry in self.inner.outbox.range(b"q".to_vec()..=end).take(limit) {
            let (key, _) = entry.map_err(backend)?;
            let record = outbox_keys::record_of(&key);
            match self.inner.outbox.get(record).map_err(backend)? {
                Some(bytes) => out.push(decode_delivery(&bytes)?),
                None => {
                    self.inner.outbox.remove(&key).map_err(backend)?;
                }
            }
        }
        Ok(out)
    }

    async fn next_delivery_due(&self) -> StoreResult<Option<SystemTime>> {
        let first = self
            .inner
            .outbox
            .scan_prefix(b"q")
            .next()
            .transpose()
            .map_err(backend)?;
        Ok(first.map(|(key, _)| {
            let micros = u64::from_be_bytes(key[1..9].try_into().expect("8 bytes"));
            std::time::UNIX_EPOCH + std::time::Duration::from_micros(micros)
        }))
    }

    async fn save_delivery(&self, delivery: &Delivery) -> StoreResult<()> {
        let record_key = outbox_keys::record(delivery);
        self.inner
            .outbox
            .transaction(|outbox| {
                if let Some(old) = outbox.get(&record_key)? {
                    let old = match decode_delivery(&old) {
                        Ok(old) => old,
                        Err(e) => return abort(e),
                    };
                    if let Some(due) = outbox_keys::due(&old) {
                        outbox.remove(due)?;
                    }
                }
                outbox.insert(record_key.as_slice(), encode_delivery(delivery))?;
                if delivery.state == DeliveryState::Pending
                    && let Some(due) = outbox_keys::due(delivery)
                {
                    outbox.insert(due, &[])?;
                }
                outbox.insert(outbox_keys::by_operation(delivery), &[])?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.persist(Durability::Durable).await?;
        self.announce(Change::Delivery(delivery.operation));
        Ok(())
    }

    async fn deliveries(&self, id: OperationId) -> StoreResult<Vec<Delivery>> {
        let mut out = Vec::new();
        for entry in self
            .inner
            .outbox
            .scan_prefix(outbox_keys::operation_prefix(id))
        {
            let (key, _) = entry.map_err(backend)?;
            let record = outbox_keys::record_of(&key);
            if let Some(bytes) = self.inner.outbox.get(record).map_err(backend)? {
                out.push(decode_delivery(&bytes)?);
            }
        }
        Ok(out)
    }

    async fn secret(&self, name: &str, initial: &[u8]) -> StoreResult<Vec<u8>> {
        let key = format!("secret/{name}");
        let stored = match self
            .inner
            .meta
            .compare_and_swap(key.as_bytes(), None as Option<&[u8]>, Some(initial))
            .map_err(backend)?
        {
            Ok(()) => {
                self.inner.commit.sync().await?;
                initial.to_vec()
            }
            Err(cas) => cas.current.map(|v| v.to_vec()).unwrap_or_default(),
        };
        Ok(stored)
    }

    async fn flush(&self) -> StoreResult<()> {
        self.inner.commit.sync().await
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.feed.subscribe()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Best effort: whatever is still in sled's buffers goes to disk when
        // the last handle closes, whatever the sync mode.
        let _ = self.db.flush();
    }
}

/// Shares one fsync among every writer waiting for durability.
///
/// A writer takes a ticket after its write is applied. A flush started after
/// that moment covers the write, so it records the highest ticket issued
/// when it began and, when done, releases every writer up to that ticket.
/// While one flush runs, later writers queue up behind it and the next flush
/// covers them all.
struct GroupCommit {
    db: sled::Db,
    issued: AtomicU64,
    flushes: AtomicU64,
    flushed: watch::Sender<u64>,
    running: tokio::sync::Mutex<()>,
}

/// The flushing turn of one writer. Handing it on releases the turn before
/// waking the queue: a woken writer whose ticket the flush did not cover
/// must find the turn free, or it would wait for a flush nobody starts.
struct Turn<'a> {
    commit: &'a GroupCommit,
    guard: Option<tokio::sync::MutexGuard<'a, ()>>,
}

impl Turn<'_> {
    /// Ends the turn; `covered` is the highest ticket the flush made
    /// durable, or None when it failed.
    fn finish(mut self, covered: Option<u64>) {
        self.hand_on(covered);
    }

    fn hand_on(&mut self, covered: Option<u64>) {
        if self.guard.take().is_none() {
            return;
        }
        // Always wake the queue, so that after a failure (or a cancelled
        // flush) the next writer takes its own turn.
        self.commit.flushed.send_modify(|done| {
            if let Some(covered) = covered {
                *done = (*done).max(covered);
            }
        });
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.hand_on(None);
    }
}

impl GroupCommit {
    fn new(db: sled::Db) -> Self {
        Self {
            db,
            issued: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            flushed: watch::channel(0).0,
            running: tokio::sync::Mutex::new(()),
        }
    }

    async fn sync(&self) -> StoreResult<()> {
        let ticket = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let mut flushed = self.flushed.subscribe();
        loop {
            if *flushed.borrow_and_update() >= ticket {
                return Ok(());
            }
            if let Ok(guard) = self.running.try_lock() {
                if *self.flushed.borrow() >= ticket {
                    return Ok(());
                }
                let covers = self.issued.load(Ordering::SeqCst);
                // If this future is dropped mid-flush (a caller was
                // cancelled), the turn must still be handed on, or the
                // writers queued behind it would wait forever.
                let turn = Turn {
                    commit: self,
                    guard: Some(guard),
                };
                let db = self.db.clone();
                self.flushes.fetch_add(1, Ordering::Relaxed);
                let result = tokio::task::spawn_blocking(move || db.flush())
                    .await
                    .map_err(backend)
                    .and_then(|r| r.map_err(backend));
                turn.finish(result.as_ref().ok().map(|_| covers));
                result?;
                continue;
            }
            if flushed.changed().await.is_err() {
                return Err(StoreError::Backend("store closed".into()));
            }
        }
    }
}

/// Keys of the `orders` tree. Three kinds share it, so that one sled batch
/// updates them together:
/// - `m` month(6) created_at(8) order_id: the order;
/// - `i` order_id: the `m` key the order is stored under;
/// - `c` month(6): how many orders the month has (u64, big-endian).
mod order_keys {
    use crate::reports::order::{Month, Order};

    pub(super) fn order(order: &Order) -> Vec<u8> {
        let mut key = Vec::with_capacity(15 + order.order_id.len());
        key.push(b'm');
        key.extend_from_slice(&order.month().key());
        // Flipping the sign bit makes signed times sort as unsigned bytes.
        key.extend_from_slice(&((order.created_at as u64) ^ (1 << 63)).to_be_bytes());
        key.extend_from_slice(order.order_id.as_bytes());
        key
    }

    pub(super) fn month_start(month: Month) -> Vec<u8> {
        let mut key = vec![b'm'];
        key.extend_from_slice(&month.key());
        key
    }

    pub(super) fn by_id(order_id: &str) -> Vec<u8> {
        let mut key = vec![b'i'];
        key.extend_from_slice(order_id.as_bytes());
        key
    }

    pub(super) fn count(month_key: &[u8]) -> Vec<u8> {
        let mut key = vec![b'c'];
        key.extend_from_slice(month_key);
        key
    }

    /// The month part of an `m` key.
    pub(super) fn month_of(order_key: &[u8]) -> &[u8] {
        &order_key[1..7]
    }
}

/// A month's order count (0 when it has none).
fn read_count(tree: &Tree, count_key: &[u8]) -> StoreResult<u64> {
    match tree.get(count_key).map_err(backend)? {
        Some(v) => decode_count(&v),
        None => Ok(0),
    }
}

/// All orders of one tenant's tree: the sum of its month counts.
fn total_count(tree: &Tree) -> StoreResult<u64> {
    let mut total = 0u64;
    for entry in tree.scan_prefix([b'c']) {
        let (_, value) = entry.map_err(backend)?;
        total = total.saturating_add(decode_count(&value)?);
    }
    Ok(total)
}

fn decode_count(value: &[u8]) -> StoreResult<u64> {
    value
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt("month count".into()))
}

impl SledStore {
    /// The name of `tenant`'s order tree; the default tenant has the
    /// original `orders` tree.
    fn orders_tree_name(tenant: &str) -> String {
        format!("orders/{tenant}")
    }

    /// The order tree of `tenant`, created on its first write (sled keeps
    /// opened trees, so this is a lookup after the first call).
    fn orders_tree(&self, tenant: &str) -> StoreResult<Tree> {
        if tenant.is_empty() {
            return Ok(self.inner.orders.clone());
        }
        self.inner
            .db
            .open_tree(Self::orders_tree_name(tenant))
            .map_err(backend)
    }

    /// The order tree of `tenant` if it has ever stored an order: reading
    /// creates nothing.
    fn existing_orders_tree(&self, tenant: &str) -> StoreResult<Option<Tree>> {
        let name = Self::orders_tree_name(tenant);
        if !tenant.is_empty()
            && !self
                .inner
                .db
                .tree_names()
                .iter()
                .any(|existing| existing.as_ref() == name.as_bytes())
        {
            return Ok(None);
        }
        self.orders_tree(tenant).map(Some)
    }

    fn put_orders_blocking(
        &self,
        tenant: &str,
        orders: Vec<Order>,
        limit: Option<u64>,
    ) -> StoreResult<PutOrders> {
        use std::collections::HashMap;
        let tree = &self.orders_tree(tenant)?;
        // One writer at a time: replacing an order reads where it was
        // stored, and two batches must not both move the same order.
        let _turn = self
            .inner
            .orders_writer
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut batch = sled::Batch::default();
        let mut placed: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        let mut deltas: HashMap<Vec<u8>, i64> = HashMap::new();
        for order in &orders {
            let key = order_keys::order(order);
            let id_key = order_keys::by_id(&order.order_id);
            let previous = match placed.get(&id_key) {
                Some(k) => Some(k.clone()),
                None => tree.get(&id_key).map_err(backend)?.map(|v| v.to_vec()),
            };
            match previous {
                Some(old) if old == key => {}
                Some(old) => {
                    batch.remove(old.as_slice());
                    *deltas
                        .entry(order_keys::month_of(&old).to_vec())
                        .or_default() -= 1;
                    *deltas
                        .entry(order_keys::month_of(&key).to_vec())
                        .or_default() += 1;
                }
                None => {
                    *deltas
                        .entry(order_keys::month_of(&key).to_vec())
                        .or_default() += 1
                }
            }
            batch.insert(key.as_slice(), crate::store::codec::encode_order(order));
            batch.insert(id_key.as_slice(), key.as_slice());
            placed.insert(id_key, key);
        }
        // Checked under the writer's turn, so concurrent imports of one
        // tenant cannot both pass it.
        let added: i64 = deltas.values().sum();
        if let Some(limit) = limit
            && added > 0
        {
            let stored = total_count(tree)?;
            if stored.saturating_add(added as u64) > limit {
                return Ok(PutOrders::OverLimit { stored });
            }
        }
        for (month, delta) in deltas {
            let count_key = order_keys::count(&month);
            let current = read_count(tree, &count_key)?;
            let next = (current as i64 + delta).max(0) as u64;
            batch.insert(count_key, &next.to_be_bytes());
        }
        tree.apply_batch(batch).map_err(backend)?;
        Ok(PutOrders::Stored)
    }
}

#[async_trait]
impl OrderStore for SledStore {
    async fn put_orders(
        &self,
        tenant: &str,
        orders: Vec<Order>,
        limit: Option<u64>,
    ) -> StoreResult<PutOrders> {
        let store = self.clone();
        let tenant = tenant.to_owned();
        tokio::task::spawn_blocking(move || store.put_orders_blocking(&tenant, orders, limit))
            .await
            .map_err(backend)?
    }

    async fn month_count(&self, tenant: &str, month: Month) -> StoreResult<u64> {
        match self.existing_orders_tree(tenant)? {
            Some(tree) => read_count(&tree, &order_keys::count(&month.key())),
            None => Ok(0),
        }
    }

    async fn month_page(
        &self,
        tenant: &str,
        month: Month,
        after: Option<OrderCursor>,
        limit: usize,
    ) -> StoreResult<(Vec<Order>, Option<OrderCursor>)> {
        use std::ops::Bound;
        let Some(tree) = self.existing_orders_tree(tenant)? else {
            return Ok((Vec::new(), None));
        };
        tokio::task::spawn_blocking(move || {
            let start = match after {
                Some(OrderCursor(key)) => Bound::Excluded(key),
                None => Bound::Included(order_keys::month_start(month)),
            };
            let end = Bound::Excluded(order_keys::month_start(month.next()));
            let mut orders = Vec::with_capacity(limit.min(65_536));
            let mut last = None;
            for entry in tree.range::<Vec<u8>, _>((start, end)).take(limit) {
                let (key, value) = entry.map_err(backend)?;
                orders.push(crate::store::codec::decode_order(&value)?);
                last = Some(key);
            }
            let cursor = if orders.len() == limit {
                last.map(|k| OrderCursor(k.to_vec()))
            } else {
                None
            };
            Ok((orders, cursor))
        })
        .await
        .map_err(backend)?
    }
}
