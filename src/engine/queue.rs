//! The in-memory run queue: ids of queued operations, handed to idle
//! workers the moment they arrive.
//!
//! The queue only orders work; the store is the truth. Losing the queue (a
//! crash) loses nothing, because recovery rebuilds it from the store's
//! unfinished operations.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

use super::OperationId;

pub(crate) struct Queue {
    items: Mutex<VecDeque<OperationId>>,
    notify: Notify,
    /// Queued plus admitted-but-not-yet-pushed operations.
    depth: AtomicUsize,
    capacity: usize,
}

/// The queue is full.
pub(crate) struct Full;

impl Queue {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            items: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            depth: AtomicUsize::new(0),
            capacity,
        }
    }

    /// Reserves room for one new operation before it is created, so that
    /// the server never accepts work it has no room to queue.
    pub(crate) fn admit(&self) -> Result<(), Full> {
        self.depth
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| {
                (d < self.capacity).then_some(d + 1)
            })
            .map(|_| ())
            .map_err(|_| Full)
    }

    /// Gives back a reservation that was not used.
    pub(crate) fn cancel_admission(&self) {
        self.depth.fetch_sub(1, Ordering::SeqCst);
    }

    /// Queues an admitted operation.
    pub(crate) fn push_admitted(&self, id: OperationId) {
        self.items
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(id);
        self.notify.notify_one();
    }

    /// Queues an operation found during recovery; it may exceed capacity,
    /// because it was accepted before.
    pub(crate) fn push_recovered(&self, id: OperationId) {
        self.depth.fetch_add(1, Ordering::SeqCst);
        self.push_admitted(id);
    }

    /// Takes a cancelled operation out of line, so it stops holding a
    /// place. Returns whether it was waiting.
    pub(crate) fn remove(&self, id: OperationId) -> bool {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        match items.iter().position(|queued| *queued == id) {
            Some(at) => {
                items.remove(at);
                self.depth.fetch_sub(1, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }

    /// Waits for the next id.
    pub(crate) async fn pop(&self) -> OperationId {
        loop {
            let next = self
                .items
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front();
            if let Some(id) = next {
                self.depth.fetch_sub(1, Ordering::SeqCst);
                // Another item may be waiting and another worker idle.
                if !self.is_empty() {
                    self.notify.notify_one();
                }
                return id;
            }
            self.notify.notified().await;
        }
    }

    fn is_empty(&self) -> bool {
        self.items
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// How many operations wait for a worker.
    pub(crate) fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }
}
