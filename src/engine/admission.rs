//! Creating operations: the kind checks its request, the callback URL is
//! checked, the tenant's quota and the queue are asked for room, and only
//! then is the operation committed (durably), which queues it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tracing::Instrument;

use super::{Engine, EngineError, Task};
use crate::model::operation::ScheduleTick;
use crate::model::{
    Limits, Notification, Operation, OperationId, Payload, Reason, RequestId, RunSpec, Tenant,
    TraceContext,
};
use crate::store::{Applied, Created, QueueDepth, StoreError, Write};

/// Checks a webhook callback URL before an operation that names it is
/// created. The server plugs in the webhook module's SSRF guard.
#[async_trait]
pub trait CallbackGuard: Send + Sync + 'static {
    /// Ok when the URL may be called; otherwise why not.
    async fn check(&self, url: &str) -> Result<(), String>;
}

/// Per-call options of a create.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    /// The tenant that will own the operation.
    pub tenant: Tenant,
    /// The idempotency key (AIP-155).
    pub request_id: Option<RequestId>,
    /// A shorter execution timeout per attempt than the kind's default.
    pub timeout: Option<Duration>,
    /// A webhook to call on the operation's state changes.
    pub notification: Option<Notification>,
    /// Fewer attempts than the kind allows.
    pub max_attempts: Option<u32>,
    /// What identifies the request for idempotency checks, when the encoded
    /// request does not (an upload stored under a fresh name, say). By
    /// default the encoded request itself is used.
    pub fingerprint: Option<[u8; 32]>,
    /// Its priority, concurrency key, start and expiry.
    pub run: RunSpec,
    /// The schedule and tick it runs for, when a schedule makes it.
    pub schedule: Option<ScheduleTick>,
    /// The batch it joins, as a child.
    pub parent: Option<OperationId>,
    /// The caller's span (a W3C `traceparent`), which the create's span
    /// continues.
    pub trace: Option<TraceContext>,
}

/// How far in the past a start time may be (a clock a little behind the
/// server's): further back is a mistake, refused.
pub const START_TIME_SLACK: Duration = Duration::from_secs(60);

/// Checks a create's start and expire times against `now`, naming the
/// field at fault.
fn check_times(run: &RunSpec, now: SystemTime) -> Result<(), EngineError> {
    if let Some(start) = run.start_at
        && start + START_TIME_SLACK < now
    {
        return Err(EngineError::invalid(
            "run.start_time",
            "the start time is more than a minute in the past",
        ));
    }
    if let Some(expire) = run.expire_at
        && expire <= run.start_at.unwrap_or(now)
    {
        return Err(EngineError::invalid(
            "run.expire_time",
            "the expire time must come after the start time (or now, without one)",
        ));
    }
    Ok(())
}

impl Engine {
    /// Creates an operation of kind `T` and queues it. With a request_id
    /// seen before, returns the earlier operation (or ALREADY_EXISTS when
    /// the request differs).
    pub async fn submit<T: Task>(
        &self,
        request: &T::Request,
        options: SubmitOptions,
    ) -> Result<Operation, EngineError> {
        self.submit_payload(T::KIND, Payload::pack(request), options)
            .await
    }

    /// Creates an operation of a registered kind from an encoded request.
    pub async fn submit_payload(
        &self,
        kind: &str,
        request: Payload,
        options: SubmitOptions,
    ) -> Result<Operation, EngineError> {
        self.create(kind, request, options).await.map(|(op, _)| op)
    }

    /// As [`Engine::submit_payload`], saying whether the operation is new
    /// (false: its request_id found an earlier one).
    pub(crate) async fn create(
        &self,
        kind: &str,
        request: Payload,
        options: SubmitOptions,
    ) -> Result<(Operation, bool), EngineError> {
        // The create's span continues the caller's; the operation keeps its
        // context (or the caller's, when no traces are exported) for the
        // spans of its attempts and webhooks.
        let span = tracing::debug_span!("create", kind, tenant = options.tenant.as_str());
        crate::telemetry::adopt(&span, options.trace.as_ref());
        let trace = crate::telemetry::context_of(&span).or_else(|| options.trace.clone());
        let (mut op, _room) = self.prepare(kind, request, options, 0).await?;
        op.trace = trace.map(Box::new);
        let name = op.id.name();
        match self
            .inner
            .committer
            .write(Write::Create(op))
            .instrument(span)
            .await
        {
            Ok(Applied::Created(Created::New(op))) => {
                self.inner.config.metrics.created(&op.kind);
                Ok((op, true))
            }
            Ok(Applied::Created(Created::Existing(op))) => Ok((op, false)),
            Ok(other) => Err(EngineError::Store(StoreError::Backend(format!(
                "a create was answered with {other:?}"
            )))),
            Err(e) => Err(EngineError::from_store(name, e)),
        }
    }

