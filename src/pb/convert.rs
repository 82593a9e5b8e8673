//! Conversions between the model and the generated messages, shared by
//! every face of the server: the gRPC services, webhook bodies and the CLI.
//!
//! Reading a request field gives a [`FieldViolation`] when it is wrong;
//! each face turns that into its own error (a gRPC status with a
//! BadRequest, say).

use std::time::{Duration, SystemTime};

use prost::Name;

use crate::model::{
    Code, Delivery, DeliveryState, FieldViolation, Notification, Operation, OperationError,
    OperationId, Outcome, Payload, RequestId, RunSpec, State, Waiting,
};
use crate::pb::google::longrunning as lro;
use crate::pb::google::rpc;
use crate::pb::longrun::v1 as api;
use crate::pb::longrun::v1::delivery::DeliveryState as ProtoDeliveryState;

pub use crate::pb::timestamp;

/// The ErrorInfo domain of every longrun error.
pub const DOMAIN: &str = "longrun";

/// The longest resource name accepted.
pub const MAX_NAME_LEN: usize = 256;

/// Packs a payload as a protobuf Any.
pub fn to_any(payload: &Payload) -> prost_types::Any {
    prost_types::Any {
        type_url: payload.type_url.clone(),
        value: payload.value.to_vec(),
    }
}

/// A protobuf Any as a payload, kept as it was sent.
pub fn from_any(any: &prost_types::Any) -> Payload {
    Payload {
        type_url: any.type_url.clone(),
        value: any.value.clone().into(),
    }
}

/// The error an outside worker reported, as an operation stores it: its
/// code (which must not be OK) and message, and the reason and metadata
/// of its ErrorInfo when it has one.
pub fn operation_error(status: &rpc::Status) -> Result<OperationError, FieldViolation> {
    let code = Code::from_i32(status.code).ok_or_else(|| {
        FieldViolation::new(
            "error.code",
            format!("{} is not an error code (1 to 16)", status.code),
        )
    })?;
    let info = status
        .details
        .iter()
        .find_map(|any| any.to_msg::<rpc::ErrorInfo>().ok());
    let mut error = OperationError::new(
        code,
        info.as_ref()
            .map_or_else(|| "WORKER_FAILED".to_owned(), |i| i.reason.clone()),
        status.message.clone(),
    );
    if let Some(info) = info {
        error.metadata = info.metadata;
    }
    Ok(error)
}

fn pack<M: Name>(message: &M) -> prost_types::Any {
    to_any(&Payload::pack(message))
}

/// The public enum value of a state.
pub fn state(state: State) -> api::State {
    match state {
        State::Queued => api::State::Queued,
        State::Running => api::State::Running,
        State::Succeeded => api::State::Succeeded,
        State::Failed => api::State::Failed,
        State::Cancelling => api::State::Cancelling,
        State::Cancelled => api::State::Cancelled,
    }
}

/// The OperationMetadata of an operation.
pub fn metadata(op: &Operation) -> api::OperationMetadata {
    api::OperationMetadata {
        state: state(op.state) as i32,
        progress_percent: op.progress_percent as i32,
        status_message: op.status_message.clone(),
        kind: op.kind.clone(),
        attempt: op.attempt.get() as i32,
        requested_cancellation: op.requested_cancellation,
        create_time: Some(timestamp(op.create_time)),
        start_time: op.start_time.map(timestamp),
        update_time: Some(timestamp(op.update_time)),
        end_time: op.end_time.map(timestamp),
        max_attempts: op.max_attempts as i32,
        next_attempt_time: op.not_before.map(timestamp),
        last_attempt_error: op.last_error.as_ref().map(status),
        tenant: op.tenant.as_str().to_owned(),
        version: i64::try_from(op.version).unwrap_or(i64::MAX),
        estimated_end_time: op
            .estimated_end(std::time::SystemTime::now())
            .map(timestamp),
        failed_attempts: op
            .failed_attempts
            .iter()
            .map(|a| api::FailedAttempt {
                attempt: a.attempt.get() as i32,
                start_time: a.start_time.map(timestamp),
                end_time: Some(timestamp(a.end_time)),
                error: Some(status(&a.error)),
            })
            .collect(),
        request: shown_request(&op.request).map(to_any),
        request_size_bytes: i64::try_from(op.request.value.len()).unwrap_or(i64::MAX),
        holder: op.holder.clone().unwrap_or_default(),
        stopped_attempts: i32::try_from(op.stops).unwrap_or(i32::MAX),
        run: Some(api::RunOptions {
            priority: op.priority,
            concurrency_key: op.concurrency_key.clone().unwrap_or_default(),
            start_time: op.scheduled_start.map(timestamp),
            expire_time: op.expire_time.map(timestamp),
            ..api::RunOptions::default()
        }),
        waiting_reason: None,
        schedule: op
            .schedule
            .as_ref()
            .map(|s| format!("schedules/{}", s.id))
            .unwrap_or_default(),
        scheduled_time: op.schedule.as_ref().map(|s| timestamp(s.tick)),
        parent: op.parent.map(|p| p.name()).unwrap_or_default(),
        batch: op.batch.as_deref().map(batch_counts),
        trace_id: op
            .trace
            .as_ref()
            .map(|t| t.trace_id_hex())
            .unwrap_or_default(),
    }
}

