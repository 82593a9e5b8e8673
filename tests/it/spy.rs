//! A wrapper around a real operation store that a test can watch and
//! break: it records every claim it is asked for, and fails writes on
//! demand as a failing disk does, before anything is applied or after the
//! batch was applied but could not be made durable. Everything else goes
//! straight to the store it wraps.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use longrun::model::flow::{SlotId, Usage};
use longrun::model::{KindLimits, Limit, Operation, OperationId, Tenant};
use longrun::store::{
    Applied, Change, ClaimRequest, Claimed, Health, ListPage, ListQuery, OperationStore,
    QueueDepth, StoreError, StoreResult, Stores, Write,
};
use tokio::sync::{broadcast, watch};

/// How writes fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None = 0,
    /// Nothing of the batch is applied.
    BeforeApplying = 1,
    /// The batch is applied, then reported as failed.
    AfterApplying = 2,
}

/// The wrapper.
pub struct Spy {
    inner: Arc<dyn OperationStore>,
    fault: AtomicU8,
    health: watch::Sender<Health>,
    /// The kinds each claim asked for, in order.
    claims: Mutex<Vec<Vec<String>>>,
}

impl Spy {
    /// Wraps the operation store of `stores` in place and returns the
    /// wrapper.
    pub fn wrap(stores: &mut Stores) -> Arc<Spy> {
        let spy = Arc::new(Spy {
            inner: Arc::clone(&stores.operations),
            fault: AtomicU8::new(Fault::None as u8),
            health: watch::channel(Health::Writable).0,
            claims: Mutex::default(),
        });
        stores.operations = spy.clone();
        spy
    }

    /// Makes writes fail from now on, or work again.
    pub fn fail(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::SeqCst);
    }

    fn fault(&self) -> Fault {
        match self.fault.load(Ordering::SeqCst) {
            1 => Fault::BeforeApplying,
            2 => Fault::AfterApplying,
            _ => Fault::None,
        }
    }

    /// How many claims asked for `kind` so far.
    pub fn claims_of(&self, kind: &str) -> usize {
        self.claims
            .lock()
            .unwrap()
            .iter()
            .filter(|kinds| kinds.iter().any(|k| k == kind))
            .count()
    }

    fn set_health(&self, health: Health) {
        self.health.send_if_modified(|h| {
            let changed = *h != health;
            *h = health;
            changed
        });
    }

    fn broken(&self) -> StoreError {
        self.set_health(Health::Unavailable);
        StoreError::Unavailable("the disk failed: injected".into())
    }
}

#[async_trait]
impl OperationStore for Spy {
    async fn commit(&self, writes: Vec<Write>, now: SystemTime) -> Vec<StoreResult<Applied>> {
        match self.fault() {
            Fault::BeforeApplying => writes.iter().map(|_| Err(self.broken())).collect(),
            Fault::AfterApplying => {
                let results = self.inner.commit(writes, now).await;
                results.into_iter().map(|_| Err(self.broken())).collect()
            }
            Fault::None => self.inner.commit(writes, now).await,
        }
    }

    async fn claim(&self, request: &ClaimRequest, now: SystemTime) -> StoreResult<Claimed> {
        self.claims
            .lock()
            .unwrap()
            .push(request.wants.iter().map(|(k, _)| k.clone()).collect());
        match self.fault() {
            Fault::None => self.inner.claim(request, now).await,
            _ => Err(self.broken()),
        }
    }

    fn queued(&self, tenant: &Tenant) -> QueueDepth {
        self.inner.queued(tenant)
    }

    fn work(&self) -> watch::Receiver<u64> {
        self.inner.work()
    }

    async fn get(&self, id: OperationId) -> StoreResult<Option<Operation>> {
        self.inner.get(id).await
    }

    async fn list(&self, query: ListQuery<'_>) -> StoreResult<ListPage> {
        self.inner.list(query).await
    }

    async fn open_batches(
        &self,
        after: Option<OperationId>,
        limit: usize,
    ) -> StoreResult<Vec<Operation>> {
        self.inner.open_batches(after, limit).await
    }

    async fn unfinished(&self) -> StoreResult<Vec<Operation>> {
        self.inner.unfinished().await
    }

    async fn expired(&self, ended_before: SystemTime, limit: usize) -> StoreResult<Vec<Operation>> {
        self.inner.expired(ended_before, limit).await
    }

    async fn set_paused(&self, kind: &str, paused: bool) -> StoreResult<()> {
        self.inner.set_paused(kind, paused).await
    }

    async fn paused(&self) -> StoreResult<Vec<String>> {
        self.inner.paused().await
    }

    async fn expiring(
        &self,
        now: SystemTime,
        limit: usize,
    ) -> StoreResult<(Vec<OperationId>, Option<SystemTime>)> {
        self.inner.expiring(now, limit).await
    }

    async fn set_limit(&self, limit: &Limit) -> StoreResult<()> {
        self.inner.set_limit(limit).await
    }

    async fn limits(&self) -> StoreResult<Vec<Limit>> {
        self.inner.limits().await
    }

    async fn usage(
        &self,
        kind: &str,
        slots: Option<&[SlotId]>,
    ) -> StoreResult<(KindLimits, Usage)> {
        self.inner.usage(kind, slots).await
    }

    async fn flush(&self) -> StoreResult<()> {
        match self.fault() {
            Fault::None => self.inner.flush().await,
            _ => Err(self.broken()),
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.subscribe()
    }

    fn health(&self) -> watch::Receiver<Health> {
        self.health.subscribe()
    }

    async fn probe(&self) {
        if self.fault() == Fault::None {
            self.inner.probe().await;
            let now = *self.inner.health().borrow();
            self.set_health(now);
        }
    }
}
