//! The operation record and the rules for moving it between states.
//!
//! Every state change is a pure function here (`claim`, `cancel`, `finish`,
//! ...). Storage backends apply them inside their own atomic read-modify-write,
//! so the life-cycle rules exist exactly once, whatever the backend.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::id::{OperationId, RequestId};

/// Where an operation is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Accepted, waiting for a worker.
    Queued,
    /// A worker holds a claim on it and runs it.
    Running,
    /// Finished with a response.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// A client asked to cancel while it ran; the task is winding down.
    Cancelling,
    /// Finished because it was cancelled.
    Cancelled,
}

impl State {
    /// Every state, in the order of the public enum.
    pub const ALL: [State; 6] = [
        State::Queued,
        State::Running,
        State::Succeeded,
        State::Failed,
        State::Cancelling,
        State::Cancelled,
    ];

    /// True for the three final states.
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Succeeded | State::Failed | State::Cancelled)
    }

    /// The name used by the public enum and the List filter.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "QUEUED",
            State::Running => "RUNNING",
            State::Succeeded => "SUCCEEDED",
            State::Failed => "FAILED",
            State::Cancelling => "CANCELLING",
            State::Cancelled => "CANCELLED",
        }
    }

    /// Parses the public enum name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// A stable small number, used by storage encodings.
    pub fn as_u8(self) -> u8 {
        match self {
            State::Queued => 1,
            State::Running => 2,
            State::Succeeded => 3,
            State::Failed => 4,
            State::Cancelling => 5,
            State::Cancelled => 6,
        }
    }

    /// The inverse of `as_u8`.
    pub fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_u8() == value)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The canonical error codes of google.rpc.Code, owned by the engine so that
/// it never needs the gRPC library's type.
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

/// An encoded protobuf message with its type URL: the engine's own
/// `google.protobuf.Any`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Payload {
    /// `type.googleapis.com/<full message name>`.
    pub type_url: String,
    /// The encoded message.
    pub value: Bytes,
}

/// The canonical Any type URL of a message: `type.googleapis.com/` and its
/// full name, whatever domain its `prost::Name` impl declares.
pub fn type_url_of<M: prost::Name>() -> String {
    format!("type.googleapis.com/{}", M::full_name())
}

impl Payload {
    /// Encodes a message under its canonical type URL.
    pub fn pack<M: prost::Name>(message: &M) -> Self {
        Self {
            type_url: type_url_of::<M>(),
            value: message.encode_to_vec().into(),
        }
    }

    /// Decodes the message, checking that the type URL names it (in any
    /// domain).
    pub fn unpack<M: prost::Name + Default>(&self) -> Result<M, PayloadError> {
        let expected = type_url_of::<M>();
        let named = self.type_url.rsplit_once('/').map(|(_, name)| name);
        if named != Some(M::full_name().as_str()) {
            return Err(PayloadError::WrongType {
                expected,
                found: self.type_url.clone(),
            });
        }
        M::decode(self.value.clone()).map_err(|e| PayloadError::Decode(e.to_string()))
    }
}

/// A payload that is not the message a reader expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload has type {found}, expected {expected}")]
    WrongType { expected: String, found: String },
    #[error("payload does not decode: {0}")]
    Decode(String),
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

    /// The error every cancelled operation ends with.
    pub fn cancelled() -> Self {
        Self::new(
            Code::Cancelled,
            "OPERATION_CANCELLED",
            "the operation was cancelled at a client's request",
        )
    }
}

/// The result of a finished operation: exactly one of these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The task's response.
    Response(Payload),
    /// The error it ended with.
    Error(OperationError),
}

/// Progress as a task reports it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Progress {
    /// 0 to 100.
    pub percent: u32,
    /// What the task is doing.
    pub message: String,
}

/// One operation, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub id: OperationId,
    /// The registered kind that runs it.
    pub kind: String,
    pub state: State,
    /// The attempt now or last running, from 1; 0 before the first claim. It
    /// is also the fencing token of claims: only the holder of the current
    /// attempt may write.
    pub attempt: u32,
    pub progress_percent: u32,
    pub status_message: String,
    pub requested_cancellation: bool,
    pub create_time: SystemTime,
    pub start_time: Option<SystemTime>,
    pub update_time: SystemTime,
    pub end_time: Option<SystemTime>,
    /// The request the task runs on.
    pub request: Payload,
    /// Set exactly when the state is terminal.
    pub outcome: Option<Outcome>,
    /// The idempotency key it was created with, if any.
    pub request_id: Option<RequestId>,
    /// A digest of kind and request, to tell a true retry from a reused key.
    pub request_digest: [u8; 32],
    /// Grows by one with every stored change; watchers use it to drop
    /// updates that arrive out of order.
    pub version: u64,
    /// How long one attempt may run before it ends DEADLINE_EXCEEDED.
    pub timeout: Duration,
    /// The most attempts it gets (its kind's policy when it was created).
    pub max_attempts: u32,
    /// While queued for a retry: not to be claimed before this time.
    pub not_before: Option<SystemTime>,
    /// Why the previous attempt failed, while a retry is pending or after.
    pub last_error: Option<OperationError>,
    /// The webhook to call on state changes, if one was asked for.
    pub notification: Option<super::notify::Notification>,
    /// The tenant that owns it; empty for the default tenant of a server
    /// that runs without authentication.
    pub tenant: String,
}