/// A batch's counts as the wire shows them.
pub fn batch_counts(r: &crate::model::Rollup) -> api::BatchCounts {
    let n = |state| i64::try_from(r.count(state)).unwrap_or(i64::MAX);
    api::BatchCounts {
        total: i64::try_from(r.total).unwrap_or(i64::MAX),
        queued: n(State::Queued),
        running: n(State::Running),
        succeeded: n(State::Succeeded),
        failed: n(State::Failed),
        cancelling: n(State::Cancelling),
        cancelled: n(State::Cancelled),
        policy: match r.policy {
            crate::model::Policy::WaitAll => api::BatchPolicy::WaitAll,
            crate::model::Policy::FailFast => api::BatchPolicy::FailFast,
        } as i32,
        sealed: r.sealed,
        failing: r.failing,
    }
}

/// What a batch did: its counts and its first failures.
pub fn batch_result(r: &crate::model::Rollup) -> api::BatchResult {
    api::BatchResult {
        counts: Some(batch_counts(r)),
        failures: r
            .failures
            .iter()
            .map(|f| api::ChildFailure {
                name: f.id.name(),
                error: Some(status(&f.error)),
            })
            .collect(),
    }
}

/// The OperationMetadata of an operation that waits for `waiting`, whose
/// estimate then counts the wait: nothing is known while its queue is
/// paused; it starts no sooner than a timed wait ends, or than one run of
/// what holds the slot it needs.
pub fn metadata_waiting(
    op: &Operation,
    waiting: &Waiting,
    now: SystemTime,
) -> api::OperationMetadata {
    let mut meta = metadata(op);
    let run = op.expected_run.unwrap_or_default();
    let start = match waiting {
        Waiting::QueuePaused => None,
        Waiting::KindConcurrency | Waiting::KeyConcurrency { .. } | Waiting::TenantConcurrency => {
            Some(now + run)
        }
        Waiting::RateLimited { until }
        | Waiting::Scheduled { until }
        | Waiting::Backoff { until } => Some((*until).max(now)),
    };
    meta.estimated_end_time = match (start, op.estimated_end(now)) {
        (None, _) => None,
        (Some(start), estimate) => Some(timestamp(
            estimate.map_or(start + run, |e| e.max(start + run)),
        )),
    };
    meta.waiting_reason = Some(api::Waiting {
        reason: waiting.as_str().to_owned(),
        concurrency_key: waiting.key().unwrap_or_default().to_owned(),
        until: waiting.until().map(timestamp),
    });
    meta
}

/// The most bytes of a request the metadata shows.
pub const SHOWN_REQUEST: usize = 4096;

/// The request as the metadata shows it: none when it is large, or the
/// server's own bookkeeping rather than what a client sent.
fn shown_request(request: &Payload) -> Option<&Payload> {
    (request.value.len() <= SHOWN_REQUEST && !request.type_url.contains("/longrun.internal."))
        .then_some(request)
}

/// A google.rpc.Status with an ErrorInfo detail for an operation error.
pub fn status(e: &OperationError) -> rpc::Status {
    let info = rpc::ErrorInfo {
        reason: e.reason.clone(),
        domain: DOMAIN.to_owned(),
        metadata: e.metadata.clone(),
    };
    rpc::Status {
        code: e.code.as_i32(),
        message: e.message.clone(),
        details: vec![pack(&info)],
    }
}

/// The google.longrunning.Operation clients see.
pub fn operation(op: &Operation) -> lro::Operation {
    operation_with(op, metadata(op))
}

/// The public form of an operation that waits for `waiting`.
pub fn waiting_operation(op: &Operation, waiting: &Waiting) -> lro::Operation {
    operation_with(op, metadata_waiting(op, waiting, SystemTime::now()))
}

fn operation_with(op: &Operation, metadata: api::OperationMetadata) -> lro::Operation {
    let batch = op.batch.as_deref().map(batch_result);
    let result = op.outcome.as_ref().map(|outcome| match (outcome, batch) {
        // A batch's result is its roll-up, made when it is shown.
        (Outcome::Response(_), Some(batch)) => lro::operation::Result::Response(pack(&batch)),
        (Outcome::Response(payload), None) => lro::operation::Result::Response(to_any(payload)),
        (Outcome::Error(e), batch) => {
            let mut status = status(e);
            status.details.extend(batch.as_ref().map(pack));
            lro::operation::Result::Error(status)
        }
    });
    lro::Operation {
        name: op.id.name(),
        metadata: Some(pack(&metadata)),
        done: op.is_done(),
        result,
    }
}

