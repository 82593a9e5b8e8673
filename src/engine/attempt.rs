//! One attempt of one operation, claimed by the dispatcher: runs its task,
//! forwards its progress at a bounded rate, enforces its deadline, and ends
//! it under the same claim: done, retried after a backoff, or released
//! back to the queue on shutdown. If a newer attempt took over meanwhile,
//! the store refuses the stale write and the result is dropped.
//!
//! The attempt gives its kind's slot back as soon as the task is over, and
//! only then waits for its result to be committed: the next operation does
//! not wait for this one's fsync.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::Inner;
use super::task::{Kind, TaskContext, TaskError};
use crate::model::{
    Attempt, Claim, Code, Edit, Finish, Operation, OperationError, Outcome, Payload, Progress,
    Reason, State,
};
use crate::store::{Applied, StoreError, Write};

/// The first wait before a result that could not be stored is written
/// again; each later wait doubles, up to [`STORE_RETRY_MAX`].
const STORE_RETRY_MIN: Duration = Duration::from_millis(50);

/// The longest wait between two tries at storing a result: once the store
/// is back, a result lands within this.
const STORE_RETRY_MAX: Duration = Duration::from_secs(1);

/// A task running on this process, as the cancellation path sees it.
pub(crate) struct Running {
    pub(crate) token: CancellationToken,
    /// The attempt it runs.
    pub(crate) attempt: Attempt,
    /// Set when a client (not a shutdown or a deadline) asked for the stop.
    pub(crate) by_client: Arc<AtomicBool>,
    /// Set when this node lost the attempt's lease: it can no longer prove
    /// the attempt is its own, so it stops it and writes nothing.
    pub(crate) lease_lost: Arc<AtomicBool>,
}

impl Running {
    pub(crate) fn cancel_by_client(&self) {
        self.by_client.store(true, Ordering::SeqCst);
        self.token.cancel();
    }

    /// Stops the task because the attempt's lease is gone.
    pub(crate) fn lose_lease(&self) {
        self.lease_lost.store(true, Ordering::SeqCst);
        self.token.cancel();
    }
}

/// Runs the attempt the claim of `op` started, with `kind`'s handler.
/// `claim_on_disk` says whether the claim is known to be durable; a kind
/// that is not retry-safe runs only once it is.
pub(crate) async fn run(
    inner: Arc<Inner>,
    op: Operation,
    kind: Kind,
    claim_on_disk: bool,
    span: tracing::Span,
) {
    let claim = Claim::of(&op);
    let outcome_span = span.clone();
    async move {
        if let Some(started) = op.start_time {
            let queued = started.duration_since(op.create_time).unwrap_or_default();
            debug!(
                queued_ms = queued.as_millis() as u64,
                "started after its wait in the queue"
            );
        }
        let token = inner.shutdown.child_token();
        let by_client = Arc::new(AtomicBool::new(false));
        let lease_lost = Arc::new(AtomicBool::new(false));
        let running = Running {
            token: token.clone(),
            attempt: op.attempt,
            by_client: Arc::clone(&by_client),
            lease_lost: Arc::clone(&lease_lost),
        };
        if let Some(lease) = op.lease.as_ref().filter(|_| inner.ops.shared()) {
            // Renewed from now on until the attempt's end is stored.
            let left = lease
                .expires
                .duration_since(inner.clock.now())
                .unwrap_or_default();
            inner.leases.hold(claim, left, inner.config.lease);
        }
        // A cancellation that landed before this entry existed was kept
        // for it (see `Inner::deliver_cancellation`).
        if inner.register_running(op.id, running) {
            by_client.store(true, Ordering::SeqCst);
            token.cancel();
        }

        if !kind.policy.retry_safe && !claim_on_disk && !persist_claim(&inner).await {
            // Shut down before the claim was on disk: the task never ran,
            // so the operation goes back to the queue.
            inner.forget_running(op.id);
            inner.slots.release(&op.kind);
            end(&inner, claim, Finish::Release).await;
            inner.leases.release(claim);
            return;
        }
        let (progress_tx, progress_rx) = watch::channel(Progress::default());
        let ctx = TaskContext::new(
            op.id,
            op.tenant.clone(),
            op.attempt.get(),
            token.clone(),
            progress_tx,
        );
        let handle = inner
            .tracker
            .spawn(kind.task.run(ctx, op.request.clone()).in_current_span());
        let began = Instant::now();
        let deadline = began + op.timeout;
        let (ended, progress) =
            supervise(&inner, claim, handle, progress_rx, &token, deadline).await;
        inner.config.metrics.ran(&op.kind, began.elapsed());
        if matches!(ended, Ended::Returned(Ok(_))) {
            let work = kind.task.size(&op.request).work;
            inner.run_times.record(&op.kind, began.elapsed(), work);
        }
        inner.forget_running(op.id);

        if lease_lost.load(Ordering::SeqCst) && !matches!(ended, Ended::Returned(Ok(_))) {
            // Stopped because the lease is gone: whoever takes the work back
            // decides what becomes of it (attempt + 1, or ABORTED).
            warn!("stopped: this node lost the attempt's lease; it is left to be taken back");
            inner.slots.release(&op.kind);
            inner.leases.release(claim);
            return;
        }
        let finish = match ended {
            Ended::TimedOut => done(
                Outcome::Error(OperationError::new(
                    Code::DeadlineExceeded,
                    Reason::OperationDeadlineExceeded,
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
                    Reason::TaskPanicked,
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
            Ended::Returned(Err(e)) => failure(&inner, &kind.policy, &op, e, progress),
        };
        outcome_span.record("outcome", outcome_of(&finish));
        if let Finish::Retry { not_before, .. } = &finish {
            let backoff = not_before
                .duration_since(inner.clock.now())
                .unwrap_or_default();
            outcome_span.record("retry_backoff_ms", backoff.as_millis() as u64);
        }
        inner.slots.release(&op.kind);
        end(&inner, claim, finish).await;
        inner.leases.release(claim);
    }
    .instrument(span)
    .await;
}

/// The span of `op`'s attempt: a child of its create's span (so, of the
/// caller's), carrying the ids its log lines show.
pub(crate) fn span(op: &Operation) -> tracing::Span {
    let span = info_span!(
        "task",
        id = %op.id,
        kind = %op.kind,
        tenant = op.tenant.as_str(),
        attempt = op.attempt.get(),
        outcome = tracing::field::Empty,
        retry_backoff_ms = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    crate::telemetry::adopt(&span, op.trace.as_deref());
    crate::telemetry::label(&span);
    span
}

/// How an attempt ended, as its span says.
fn outcome_of(finish: &Finish) -> &'static str {
    match finish {
        Finish::Done {
            outcome: Outcome::Response(_),
            ..
        } => "succeeded",
        Finish::Done {
            outcome: Outcome::Error(e),
            ..
        } if e.code == Code::Cancelled => "cancelled",
        Finish::Done { .. } => "failed",
        Finish::Retry { .. } => "retried",
        Finish::Release => "released",
    }
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
    if op.attempts_left() {
        let delay = policy.backoff(op.attempt.get());
        debug!(?delay, "retryable failure; retrying after a backoff");
        return Finish::Retry {
            error: e.error,
            not_before: inner.clock.now() + delay,
        };
    }
    let mut error = e.error;
    error.message = format!(
        "gave up after {} attempts; the last failed with: {}",
        op.counted_attempts(),
        error.message
    );
    error
        .metadata
        .insert("attempts".to_owned(), op.counted_attempts().to_string());
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
                // Progress is lazy and nobody waits for it: a stale or lost
                // report is only a report.
                let edit = Edit::Progress { claim, progress: report };
                inner.committer.write_and_forget(Write::Update { id: claim.id, edit });
            }
        }
    }
}

