//! The one place where gRPC statuses are built.
//!
//! Every status carries a google.rpc.ErrorInfo (domain `longrun`, an
//! UPPER_SNAKE reason); argument errors add a BadRequest listing the fields,
//! and capacity errors a RetryInfo. Engine errors, refusals at the door and
//! tonic's own limit errors all come through here.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tracing::error;

use crate::auth::{AuthError, Principal, Role};
use crate::engine::EngineError;
use crate::model::FieldViolation;
pub use crate::pb::convert::DOMAIN;

fn with_info(code: Code, reason: &str, message: impl Into<String>) -> Status {
    let details = ErrorDetails::with_error_info(reason, DOMAIN, []);
    Status::with_error_details(code, message, details)
}

/// No route of the HTTP/JSON face answers this path and method.
pub fn no_route(message: impl Into<String>) -> Status {
    with_info(Code::NotFound, "NO_SUCH_ROUTE", message)
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
pub fn unimplemented(reason: &str, message: impl Into<String>) -> Status {
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
        "CREDENTIALS_MISSING",
        "this call was not authenticated",
    )
}

/// A principal whose role is too low for the call.
pub fn permission_denied(principal: &Principal, needed: Role) -> Status {
    let details = ErrorDetails::with_error_info(
        "ROLE_TOO_LOW",
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
    let mut details = ErrorDetails::with_error_info("MESSAGE_TOO_LARGE", DOMAIN, []);
    details.add_bad_request_violation("request", tonic_message.to_owned());
    Status::with_error_details(
        Code::InvalidArgument,
        format!("the request message is larger than this server accepts ({tonic_message})"),
        details,
    )
}

/// A client stream that sent nothing for `idle`.
pub fn stalled(reason: &str, idle: Duration) -> Status {
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
    with_info(Code::Internal, "GARBLED_ANSWER", message)
}

/// A worker that asked to serve a kind its principal may not lease.
pub fn kind_not_allowed(principal: &Principal, kind: &str) -> Status {
    with_info(
        Code::PermissionDenied,
        "KIND_NOT_ALLOWED",
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
        "UNKNOWN_KIND",
        format!("no worker or configuration has declared kind {kind:?}"),
    )
}

/// An HTTP request the face refuses before it reaches any method (a Host
/// or an origin it does not serve).
pub fn refused(reason: &str, message: impl Into<String>) -> Status {
    with_info(Code::PermissionDenied, reason, message)
}

/// An HTTP body that did not arrive within `within`.
pub fn body_too_slow(within: Duration) -> Status {
    with_info(
        Code::DeadlineExceeded,
        "BODY_TOO_SLOW",
        format!(
            "the request body did not arrive within {} s",
            within.as_secs_f64()
        ),
    )
}
