//! A connected worker's session: what the server sends it, its credits,
//! and what its leaving takes with it (every lease it holds).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{Connected, Owner, Roster, ToWorker, WorkerSpec, lock, unknown_kind};
use crate::engine::Engine;
use crate::engine::error::EngineError;
use crate::model::Reason;

/// A worker's end of its session: what to send it, until it is dropped,
/// which is when the worker is gone and loses every lease it holds.
pub struct WorkerSession {
    id: u64,
    hub: Arc<Roster>,
    messages: mpsc::UnboundedReceiver<ToWorker>,
    /// Fires when the server shuts down.
    stopping: CancellationToken,
}

impl WorkerSession {
    /// The next message for the worker; None when the server stops.
    pub async fn next(&mut self) -> Option<ToWorker> {
        tokio::select! {
            message = self.messages.recv() => message,
            () = self.stopping.cancelled() => None,
        }
    }

    /// Gives the worker `count` more credits, up to a total of
    /// `u32::MAX`.
    pub fn add_credits(&self, count: usize) {
        if let Some(worker) = lock(&self.hub.workers).get(&self.id) {
            let _ = worker
                .credits
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| {
                    Some(c.saturating_add(count).min(u32::MAX as usize))
                });
        }
        self.hub.wake();
    }
}

impl Drop for WorkerSession {
    fn drop(&mut self) {
        let Some(worker) = lock(&self.hub.workers).remove(&self.id) else {
            return;
        };
        // Its attempts end: each waiting task sees its reports close.
        let mut held = lock(&self.hub.held);
        for entry in held.values_mut().filter(|h| h.worker == self.id) {
            let (closed, _) = mpsc::unbounded_channel();
            entry.sender = closed;
            entry.reports = None;
        }
        debug!(worker = %worker.spec.name, "worker gone");
    }
}

impl Engine {
    /// Connects a worker: from now on it is assigned operations of its
    /// kinds, up to its credits, until the session is dropped. A principal
    /// may hold at most the configured number of sessions at once.
    pub fn connect_worker(&self, spec: WorkerSpec) -> Result<WorkerSession, EngineError> {
        let inner = &self.inner;
        if inner.shutdown.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        if spec.kinds.is_empty() || spec.capacity == 0 {
            return Err(EngineError::invalid(
                "subscribe",
                "a worker names at least one kind and a capacity of at least 1",
            ));
        }
        let owner = spec.tenant.clone().map_or(Owner::Everyone, Owner::Tenant);
        for kind in &spec.kinds {
            if inner.outside.kinds.governing(&owner, kind).is_none() {
                return Err(unknown_kind(kind));
            }
        }
        let hub = Arc::clone(&inner.outside);
        let (outbox, messages) = mpsc::unbounded_channel();
        let id = hub.next_worker.fetch_add(1, Ordering::SeqCst);
        {
            let mut workers = lock(&hub.workers);
            let open = workers
                .values()
                .filter(|w| w.spec.principal == spec.principal)
                .count();
            let most = inner.config.max_worker_streams;
            if open >= most {
                return Err(EngineError::ResourceExhausted {
                    reason: Reason::TooManyWorkerStreams,
                    message: format!(
                        "{} has {open} Lease streams open; a principal may have at most {most}",
                        spec.principal
                    ),
                    retry_after: Duration::from_secs(5),
                });
            }
            workers.insert(
                id,
                Arc::new(Connected {
                    credits: AtomicUsize::new(spec.capacity),
                    spec,
                    outbox,
                }),
            );
        }
        hub.wake();
        Ok(WorkerSession {
            id,
            hub,
            messages,
            stopping: inner.shutdown.clone(),
        })
    }
}
