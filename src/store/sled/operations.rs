//! [`OperationStore`] on sled: commits and claims through `commit`, reads
//! straight from the tree.

use std::time::SystemTime;

use async_trait::async_trait;
use tokio::sync::{broadcast, watch};

use super::commit::{Applier, Finished, Moved, SledView, Staging, backend, disk};
use super::space::Room;
use super::{SledStore, SyncMode, keys, lock};
use crate::model::flow::{SlotId, Usage};
use crate::model::{Edit, KindLimits, Limit, LimitScope, Operation, OperationId, State};
use crate::store::codec::decode;
use crate::store::rules::Rulebook;
use crate::store::{
    Applied, Change, ClaimRequest, Claimed, Health, ListPage, ListQuery, OperationStore,
    QueueDepth, StoreError, StoreResult, USAGE_ROWS, Write,
};

impl SledStore {
    /// A record kept in memory: a claim not written yet, or a record
    /// written lately.
    fn in_memory(&self, id: OperationId) -> Option<Operation> {
        if let Some(op) = lock(&self.inner.claimed).get(&id) {
            return Some(op.clone());
        }
        self.recent().get(&id).map(|op| Operation::clone(&op))
    }

    /// Runs `read` on the blocking pool: sled holds readers back while a
    /// batch is applied, and an async worker must not wait there.
    pub(super) async fn off_thread<T, F>(&self, read: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&SledStore) -> StoreResult<T> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || read(&store))
            .await
            .map_err(backend)?
    }

    /// Reads one record: from memory, or the stored one.
    fn read(&self, id: OperationId) -> StoreResult<Option<Operation>> {
        if let Some(op) = self.in_memory(id) {
            return Ok(Some(op));
        }
        match self.inner.tree.get(keys::op(id)).map_err(backend)? {
            Some(bytes) => {
                let strings = self.inner.strings.read().unwrap_or_else(|e| e.into_inner());
                decode(id, &bytes, &strings.stage()).map(Some)
            }
            None => Ok(None),
        }
    }

    /// Finds the operations that are not done, reading the records from
    /// the low-water mark on (all of them when there is none yet), and puts
    /// the queued ones in the ready queue; done at open.
    pub(super) fn load_unfinished(&self) -> StoreResult<()> {
        let tree = &self.inner.tree;
        let start = match tree.get(keys::LOW_WATER).map_err(backend)? {
            // Every operation was done at the last commit.
            Some(low) if low.is_empty() => return Ok(()),
            Some(low) => [&[keys::OP], &low[..]].concat(),
            None => vec![keys::OP],
        };
        let mut apply = lock(&self.inner.apply);
        let mut ready = lock(&self.inner.ready);
        for entry in tree.range(start..vec![keys::OP + 1]) {
            let (key, _) = entry.map_err(backend)?;
            let id =
                keys::id_at_end(&key).ok_or_else(|| StoreError::Corrupt("record key".into()))?;
            let Some(op) = self.read(id)? else { continue };
            if !op.is_done() {
                apply.unfinished.insert(id);
                // Queued ones go in line; running ones count their slots.
                ready.track(&op);
            }
        }
        Ok(())
    }

    fn recent(&self) -> std::sync::RwLockReadGuard<'_, super::recent::Recent> {
        self.inner.recent.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands a staged batch to sled and takes in what it changed: new
    /// strings, recent records, and the ready queue; with `supersedes` (a
    /// commit), the claims kept in memory are dropped as well, since the
    /// batch wrote them or newer versions. Returns the feed announcements
    /// and whether the batch must be flushed.
    ///
    /// Called under the apply lock and not holding `recent`. A commit does
    /// not hold `claimed` either: Gets look in both from async threads and
    /// must not wait while sled applies a commit's batch; until the swap
    /// below (both locks at once, so a read never goes back to an older
    /// version) they see the state before it. A claim holds `claimed`
    /// throughout, so that no read sees a claim that then fails; its batch
    /// is empty, and sled not called, unless an expiry or a delivery came
    /// with it.
    fn write_batch(
        &self,
        finished: Finished,
        applier: &mut Applier,
        supersedes: bool,
    ) -> StoreResult<(Vec<Change>, bool)> {
        let Finished {
            writes,
            created,
            ended,
            low_water,
            strings,
            changes,
            moved,
            durable,
        } = finished;
        if let Some(writes) = writes {
            self.inner.tree.apply_batch(writes).map_err(disk)?;
        }
        applier.applied(&created, &ended, low_water);
        {
            // Both held to the end of the block.
            let mut claimed = supersedes.then(|| lock(&self.inner.claimed));
            let mut recent = self.inner.recent.write().unwrap_or_else(|e| e.into_inner());
            if let Some(claimed) = claimed.as_mut() {
                claimed.clear();
            }
            for change in &changes {
                match change {
                    Change::Updated(op) => recent.put(std::sync::Arc::clone(op)),
                    Change::Deleted(id) => recent.remove(id),
                    Change::Delivery(_) | Change::Elsewhere { .. } | Change::Resync => {}
                }
            }
        }
        self.inner
            .strings
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend(strings);
        let mut ready = lock(&self.inner.ready);
        let mut queued = false;
        for moved in moved {
            match moved {
                Moved::Queued(op) => {
                    queued = true;
                    ready.queue(op.as_queued());
                }
                // Still running: its claim counted its slots already.
                Moved::Left(id, true) => ready.remove(id),
                Moved::Left(id, false) => {
                    // Slots given back may let held-back work start.
                    queued |= ready.left(id, None);
                }
            }
        }
        drop(ready);
        if queued {
            self.inner.work.send_modify(|n| *n += 1);
        }
        Ok((changes, durable))
    }

    fn list_blocking(&self, query: ListQuery<'_>) -> StoreResult<ListPage> {
        let tree = &self.inner.tree;
        // Newest first: every operation, or one tenant's through its index
        // (so neither the page nor its resume point ever touches another
        // tenant's).
        let (start, end) = match (query.parent, query.tenant) {
            (Some(parent), _) => {
                let start = keys::children_of(parent).to_vec();
                let end = match query.after {
                    Some(after) => [start.as_slice(), after.as_bytes()].concat(),
                    None => [start.as_slice(), &[0xff; 17]].concat(),
                };
                (start, end)
            }
            (None, None) => (
                vec![keys::OP],
                match query.after {
                    Some(after) => keys::op(after).to_vec(),
                    None => vec![keys::OP + 1],
                },
            ),
            (None, Some(tenant)) => {
                let start = keys::tenant_prefix(tenant);
                let end = match query.after {
                    Some(after) => [start.as_slice(), after.as_bytes()].concat(),
                    None => {
                        let mut end = start.clone();
                        *end.last_mut().expect("the prefix ends in a zero byte") = 1;
                        end
                    }
                };
                (start, end)
            }
        };
        let mut ids = tree.range(start..end).rev().map(|entry| {
            let (key, _) = entry.map_err(backend)?;
            keys::id_at_end(&key).ok_or_else(|| StoreError::Corrupt("listing key".into()))
        });
        let mut page = ListPage::default();
        let mut scanned = 0usize;
        let mut last_scanned = None;
        while page.operations.len() < query.limit {
            if scanned >= query.scan_budget {
                page.resume_after = last_scanned;
                return Ok(page);
            }
            let Some(id) = ids.next() else {
                return Ok(page);
            };
            let id = id?;
            scanned += 1;
            last_scanned = Some(id);
            // Gone between the index and the record: skip it.
            if let Some(op) = self.read(id)?
                && query.filter.matches(&op)
            {
                page.operations.push(op);
            }
        }
        if ids.next().is_some() {
            page.resume_after = last_scanned;
        }
        Ok(page)
    }

    /// Reads from the oldest record on: an operation created after the
    /// cutoff cannot have ended before it, so the read stops there, having
    /// passed over only old operations that still run or ended lately.
    fn expired_blocking(
        &self,
        ended_before: SystemTime,
        limit: usize,
    ) -> StoreResult<Vec<Operation>> {
        let mut out = Vec::new();
        for entry in self.inner.tree.scan_prefix([keys::OP]) {
            if out.len() >= limit {
                break;
            }
            let (key, _) = entry.map_err(backend)?;
            let id =
                keys::id_at_end(&key).ok_or_else(|| StoreError::Corrupt("record key".into()))?;
            let Some(op) = self.read(id)? else { continue };
            if op.create_time >= ended_before {
                break;
            }
            if op.end_time.is_some_and(|end| end < ended_before) {
                out.push(op);
            }
        }
        Ok(out)
    }

    pub(super) fn commit_blocking(
        &self,
        writes: Vec<Write>,
        now: SystemTime,
    ) -> Vec<StoreResult<Applied>> {
        let room = self.room(false);
        let mut apply = lock(&self.inner.apply);
        let mut claimed = lock(&self.inner.claimed);
        let strings = self.inner.strings.read().unwrap_or_else(|e| e.into_inner());
        let recent = self.recent();
        let stage = strings.stage();
        let mut view = SledView {
            tree: &self.inner.tree,
            strings: &stage,
            claimed: &claimed,
            recent: &recent,
        };
        let mut book = Rulebook::new(&mut view, now);
        let mut results: Vec<StoreResult<Applied>> = writes
            .iter()
            .map(|write| match room {
                Room::None => Err(StoreError::Full),
                Room::Low if write.grows() => Err(StoreError::Full),
                _ => book.write(write),
            })
            .collect();
        let plan = book.plan();
        let mut staging = Staging::new(&self.inner.tree, stage);
        let finished = staging
            .plan(&plan, &mut claimed, false)
            .map(|()| staging.finish(plan, Some(&claimed), &apply));
        // `write_batch` takes these for writing. The claims, written
        // by this batch or superseded by what it wrote, go once it is
        // applied; meanwhile only claims (which wait for the apply lock)
        // could add to them.
        drop(recent);
        drop(strings);
        drop(claimed);
        let applied = finished.and_then(|finished| self.write_batch(finished, &mut apply, true));
        drop(apply);
        let failure = match applied {
            Ok((changes, durable)) => {
                let synced = if durable && self.inner.mode == SyncMode::Always {
                    self.sync()
                } else {
                    Ok(())
                };
                match synced {
                    Ok(()) => {
                        self.announce(changes);
                        return results;
                    }
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        // The batch failed as a whole: every write that had succeeded fails.
        if let StoreError::Unavailable(reason) = &failure {
            self.failing(reason);
        }
        for result in &mut results {
            if result.is_ok() {
                *result = Err(failure.again());
            }
        }
        results
    }

    fn claim_blocking(&self, request: ClaimRequest, now: SystemTime) -> StoreResult<Claimed> {
        if self.room(false) == Room::None {
            return Err(StoreError::Full);
        }
        let mut apply = lock(&self.inner.apply);
        // Read under the apply lock, which a pause takes too: a claim that
        // runs after a pause returned never takes the kind. With nothing
        // paused (the usual case) the request is used as it is.
        let wants: std::borrow::Cow<'_, [(String, usize)]> = {
            let paused = self.inner.paused.read().unwrap_or_else(|e| e.into_inner());
            if paused.is_empty() {
                std::borrow::Cow::Borrowed(&request.wants)
            } else {
                request
                    .wants
                    .iter()
                    .filter(|(kind, _)| !paused.contains(kind))
                    .cloned()
                    .collect()
            }
        };
        let (picks, wake) =
            lock(&self.inner.ready).take(&wants, request.tenant.as_ref(), &request.weights, now);
        let ids: Vec<OperationId> = picks.iter().map(|(id, _)| *id).collect();
        let mut claimed = lock(&self.inner.claimed);
        let strings = self.inner.strings.read().unwrap_or_else(|e| e.into_inner());
        let recent = self.recent();
        let stage = strings.stage();
        let mut view = SledView {
            tree: &self.inner.tree,
            strings: &stage,
            claimed: &claimed,
            recent: &recent,
        };
        let mut book = Rulebook::new(&mut view, now);
        let mut operations = Vec::with_capacity(ids.len());
        let mut failed = None;
        for (id, holds) in &picks {
            let edit = Edit::Claim {
                lease: request.lease.clone(),
                by: request.by.clone(),
                holds: *holds,
            };
            match book.claim(*id, &edit) {
                // One past its expire time ends instead: it is written (and
                // gives back what the take counted for it), not run.
                Ok(Some(op)) if op.state == State::Running => operations.push(op),
                Ok(_) => {}
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let plan = book.plan();
        let mut staging = Staging::new(&self.inner.tree, stage);
        let finished = failed
            .map_or_else(|| staging.plan(&plan, &mut claimed, true), Err)
            .map(|()| staging.finish(plan, None, &apply));
        // `write_batch` takes both of these for writing.
        drop(recent);
        drop(strings);
        let applied = finished.and_then(|finished| self.write_batch(finished, &mut apply, false));
        drop(claimed);
        let changes = match applied {
            Ok((changes, _)) => changes,
            Err(e) => {
                // Nothing was claimed: what was taken from the queue goes back.
                {
                    let mut claimed = lock(&self.inner.claimed);
                    for id in &ids {
                        claimed.remove(id);
                    }
                }
                let mut ready = lock(&self.inner.ready);
                for id in ids {
                    if let Ok(Some(op)) = self.read(id) {
                        ready.track(&op);
                    }
                }
                return Err(e);
            }
        };
        drop(apply);
        self.announce(changes);
        let due = lock(&self.inner.ready).next_due();
        Ok(Claimed {
            operations,
            next_due: match (due, wake) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            more: false,
        })
    }
}

#[async_trait]
impl OperationStore for SledStore {
    async fn commit(&self, writes: Vec<Write>, now: SystemTime) -> Vec<StoreResult<Applied>> {
        let store = self.clone();
        let count = writes.len();
        match tokio::task::spawn_blocking(move || store.commit_blocking(writes, now)).await {
            Ok(results) => results,
            Err(e) => (0..count).map(|_| Err(backend(&e))).collect(),
        }
    }

    async fn claim(&self, request: &ClaimRequest, now: SystemTime) -> StoreResult<Claimed> {
        let store = self.clone();
        let request = request.clone();
        tokio::task::spawn_blocking(move || store.claim_blocking(request, now))
            .await
            .map_err(backend)?
    }

    async fn set_paused(&self, kind: &str, paused: bool) -> StoreResult<()> {
        let key = keys::paused(kind);
        let store = self.clone();
        let kind = kind.to_owned();
        tokio::task::spawn_blocking(move || {
            let tree = &store.inner.tree;
            if paused {
                tree.insert(key, &[] as &[u8]).map_err(disk)?;
            } else {
                tree.remove(key).map_err(disk)?;
            }
            store.sync()?;
            // Under the apply lock, as claims read it.
            let _apply = lock(&store.inner.apply);
            let mut set = store
                .inner
                .paused
                .write()
                .unwrap_or_else(|e| e.into_inner());
            if paused {
                set.insert(kind);
            } else if set.remove(&kind) {
                store.inner.work.send_modify(|n| *n += 1);
            }
            Ok(())
        })
        .await
        .map_err(backend)?
    }

    async fn paused(&self) -> StoreResult<Vec<String>> {
        let paused = self.inner.paused.read().unwrap_or_else(|e| e.into_inner());
        let mut kinds: Vec<String> = paused.iter().cloned().collect();
        kinds.sort();
        Ok(kinds)
    }

    async fn set_limit(&self, limit: &Limit) -> StoreResult<()> {
        let store = self.clone();
        let limit = limit.clone();
        tokio::task::spawn_blocking(move || {
            let tree = &store.inner.tree;
            let key = keys::limit(&limit.kind, limit.scope);
            let clear = limit.concurrency.is_none() && limit.rates.is_empty();
            if clear {
                tree.remove(key).map_err(disk)?;
            } else {
                tree.insert(key, keys::limit_value(&limit)).map_err(disk)?;
            }
            store.sync()?;
            // Under the apply lock, as claims read the limits.
            let _apply = lock(&store.inner.apply);
            let mut ready = lock(&store.inner.ready);
            let (mut limits, _) = ready.flow(&limit.kind);
            limits.limits.retain(|l| l.scope != limit.scope);
            if !clear {
                limits.limits.push(limit.clone());
                limits.limits.sort_by_key(|l| l.scope);
            }
            ready.set_limits(&limit.kind, limits);
            drop(ready);
            // A limit raised or removed may let held-back work start.
            store.inner.work.send_modify(|n| *n += 1);
            Ok(())
        })
        .await
        .map_err(backend)?
    }

    async fn limits(&self) -> StoreResult<Vec<Limit>> {
        let ready = lock(&self.inner.ready);
        let mut all: Vec<Limit> = ready.limits().flat_map(|k| k.limits.clone()).collect();
        all.sort_by(|a, b| (&a.kind, a.scope).cmp(&(&b.kind, b.scope)));
        Ok(all)
    }

    async fn usage(
        &self,
        kind: &str,
        slots: Option<&[SlotId]>,
    ) -> StoreResult<(KindLimits, Usage)> {
        let (limits, mut usage) = lock(&self.inner.ready).flow(kind);
        match slots {
            Some(slots) => {
                usage.retain(|scope, key| slots.iter().any(|(s, k)| *s == scope && k == key))
            }
            None => {
                // The busiest slots, and the kind's own buckets.
                let mut busiest: Vec<(LimitScope, String, u32)> = usage
                    .slots()
                    .filter(|(.., n)| *n > 0)
                    .map(|(scope, key, n)| (scope, key.to_owned(), n))
                    .collect();
                busiest.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| (a.0, &a.1).cmp(&(b.0, &b.1))));
                busiest.truncate(USAGE_ROWS);
                usage.retain(|scope, key| {
                    scope == LimitScope::Kind
                        || busiest.iter().any(|(s, k, _)| *s == scope && k == key)
                });
            }
        }
        Ok((limits, usage))
    }

    async fn expiring(
        &self,
        now: SystemTime,
        limit: usize,
    ) -> StoreResult<(Vec<OperationId>, Option<SystemTime>)> {
        Ok(lock(&self.inner.ready).expiring(now, limit))
    }

    fn queued_of_kind(&self, kind: &str) -> Option<u64> {
        Some(lock(&self.inner.ready).depth_of_kind(kind))
    }

    fn queued(&self, tenant: &crate::model::Tenant) -> QueueDepth {
        lock(&self.inner.ready).depth(tenant)
    }

    fn work(&self) -> watch::Receiver<u64> {
        self.inner.work.subscribe()
    }

    async fn get(&self, id: OperationId) -> StoreResult<Option<Operation>> {
        match self.in_memory(id) {
            Some(op) => Ok(Some(op)),
            None => self.off_thread(move |store| store.read(id)).await,
        }
    }

    /// All in one trip to the blocking pool, not one per id.
    async fn get_many(&self, ids: &[OperationId]) -> StoreResult<Vec<Option<Operation>>> {
        let ids = ids.to_vec();
        self.off_thread(move |store| ids.iter().map(|id| store.read(*id)).collect())
            .await
    }

    async fn list(&self, query: ListQuery<'_>) -> StoreResult<ListPage> {
        let (after, tenant, filter) = (query.after, query.tenant.cloned(), query.filter.clone());
        let (limit, scan_budget, parent) = (query.limit, query.scan_budget, query.parent);
        self.off_thread(move |store| {
            store.list_blocking(ListQuery {
                after,
                tenant: tenant.as_ref(),
                parent,
                filter: &filter,
                limit,
                scan_budget,
            })
        })
        .await
    }

    async fn unfinished(&self) -> StoreResult<Vec<Operation>> {
        self.off_thread(|store| {
            let ids: Vec<OperationId> = lock(&store.inner.apply)
                .unfinished
                .iter()
                .copied()
                .collect();
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(op) = store.read(id)? {
                    out.push(op);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn open_batches(
        &self,
        after: Option<OperationId>,
        limit: usize,
    ) -> StoreResult<Vec<Operation>> {
        self.off_thread(move |store| {
            let start = match after {
                Some(after) => keys::open_batch(after).to_vec(),
                None => vec![keys::OPEN_BATCH],
            };
            let mut out = Vec::new();
            for entry in store.inner.tree.range(start..vec![keys::OPEN_BATCH + 1]) {
                let (key, _) = entry.map_err(backend)?;
                let id =
                    keys::id_at_end(&key).ok_or_else(|| StoreError::Corrupt("batch key".into()))?;
                if Some(id) == after {
                    continue;
                }
                if let Some(op) = store.read(id)? {
                    out.push(op);
                }
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    async fn expired(&self, ended_before: SystemTime, limit: usize) -> StoreResult<Vec<Operation>> {
        self.off_thread(move |store| store.expired_blocking(ended_before, limit))
            .await
    }

    async fn flush(&self) -> StoreResult<()> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.flush_all())
            .await
            .map_err(backend)?
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.feed.subscribe()
    }

    fn health(&self) -> watch::Receiver<Health> {
        self.inner.health.subscribe()
    }

    async fn probe(&self) {
        let store = self.clone();
        // A disk that failed a write is tried again with a flush; sled may
        // refuse every write until it is opened again, and health says so
        // until then.
        let _ = tokio::task::spawn_blocking(move || {
            if store
                .inner
                .failing
                .load(std::sync::atomic::Ordering::SeqCst)
                && store.sync().is_ok()
            {
                store
                    .inner
                    .failing
                    .store(false, std::sync::atomic::Ordering::SeqCst);
            }
            store.room(true);
        })
        .await;
    }
}
