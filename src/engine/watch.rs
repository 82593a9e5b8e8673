//! The watch hub: the latest state of every operation someone is waiting
//! on, fed by the store's change feed.
//!
//! Each watched operation has one `tokio::sync::watch` channel, however many
//! clients follow it: a change costs one store of an `Arc` and one wake-up
//! per receiver, and a slow reader simply sees the newest state when it next
//! looks, never a backlog. Entries exist only while somebody holds a
//! [`Subscription`]; the last one to drop removes it.
//!
//! A std mutex guards the map: it is held only for a lookup or an insert,
//! never across an await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::model::{Operation, OperationId};
use crate::store::Change;

/// What the hub knows of one operation.
#[derive(Debug, Clone)]
pub enum Snapshot {
    /// Not read from the store yet.
    Loading,
    /// Its latest state.
    Present(Arc<Operation>),
    /// It does not exist, or was deleted. Ids are never reused, so this is
    /// final.
    Gone,
}

impl Snapshot {
    /// Replaces `self` with `incoming` when that is news: a newer version,
    /// or a deletion. Returns whether it changed.
    fn advance(&mut self, incoming: &Snapshot) -> bool {
        let newer = match (&*self, incoming) {
            (_, Snapshot::Loading) | (Snapshot::Gone, _) => false,
            (_, Snapshot::Gone) => true,
            (Snapshot::Loading, Snapshot::Present(_)) => true,
            (Snapshot::Present(old), Snapshot::Present(new)) => new.version > old.version,
        };
        if newer {
            *self = incoming.clone();
        }
        newer
    }
}

#[derive(Default)]
pub(crate) struct Hub {
    entries: Mutex<HashMap<OperationId, watch::Sender<Snapshot>>>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OperationId, watch::Sender<Snapshot>>> {
        // A panic while holding this lock cannot leave the map half-updated
        // (every critical section is a single insert, lookup or remove), so
        // a poisoned lock is safe to keep using.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts following `id`. The caller loads the current state and
    /// `offer`s it when the subscription is still `Loading`.
    pub(crate) fn subscribe(self: &Arc<Self>, id: OperationId) -> Subscription {
        let rx = self
            .lock()
            .entry(id)
            .or_insert_with(|| watch::channel(Snapshot::Loading).0)
            .subscribe();
        Subscription {
            hub: Arc::clone(self),
            id,
            rx: Some(rx),
        }
    }

    /// Offers a state read from the store; kept only if it is news.
    pub(crate) fn offer(&self, id: OperationId, snapshot: Snapshot) {
        if let Some(tx) = self.lock().get(&id) {
            tx.send_if_modified(|current| current.advance(&snapshot));
        }
    }

    /// Applies one change from the feed.
    pub(crate) fn publish(&self, change: &Change) {
        match change {
            Change::Updated(op) => self.offer(op.id, Snapshot::Present(Arc::clone(op))),
            Change::Deleted(id) => self.offer(*id, Snapshot::Gone),
            // The feed follower re-reads these itself.
            Change::Delivery(_) | Change::Elsewhere { .. } | Change::Resync => {}
        }
    }

    /// Whether `id` has watchers.
    pub(crate) fn is_watched(&self, id: OperationId) -> bool {
        self.lock().contains_key(&id)
    }

    /// The operations that have watchers, to re-read after the feed lagged.
    pub(crate) fn watched(&self) -> Vec<OperationId> {
        self.lock().keys().copied().collect()
    }

    /// How many operations are being watched.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// One watcher's view of one operation.
pub struct Subscription {
    hub: Arc<Hub>,
    id: OperationId,
    rx: Option<watch::Receiver<Snapshot>>,
}

impl Subscription {
    fn rx(&mut self) -> &mut watch::Receiver<Snapshot> {
        self.rx.as_mut().expect("present until drop")
    }

    /// The latest state, marking it seen.
    pub fn current(&mut self) -> Snapshot {
        self.rx().borrow_and_update().clone()
    }

    /// Waits until the state changes after the last `current`.
    pub async fn changed(&mut self) {
        // The sender lives in the hub for as long as this subscription does,
        // so this cannot fail; if it ever did, waiting forever is wrong, so
        // return and let the caller re-read.
        let _ = self.rx().changed().await;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut entries = self.hub.lock();
        drop(self.rx.take());
        if let Some(tx) = entries.get(&self.id)
            && tx.receiver_count() == 0
        {
            entries.remove(&self.id);
        }
    }
}
