//! Operations in sled: the records, their indexes, and the outbox entries
//! their transitions produce, each change in one sled transaction.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use sled::Transactional;
use sled::transaction::TransactionalTree;
use tokio::sync::broadcast;

use super::{SledStore, TxResult, abort, backend, keys, tx_error};
use crate::model::{Delivery, Edit, Operation, OperationId, Transition};
use crate::store::codec::{decode, decode_delivery, encode, encode_delivery};
use crate::store::{
    Change, Created, ListPage, ListQuery, OperationStore, StoreError, StoreResult, is_durable,
};

fn read_op(ops: &TransactionalTree, key: &[u8]) -> TxResult<Option<Operation>> {
    match ops.get(key)? {
        None => Ok(None),
        Some(bytes) => match decode(&bytes) {
            Ok(op) => Ok(Some(op)),
            Err(e) => abort(e),
        },
    }
}

/// Adds a delivery a transition produced to the outbox.
fn add_delivery(outbox: &TransactionalTree, delivery: &Delivery) -> TxResult<()> {
    outbox.insert(keys::outbox::record(delivery), encode_delivery(delivery))?;
    if let Some(due) = keys::outbox::due(delivery) {
        outbox.insert(due, &[])?;
    }
    outbox.insert(keys::outbox::by_operation(delivery), &[])?;
    Ok(())
}

impl SledStore {
    /// Applies `edit` to one operation in one transaction, keeping the
    /// `active` and `expiry` indexes in step and storing the delivery the
    /// transition produced. Returns the operation and whether it changed.
    fn modify(
        &self,
        id: OperationId,
        edit: &Edit,
        now: SystemTime,
    ) -> StoreResult<(Operation, bool)> {
        let key = id.as_bytes();
        let inner = &self.inner;
        (&inner.ops, &inner.active, &inner.expiry, &inner.outbox)
            .transaction(|(ops, active, expiry, outbox)| {
                let Some(current) = read_op(ops, key)? else {
                    return abort(StoreError::NotFound);
                };
                match current.apply(edit, now) {
                    Err(rejection) => abort(StoreError::Rejected(rejection)),
                    Ok(None) => Ok((current, false)),
                    Ok(Some(Transition {
                        operation: next,
                        delivery,
                    })) => {
                        ops.insert(key, encode(&next))?;
                        if let Some(delivery) = &delivery {
                            add_delivery(outbox, delivery)?;
                        }
                        if current.is_done() != next.is_done() {
                            active.remove(key)?;
                            if let Some(end) = keys::expiry(&next) {
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
            for entry in outbox.scan_prefix(keys::outbox::operation_prefix(*id)) {
                let (key, _) = entry.map_err(backend)?;
                let record = keys::outbox::record_of(&key);
                if let Some(bytes) = outbox.remove(&record).map_err(backend)?
                    && let Ok(d) = decode_delivery(&bytes)
                    && let Some(due) = keys::outbox::due(&d)
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
                    if let Some(rid) = keys::request_id(&op) {
                        request_ids.remove(rid)?;
                    }
                    if let Some(end) = keys::expiry(&op) {
                        expiry.remove(&end)?;
                    }
                    if let Some(tenant) = keys::by_tenant(&op) {
                        by_tenant.remove(tenant)?;
                    }
                    removed.push(*id);
                }
                Ok(removed)
            })
            .map_err(tx_error)
    }

    /// Newest first: every operation, or one tenant's through its index
    /// (so neither the page nor its resume point ever touches another
    /// tenant's).
    fn newest_first<'a>(
        &'a self,
        query: &ListQuery<'_>,
    ) -> Box<dyn Iterator<Item = StoreResult<Operation>> + 'a> {
        let ops = &self.inner.ops;
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
                let start = keys::tenant_prefix(tenant);
                let end = match query.after {
                    Some(after) => [start.as_slice(), after.as_bytes()].concat(),
                    None => {
                        let mut end = start.clone();
                        *end.last_mut().expect("the prefix ends in a zero byte") = 1;
                        end
                    }
                };
                Box::new(
                    self.inner
                        .by_tenant
                        .range(start..end)
                        .rev()
                        .filter_map(move |entry| {
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
                        }),
                )
            }
        }
    }
}

#[async_trait]
impl OperationStore for SledStore {
    async fn create(&self, operation: Operation) -> StoreResult<Created> {
        let key = *operation.id.as_bytes();
        let transition = operation.creation(operation.create_time);
        let encoded = encode(&operation);
        let rid_key = keys::request_id(&operation);
        let tenant = keys::by_tenant(&operation);
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
                if let Some(delivery) = &transition.delivery {
                    add_delivery(outbox, delivery)?;
                }
                Ok(Created::New(operation.clone()))
            })
            .map_err(tx_error)?;
        if let Created::New(op) = &created {
            self.persist().await?;
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
        let mut iter = self.newest_first(&query);
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

    async fn update(&self, id: OperationId, edit: Edit, now: SystemTime) -> StoreResult<Operation> {
        let (op, changed) = self.modify(id, &edit, now)?;
        if changed {
            if is_durable(&edit) {
                self.persist().await?;
            }
            self.announce(Change::Updated(Arc::new(op.clone())));
        }
        Ok(op)
    }

    async fn delete(&self, id: OperationId) -> StoreResult<()> {
        let found = self.remove_done(&[id], true)?;
        self.forget_deliveries(&found)?;
        self.persist().await?;
        self.announce(Change::Deleted(id));
        Ok(())
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

    async fn expired(&self, ended_before: SystemTime, limit: usize) -> StoreResult<Vec<Operation>> {
        let mut out = Vec::new();
        for entry in self
            .inner
            .expiry
            .range(..keys::time_key(ended_before))
            .take(limit)
        {
            let (key, _) = entry.map_err(backend)?;
            let id =
                keys::expiry_id(&key).ok_or_else(|| StoreError::Corrupt("expiry key".into()))?;
            match self.inner.ops.get(id.as_bytes()).map_err(backend)? {
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
            self.persist().await?;
            for id in &removed {
                self.announce(Change::Deleted(*id));
            }
        }
        Ok(removed.len())
    }

    async fn flush(&self) -> StoreResult<()> {
        self.inner.commit.sync().await
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.feed.subscribe()
    }
}
