//! The engine's error type. The gRPC layer maps it to a status in one place
//! (`grpc/status.rs`); the engine itself never sees a gRPC type.

use std::time::Duration;

use crate::model::{Code, FieldViolation, Reason, Rejection};
use crate::store::StoreError;

/// What an engine call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The named resource does not exist (or no longer does).
    #[error("{name} not found")]
    NotFound { name: String },
    /// One or more request fields are wrong.
    #[error("invalid request: {}", describe(violations))]
    InvalidArgument { violations: Vec<FieldViolation> },
    /// The resource is not in a state that allows the call.
    #[error("{message}")]
    FailedPrecondition { reason: Reason, message: String },
    /// The request_id was used before for a different request.
    #[error("{message}")]
    AlreadyExists { reason: Reason, message: String },
    /// The resource changed since the caller read it (an etag that no
    /// longer matches); read it again and retry.
    #[error("{message}")]
    Aborted { reason: Reason, message: String },
    /// The server is at capacity; the client may retry later.
    #[error("{message}")]
    ResourceExhausted {
        reason: Reason,
        message: String,
        retry_after: Duration,
    },
    /// The caller may not act on this resource (a worker on a kind it may
    /// not serve, say).
    #[error("{message}")]
    PermissionDenied { reason: Reason, message: String },
    /// The call asks for something this server does not do.
    #[error("{message}")]
    Unimplemented { reason: Reason, message: String },
    /// Storage cannot take the call now (a full or failing disk); the
    /// client may retry later.
    #[error("{message}")]
    Unavailable {
        reason: Reason,
        message: String,
        retry_after: Duration,
    },
    /// The server is shutting down.
    #[error("the server is shutting down; retry on another instance or after restart")]
    ShuttingDown,
    /// The store failed.
    #[error("storage error: {0}")]
    Store(#[source] StoreError),
}

/// How long a client is told to wait when storage cannot take writes.
pub const STORAGE_RETRY: Duration = Duration::from_secs(5);

impl From<StoreError> for EngineError {
    /// A full or failing disk is a state the client can wait out, not a bug.
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Full => EngineError::Unavailable {
                reason: Reason::StorageFull,
                message:
                    "the server's disk is full; new operations are refused until there is room"
                        .into(),
                retry_after: STORAGE_RETRY,
            },
            StoreError::Unavailable(e) => EngineError::Unavailable {
                reason: Reason::StorageUnavailable,
                message: format!("storage cannot be reached: {e}"),
                retry_after: STORAGE_RETRY,
            },
            StoreError::Backend(e) => EngineError::Unavailable {
                reason: Reason::StorageUnavailable,
                message: format!("storage failed: {e}"),
                retry_after: STORAGE_RETRY,
            },
            other => EngineError::Store(other),
        }
    }
}

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl EngineError {
    /// A single bad field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        EngineError::InvalidArgument {
            violations: vec![FieldViolation::new(field, description)],
        }
    }

    /// Whether the refusal may pass if the call is made again later: a
    /// full queue or quota, storage out of reach, a shutdown.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            EngineError::ResourceExhausted { .. }
                | EngineError::Unavailable { .. }
                | EngineError::ShuttingDown
        )
    }

    /// The canonical code of the refusal, for what records it (a
    /// schedule's last error, a task's failure).
    pub fn code(&self) -> Code {
        match self {
            EngineError::NotFound { .. } => Code::NotFound,
            EngineError::InvalidArgument { .. } => Code::InvalidArgument,
            EngineError::FailedPrecondition { .. } => Code::FailedPrecondition,
            EngineError::AlreadyExists { .. } => Code::AlreadyExists,
            EngineError::Aborted { .. } => Code::Aborted,
            EngineError::ResourceExhausted { .. } => Code::ResourceExhausted,
            EngineError::PermissionDenied { .. } => Code::PermissionDenied,
            EngineError::Unimplemented { .. } => Code::Unimplemented,
            EngineError::Unavailable { .. } | EngineError::ShuttingDown => Code::Unavailable,
            EngineError::Store(_) => Code::Internal,
        }
    }

    /// True when storage refused the call for want of disk space.
    pub fn is_storage_full(&self) -> bool {
        matches!(
            self,
            EngineError::Unavailable {
                reason: Reason::StorageFull,
                ..
            }
        )
    }

    /// The stable UPPER_SNAKE reason reported in google.rpc.ErrorInfo.
    pub fn reason(&self) -> Reason {
        match self {
            EngineError::NotFound { .. } => Reason::NotFound,
            EngineError::InvalidArgument { .. } => Reason::InvalidArgument,
            EngineError::FailedPrecondition { reason, .. }
            | EngineError::AlreadyExists { reason, .. }
            | EngineError::Aborted { reason, .. }
            | EngineError::ResourceExhausted { reason, .. }
            | EngineError::Unimplemented { reason, .. }
            | EngineError::PermissionDenied { reason, .. } => *reason,
            EngineError::ShuttingDown => Reason::ShuttingDown,
            EngineError::Unavailable { reason, .. } => *reason,
            EngineError::Store(StoreError::Corrupt(_)) => Reason::DataCorrupt,
            EngineError::Store(_) => Reason::StorageFailed,
        }
    }

    /// Translates a store error about the operation called `name`.
    pub(crate) fn from_store(name: String, error: StoreError) -> Self {
        match error {
            StoreError::NotFound => EngineError::NotFound { name },
            StoreError::Rejected(Rejection::Precondition { reason, message }) => {
                EngineError::FailedPrecondition {
                    reason,
                    message: message.to_owned(),
                }
            }
            StoreError::RequestIdConflict {
                request_id,
                existing,
            } => EngineError::AlreadyExists {
                reason: Reason::RequestIdConflict,
                message: format!(
                    "request_id {request_id} was already used to create {existing} with a different request; \
                     use a new request_id for a different request"
                ),
            },
            other => other.into(),
        }
    }
}
