//! The task of every outside kind: the attempt, run as any attempt is
//! (`attempt::run`), waits for the worker that holds it. Heartbeats renew
//! its lease and carry progress, Complete and Fail end it, and a lost
//! worker or an expired lease fails it with a retryable ABORTED, so the
//! operation goes back to the queue under attempt + 1.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Report, Roster, ToWorker, lock};
use crate::engine::error::EngineError;
use crate::engine::task::{ErasedTask, ExpireFuture, TaskContext, TaskError, TaskFuture};
use crate::model::{Attempt, Code, OperationId, Payload, Reason};

/// Waits for the worker that holds the attempt.
pub(crate) struct OutsideTask {
    pub(crate) hub: Weak<Roster>,
}

impl ErasedTask for OutsideTask {
    fn validate(&self, _request: &Payload) -> Result<(), EngineError> {
        Ok(())
    }

    fn run(&self, ctx: TaskContext, _request: Payload) -> TaskFuture {
        let hub = self.hub.clone();
        Box::pin(async move {
            let Some(hub) = hub.upgrade() else {
                return Err(lost("the server is stopping"));
            };
            let id = ctx.operation_id();
            let attempt = Attempt::new(ctx.attempt());
            let taken = {
                let mut held = lock(&hub.held);
                held.get_mut(&id)
                    .filter(|h| h.attempt == attempt)
                    .and_then(|h| h.reports.take().map(|r| (r, h.lease)))
            };
            // However the attempt ends (even aborted at its deadline), the
            // worker gets its credit back.
            let _release = Release {
                hub: Arc::clone(&hub),
                id,
                attempt,
            };
            let Some((mut reports, lease)) = taken else {
                // Claimed for a worker that is gone, or recovered from a
                // restart: nobody holds it.
                return Err(lost("no worker holds this attempt"));
            };
            wait_for_worker(&hub, &ctx, &mut reports, lease).await
        })
    }

    fn expire(&self, _id: OperationId, _request: Payload) -> ExpireFuture {
        Box::pin(async {})
    }
}

/// Releases an attempt's hold when dropped.
struct Release {
    hub: Arc<Roster>,
    id: OperationId,
    attempt: Attempt,
}

impl Drop for Release {
    fn drop(&mut self) {
        self.hub.release(self.id, self.attempt);
    }
}

fn lost(why: &str) -> TaskError {
    TaskError::retryable(Code::Aborted, Reason::WorkerLost, why.to_owned())
}

async fn wait_for_worker(
    hub: &Roster,
    ctx: &TaskContext,
    reports: &mut mpsc::UnboundedReceiver<Report>,
    lease: Duration,
) -> Result<Payload, TaskError> {
    let id = ctx.operation_id();
    let attempt = Attempt::new(ctx.attempt());
    let mut expires = Instant::now() + lease;
    let mut cancel_sent = false;
    loop {
        tokio::select! {
            report = reports.recv() => match report {
                Some(Report::Heartbeat(progress)) => {
                    expires = Instant::now() + lease;
                    ctx.set_progress(progress.percent, progress.message);
                }
                Some(Report::Done(result)) => return result,
                None => return Err(lost("the worker's lease stream ended")),
            },
            () = tokio::time::sleep_until(expires) => {
                return Err(TaskError::retryable(
                    Code::Aborted,
                    Reason::LeaseExpired,
                    format!(
                        "the worker sent no heartbeat for {}",
                        humantime::format_duration(lease)
                    ),
                ));
            }
            () = ctx.cancellation().cancelled(), if !cancel_sent => {
                cancel_sent = true;
                let worker = {
                    let mut held = lock(&hub.held);
                    held.get_mut(&id).filter(|h| h.attempt == attempt).map(|h| {
                        h.cancel_requested = true;
                        h.worker
                    })
                };
                if let Some(worker) = worker.and_then(|w| lock(&hub.workers).get(&w).cloned()) {
                    let _ = worker.outbox.send(ToWorker::Cancel { id, attempt });
                }
            }
        }
    }
}
