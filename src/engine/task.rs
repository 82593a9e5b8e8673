//! Operation kinds: the [`Task`] trait that library users implement, the
//! context a running task gets, and the registry that maps kind names to
//! handlers.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::error::EngineError;
use crate::model::{
    Code, FieldViolation, OperationError, OperationId, Payload, Progress, Reason, Tenant,
};

/// One kind of long-running work.
///
/// The engine decodes the stored request, calls [`Task::run`] on a worker,
/// and stores what it returns as the operation's response or error. Request
/// and response are protobuf messages, so they travel as `Any` values and
/// clients can decode them with the types named in `operation_info`.
pub trait Task: Send + Sync + 'static {
    /// The request message the operation was created with.
    type Request: prost::Message + prost::Name + Default + Send + 'static;
    /// The message stored as the operation's response on success.
    type Response: prost::Message + prost::Name + Send + 'static;

    /// The kind's unique name, shown in the metadata and usable in filters.
    const KIND: &'static str;

    /// A short name for the command line (`--concurrency sleep=100`), if
    /// the kind has one.
    const SHORT_NAME: Option<&'static str> = None;

    /// Checks a request before any operation exists. An error here fails the
    /// create call with INVALID_ARGUMENT.
    fn validate(&self, _request: &Self::Request) -> Result<(), FieldViolation> {
        Ok(())
    }

    /// How the engine runs this kind.
    fn policy(&self) -> TaskPolicy {
        TaskPolicy::default()
    }

    /// What the request says of how long the work will take, for its
    /// estimate: its length, when it is known (a sleep's), or its amount
    /// of work in the kind's own units (an upload's bytes), which the
    /// engine turns into a time by the kind's recent rate. Without either,
    /// the estimate falls back on the kind's recent run times.
    fn size(&self, _request: &Self::Request) -> Size {
        Size::default()
    }

    /// Does the work. Long tasks should report progress and return promptly
    /// with [`TaskError::cancelled`] once `ctx.is_cancelled()`.
    fn run(
        &self,
        ctx: TaskContext,
        request: Self::Request,
    ) -> impl Future<Output = Result<Self::Response, TaskError>> + Send;

    /// Removes whatever the operation left outside the store (files, say)
    /// when it expires or is deleted. Called before the record goes, and
    /// possibly more than once, so it must tolerate finding nothing.
    fn expire(&self, _id: OperationId, _request: Self::Request) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// What a request says of how long its work will take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Size {
    /// How long an attempt runs, when the request says.
    pub length: Option<Duration>,
    /// How much work it is, in the kind's own units.
    pub work: Option<u64>,
}

/// Per-kind settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskPolicy {
    /// Whether an attempt that was interrupted (by a crash or a restart) may
    /// run again from the start. Kinds with outside effects that must not
    /// happen twice say false; their interrupted attempts end ABORTED.
    pub retry_safe: bool,
    /// The most attempts an operation gets, counting the first.
    pub max_attempts: u32,
    /// The first retry waits up to this long; each later one up to twice
    /// the previous bound (exponential backoff with full jitter).
    pub backoff_base: Duration,
    /// No retry waits longer than this.
    pub backoff_max: Duration,
    /// How long one attempt may run before it ends DEADLINE_EXCEEDED.
    /// Create requests may ask for less, never more.
    pub timeout: Duration,
    /// How many operations of the kind may run at once on this server.
    /// Kinds that mostly wait (on the network, a timer, another service)
    /// can run hundreds; kinds that keep a core busy should run about one
    /// per core ([`TaskPolicy::cpu_bound`]).
    pub concurrency: usize,
    /// Whether a client may put a failed, cancelled or aborted operation
    /// of the kind back in the queue (RetryOperation). Kinds whose work
    /// must not be repeated by hand say false.
    pub redrive: bool,
}

/// The concurrency of a kind that does not say: enough for work that
/// mostly waits.
pub const DEFAULT_CONCURRENCY: usize = 64;

impl Default for TaskPolicy {
    fn default() -> Self {
        Self {
            retry_safe: true,
            redrive: true,
            max_attempts: 3,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            timeout: Duration::from_secs(3600),
            concurrency: DEFAULT_CONCURRENCY,
        }
    }
}

