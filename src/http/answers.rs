//! How the HTTP face answers: a call's reply as JSON (an operation with
//! `Retry-After` while it runs, 202 and a `Location` when it was created),
//! the `:result` status monitor, and every refusal as Google's JSON error
//! body (AIP-193).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prost::{Message, Name};
use prost_reflect::{DynamicMessage, MessageDescriptor, ReflectMessage};
use tonic::{Code, Status};

use super::Rest;
use super::binding::{Binding, Found, Shape};
use super::bridge::TraceHeaders;
use crate::auth::Principal;
use crate::grpc::status::{from_rpc, garbled, http_error, retry_after_seconds};
use crate::model::Reason;
use crate::pb;
use crate::pb::google::longrunning::Operation;
use crate::pb::google::longrunning::operation::Result as OpResult;
use crate::pb::longrun::v1::OperationMetadata;

/// A refusal: the error response to send instead (boxed, since a response
/// is large). A failed call's status becomes one with `?`.
pub(super) struct Refused(pub(super) Box<Response>);

impl Refused {
    /// `status` as its error body, under `http` when that is more exact
    /// than the mapped status.
    pub(super) fn with(status: &Status, http: Option<StatusCode>) -> Self {
        Self(Box::new(error_body(status, http)))
    }
}

impl From<Status> for Refused {
    fn from(status: Status) -> Self {
        Self::with(&status, None)
    }
}

/// A status as Google's JSON error body, under `http` (its mapped status
/// unless the caller has a more exact one).
pub(super) fn error_body(status: &Status, http: Option<StatusCode>) -> Response {
    http_error(status, http).map(Body::from)
}

/// What a route answers.
pub(super) type Answer = Result<Response, Refused>;

/// How long a poller should wait before asking about `op` again, in whole
/// seconds, at least 1: until the operation's estimated end, at most a
/// minute; 1 s when nothing is known yet.
pub(super) fn retry_after(op: &Operation) -> Duration {
    let estimate = op
        .metadata
        .as_ref()
        .and_then(|any| any.to_msg::<OperationMetadata>().ok())
        .and_then(|meta| pb::system_time(meta.estimated_end_time.as_ref()?))
        .and_then(|end| end.duration_since(SystemTime::now()).ok());
    estimate
        .unwrap_or(Duration::from_secs(1))
        .clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// The version (change sequence) of an operation, from its metadata.
pub(super) fn version(op: &Operation) -> Option<i64> {
    op.metadata
        .as_ref()
        .and_then(|any| any.to_msg::<OperationMetadata>().ok())
        .map(|meta| meta.version)
}

impl Rest {
    /// An encoded message of type `descriptor` as its JSON, `code`.
    pub(super) fn json(
        &self,
        code: StatusCode,
        descriptor: &MessageDescriptor,
        bytes: &[u8],
    ) -> Response {
        let body = pb::json::from_bytes(descriptor, bytes).unwrap_or_else(|| b"null".to_vec());
        json_response(code, body)
    }

    /// The message an Any holds, decoded through the served descriptors.
    pub(super) fn unpack(&self, any: &prost_types::Any) -> Option<DynamicMessage> {
        let name = any.type_url.rsplit('/').next()?;
        let descriptor = self.pool.get_message_by_name(name)?;
        DynamicMessage::decode(descriptor, any.value.as_slice()).ok()
    }

    /// An operation as JSON, `code`, with `Retry-After` while it is not
    /// done.
    pub(super) fn operation(&self, code: StatusCode, op: &Operation, bytes: &[u8]) -> Response {
        let mut response = match self
            .pool
            .get_message_by_name("google.longrunning.Operation")
        {
            Some(descriptor) => self.json(code, &descriptor, bytes),
            None => json_response(code, b"null".to_vec()),
        };
        if !op.done {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after_seconds(retry_after(op)));
        }
        response
    }
}

