//! The domain, at the bottom of the crate: what an operation is and how it
//! may change, with nothing of storage, scheduling or the wire in it.
//!
//! - `id`: operation ids and idempotency keys;
//! - `backlog`: unfinished work counted by kind and state;
//! - `attempt`: attempt numbers, the fencing token of claims;
//! - `tenant`: tenants and the scope a caller acts in;
//! - `operation`: the record, its states, outcome and webhook;
//! - `transition`: the pure state changes, which also decide when a
//!   webhook delivery is due;
//! - `batch`: a batch's parent and the roll-up of its children;
//! - `delivery`: the webhook deliveries that state changes produce;
//! - `payload` and `status`: requests, responses and errors;
//! - `reason`: the reasons the server gives in ErrorInfo, in one place;
//! - `flow`: limits on how many run and how fast they start, and why
//!   queued work waits;
//! - `when` and `schedule`: a schedule's clock (cron in a time zone, or
//!   an interval) and the schedule itself, with the decisions of a tick;
//! - `filter`: the List filter;
//! - `order`: orders and months, the report service's data.
//!
//! **Invariant:** this module depends on nothing else of the crate.

pub mod attempt;
pub mod backlog;
pub mod batch;
pub mod bulk;
pub mod delivery;
pub mod filter;
pub mod flow;
pub mod id;
pub mod operation;
pub mod order;
pub mod payload;
pub mod reason;
pub mod schedule;
pub mod status;
pub mod tenant;
pub mod trace;
pub mod transition;
pub mod when;

pub use self::attempt::Attempt;
pub use self::backlog::Backlog;
pub use self::batch::{BATCH_KIND, BATCH_RESULT_TYPE, MAX_BATCH_DEPTH, Mark};
pub use self::bulk::{BulkAction, Tally};
pub use self::delivery::{Delivery, DeliveryState};
pub use self::filter::Filter;
pub use self::flow::{Holds, KindLimits, Limit, LimitScope, Rate, RunSpec, Waiting};
pub use self::id::{OperationId, RequestId};
pub use self::operation::{
    ChildFailure, FailedAttempt, Lease, Limits, MAX_BATCH_FAILURES, MAX_FAILED_ATTEMPTS,
    Notification, Operation, Outcome, Policy, Progress, Rollup, State, to_micros_precision,
};
pub use self::payload::Payload;
pub use self::reason::Reason;
pub use self::schedule::{Overlap, RunTemplate, Schedule, ScheduleRun, TickAction};
pub use self::status::{Code, FieldViolation, MAX_MESSAGE, OperationError, bounded_message};
pub use self::tenant::{Scope, Tenant};
pub use self::trace::{MAX_TRACE_STATE, TraceContext};
pub use self::transition::{Claim, Edit, Finish, OrphanRetry, Rejection, Transition};
pub use self::when::{When, WhenError};
