//! The one place where engine errors become gRPC statuses.
//!
//! Every status carries a google.rpc.ErrorInfo (domain `longrun`, an
//! UPPER_SNAKE reason); argument errors add a BadRequest listing the fields,
//! and capacity errors a RetryInfo.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tracing::error;

use crate::engine::EngineError;

/// The ErrorInfo domain of every longrun error.
pub const DOMAIN: &str = "longrun";

/// Builds a status with an ErrorInfo detail.
pub fn status(code: Code, reason: &str, message: impl Into<String>) -> Status {
    let details = ErrorDetails::with_error_info(reason, DOMAIN, []);
    Status::with_error_details(code, message, details)
}

/// INVALID_ARGUMENT for one bad field, with ErrorInfo and BadRequest.
pub fn invalid_field(field: &str, description: impl Into<String>) -> Status {
    to_status(EngineError::invalid(field, description))
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
        EngineError::ShuttingDown => Code::Unavailable,
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