/// The public form of a webhook delivery.
pub fn delivery(d: &Delivery) -> api::Delivery {
    api::Delivery {
        id: d.webhook_id(),
        r#type: d.event_type(),
        callback_url: d.callback_url.clone(),
        state: match d.state {
            DeliveryState::Pending => ProtoDeliveryState::Pending,
            DeliveryState::Delivered => ProtoDeliveryState::Delivered,
            DeliveryState::Failed => ProtoDeliveryState::Failed,
            DeliveryState::Disabled => ProtoDeliveryState::Disabled,
        } as i32,
        attempts: d.attempts as i32,
        last_status_code: i32::from(d.last_status_code),
        last_error: d.last_error.clone(),
        create_time: Some(timestamp(d.create_time)),
        next_attempt_time: d.next_attempt.map(timestamp),
    }
}

/// Reads an operation name from the request field `field`.
pub fn operation_id(field: &str, name: &str) -> Result<OperationId, FieldViolation> {
    if name.len() > MAX_NAME_LEN {
        return Err(FieldViolation::new(
            field,
            format!("name is longer than {MAX_NAME_LEN} bytes"),
        ));
    }
    OperationId::parse_name(name).map_err(|e| FieldViolation::new(field, e.to_string()))
}

/// Reads the optional request_id field.
pub fn request_id(value: &str) -> Result<Option<RequestId>, FieldViolation> {
    RequestId::parse_optional(value).map_err(|e| FieldViolation::new("request_id", e.to_string()))
}

/// What a create request's RunOptions asks for (the defaults without
/// one), with delays and time-to-live made times from `now`.
pub fn run_spec(run: Option<&api::RunOptions>, now: SystemTime) -> Result<RunSpec, FieldViolation> {
    let Some(run) = run else {
        return Ok(RunSpec::default());
    };
    let at = |field: &str,
              time: Option<&prost_types::Timestamp>,
              delay: Option<&prost_types::Duration>,
              other: &str| match (time, delay) {
        (Some(_), Some(_)) => Err(FieldViolation::new(
            field,
            format!("give {field} or run.{other}, not both"),
        )),
        (Some(t), None) => crate::pb::system_time(t)
            .map(Some)
            .ok_or_else(|| FieldViolation::new(field, "not a valid timestamp")),
        (None, Some(d)) => Ok(Some(now + duration(&format!("run.{other}"), d)?)),
        (None, None) => Ok(None),
    };
    Ok(RunSpec {
        priority: run.priority,
        concurrency_key: Some(run.concurrency_key.clone()).filter(|key| !key.is_empty()),
        start_at: at(
            "run.start_time",
            run.start_time.as_ref(),
            run.start_delay.as_ref(),
            "start_delay",
        )?,
        expire_at: at(
            "run.expire_time",
            run.expire_time.as_ref(),
            run.ttl.as_ref(),
            "ttl",
        )?,
    })
}

/// The model's view of a create request's NotificationConfig. The URL
/// itself is checked by the engine when the operation is submitted.
pub fn notification(
    config: Option<&api::NotificationConfig>,
) -> Result<Option<Notification>, FieldViolation> {
    let Some(config) = config else {
        return Ok(None);
    };
    if config.callback_url.is_empty() {
        return Err(FieldViolation::new(
            "notification.callback_url",
            "callback_url is required when notification is set",
        ));
    }
    let states = config
        .events
        .iter()
        .map(|value| match api::State::try_from(*value) {
            Ok(api::State::Queued) => Ok(State::Queued),
            Ok(api::State::Running) => Ok(State::Running),
            Ok(api::State::Succeeded) => Ok(State::Succeeded),
            Ok(api::State::Failed) => Ok(State::Failed),
            Ok(api::State::Cancelling) => Ok(State::Cancelling),
            Ok(api::State::Cancelled) => Ok(State::Cancelled),
            _ => Err(FieldViolation::new(
                "notification.events",
                format!("{value} is not a state to notify on"),
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Notification {
        callback_url: config.callback_url.clone(),
        states,
    }))
}

/// Reads a protobuf Duration field that must be non-negative.
pub fn duration(field: &str, value: &prost_types::Duration) -> Result<Duration, FieldViolation> {
    if value.seconds < 0 || value.nanos < 0 || value.nanos >= 1_000_000_000 {
        return Err(FieldViolation::new(
            field,
            "must be a non-negative, normalized google.protobuf.Duration",
        ));
    }
    Ok(Duration::new(value.seconds as u64, value.nanos as u32))
}