/// `body`, JSON already written, as the answer `code`.
fn json_response(code: StatusCode, body: Vec<u8>) -> Response {
    (
        code,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// A unary answer: JSON; an operation with `Retry-After` while not done,
/// and 202 with a `Location` when the method created it. (A reused
/// Idempotency-Key with another body is ALREADY_EXISTS: 409.)
pub(super) fn answered(rest: &Rest, binding: &Binding, answer: Result<Bytes, Status>) -> Answer {
    let bytes = answer?;
    let output = binding.rpc.output();
    if output.full_name() != Operation::full_name() {
        return Ok(rest.json(StatusCode::OK, &output, &bytes));
    }
    let op = Operation::decode(bytes.as_ref())
        .map_err(|e| garbled(format!("an undecodable operation: {e}")))?;
    if !binding.creates() {
        // Always 200 with the operation: Google's REST clients rely on it.
        return Ok(rest.operation(StatusCode::OK, &op, &bytes));
    }
    let mut response = rest.operation(StatusCode::ACCEPTED, &op, &bytes);
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/{}", op.name)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// The status monitor: 202 while the operation runs, 303 to its result
/// resource's download, 200 with a response that names none, or the
/// error's own status and body.
pub(super) async fn result(
    rest: &Rest,
    caller: &Arc<Principal>,
    path: &str,
    message: Bytes,
) -> Answer {
    let bytes = rest
        .bridge
        .unary(caller, path, message, &TraceHeaders::default())
        .await?;
    let op = Operation::decode(bytes.as_ref())
        .map_err(|e| garbled(format!("an undecodable operation: {e}")))?;
    if !op.done {
        return Ok(rest.operation(StatusCode::ACCEPTED, &op, &bytes));
    }
    let nothing = || (StatusCode::OK, axum::Json(serde_json::json!({}))).into_response();
    let any = match &op.result {
        Some(OpResult::Error(error)) => return Err(failed(&op.name, error).into()),
        Some(OpResult::Response(any)) => any,
        None => return Ok(nothing()),
    };
    let Some(response) = rest.unpack(any) else {
        return Ok(nothing());
    };
    let download = response
        .get_field_by_name("name")
        .and_then(|name| name.as_str().map(|n| format!("/v1/{n}:download")))
        .filter(|target| {
            matches!(
                rest.bindings.find(&Method::GET, target),
                Found::Route(b, _) if b.shape == Shape::Download
            )
        });
    match download {
        Some(target) => {
            let mut see_other = StatusCode::SEE_OTHER.into_response();
            if let Ok(location) = HeaderValue::from_str(&target) {
                see_other.headers_mut().insert(header::LOCATION, location);
            }
            Ok(see_other)
        }
        None => Ok(rest.json(StatusCode::OK, &response.descriptor(), &any.value)),
    }
}

/// The status a failed (or cancelled) operation's `:result` answers with:
/// its own error, with its ErrorInfo saying that it is the operation's
/// outcome (`operation` and `operation_state` in its metadata), so that a
/// NOT_FOUND the work ended with is told from a missing operation.
pub(super) fn failed(name: &str, error: &pb::google::rpc::Status) -> Status {
    use pb::google::rpc::ErrorInfo;
    let mut error = error.clone();
    let state = if error.code == Code::Cancelled as i32 {
        "CANCELLED"
    } else {
        "FAILED"
    };
    let info_at = error
        .details
        .iter()
        .position(|d| d.type_url == ErrorInfo::type_url());
    let mut info = info_at
        .and_then(|at| ErrorInfo::decode(error.details[at].value.as_slice()).ok())
        .unwrap_or_else(|| ErrorInfo {
            reason: Reason::OperationFailed.into(),
            domain: crate::grpc::status::DOMAIN.into(),
            ..ErrorInfo::default()
        });
    info.metadata.insert("operation".into(), name.to_owned());
    info.metadata.insert("operation_state".into(), state.into());
    let packed = prost_types::Any {
        type_url: ErrorInfo::type_url(),
        value: info.encode_to_vec(),
    };
    match info_at {
        Some(at) => error.details[at] = packed,
        None => error.details.insert(0, packed),
    }
    from_rpc(&error)
}
