//! The in-memory run queue: ids of queued operations, handed to idle
//! workers the moment they arrive.
//!
//! The queue only orders work; the store is the truth. Losing the queue (a
//! crash) loses nothing, because recovery rebuilds it from the store's
//! unfinished operations.
//!
//! It also counts, per tenant, the operations that wait (and the creates
//! admitted but not yet stored), so one tenant cannot fill it for everyone.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::model::{OperationId, Tenant};

pub(crate) struct Queue {
    state: Mutex<State>,
    notify: Notify,
    /// Queued plus admitted-but-not-yet-pushed operations, readable without
    /// the lock.
    depth: AtomicUsize,
    capacity: usize,
    /// The most one tenant may have waiting; None for no limit.
    tenant_capacity: Option<usize>,
}

#[derive(Default)]
struct State {
    items: VecDeque<(OperationId, Tenant)>,
    /// Per tenant: queued plus admitted. Entries at zero are removed.
    tenants: HashMap<Tenant, usize>,
}

impl State {
    /// A mutable count for `tenant`.
    fn count(&mut self, tenant: &Tenant) -> &mut usize {
        self.tenants.entry(tenant.clone()).or_insert(0)
    }

    fn release(&mut self, tenant: &Tenant) {
        if let Some(count) = self.tenants.get_mut(tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.tenants.remove(tenant);
            }
        }
    }
}

/// Why an operation could not be admitted.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Full {
    /// The whole queue is at capacity.
    Server,
    /// This tenant has its share waiting already.
    Tenant,
}

impl Queue {
    pub(crate) fn new(capacity: usize, tenant_capacity: Option<usize>) -> Self {
        Self {
            state: Mutex::default(),
            notify: Notify::new(),
            depth: AtomicUsize::new(0),
            capacity,
            tenant_capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves room for one new operation of `tenant` before it is
    /// created, so that the server never accepts work it has no room to
    /// queue.
    pub(crate) fn admit(&self, tenant: &Tenant) -> Result<(), Full> {
        let mut state = self.lock();
        if self.depth.load(Ordering::SeqCst) >= self.capacity {
            return Err(Full::Server);
        }
        let count = state.count(tenant);
        if self.tenant_capacity.is_some_and(|cap| *count >= cap) {
            if *count == 0 {
                state.tenants.remove(tenant);
            }
            return Err(Full::Tenant);
        }
        *count += 1;
        self.depth.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Gives back a reservation that was not used.
    pub(crate) fn cancel_admission(&self, tenant: &Tenant) {
        let mut state = self.lock();
        state.release(tenant);
        self.depth.fetch_sub(1, Ordering::SeqCst);
    }

    /// Queues an admitted operation.
    pub(crate) fn push_admitted(&self, id: OperationId, tenant: &Tenant) {
        self.lock().items.push_back((id, tenant.clone()));
        self.notify.notify_one();
    }

    /// Queues an operation accepted earlier (found during recovery, or due
    /// after a retry backoff); it may exceed the capacities.
    pub(crate) fn push_recovered(&self, id: OperationId, tenant: &Tenant) {
        {
            let mut state = self.lock();
            *state.count(tenant) += 1;
            state.items.push_back((id, tenant.clone()));
            self.depth.fetch_add(1, Ordering::SeqCst);
        }
        self.notify.notify_one();
    }

    /// Takes a cancelled operation out of line, so it stops holding a
    /// place. Returns whether it was waiting.
    pub(crate) fn remove(&self, id: OperationId) -> bool {
        let mut state = self.lock();
        match state.items.iter().position(|(queued, _)| *queued == id) {
            Some(at) => {
                if let Some((_, tenant)) = state.items.remove(at) {
                    state.release(&tenant);
                }
                self.depth.fetch_sub(1, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }

    /// Waits for the next id.
    pub(crate) async fn pop(&self) -> OperationId {
        loop {
            let (next, more) = {
                let mut state = self.lock();
                let next = state.items.pop_front();
                if let Some((_, tenant)) = &next {
                    state.release(tenant);
                    self.depth.fetch_sub(1, Ordering::SeqCst);
                }
                (next, !state.items.is_empty())
            };
            if let Some((id, _)) = next {
                // Another item may be waiting and another worker idle.
                if more {
                    self.notify.notify_one();
                }
                return id;
            }
            self.notify.notified().await;
        }
    }

    /// How many operations wait for a worker.
    pub(crate) fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> Tenant {
        Tenant::named(name).unwrap()
    }

    #[tokio::test]
    async fn each_tenant_is_held_to_its_share() {
        let queue = Queue::new(10, Some(2));
        queue.admit(&t("a")).unwrap();
        queue.admit(&t("a")).unwrap();
        assert_eq!(queue.admit(&t("a")), Err(Full::Tenant));
        queue.admit(&t("b")).unwrap();
        let first = OperationId::generate();
        queue.push_admitted(first, &t("a"));
        queue.cancel_admission(&t("a"));
        assert_eq!(queue.pop().await, first);
        // Both of a's places are free again.
        queue.admit(&t("a")).unwrap();
        queue.admit(&t("a")).unwrap();
        assert_eq!(queue.depth(), 3);
    }

    #[test]
    fn the_server_capacity_binds_every_tenant() {
        let queue = Queue::new(2, None);
        queue.admit(&t("a")).unwrap();
        queue.admit(&t("b")).unwrap();
        assert_eq!(queue.admit(&t("c")), Err(Full::Server));
    }
}
