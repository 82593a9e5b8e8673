//! Workers: take queued operations, run their task, store the outcome.
//!
//! A worker claims an operation (which makes it RUNNING under a new
//! attempt), spawns the task, forwards its progress to the store at a
//! bounded rate, enforces the attempt's deadline, and finally ends the
//! attempt under the same claim: done, retried after a backoff, or released
//! back to the queue on shutdown. If a newer attempt took over meanwhile,
//! the store refuses the stale write and the result is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info_span, warn};

use super::Inner;
use super::task::{TaskContext, TaskError};
use crate::model::{
    Claim, Code, Edit, Finish, Operation, OperationError, Outcome, Payload, Progress, State,
};
use crate::store::StoreError;

/// A task running on this process, as the cancellation path sees it.
pub(crate) struct Running {
    pub(crate) token: CancellationToken,
    /// Set when a client (not a shutdown or a deadline) asked for the stop.
    pub(crate) by_client: Arc<AtomicBool>,
}

impl Running {
    pub(crate) fn cancel_by_client(&self) {
        self.by_client.store(true, Ordering::SeqCst);
        self.token.cancel();
    }
}

/// The loop of worker number `n`.
pub(crate) async fn run_worker(inner: Arc<Inner>, n: usize) {
    let span = info_span!("worker", n);
    async move {
        loop {
            let id = tokio::select! {
                biased;
                _ = inner.shutdown.cancelled() => break,
                id = inner.queue.pop() => id,
            };
            if inner.shutdown.is_cancelled() {
                // Leave it queued in the store; recovery picks it up.
                break;
            }
            match inner.ops.update(id, Edit::Claim, inner.clock.now()).await {
                Ok(op) => execute(&inner, op).await,
                Err(StoreError::NotFound | StoreError::Rejected(_)) => {
                    debug!(%id, "no longer queued; skipped")
                }
                Err(e) => error!(%id, error = %e, "claim failed; the operation stays queued until restart"),
            }
        }
    }
    .instrument(span)
    .await;
}

async fn execute(inner: &Arc<Inner>, op: Operation) {
    let claim = Claim::of(&op);
    let span = info_span!("task", id = %op.id, kind = %op.kind, attempt = op.attempt);
    async move {
        let Some(kind) = inner.registry.get(&op.kind).cloned() else {
            let error = OperationError::new(
                Code::Unimplemented,
                "KIND_NOT_REGISTERED",
                format!(
                    "no handler for kind {:?} is registered on this server",
                    op.kind
                ),
            );
            end(inner, claim, done(Outcome::Error(error), None)).await;
            return;
        };
        if !kind.policy.retry_safe {
            // The claim must be on disk before work that must not run twice
            // starts, so that a crash is seen as an interrupted attempt.
            if let Err(e) = inner.ops.flush().await {
                error!(error = %e, "could not persist the claim; releasing");
                end(inner, claim, Finish::Release).await;
                return;
            }
        }

        let token = inner.shutdown.child_token();
        let by_client = Arc::new(AtomicBool::new(false));
        inner.running_lock().insert(
            op.id,
            Running {
                token: token.clone(),
                by_client: Arc::clone(&by_client),
            },
        );
        // A cancellation that landed between the claim and the line above
        // found no running entry; look again now that there is one.
        if let Ok(Some(now)) = inner.ops.get(op.id).await
            && now.state == State::Cancelling
        {
            by_client.store(true, Ordering::SeqCst);
            token.cancel();
        }

        let (progress_tx, progress_rx) = watch::channel(Progress::default());
        let ctx = TaskContext::new(
            op.id,
            op.tenant.clone(),
            op.attempt,
            token.clone(),
            progress_tx,
        );
        let handle = inner
            .tracker
            .spawn(kind.task.run(ctx, op.request.clone()).in_current_span());
        let deadline = Instant::now() + op.timeout;
        let (ended, progress) =
            supervise(inner, claim, handle, progress_rx, &token, deadline).await;
        inner.running_lock().remove(&op.id);

        let finish = match ended {
            Ended::TimedOut => done(
                Outcome::Error(OperationError::new(
                    Code::DeadlineExceeded,
                    "OPERATION_DEADLINE_EXCEEDED",
                    format!(
                        "attempt {} ran longer than its timeout of {}",
                        op.attempt,
                        humantime::format_duration(op.timeout)
                    ),
                )),
                progress,
            ),
            Ended::Aborted => Finish::Release,
            Ended::Panicked => done(
                Outcome::Error(OperationError::new(
                    Code::Internal,
                    "TASK_PANICKED",
                    "the task panicked; see the server log",
                )),
                progress,
            ),
            Ended::Returned(Ok(response)) => done(Outcome::Response(response), progress),
            Ended::Returned(Err(_)) if by_client.load(Ordering::SeqCst) => {
                done(Outcome::Error(OperationError::cancelled()), progress)
            }
            // Stopped by the shutdown: run it again after restart.
            Ended::Returned(Err(_)) if token.is_cancelled() => Finish::Release,
            Ended::Returned(Err(e)) => failure(inner, &kind.policy, &op, e, progress),
        };
        // Storing the result waits for a flush; the worker need not. It
        // takes its next operation while the write joins the next group
        // commit, so the finishes of all workers share fsyncs.
        let storing = Arc::clone(inner);
        inner.tracker.spawn(
            async move {
                if let Some(op) = end(&storing, claim, finish).await
                    && op.state == State::Queued
                {
                    storing.enqueue(&op);
                }
            }
            .in_current_span(),
        );
    }
    .instrument(span)
    .await;
}