/// The token a worker holds while it runs an attempt. Writes made with a
/// claim whose attempt is no longer the operation's current one are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    pub id: OperationId,
    pub attempt: u32,
}

/// How a claimed attempt ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finish {
    /// Failed in a way worth retrying: back to the queue, to be claimed
    /// again (as attempt + 1) no earlier than `not_before`.
    Retry {
        error: OperationError,
        not_before: SystemTime,
    },
    /// Done with this outcome. `progress` is the task's last report, when
    /// it had not been stored yet.
    Done {
        outcome: Outcome,
        progress: Option<Progress>,
    },
    /// Put back in the queue, as when the server shuts down mid-attempt.
    Release,
}

/// Why a state change was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The operation is not in a state that allows the change.
    #[error("{message}")]
    Precondition {
        /// An UPPER_SNAKE reason for google.rpc.ErrorInfo.
        reason: &'static str,
        /// What is wrong, for people.
        message: &'static str,
    },
    /// The claim's attempt is not the current one: a newer attempt owns the
    /// operation, or it is already finished.
    #[error("the claim is stale: attempt {held} no longer owns the operation")]
    Stale { held: u32 },
}

/// Cuts a time to whole microseconds, the precision operations are stored
/// with, so that a record read back equals the one that was written.
pub fn to_micros_precision(time: SystemTime) -> SystemTime {
    match time.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => std::time::UNIX_EPOCH + std::time::Duration::from_micros(d.as_micros() as u64),
        Err(_) => time,
    }
}

impl Operation {
    /// A new queued operation.
    pub fn new(
        kind: impl Into<String>,
        request: Payload,
        request_id: Option<RequestId>,
        request_digest: [u8; 32],
        limits: Limits,
        now: SystemTime,
    ) -> Self {
        let now = to_micros_precision(now);
        Self {
            id: OperationId::generate(),
            kind: kind.into(),
            state: State::Queued,
            attempt: 0,
            progress_percent: 0,
            status_message: String::new(),
            requested_cancellation: false,
            create_time: now,
            start_time: None,
            update_time: now,
            end_time: None,
            request,
            outcome: None,
            request_id,
            request_digest,
            version: 1,
            timeout: limits.timeout,
            max_attempts: limits.max_attempts,
            not_before: None,
            last_error: None,
            notification: None,
            tenant: String::new(),
        }
    }

    /// True once the operation has its final outcome.
    pub fn is_done(&self) -> bool {
        self.state.is_terminal()
    }

    fn touched(mut self, now: SystemTime) -> Self {
        self.update_time = now.max(self.update_time);
        self.version += 1;
        self
    }

    /// QUEUED -> RUNNING under a new attempt number.
    pub fn claim(&self, now: SystemTime) -> Result<Operation, Rejection> {
        if self.state != State::Queued {
            return Err(Rejection::Precondition {
                reason: "OPERATION_NOT_QUEUED",
                message: "only a queued operation can be claimed",
            });
        }
        let mut next = self.clone();
        next.state = State::Running;
        next.attempt += 1;
        next.progress_percent = 0;
        next.status_message.clear();
        next.start_time = Some(now);
        next.not_before = None;
        Ok(next.touched(now))
    }

    fn check_claim(&self, claim: &Claim) -> Result<(), Rejection> {
        let owns = self.attempt == claim.attempt
            && matches!(self.state, State::Running | State::Cancelling);
        if owns {
            Ok(())
        } else {
            Err(Rejection::Stale {
                held: claim.attempt,
            })
        }
    }

    /// Records progress reported by the holder of `claim`. Progress never
    /// goes down within an attempt.
    pub fn progress(
        &self,
        claim: &Claim,
        progress: &Progress,
        now: SystemTime,
    ) -> Result<Operation, Rejection> {
        self.check_claim(claim)?;
        let mut next = self.clone();
        next.progress_percent = progress.percent.min(100).max(self.progress_percent);
        next.status_message.clone_from(&progress.message);
        Ok(next.touched(now))
    }

