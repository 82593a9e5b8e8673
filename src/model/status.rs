//! What goes wrong: the canonical codes of google.rpc.Code, the error an
//! operation ends with, and a request field that fails validation. They are
//! owned here so that no layer below the gRPC one needs its library's types.

use super::reason::Reason;
use std::collections::BTreeMap;

/// The canonical error codes of google.rpc.Code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Code {
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    /// Maps a numeric google.rpc.Code; 0 (OK) and unknown numbers give None.
    pub fn from_i32(value: i32) -> Option<Self> {
        use Code::*;
        Some(match value {
            1 => Cancelled,
            2 => Unknown,
            3 => InvalidArgument,
            4 => DeadlineExceeded,
            5 => NotFound,
            6 => AlreadyExists,
            7 => PermissionDenied,
            8 => ResourceExhausted,
            9 => FailedPrecondition,
            10 => Aborted,
            11 => OutOfRange,
            12 => Unimplemented,
            13 => Internal,
            14 => Unavailable,
            15 => DataLoss,
            16 => Unauthenticated,
            _ => return None,
        })
    }

    /// The numeric google.rpc.Code.
    pub fn as_i32(self) -> i32 {
        self as i32
    }
}

/// The longest message kept, in bytes: progress messages and error
/// messages from outside are cut to it.
pub const MAX_MESSAGE: usize = 4096;

/// `message`, cut at a character boundary to at most [`MAX_MESSAGE`]
/// bytes (ending in an ellipsis when it was cut).
pub fn bounded_message(mut message: String) -> String {
    if message.len() <= MAX_MESSAGE {
        return message;
    }
    let ellipsis = '…';
    let mut end = MAX_MESSAGE - ellipsis.len_utf8();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push(ellipsis);
    message
}

/// Why an operation ended without a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationError {
    /// The canonical code.
    pub code: Code,
    /// A message for developers.
    pub message: String,
    /// An UPPER_SNAKE reason, reported as google.rpc.ErrorInfo.reason.
    pub reason: String,
    /// Structured context, reported as ErrorInfo.metadata.
    pub metadata: BTreeMap<String, String>,
}

impl OperationError {
    /// An error with no metadata.
    pub fn new(code: Code, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            reason: reason.into(),
            metadata: BTreeMap::new(),
        }
    }

    /// About how many bytes it takes when stored: its message, reason and
    /// metadata.
    pub fn size(&self) -> usize {
        self.message.len()
            + self.reason.len()
            + self
                .metadata
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }

    /// The error every cancelled operation ends with.
    pub fn cancelled() -> Self {
        Self::new(
            Code::Cancelled,
            Reason::OperationCancelled,
            "the operation was cancelled at a client's request",
        )
    }
}

/// A request field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field path, as in google.rpc.BadRequest.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        assert_eq!(bounded_message("short".into()), "short");
        let long = "é".repeat(MAX_MESSAGE);
        let cut = bounded_message(long);
        assert!(cut.len() <= MAX_MESSAGE, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(cut.trim_end_matches('…').chars().all(|c| c == 'é'));
    }
}