/// Makes the claims written so far durable, trying again with a backoff
/// while the store fails; false when the server shuts down first.
async fn persist_claim(inner: &Inner) -> bool {
    let mut backoff = store_backoff();
    let mut warned = false;
    loop {
        let error = match inner.ops.flush().await {
            Ok(()) => return true,
            Err(e) => e,
        };
        if !std::mem::replace(&mut warned, true) {
            warn!(error = %error, "could not make the claim durable; the task waits until it is");
        }
        tokio::select! {
            _ = inner.shutdown.cancelled() => return false,
            _ = tokio::time::sleep(backoff.next().unwrap_or(STORE_RETRY_MAX)) => {}
        }
    }
}

/// The waits between tries at a write the store could not take.
fn store_backoff() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(STORE_RETRY_MIN)
        .with_max_delay(STORE_RETRY_MAX)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Counts a stored end of an attempt in the metrics.
fn count_end(inner: &Inner, op: &Operation, finish: &Finish) {
    let metrics = &inner.config.metrics;
    match (finish, op.state) {
        (Finish::Retry { .. }, _) => metrics.retried(&op.kind),
        (_, State::Succeeded) => inner.finished(op, "succeeded"),
        (_, State::Failed) => inner.finished(op, "failed"),
        (_, State::Cancelled) => inner.finished(op, "cancelled"),
        _ => {}
    }
}

/// Stores how the attempt ended. A store that cannot take it (a full or
/// failing disk, a database out of reach) is waited out: the result is
/// kept and written again, with a backoff, until it is stored or a newer
/// attempt fences it out. Only the end of the shutdown's grace period
/// gives up on it, and then recovery deals with the attempt after restart.
async fn end(inner: &Inner, claim: Claim, finish: Finish) {
    let mut backoff = store_backoff();
    let mut waited = false;
    loop {
        let edit = Edit::Finish {
            claim,
            finish: finish.clone(),
        };
        let error = match inner
            .committer
            .write(Write::Update { id: claim.id, edit })
            .await
        {
            Ok(applied) => {
                if waited {
                    info!("the result waited for the store and is stored now");
                } else {
                    debug!("attempt ended");
                }
                if let Applied::Updated(op) = applied {
                    count_end(inner, &op, &finish);
                }
                return;
            }
            Err(StoreError::Rejected(r)) => {
                debug!(reason = %r, "result of a superseded attempt dropped");
                return;
            }
            Err(StoreError::NotFound) => {
                debug!("the operation is gone; its result is dropped");
                return;
            }
            Err(e) => e,
        };
        if !waited {
            warn!(error = %error, "could not store the result; it is kept and written again until it is stored");
            waited = true;
        }
        let delay = backoff.next().unwrap_or(STORE_RETRY_MAX);
        tokio::select! {
            _ = inner.hard_stop.cancelled() => {
                error!(error = %error, "could not store the result before the shutdown; the operation will be recovered on restart");
                return;
            }
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