impl TaskPolicy {
    /// The default policy for a kind that keeps a core busy: one operation
    /// at a time per core.
    pub fn cpu_bound() -> Self {
        Self {
            concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            ..Self::default()
        }
    }

    /// How long to wait before the attempt after `failed_attempt`: a random
    /// time between zero and the exponential bound ("full jitter"), so that
    /// many operations failing together do not retry together.
    pub fn backoff(&self, failed_attempt: u32) -> Duration {
        use backon::BackoffBuilder;
        let bound = backon::ExponentialBuilder::default()
            .with_min_delay(self.backoff_base)
            .with_max_delay(self.backoff_max)
            .with_factor(2.0)
            .with_max_times(usize::MAX)
            .build()
            .nth(failed_attempt.saturating_sub(1) as usize)
            .unwrap_or(self.backoff_max);
        bound.mul_f64(rand::random::<f64>())
    }
}

/// How a task failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    /// The error the operation ends with.
    pub error: OperationError,
    /// Whether another attempt might succeed. Retryable errors are retried
    /// up to the kind's `max_attempts`; permanent ones end the operation.
    pub retryable: bool,
}

impl TaskError {
    /// A permanent failure with a canonical code and an UPPER_SNAKE reason.
    pub fn new(code: Code, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: OperationError::new(code, reason, message),
            retryable: false,
        }
    }

    /// A transient failure, worth another attempt after a backoff.
    pub fn retryable(code: Code, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            ..Self::new(code, reason, message)
        }
    }

    /// What a task returns when it stopped because it was cancelled.
    pub fn cancelled() -> Self {
        Self {
            error: OperationError::cancelled(),
            retryable: false,
        }
    }

    /// Adds a metadata entry to the error's ErrorInfo.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.error.metadata.insert(key.into(), value.into());
        self
    }
}

/// An engine's refusal, met by a task calling the engine, as the task's
/// failure: retryable when it may pass later (a full queue, storage
/// away), final otherwise.
impl From<EngineError> for TaskError {
    fn from(e: EngineError) -> Self {
        let (code, reason, message) = (e.code(), e.reason().as_str(), e.to_string());
        if e.is_transient() {
            TaskError::retryable(code, reason, message)
        } else {
            TaskError::new(code, reason, message)
        }
    }
}

/// What a running task can see and do.
pub struct TaskContext {
    id: OperationId,
    tenant: Tenant,
    attempt: u32,
    cancel: CancellationToken,
    progress: watch::Sender<Progress>,
}

impl TaskContext {
    pub(crate) fn new(
        id: OperationId,
        tenant: Tenant,
        attempt: u32,
        cancel: CancellationToken,
        progress: watch::Sender<Progress>,
    ) -> Self {
        Self {
            id,
            tenant,
            attempt,
            cancel,
            progress,
        }
    }

    /// The operation being run.
    pub fn operation_id(&self) -> OperationId {
        self.id
    }

    /// The tenant that owns the operation: a task reads and writes only
    /// that tenant's data.
    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }

    /// The attempt number, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Fires when the task should stop: a client cancelled the operation or
    /// the server is shutting down.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// True once the task should stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Reports progress (0 to 100) and what the task is doing. Cheap to call
    /// often: the engine keeps only the latest report and stores it at a
    /// bounded rate.
    pub fn set_progress(&self, percent: u32, message: impl Into<String>) {
        let progress = Progress {
            percent: percent.min(100),
            message: crate::model::bounded_message(message.into()),
        };
        self.progress.send_if_modified(|current| {
            if *current == progress {
                false
            } else {
                *current = progress;
                true
            }
        });
    }

    /// Sleeps for `duration` unless cancelled first; returns false when it
    /// was cancelled.
    pub async fn sleep(&self, duration: Duration) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            _ = tokio::time::sleep(duration) => true,
        }
    }
}

