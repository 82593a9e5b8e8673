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

use super::OperationId;
use super::error::EngineError;
use super::operation::{Code, OperationError, Payload, Progress};

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

    /// Checks a request before any operation exists. An error here fails the
    /// create call with INVALID_ARGUMENT.
    fn validate(&self, _request: &Self::Request) -> Result<(), FieldViolation> {
        Ok(())
    }

    /// How the engine runs this kind.
    fn policy(&self) -> TaskPolicy {
        TaskPolicy::default()
    }

    /// Does the work. Long tasks should report progress and return promptly
    /// with [`TaskError::cancelled`] once `ctx.is_cancelled()`.
    fn run(
        &self,
        ctx: TaskContext,
        request: Self::Request,
    ) -> impl Future<Output = Result<Self::Response, TaskError>> + Send;
}

/// Per-kind settings.
#[derive(Debug, Clone)]
pub struct TaskPolicy {
    /// Whether an attempt that was interrupted (by a crash or a restart) may
    /// run again from the start. Kinds with outside effects that must not
    /// happen twice say false; their interrupted attempts end ABORTED.
    pub retry_safe: bool,
}

impl Default for TaskPolicy {
    fn default() -> Self {
        Self { retry_safe: true }
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

/// How a task failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    /// The error the operation ends with.
    pub error: OperationError,
}

impl TaskError {
    /// A failure with a canonical code and an UPPER_SNAKE reason.
    pub fn new(code: Code, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: OperationError::new(code, reason, message),
        }
    }

    /// What a task returns when it stopped because it was cancelled.
    pub fn cancelled() -> Self {
        Self {
            error: OperationError::cancelled(),
        }
    }

    /// Adds a metadata entry to the error's ErrorInfo.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.error.metadata.insert(key.into(), value.into());
        self
    }
}

/// What a running task can see and do.
pub struct TaskContext {
    id: OperationId,
    attempt: u32,
    cancel: CancellationToken,
    progress: watch::Sender<Progress>,
}

impl TaskContext {
    pub(crate) fn new(
        id: OperationId,
        attempt: u32,
        cancel: CancellationToken,
        progress: watch::Sender<Progress>,
    ) -> Self {
        Self {
            id,
            attempt,
            cancel,
            progress,
        }
    }

    /// The operation being run.
    pub fn operation_id(&self) -> OperationId {
        self.id
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
            message: message.into(),
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

/// A task with its types erased, as the registry holds it.
pub(crate) trait ErasedTask: Send + Sync {
    fn policy(&self) -> TaskPolicy;
    fn validate(&self, request: &Payload) -> Result<(), EngineError>;
    fn run(&self, ctx: TaskContext, request: Payload) -> TaskFuture;
}

struct Erased<T>(Arc<T>);

impl<T: Task> ErasedTask for Erased<T> {
    fn policy(&self) -> TaskPolicy {
        self.0.policy()
    }

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

    fn run(&self, ctx: TaskContext, request: Payload) -> TaskFuture {
        let task = Arc::clone(&self.0);
        Box::pin(async move {
            let request: T::Request = request
                .unpack()
                .map_err(|e| TaskError::new(Code::Internal, "REQUEST_UNREADABLE", e.to_string()))?;
            let response = task.run(ctx, request).await?;
            Ok(Payload::pack(&response))
        })
    }
}

/// The kinds a server can run.
#[derive(Default, Clone)]
pub struct Registry {
    tasks: HashMap<&'static str, Arc<dyn ErasedTask>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a kind. A later registration of the same kind replaces it.
    pub fn register<T: Task>(&mut self, task: T) -> &mut Self {
        self.tasks.insert(T::KIND, Arc::new(Erased(Arc::new(task))));
        self
    }

    /// True when the kind is registered.
    pub fn contains(&self, kind: &str) -> bool {
        self.tasks.contains_key(kind)
    }

    pub(crate) fn get(&self, kind: &str) -> Option<&Arc<dyn ErasedTask>> {
        self.tasks.get(kind)
    }
}
