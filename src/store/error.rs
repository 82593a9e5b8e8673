//! What a storage backend can fail with.

use crate::model::{OperationId, Rejection};

/// A store call's failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No operation has that id.
    #[error("operation not found")]
    NotFound,
    /// The model refused the state change.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The request_id was used before with a different request.
    #[error("request_id {request_id} was already used for a different request ({existing})")]
    RequestIdConflict {
        request_id: String,
        existing: OperationId,
    },
    /// The disk is (nearly) full: the write was refused before it could
    /// fail halfway. Reads still work.
    #[error("the store's disk is full; writes resume once there is room")]
    Full,
    /// The backend cannot take calls now: the database cannot be reached
    /// (or did not answer in time), or the disk failed. A state that
    /// passes, not a bug: callers wait and try again.
    #[error("{0}")]
    Unavailable(String),
    /// A stored record could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The backend itself failed in a way that trying again will not mend.
    #[error("storage failed: {0}")]
    Backend(String),
}

impl StoreError {
    /// The same failure again, for each write of a batch that failed as a
    /// whole. Only failures of a whole batch need this: a backend that
    /// cannot be reached, a full disk, or a backend failure.
    pub fn again(&self) -> StoreError {
        match self {
            StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
            StoreError::Full => StoreError::Full,
            other => StoreError::Backend(other.to_string()),
        }
    }

    /// Whether the call may work if tried again later: the backend was
    /// unreachable or its disk was full, rather than the call being wrong.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Full)
    }
}

/// Result alias for store calls.
pub type StoreResult<T> = Result<T, StoreError>;