pub(crate) type TaskFuture = Pin<Box<dyn Future<Output = Result<Payload, TaskError>> + Send>>;
pub(crate) type ExpireFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A task with its types erased, as the registry holds it.
pub(crate) trait ErasedTask: Send + Sync {
    fn validate(&self, request: &Payload) -> Result<(), EngineError>;
    /// The request's [`Size`]; nothing known when it cannot be read.
    fn size(&self, _request: &Payload) -> Size {
        Size::default()
    }
    fn run(&self, ctx: TaskContext, request: Payload) -> TaskFuture;
    fn expire(&self, id: OperationId, request: Payload) -> ExpireFuture;
}

struct Erased<T>(Arc<T>);

impl<T: Task> ErasedTask for Erased<T> {
    fn validate(&self, request: &Payload) -> Result<(), EngineError> {
        let request: T::Request = request.unpack().map_err(|e| EngineError::InvalidArgument {
            violations: vec![FieldViolation::new("request", e.to_string())],
        })?;
        self.0
            .validate(&request)
            .map_err(|v| EngineError::InvalidArgument {
                violations: vec![v],
            })
    }

    fn size(&self, request: &Payload) -> Size {
        request
            .unpack::<T::Request>()
            .map(|request| self.0.size(&request))
            .unwrap_or_default()
    }

    fn run(&self, ctx: TaskContext, request: Payload) -> TaskFuture {
        let task = Arc::clone(&self.0);
        Box::pin(async move {
            let request: T::Request = request.unpack().map_err(|e| {
                TaskError::new(Code::Internal, Reason::RequestUnreadable, e.to_string())
            })?;
            let response = task.run(ctx, request).await?;
            Ok(Payload::pack(&response))
        })
    }

    fn expire(&self, id: OperationId, request: Payload) -> ExpireFuture {
        let task = Arc::clone(&self.0);
        Box::pin(async move {
            match request.unpack::<T::Request>() {
                Ok(request) => task.expire(id, request).await,
                Err(e) => {
                    tracing::warn!(%id, error = %e, "cannot read the request of an expiring operation")
                }
            }
        })
    }
}

/// A registered kind: its handler and the policy it runs under.
#[derive(Clone)]
pub(crate) struct Kind {
    pub(crate) task: Arc<dyn ErasedTask>,
    pub(crate) policy: TaskPolicy,
    pub(crate) short_name: Option<&'static str>,
}

/// The kinds a server can run.
#[derive(Default, Clone)]
pub struct Registry {
    kinds: HashMap<&'static str, Kind>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a kind with the policy it declares. A later registration of the
    /// same kind replaces it.
    pub fn register<T: Task>(&mut self, task: T) -> &mut Self {
        let policy = task.policy();
        self.register_with(task, policy)
    }

    /// Adds a kind with an operator-chosen policy (retries, timeout, ...).
    pub fn register_with<T: Task>(&mut self, task: T, policy: TaskPolicy) -> &mut Self {
        self.kinds.insert(
            T::KIND,
            Kind {
                task: Arc::new(Erased(Arc::new(task))),
                policy,
                short_name: T::SHORT_NAME,
            },
        );
        self
    }

    /// True when the kind is registered.
    pub fn contains(&self, kind: &str) -> bool {
        self.kinds.contains_key(kind)
    }

    /// The policy of a registered kind.
    pub fn policy(&self, kind: &str) -> Option<&TaskPolicy> {
        self.kinds.get(kind).map(|k| &k.policy)
    }

    pub(crate) fn get(&self, kind: &str) -> Option<&Kind> {
        self.kinds.get(kind)
    }

    /// The registered kinds.
    pub(crate) fn kinds(&self) -> impl Iterator<Item = (&'static str, &Kind)> {
        self.kinds.iter().map(|(name, kind)| (*name, kind))
    }

    /// The kind `name` means: its full name or its short name.
    pub fn resolve(&self, name: &str) -> Option<&'static str> {
        self.kinds
            .iter()
            .find(|(full, kind)| **full == name || kind.short_name == Some(name))
            .map(|(full, _)| *full)
    }

    /// Every kind's name (and short name), for messages.
    pub fn describe(&self) -> String {
        let mut names: Vec<String> = self
            .kinds
            .iter()
            .map(|(full, kind)| match kind.short_name {
                Some(short) => format!("{short} ({full})"),
                None => (*full).to_owned(),
            })
            .collect();
        names.sort();
        names.join(", ")
    }
}
