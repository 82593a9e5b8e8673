//! Kinds served by outside workers, in any language, over a lease stream.
//!
//! An outside kind is declared (by the configuration or by a worker; see
//! `kinds`) and then behaves like any other kind: operations are created,
//! listed, watched, cancelled, retried and expired the same way. What
//! differs is who runs them. This node's one claim loop (`dispatch`) takes
//! queued operations for its connected workers, as many as their credits
//! allow, and hands each to a worker as an [`Assignment`]. Every
//! assignment runs as an ordinary attempt whose task (`task`) waits for
//! the worker: heartbeats renew the lease and carry progress, Complete and
//! Fail end it, and a lost worker or an expired lease fails the attempt
//! with a retryable ABORTED, so the operation goes back to the queue under
//! attempt + 1 (or ends ABORTED after its last attempt). Timeouts,
//! cancellation, retries, progress writes and the fenced finish are the
//! attempt's, as for a built-in kind.
//!
//! Fencing: an assignment carries an unguessable lease token, and every
//! call of a worker names the operation, the attempt and the token, and is
//! refused unless its principal may serve the kind. A call for any other
//! attempt, or without the token, changes nothing; the store's finish is
//! fenced by the attempt number too.
//!
//! - `kinds`: declarations, their owners, bounds and storage;
//! - `session`: a connected worker, its credits and its messages;
//! - `dispatch`: the claim loop and the hand-out of assignments;
//! - `task`: the attempt's side, waiting for the worker;
//! - `calls`: a worker's heartbeats and results, checked against the
//!   lease they name.

mod calls;
mod dispatch;
pub mod kinds;
mod session;
mod task;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, mpsc};

pub(crate) use self::dispatch::run as dispatch;
pub use self::kinds::{DEFAULT_WORKER_LEASE, KindSpec, MAX_OUTSIDE_KINDS, Owner};
pub use self::session::WorkerSession;
use super::error::EngineError;
use super::task::TaskError;
use crate::model::{Attempt, OperationId, Payload, Progress, Scope, Tenant, TraceContext};

/// The most Lease streams one principal may have open on this server, by
/// default.
pub const DEFAULT_MAX_WORKER_STREAMS: usize = 64;

/// Who a worker is and what it takes.
#[derive(Clone, Debug)]
pub struct WorkerSpec {
    /// For logs.
    pub name: String,
    /// The principal it connected as; its streams are counted together.
    pub principal: String,
    /// The kinds it serves; each must be declared.
    pub kinds: Vec<String>,
    /// How many operations it can hold at once.
    pub capacity: usize,
    /// Only this tenant's operations; None for every tenant's.
    pub tenant: Option<Tenant>,
}

/// An operation handed to a worker.
#[derive(Clone, Debug)]
pub struct Assignment {
    pub id: OperationId,
    pub attempt: Attempt,
    pub kind: String,
    pub tenant: Tenant,
    pub max_attempts: u32,
    pub payload: Payload,
    pub lease_expires: SystemTime,
    pub deadline: SystemTime,
    /// The lease's secret, which every call about it must present.
    pub lease_token: String,
    /// The attempt's span, which the worker's work continues.
    pub trace: Option<TraceContext>,
}

/// A message for a worker.
#[derive(Clone, Debug)]
pub enum ToWorker {
    Assign(Box<Assignment>),
    /// A client asked to cancel this attempt.
    Cancel {
        id: OperationId,
        attempt: Attempt,
    },
}

/// The lease a worker's call is about: the operation, the attempt it was
/// assigned and the assignment's token.
#[derive(Clone, Debug)]
pub struct LeaseRef {
    pub id: OperationId,
    pub attempt: Attempt,
    pub token: String,
}

/// Who calls about a lease: the operations it may reach and the kinds it
/// may serve.
pub struct WorkerCaller<'a> {
    pub scope: Scope,
    pub may_serve: &'a (dyn Fn(&str) -> bool + Send + Sync),
}

/// What a worker said about an attempt, for the attempt that waits on it.
enum Report {
    Heartbeat(Progress),
    Done(Result<Payload, TaskError>),
}

/// An attempt held by a worker.
struct Held {
    attempt: Attempt,
    /// The worker's session; `u64::MAX` when it has none.
    worker: u64,
    tenant: Tenant,
    kind: String,
    token: String,
    /// Taken by the attempt's task when it starts.
    reports: Option<mpsc::UnboundedReceiver<Report>>,
    sender: mpsc::UnboundedSender<Report>,
    lease: Duration,
    lease_expires: SystemTime,
    cancel_requested: bool,
}

/// A connected worker.
struct Connected {
    spec: WorkerSpec,
    credits: AtomicUsize,
    outbox: mpsc::UnboundedSender<ToWorker>,
}

/// Everything about outside work on this server: the declared kinds, the
/// connected workers, and the attempts they hold.
#[derive(Default)]
pub(crate) struct Roster {
    pub(crate) kinds: kinds::Declarations,
    held: Mutex<HashMap<OperationId, Held>>,
    workers: Mutex<HashMap<u64, Arc<Connected>>>,
    next_worker: AtomicU64,
    /// Wakes the claim loop.
    wake: Notify,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a few map operations.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh lease token: 128 random bits, in hex.
fn lease_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

impl Roster {
    /// Tells the claim loop that outside work may be claimable.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Whether any worker is connected here.
    pub(crate) fn has_workers(&self) -> bool {
        !lock(&self.workers).is_empty()
    }
}

fn unknown_kind(kind: &str) -> EngineError {
    EngineError::NotFound {
        name: format!("kind {kind:?} (no worker or configuration declared it for this caller)"),
    }
}