fn done(outcome: Outcome, progress: Option<Progress>) -> Finish {
    Finish::Done { outcome, progress }
}

/// A failed attempt: retried after a backoff while attempts are left and
/// the error is retryable, otherwise final.
fn failure(
    inner: &Inner,
    policy: &super::TaskPolicy,
    op: &Operation,
    e: TaskError,
    progress: Option<Progress>,
) -> Finish {
    if !e.retryable {
        return done(Outcome::Error(e.error), progress);
    }
    if op.attempt < op.max_attempts {
        let delay = policy.backoff(op.attempt);
        debug!(?delay, "retryable failure; retrying after a backoff");
        return Finish::Retry {
            error: e.error,
            not_before: inner.clock.now() + delay,
        };
    }
    let mut error = e.error;
    error.message = format!(
        "gave up after {} attempts; the last failed with: {}",
        op.attempt, error.message
    );
    error
        .metadata
        .insert("attempts".to_owned(), op.attempt.to_string());
    done(Outcome::Error(error), progress)
}

enum Ended {
    Returned(Result<Payload, TaskError>),
    Panicked,
    /// Aborted after the shutdown grace period.
    Aborted,
    /// The attempt's deadline passed.
    TimedOut,
}

/// Waits for the task while forwarding its progress, at most one store
/// write per `progress_interval`, and enforcing `deadline`: when it passes,
/// the task's token fires, and after the grace period the task is aborted.
/// Returns how the task ended and its last progress report if that was not
/// stored yet.
async fn supervise(
    inner: &Inner,
    claim: Claim,
    mut handle: JoinHandle<Result<Payload, TaskError>>,
    mut progress: watch::Receiver<Progress>,
    token: &CancellationToken,
    deadline: Instant,
) -> (Ended, Option<Progress>) {
    let mut pending = false;
    let mut progress_open = true;
    let mut stored = Progress::default();
    let mut next_write = Instant::now();
    let mut timed_out = false;
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);
    loop {
        tokio::select! {
            biased;
            joined = &mut handle => {
                let ended = match joined {
                    _ if timed_out => Ended::TimedOut,
                    Ok(result) => Ended::Returned(result),
                    Err(e) if e.is_panic() => Ended::Panicked,
                    Err(_) => Ended::Aborted,
                };
                // The task's sender is gone by now, so compare values rather
                // than asking the channel whether it changed.
                let last = progress.borrow_and_update().clone();
                let unsaved = (last != stored).then_some(last);
                return (ended, unsaved);
            }
            _ = inner.hard_stop.cancelled() => {
                warn!("task did not stop within the shutdown grace period; aborting it");
                handle.abort();
                let _ = (&mut handle).await;
                return (if timed_out { Ended::TimedOut } else { Ended::Aborted }, None);
            }
            _ = &mut timer => {
                if timed_out {
                    warn!("task ignored its deadline for the grace period; aborting it");
                    handle.abort();
                    let _ = (&mut handle).await;
                    return (Ended::TimedOut, None);
                }
                timed_out = true;
                token.cancel();
                timer.as_mut().reset(Instant::now() + inner.config.shutdown_grace);
            }
            changed = progress.changed(), if progress_open && !pending => {
                match changed {
                    Ok(()) => pending = true,
                    Err(_) => progress_open = false,
                }
            }
            _ = tokio::time::sleep_until(next_write), if pending => {
                pending = false;
                next_write = Instant::now() + inner.config.progress_interval;
                let report = progress.borrow_and_update().clone();
                stored = report.clone();
                let edit = Edit::Progress { claim, progress: report };
                match inner.ops.update(claim.id, edit, inner.clock.now()).await {
                    Ok(_) => {}
                    Err(StoreError::Rejected(_)) => debug!("progress from a stale attempt dropped"),
                    Err(e) => warn!(error = %e, "could not record progress"),
                }
            }
        }
    }
}

async fn end(inner: &Inner, claim: Claim, finish: Finish) -> Option<Operation> {
    let edit = Edit::Finish { claim, finish };
    match inner.ops.update(claim.id, edit, inner.clock.now()).await {
        Ok(op) => {
            debug!(state = %op.state, "attempt ended");
            Some(op)
        }
        Err(StoreError::Rejected(r)) => {
            debug!(reason = %r, "result of a superseded attempt dropped");
            None
        }
        Err(e) => {
            error!(error = %e, "could not store the result; the operation will be recovered on restart");
            None
        }
    }
}
