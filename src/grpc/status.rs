//! The one place where gRPC statuses are built.
//!
//! Every status carries a google.rpc.ErrorInfo (domain `longrun`, an
//! UPPER_SNAKE reason); argument errors add a BadRequest listing the fields,
//! and capacity errors a RetryInfo. Engine errors, refusals at the door and
//! tonic's own limit errors all come through here.
//!
//! The HTTP side of a status lives here too, for gRPC's door and the
//! HTTP/JSON face alike: [`http_status`] is the one gRPC-code-to-HTTP table,
//! and [`error_json`] the JSON error body (AIP-193) a status becomes.

// The http crate's request and response types: named apart from this
// crate's HTTP/JSON face (`src/http/`), which sits above this layer.
use ::http as http_crate;

use std::time::Duration;

use http_crate::{HeaderValue, StatusCode, header};
use prost::Message;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tracing::error;

use crate::auth::{AuthError, Principal, Role};
use crate::engine::EngineError;
use crate::model::{FieldViolation, Reason};
pub use crate::pb::convert::DOMAIN;

fn with_info(code: Code, reason: Reason, message: impl Into<String>) -> Status {
    let details = ErrorDetails::with_error_info(reason, DOMAIN, []);
    Status::with_error_details(code, message, details)
}

/// No route of the HTTP/JSON face answers this path and method.
pub fn no_route(message: impl Into<String>) -> Status {
    with_info(Code::NotFound, Reason::NoSuchRoute, message)
}

/// 404, and why, for an HTTP request of a path nothing serves over HTTP.
pub fn not_found(path: &str) -> http_crate::Response<String> {
    http_error(&no_route(format!("nothing is served at {path}")), None)
}

/// Maps an engine error to its status.
pub fn to_status(error: EngineError) -> Status {
    let reason = error.reason();
    let message = error.to_string();
    let mut details = ErrorDetails::with_error_info(reason, DOMAIN, []);
    let code = match &error {
        EngineError::NotFound { .. } => Code::NotFound,
        EngineError::InvalidArgument { violations } => {
            for v in violations {
                details.add_bad_request_violation(v.field.clone(), v.description.clone());
            }
            Code::InvalidArgument
        }
        EngineError::FailedPrecondition { .. } => Code::FailedPrecondition,
        EngineError::AlreadyExists { .. } => Code::AlreadyExists,
        EngineError::Aborted { .. } => Code::Aborted,
        EngineError::ResourceExhausted { retry_after, .. } => {
            details.set_retry_info(Some(*retry_after));
            Code::ResourceExhausted
        }
        EngineError::Unimplemented { .. } => Code::Unimplemented,
        EngineError::PermissionDenied { .. } => Code::PermissionDenied,
        EngineError::ShuttingDown => Code::Unavailable,
        EngineError::Unavailable { retry_after, .. } => {
            details.set_retry_info(Some(*retry_after));
            Code::Unavailable
        }
        EngineError::Store(e) => {
            error!(error = %e, "storage failure");
            Code::Internal
        }
    };
    Status::with_error_details(code, message, details)
}

impl From<EngineError> for Status {
    fn from(error: EngineError) -> Self {
        to_status(error)
    }
}

/// INVALID_ARGUMENT for one bad field, with ErrorInfo and BadRequest.
pub fn invalid(violation: FieldViolation) -> Status {
    to_status(EngineError::InvalidArgument {
        violations: vec![violation],
    })
}

impl From<FieldViolation> for Status {
    fn from(violation: FieldViolation) -> Self {
        invalid(violation)
    }
}

/// INVALID_ARGUMENT for one bad field.
pub fn invalid_field(field: &str, description: impl Into<String>) -> Status {
    invalid(FieldViolation::new(field, description))
}

/// A feature this server does not offer.
pub fn unimplemented(reason: Reason, message: impl Into<String>) -> Status {
    with_info(Code::Unimplemented, reason, message)
}

/// A caller the door could not identify.
pub fn unauthenticated(error: &AuthError) -> Status {
    with_info(Code::Unauthenticated, error.reason(), error.to_string())
}

/// A call that reached a handler without passing the door.
pub fn not_through_the_door() -> Status {
    with_info(
        Code::Unauthenticated,
        Reason::CredentialsMissing,
        "this call was not authenticated",
    )
}

/// A principal whose role is too low for the call.
pub fn permission_denied(principal: &Principal, needed: Role) -> Status {
    let details = ErrorDetails::with_error_info(
        Reason::RoleTooLow,
        DOMAIN,
        [
            ("required_role".to_owned(), needed.to_string()),
            ("role".to_owned(), principal.role.to_string()),
        ],
    );
    Status::with_error_details(
        Code::PermissionDenied,
        format!(
            "{} has role {}; this call needs {needed}",
            principal.name, principal.role
        ),
        details,
    )
}

/// A request message over the size limit, as tonic reported it.
pub fn message_too_large(tonic_message: &str) -> Status {
    let mut details = ErrorDetails::with_error_info(Reason::MessageTooLarge, DOMAIN, []);
    details.add_bad_request_violation("request", tonic_message.to_owned());
    Status::with_error_details(
        Code::InvalidArgument,
        format!("the request message is larger than this server accepts ({tonic_message})"),
        details,
    )
}