    /// Ends or releases the attempt held by `claim`.
    pub fn finish(
        &self,
        claim: &Claim,
        finish: &Finish,
        now: SystemTime,
    ) -> Result<Operation, Rejection> {
        self.check_claim(claim)?;
        let mut next = self.clone();
        match finish {
            Finish::Release if self.state == State::Cancelling => {
                // Nobody wants the rest of this work: end it as cancelled
                // rather than running it again after a restart.
                next.end(Outcome::Error(OperationError::cancelled()), now);
            }
            Finish::Release => {
                next.state = State::Queued;
                next.start_time = None;
            }
            Finish::Retry { error, not_before } => {
                next.state = State::Queued;
                next.start_time = None;
                next.not_before = Some(*not_before);
                next.last_error = Some(error.clone());
                next.status_message = format!(
                    "attempt {} failed ({}); retrying",
                    self.attempt, error.message
                );
            }
            Finish::Done { outcome, progress } => {
                if let Some(p) = progress {
                    next.progress_percent = p.percent.min(100).max(next.progress_percent);
                    next.status_message.clone_from(&p.message);
                }
                next.end(outcome.clone(), now);
            }
        }
        Ok(next.touched(now))
    }

    fn end(&mut self, outcome: Outcome, now: SystemTime) {
        self.state = match &outcome {
            Outcome::Response(_) => State::Succeeded,
            Outcome::Error(e) if e.code == Code::Cancelled => State::Cancelled,
            Outcome::Error(_) => State::Failed,
        };
        if self.state == State::Succeeded {
            self.progress_percent = 100;
        }
        self.outcome = Some(outcome);
        self.end_time = Some(now);
    }

    /// A client's cancellation request. A queued operation ends at once; a
    /// running one moves to CANCELLING and its task is told to stop.
    /// Cancelling twice is fine; cancelling a finished operation is not.
    pub fn cancel(&self, now: SystemTime) -> Result<Option<Operation>, Rejection> {
        match self.state {
            State::Cancelling | State::Cancelled => Ok(None),
            State::Succeeded | State::Failed => Err(Rejection::Precondition {
                reason: "OPERATION_ALREADY_DONE",
                message: "the operation is already done and can no longer be cancelled",
            }),
            State::Queued => {
                let mut next = self.clone();
                next.requested_cancellation = true;
                next.end(Outcome::Error(OperationError::cancelled()), now);
                Ok(Some(next.touched(now)))
            }
            State::Running => {
                let mut next = self.clone();
                next.requested_cancellation = true;
                next.state = State::Cancelling;
                Ok(Some(next.touched(now)))
            }
        }
    }

    /// Checks that the operation may be deleted: only finished ones may.
    pub fn check_deletable(&self) -> Result<(), Rejection> {
        if self.is_done() {
            Ok(())
        } else {
            Err(Rejection::Precondition {
                reason: "OPERATION_NOT_DONE",
                message: "the operation is not done yet; cancel it first, then delete it once it is done",
            })
        }
    }

    /// After a restart: an attempt that was running when the process died
    /// has no live worker. It goes back to the queue (the next claim makes
    /// attempt + 1) when `retry` allows; otherwise it ends ABORTED with
    /// `retry`'s reason. One that was being cancelled ends CANCELLED.
    /// Returns None when the operation is not orphaned.
    pub fn recover_orphan(&self, retry: OrphanRetry, now: SystemTime) -> Option<Operation> {
        let claim = Claim {
            id: self.id,
            attempt: self.attempt,
        };
        let finish = match retry {
            _ if self.state == State::Cancelling => Finish::Release,
            OrphanRetry::Allowed => Finish::Release,
            OrphanRetry::Refused(message) => Finish::Done {
                outcome: Outcome::Error(OperationError::new(
                    Code::Aborted,
                    "ATTEMPT_INTERRUPTED",
                    message,
                )),
                progress: None,
            },
        };
        self.finish(&claim, &finish, now).ok()
    }
}

/// The per-operation limits fixed when it is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// How long one attempt may run.
    pub timeout: Duration,
    /// How many attempts it gets.
    pub max_attempts: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(3600),
            max_attempts: 1,
        }
    }
}

/// Whether an orphaned attempt may run again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrphanRetry {
    /// Run it again.
    Allowed,
    /// End it ABORTED, with this explanation.
    Refused(String),
}