    /// Checks a create and makes its operation, not stored yet: the kind
    /// and its request, the webhook, the options, the tenant's quota and
    /// room in the queue (held by the reservation until it is stored).
    /// `behind` operations of its kind go in the same write before it.
    pub(crate) async fn prepare(
        &self,
        kind: &str,
        request: Payload,
        options: SubmitOptions,
        behind: u64,
    ) -> Result<(Operation, Reservation<'_>), EngineError> {
        let inner = &self.inner;
        if inner.shutdown.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        let registered =
            inner
                .kind(&options.tenant, kind)
                .ok_or_else(|| EngineError::Unimplemented {
                    reason: Reason::KindNotRegistered,
                    message: format!("kind {kind:?} is not registered on this server"),
                })?;
        registered.task.validate(&request)?;
        self.check_callback(options.notification.as_ref()).await?;
        let timeout = match options.timeout {
            Some(t) if t.is_zero() => {
                return Err(EngineError::invalid("timeout", "timeout must be positive"));
            }
            Some(t) => t.min(registered.policy.timeout),
            None => registered.policy.timeout,
        };
        let identity: &[u8] = match &options.fingerprint {
            Some(fingerprint) => fingerprint,
            None => &request.value,
        };
        // The digest tells a retry from a reused key; without a key there
        // is nothing to compare, and no hashing to do.
        let digest = match options.request_id {
            Some(_) => request_digest(kind, &request.type_url, identity),
            None => [0; 32],
        };
        let run = options.run;
        super::flow::check_key(run.concurrency_key.as_deref())?;
        check_times(&run, inner.clock.now())?;
        let tenant = options.tenant;
        inner.quotas.create(&tenant)?;
        let room = inner.admission.reserve(
            &tenant,
            inner.ops.queued(&tenant),
            inner.config.max_queued,
            inner.config.quotas.max_queued,
        )?;
        let limits = Limits {
            timeout,
            max_attempts: options
                .max_attempts
                .map_or(registered.policy.max_attempts, |n| {
                    n.min(registered.policy.max_attempts)
                })
                .max(1),
        };
        let mut op = Operation::new(
            kind,
            request,
            options.request_id,
            digest,
            limits,
            tenant.clone(),
            inner.clock.now(),
        );
        op.notification = options.notification;
        op.priority = run.priority;
        op.concurrency_key = run.concurrency_key;
        op.schedule = options.schedule;
        op.expire_time = run.expire_at.map(crate::model::to_micros_precision);
        if let Some(start) = run.start_at.filter(|start| *start > op.create_time) {
            let start = crate::model::to_micros_precision(start);
            op.scheduled_start = Some(start);
            op.not_before = Some(start);
        }
        (op.expected_run, op.expected_start) = inner.expectations(
            &op.kind,
            registered.task.size(&op.request),
            behind,
            op.create_time,
        );
        if let Some(start) = op.scheduled_start {
            op.expected_start = Some(op.expected_start.map_or(start, |e| e.max(start)));
        }
        op.parent = options.parent;
        Ok((op, room))
    }
}

impl Engine {
    /// Checks a webhook's URL with the injected guard, when there is one.
    pub(crate) async fn check_callback(
        &self,
        notification: Option<&Notification>,
    ) -> Result<(), EngineError> {
        if let (Some(notification), Some(guard)) = (notification, &self.inner.config.callback_guard)
        {
            guard
                .check(&notification.callback_url)
                .await
                .map_err(|reason| EngineError::invalid("notification.callback_url", reason))?;
        }
        Ok(())
    }
}

/// Room in the queue for creates that are on their way to the store, so
/// that concurrent creates cannot all pass a check made before any of them
/// is counted there.
#[derive(Default)]
pub(crate) struct Admission {
    in_flight: Mutex<InFlight>,
}

#[derive(Default)]
struct InFlight {
    total: u64,
    tenants: HashMap<Tenant, u64>,
}

/// A create's place, held until it is stored (or refused).
pub(crate) struct Reservation<'a> {
    admission: &'a Admission,
    tenant: Tenant,
}

impl Admission {
    fn lock(&self) -> std::sync::MutexGuard<'_, InFlight> {
        // Each critical section is a few additions; a poisoned lock holds
        // consistent counts.
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds a place for one more create of `tenant`, when what is queued
    /// (`queued`) plus what is on its way leaves room under the limits.
    pub(crate) fn reserve(
        &self,
        tenant: &Tenant,
        queued: QueueDepth,
        max: usize,
        tenant_max: Option<usize>,
    ) -> Result<Reservation<'_>, EngineError> {
        let mut in_flight = self.lock();
        let mine = in_flight.tenants.get(tenant).copied().unwrap_or(0);
        if queued.total + in_flight.total >= max as u64 {
            return Err(EngineError::ResourceExhausted {
                reason: Reason::QueueFull,
                message:
                    "the server has as many operations waiting for a worker as it may; retry later"
                        .into(),
                retry_after: Duration::from_secs(1),
            });
        }
        if tenant_max.is_some_and(|cap| queued.tenant + mine >= cap as u64) {
            return Err(EngineError::ResourceExhausted {
                reason: Reason::TenantQueueFull,
                message:
                    "this tenant has as many operations waiting for a worker as it may; retry later"
                        .into(),
                retry_after: Duration::from_secs(1),
            });
        }
        in_flight.total += 1;
        *in_flight.tenants.entry(tenant.clone()).or_insert(0) += 1;
        Ok(Reservation {
            admission: self,
            tenant: tenant.clone(),
        })
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.admission.lock();
        in_flight.total -= 1;
        if let Some(count) = in_flight.tenants.get_mut(&self.tenant) {
            *count -= 1;
            if *count == 0 {
                in_flight.tenants.remove(&self.tenant);
            }
        }
    }
}

/// Identifies a request for idempotency checks: kind, type, and the bytes
/// (or fingerprint) that stand for its content.
fn request_digest(kind: &str, type_url: &str, identity: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in [kind.as_bytes(), type_url.as_bytes(), identity] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}