/// A client stream that sent nothing for `idle`.
pub fn stalled(reason: Reason, idle: Duration) -> Status {
    with_info(
        Code::DeadlineExceeded,
        reason,
        format!(
            "no part of the upload arrived for {} s; it was abandoned",
            idle.as_secs_f64()
        ),
    )
}

/// The status a stored google.rpc.Status describes (an operation's
/// error), with its details.
pub fn from_rpc(rpc: &crate::pb::google::rpc::Status) -> Status {
    use prost::Message;
    Status::with_details(
        Code::from_i32(rpc.code),
        rpc.message.clone(),
        rpc.encode_to_vec().into(),
    )
}

/// An answer of the server's own services that could not be read back
/// (the HTTP face decodes what gRPC encoded).
pub fn garbled(message: impl Into<String>) -> Status {
    with_info(Code::Internal, Reason::GarbledAnswer, message)
}

/// A worker that asked to serve a kind its principal may not lease.
pub fn kind_not_allowed(principal: &Principal, kind: &str) -> Status {
    with_info(
        Code::PermissionDenied,
        Reason::KindNotAllowed,
        format!(
            "{} may not serve kind {kind:?}; the auth file lists the kinds a worker may lease",
            principal.name
        ),
    )
}

/// An Enqueue of a kind nobody declared.
pub fn unknown_kind(kind: &str) -> Status {
    with_info(
        Code::NotFound,
        Reason::UnknownKind,
        format!("no worker or configuration has declared kind {kind:?}"),
    )
}

/// An HTTP request the face refuses before it reaches any method (a Host
/// or an origin it does not serve).
pub fn refused(reason: Reason, message: impl Into<String>) -> Status {
    with_info(Code::PermissionDenied, reason, message)
}

/// An HTTP body that did not arrive within `within`.
pub fn body_too_slow(within: Duration) -> Status {
    with_info(
        Code::DeadlineExceeded,
        Reason::BodyTooSlow,
        format!(
            "the request body did not arrive within {} s",
            within.as_secs_f64()
        ),
    )
}

/// The HTTP status and canonical name of a gRPC code (the mapping of
/// google.rpc.Code), in one place.
pub fn http_status(code: Code) -> (StatusCode, &'static str) {
    match code {
        Code::Ok => (StatusCode::OK, "OK"),
        Code::Cancelled => (
            StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            "CANCELLED",
        ),
        Code::Unknown => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        Code::InvalidArgument => (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
        Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "DEADLINE_EXCEEDED"),
        Code::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
        Code::AlreadyExists => (StatusCode::CONFLICT, "ALREADY_EXISTS"),
        Code::PermissionDenied => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
        Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED"),
        Code::FailedPrecondition => (StatusCode::BAD_REQUEST, "FAILED_PRECONDITION"),
        Code::Aborted => (StatusCode::CONFLICT, "ABORTED"),
        Code::OutOfRange => (StatusCode::BAD_REQUEST, "OUT_OF_RANGE"),
        Code::Unimplemented => (StatusCode::NOT_IMPLEMENTED, "UNIMPLEMENTED"),
        Code::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        Code::DataLoss => (StatusCode::INTERNAL_SERVER_ERROR, "DATA_LOSS"),
    }
}

/// A status as Google's JSON error object, under `http`.
pub fn error_json(status: &Status, http: StatusCode) -> serde_json::Value {
    let details = crate::pb::google::rpc::Status::decode(status.details())
        .map(|rpc| crate::pb::to_json(&rpc)["details"].clone())
        .ok()
        .filter(|d| d.is_array())
        .unwrap_or_else(|| serde_json::json!([]));
    serde_json::json!({
        "error": {
            "code": http.as_u16(),
            "message": status.message(),
            "status": http_status(status.code()).1,
            "details": details,
        }
    })
}

/// A status as a whole HTTP answer: Google's JSON error body under `http`
/// (its mapped status unless the caller has a more exact one), with
/// `Retry-After` when the status says when to retry.
pub fn http_error(status: &Status, http: Option<StatusCode>) -> http_crate::Response<String> {
    let http = http.unwrap_or(http_status(status.code()).0);
    let mut response = http_crate::Response::new(error_json(status, http).to_string());
    *response.status_mut() = http;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Some(delay) = retry_delay(status) {
        headers.insert(header::RETRY_AFTER, retry_after_seconds(delay));
    }
    response
}

/// The RetryInfo delay of a status, if it has one.
fn retry_delay(status: &Status) -> Option<Duration> {
    let rpc = crate::pb::google::rpc::Status::decode(status.details()).ok()?;
    rpc.details.iter().find_map(|any| {
        let info = any.to_msg::<crate::pb::google::rpc::RetryInfo>().ok()?;
        let delay = info.retry_delay?;
        Some(Duration::new(
            u64::try_from(delay.seconds).ok()?,
            u32::try_from(delay.nanos).ok()?,
        ))
    })
}

/// A `Retry-After` value: whole seconds, rounded up, at least 1.
pub fn retry_after_seconds(delay: Duration) -> HeaderValue {
    let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    HeaderValue::from(seconds.max(1))
}
