//! Conversions between engine types and the generated protobuf types.

use std::time::Duration;

use prost::Name;
use tonic::Status;

use super::status::invalid_field;
use crate::engine::notify::Notification;
use crate::engine::{Operation, OperationError, OperationId, Outcome, Payload, RequestId, State};
use crate::pb::google::longrunning as lro;
use crate::pb::google::rpc;
use crate::pb::longrun::v1 as api;

/// Packs an engine payload as a protobuf Any.
pub fn to_any(payload: &Payload) -> prost_types::Any {
    prost_types::Any {
        type_url: payload.type_url.clone(),
        value: payload.value.to_vec(),
    }
}

fn pack<M: Name>(message: &M) -> prost_types::Any {
    to_any(&Payload::pack(message))
}

pub use crate::pb::timestamp;

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
        attempt: op.attempt as i32,
        requested_cancellation: op.requested_cancellation,
        create_time: Some(timestamp(op.create_time)),
        start_time: op.start_time.map(timestamp),
        update_time: Some(timestamp(op.update_time)),
        end_time: op.end_time.map(timestamp),
        max_attempts: op.max_attempts as i32,
        next_attempt_time: op.not_before.map(timestamp),
        last_attempt_error: op.last_error.as_ref().map(status),
        tenant: op.tenant.clone(),
    }
}

/// A google.rpc.Status with an ErrorInfo detail for an operation error.
pub fn status(e: &OperationError) -> rpc::Status {
    let info = rpc::ErrorInfo {
        reason: e.reason.clone(),
        domain: super::status::DOMAIN.to_owned(),
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
    let result = op.outcome.as_ref().map(|outcome| match outcome {
        Outcome::Response(payload) => lro::operation::Result::Response(to_any(payload)),
        Outcome::Error(e) => lro::operation::Result::Error(status(e)),
    });
    lro::Operation {
        name: op.id.name(),
        metadata: Some(pack(&metadata(op))),
        done: op.is_done(),
        result,
    }
}

/// Parses an operation name from the request field `field`.
pub fn operation_id(field: &str, name: &str) -> Result<OperationId, Status> {
    if name.len() > 256 {
        return Err(invalid_field(field, "name is longer than 256 bytes"));
    }
    OperationId::parse_name(name).map_err(|e| invalid_field(field, e.to_string()))
}

/// Parses the optional request_id field.
pub fn request_id(value: &str) -> Result<Option<RequestId>, Status> {
    RequestId::parse_optional(value).map_err(|e| invalid_field("request_id", e.to_string()))
}

/// The engine's view of a create request's NotificationConfig. The URL
/// itself is checked by the engine when the operation is submitted.
pub fn notification(
    config: Option<&api::NotificationConfig>,
) -> Result<Option<Notification>, Status> {
    let Some(config) = config else {
        return Ok(None);
    };
    if config.callback_url.is_empty() {
        return Err(invalid_field(
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
            _ => Err(invalid_field(
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
pub fn duration(field: &str, value: &prost_types::Duration) -> Result<Duration, Status> {
    if value.seconds < 0 || value.nanos < 0 || value.nanos >= 1_000_000_000 {
        return Err(invalid_field(
            field,
            "must be a non-negative, normalized google.protobuf.Duration",
        ));
    }
    Ok(Duration::new(value.seconds as u64, value.nanos as u32))
}
