//! A worker's calls about a lease: heartbeats that renew it and carry
//! progress, and the result that ends the attempt. Each is checked against
//! the lease it names (tenant, kind, attempt and token) before it reaches
//! the attempt that waits on it.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use subtle::ConstantTimeEq;

use super::{LeaseRef, Report, Roster, WorkerCaller, lock};
use crate::engine::error::EngineError;
use crate::engine::task::TaskError;
use crate::engine::{Engine, Snapshot};
use crate::model::{
    Attempt, OperationId, Payload, Progress, Reason, Scope, State, bounded_message,
};

/// How long Complete and Fail wait for the result to be stored.
const RESULT_STORED: Duration = Duration::from_secs(30);

fn stale(id: OperationId, attempt: Attempt, why: &str) -> EngineError {
    EngineError::FailedPrecondition {
        reason: Reason::StaleAttempt,
        message: format!(
            "attempt {attempt} of {} no longer holds the operation: {why}; its result changes nothing",
            id.name()
        ),
    }
}

impl Roster {
    /// Hands a report to the attempt that holds the lease `lease`, when
    /// `caller` may: it reaches the operation's tenant, may serve its
    /// kind, and names the attempt and token the assignment gave.
    fn report(
        &self,
        caller: &WorkerCaller<'_>,
        lease: &LeaseRef,
        report: Report,
    ) -> Result<(SystemTime, bool), EngineError> {
        let id = lease.id;
        let mut held = lock(&self.held);
        let Some(entry) = held.get_mut(&id) else {
            return Err(EngineError::NotFound { name: id.name() });
        };
        if !caller.scope.permits(&entry.tenant) {
            return Err(EngineError::NotFound { name: id.name() });
        }
        if !(caller.may_serve)(&entry.kind) {
            return Err(EngineError::PermissionDenied {
                reason: Reason::KindNotAllowed,
                message: format!(
                    "this worker may not serve kind {:?}; the auth file lists the kinds it may lease",
                    entry.kind
                ),
            });
        }
        if entry.attempt != lease.attempt {
            return Err(stale(id, lease.attempt, "a later attempt holds it"));
        }
        if !bool::from(entry.token.as_bytes().ct_eq(lease.token.as_bytes())) {
            return Err(EngineError::FailedPrecondition {
                reason: Reason::LeaseNotHeld,
                message: format!(
                    "attempt {} of {} is not held with this lease_token; only the worker it was assigned to may report on it",
                    lease.attempt,
                    id.name()
                ),
            });
        }
        if let Report::Heartbeat(_) = report {
            entry.lease_expires = SystemTime::now() + entry.lease;
        }
        entry
            .sender
            .send(report)
            .map_err(|_| stale(id, lease.attempt, "the attempt has ended"))?;
        Ok((entry.lease_expires, entry.cancel_requested))
    }

    /// Forgets an attempt and gives its worker the credit back.
    pub(super) fn release(&self, id: OperationId, attempt: Attempt) {
        let entry = {
            let mut held = lock(&self.held);
            match held.get(&id) {
                Some(entry) if entry.attempt == attempt => held.remove(&id),
                _ => None,
            }
        };
        let Some(entry) = entry else { return };
        if let Some(declared) = self.kinds.find(&entry.tenant, &entry.kind) {
            declared.leased.fetch_sub(1, Ordering::SeqCst);
        }
        if let Some(worker) = lock(&self.workers).get(&entry.worker) {
            worker.credits.fetch_add(1, Ordering::SeqCst);
        }
        self.wake();
    }
}

impl Engine {
    /// Renews the lease `lease` names and records its progress; returns
    /// when the lease now expires and whether a client asked to cancel.
    pub async fn heartbeat(
        &self,
        caller: &WorkerCaller<'_>,
        lease: &LeaseRef,
        mut progress: Progress,
    ) -> Result<(SystemTime, bool), EngineError> {
        progress.message = bounded_message(progress.message);
        match self
            .inner
            .outside
            .report(caller, lease, Report::Heartbeat(progress))
        {
            Ok(answer) => Ok(answer),
            Err(e) => self.explain(&caller.scope, e, lease).await,
        }
    }

    /// Ends the attempt `lease` names with `result`, and returns once that
    /// is stored. A response or error larger than the configured bound is
    /// refused (the worker may send a smaller one, or fail the attempt).
    pub async fn finish_outside(
        &self,
        caller: &WorkerCaller<'_>,
        lease: &LeaseRef,
        mut result: Result<Payload, TaskError>,
    ) -> Result<(), EngineError> {
        let most = self.inner.config.max_result_size;
        let (field, size) = match &mut result {
            Ok(response) => ("response", response.value.len() + response.type_url.len()),
            Err(failure) => {
                failure.error.message = bounded_message(std::mem::take(&mut failure.error.message));
                ("error", failure.error.size())
            }
        };
        if size > most {
            return Err(EngineError::invalid(
                field,
                format!("the {field} is {size} bytes; this server stores at most {most}"),
            ));
        }
        let id = lease.id;
        let mut sub = self.subscribe(&caller.scope, id).await?;
        if let Err(e) = self
            .inner
            .outside
            .report(caller, lease, Report::Done(result))
        {
            return self.explain(&caller.scope, e, lease).await;
        }
        // The attempt stores the result; wait until the record moved on.
        let attempt = lease.attempt;
        let stored = tokio::time::timeout(RESULT_STORED, async {
            loop {
                match sub.current() {
                    Snapshot::Present(op)
                        if op.attempt != attempt
                            || !matches!(op.state, State::Running | State::Cancelling) =>
                    {
                        return Ok(());
                    }
                    Snapshot::Gone => return Ok(()),
                    _ => {}
                }
                sub.changed().await;
            }
        })
        .await;
        stored.unwrap_or(Err(EngineError::Unavailable {
            reason: Reason::ResultNotStored,
            message:
                "the result was taken but is not stored yet; it will be, or the attempt is retried"
                    .into(),
            retry_after: Duration::from_secs(1),
        }))
    }

    /// Turns "not held here" into what it means for the attempt `lease`
    /// names: a stale attempt, a lease held by another node, or nothing at
    /// all.
    async fn explain<T>(
        &self,
        scope: &Scope,
        error: EngineError,
        lease: &LeaseRef,
    ) -> Result<T, EngineError> {
        let EngineError::NotFound { .. } = error else {
            return Err(error);
        };
        let (id, attempt) = (lease.id, lease.attempt);
        let Ok(op) = self.get(scope, id).await else {
            return Err(error);
        };
        if op.attempt != attempt || !matches!(op.state, State::Running | State::Cancelling) {
            return Err(stale(id, attempt, "the operation has moved on"));
        }
        Err(EngineError::FailedPrecondition {
            reason: Reason::LeasedElsewhere,
            message: format!(
                "attempt {attempt} of {} is held through another server; call the one whose Lease stream it came on",
                id.name()
            ),
        })
    }
}
