//! The reasons this server gives, in one place: the UPPER_SNAKE words a
//! client matches on in google.rpc.ErrorInfo (domain `longrun`), for the
//! statuses of refused calls and for the errors of operations the server
//! itself ended. A kind's own task errors bring their own reasons.

use std::fmt;

/// Declares [`Reason`] with each variant's wire word beside it.
macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident = $word:literal,)*) => {
        /// A reason of this server's own, as ErrorInfo carries it.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[$doc])* $variant,)*
        }

        impl Reason {
            /// Every reason, for documentation and tests.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The word clients match on.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $word,)*
                }
            }
        }
    };
}

reasons! {
    // What a call names, or how it is written.
    /// The named resource does not exist (or the caller may not see it).
    NotFound = "NOT_FOUND",
    /// One or more request fields are wrong (a BadRequest lists them).
    InvalidArgument = "INVALID_ARGUMENT",
    /// A request message over the size limit.
    MessageTooLarge = "MESSAGE_TOO_LARGE",
    /// A request_id reused with a different request.
    RequestIdConflict = "REQUEST_ID_CONFLICT",
    /// A create of a kind nothing runs.
    KindNotRegistered = "KIND_NOT_REGISTERED",
    /// An Enqueue or Lease of a kind nobody declared.
    UnknownKind = "UNKNOWN_KIND",
    /// A declaration that would shadow a built-in kind.
    KindIsBuiltIn = "KIND_IS_BUILT_IN",
    /// ListOperations' partial success, which this server does not offer.
    PartialSuccessUnsupported = "PARTIAL_SUCCESS_UNSUPPORTED",

    // The state of an operation.
    /// Purge or delete of an operation that is not done.
    OperationNotDone = "OPERATION_NOT_DONE",
    /// A claim of an operation that is not queued.
    OperationNotQueued = "OPERATION_NOT_QUEUED",
    /// A change of an operation that has ended.
    OperationAlreadyDone = "OPERATION_ALREADY_DONE",
    /// The `:result` of an operation that failed, when its error has none.
    OperationFailed = "OPERATION_FAILED",
    /// A change stream whose cursor is older than the log keeps.
    ChangesMissed = "CHANGES_MISSED",

    // Outside workers and their leases.
    /// A worker's call about an attempt that no longer holds the operation.
    StaleAttempt = "STALE_ATTEMPT",
    /// A call with a lease token the attempt was not given.
    LeaseNotHeld = "LEASE_NOT_HELD",
    /// A call about a lease another node holds.
    LeasedElsewhere = "LEASED_ELSEWHERE",
    /// A worker's result taken but not yet stored.
    ResultNotStored = "RESULT_NOT_STORED",
    /// A worker that may not serve the kind it names.
    KindNotAllowed = "KIND_NOT_ALLOWED",

    // Bounds and capacity.
    /// The server's queue is full.
    QueueFull = "QUEUE_FULL",
    /// The caller's tenant's queue is full.
    TenantQueueFull = "TENANT_QUEUE_FULL",
    /// The caller calls faster than its rate.
    RateLimited = "RATE_LIMITED",
    /// The caller holds as many watch streams as it may.
    TooManyWatches = "TOO_MANY_WATCHES",
    /// The caller holds as many Lease streams as it may.
    TooManyWorkerStreams = "TOO_MANY_WORKER_STREAMS",
    /// The server holds as many declared kinds as it may.
    TooManyKinds = "TOO_MANY_KINDS",
    /// An upload that sent nothing for too long.
    UploadStalled = "UPLOAD_STALLED",
    /// A Lease stream whose first message did not come in time.
    SubscribeStalled = "SUBSCRIBE_STALLED",
    /// An HTTP body that did not arrive in time.
    BodyTooSlow = "BODY_TOO_SLOW",

    // Storage.
    /// The disk is full: new work waits until there is room.
    StorageFull = "STORAGE_FULL",
    /// Storage cannot be reached or failed: retry later.
    StorageUnavailable = "STORAGE_UNAVAILABLE",
    /// Storage failed in a way retrying will not mend.
    StorageFailed = "STORAGE_FAILED",
    /// A stored record could not be read.
    DataCorrupt = "DATA_CORRUPT",
    /// The server is shutting down.
    ShuttingDown = "SHUTTING_DOWN",

    // Schedules.
    /// A schedule of that id exists in the tenant.
    ScheduleExists = "SCHEDULE_EXISTS",
    /// The tenant has as many schedules as it may.
    TooManySchedules = "TOO_MANY_SCHEDULES",
    /// An update named an etag the schedule no longer has.
    EtagMismatch = "ETAG_MISMATCH",

    // Batches and redrives.
    /// A child was added to a batch that no longer takes children (sealed,
    /// cancelled, failing or done).
    BatchClosed = "BATCH_CLOSED",
    /// Batches nest no deeper than this.
    BatchTooDeep = "BATCH_TOO_DEEP",
    /// A batch that is too large.
    BatchTooLarge = "BATCH_TOO_LARGE",
    /// Some of a batch's children did not succeed.
    ChildrenFailed = "CHILDREN_FAILED",
    /// The stream creating a batch ended before its last child.
    BatchIncomplete = "BATCH_INCOMPLETE",
    /// Only a failed, cancelled or aborted operation can be retried.
    OperationNotRetryable = "OPERATION_NOT_RETRYABLE",
    /// The operation's kind does not allow retries by hand.
    KindNotRetryable = "KIND_NOT_RETRYABLE",
    /// The operation was put back in the queue by a client.
    RetriedByClient = "RETRIED_BY_CLIENT",

    // The door.
    /// No credentials were sent.
    CredentialsMissing = "CREDENTIALS_MISSING",
    /// A bearer token nobody was given.
    TokenInvalid = "TOKEN_INVALID",
    /// A client certificate the server does not know.
    CertificateUnknown = "CERTIFICATE_UNKNOWN",
    /// A principal whose role is too low for the call.
    RoleTooLow = "ROLE_TOO_LOW",

    // The HTTP face.
    /// No route answers the path.
    NoSuchRoute = "NO_SUCH_ROUTE",
    /// A gRPC method this server does not have.
    UnknownMethod = "UNKNOWN_METHOD",
    /// A route asked with a method it does not take.
    MethodNotAllowed = "METHOD_NOT_ALLOWED",
    /// A Host an unauthenticated server does not answer to.
    HostNotAllowed = "HOST_NOT_ALLOWED",
    /// A change from a page of another origin.
    CrossOriginRefused = "CROSS_ORIGIN_REFUSED",
    /// An answer of the server's own services that could not be read back.
    GarbledAnswer = "GARBLED_ANSWER",

    // How the server ended an attempt or an operation.
    /// A client cancelled the operation.
    OperationCancelled = "OPERATION_CANCELLED",
    /// The operation ran past its deadline.
    OperationDeadlineExceeded = "OPERATION_DEADLINE_EXCEEDED",
    /// The attempt was stopped by a shutdown.
    AttemptStopped = "ATTEMPT_STOPPED",
    /// The attempt's node went away while it ran.
    AttemptInterrupted = "ATTEMPT_INTERRUPTED",
    /// An operation that had not started by its expire time.
    ExpiredBeforeStart = "EXPIRED_BEFORE_START",
    /// The task panicked.
    TaskPanicked = "TASK_PANICKED",
    /// The operation's request could not be decoded for its kind.
    RequestUnreadable = "REQUEST_UNREADABLE",
    /// The outside worker holding the attempt went away.
    WorkerLost = "WORKER_LOST",
    /// The outside worker sent no heartbeat within its lease.
    LeaseExpired = "LEASE_EXPIRED",
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Reason> for String {
    fn from(reason: Reason) -> Self {
        reason.as_str().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::Reason;

    #[test]
    fn every_reason_is_one_distinct_upper_snake_word() {
        let mut seen = HashSet::new();
        for reason in Reason::ALL {
            let word = reason.as_str();
            assert!(seen.insert(word), "{word} twice");
            assert!(
                word.split('_').all(|part| !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())),
                "{word} is not UPPER_SNAKE"
            );
        }
    }
}
