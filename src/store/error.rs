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
    /// A stored record could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The backend itself failed (I/O, connection, ...).
    #[error("storage failed: {0}")]
    Backend(String),
}

/// Result alias for store calls.
pub type StoreResult<T> = Result<T, StoreError>;
