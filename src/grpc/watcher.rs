//! longrun.v1.OperationWatcher: a server stream per watcher, built directly
//! on the engine's subscription, so an idle watcher costs no task, only its
//! place in the hub.

use std::pin::Pin;

use futures_util::Stream;
use futures_util::stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::engine::{
    ChangeStream, ChangeType, Engine, EngineError, Snapshot, Subscription, WatchPermit,
};
use crate::model::{OperationId, Reason};
use crate::pb::convert;
use crate::pb::google::longrunning::Operation;
use crate::pb::longrun::v1::operation_change as change;
use crate::pb::longrun::v1::operation_watcher_server::OperationWatcher;
use crate::pb::longrun::v1::{
    OperationChange, WatchChangesRequest, WatchOperationRequest, WatchOperationsRequest,
};

/// The OperationWatcher service.
#[derive(Clone)]
pub struct WatcherService {
    engine: Engine,
}

impl WatcherService {
    /// Serves `engine`.
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }
}

struct Follow {
    id: OperationId,
    sub: Subscription,
    /// Counts this stream against its tenant's limit until it ends.
    _permit: WatchPermit,
    shutdown: CancellationToken,
    first: bool,
    finished: bool,
}

type OperationStream = Pin<Box<dyn Stream<Item = Result<Operation, Status>> + Send>>;

async fn next(mut f: Follow) -> Option<(Result<Operation, Status>, Follow)> {
    if f.finished {
        return None;
    }
    if !f.first {
        tokio::select! {
            _ = f.sub.changed() => {}
            _ = f.shutdown.cancelled() => {
                f.finished = true;
                return Some((Err(EngineError::ShuttingDown.into()), f));
            }
        }
    }
    f.first = false;
    let item = match f.sub.current() {
        Snapshot::Present(op) => {
            f.finished = op.is_done();
            Ok(convert::operation(&op))
        }
        Snapshot::Gone | Snapshot::Loading => {
            f.finished = true;
            Err(EngineError::NotFound { name: f.id.name() }.into())
        }
    };
    Some((item, f))
}

/// The next operation of a stream of all changes, as WatchOperations
/// sends it: an operation that changed or left the filter; a resync ends
/// the stream (the caller lists again).
async fn next_operation(
    mut changes: ChangeStream,
) -> Option<(Result<Operation, Status>, Option<ChangeStream>)> {
    loop {
        let change = match changes.next().await {
            Ok(change) => change,
            Err(e) => return Some((Err(e.into()), None)),
        };
        match (change.change, change.operation) {
            (ChangeType::Resync, _) => {
                let missed = EngineError::Unavailable {
                    reason: Reason::ChangesMissed,
                    message: "changes were missed; list the operations again and reconnect".into(),
                    retry_after: std::time::Duration::from_millis(100),
                };
                return Some((Err(missed.into()), None));
            }
            (_, Some(op)) => return Some((Ok(convert::operation(&op)), Some(changes))),
            (_, None) => continue,
        }
    }
}

/// The next change of a WatchChanges stream.
async fn next_change(mut changes: ChangeStream) -> (Result<OperationChange, Status>, ChangeStream) {
    let item = changes.next().await.map_err(Status::from).map(|c| {
        let r#type = match c.change {
            ChangeType::Updated => change::Type::Updated,
            ChangeType::Left => change::Type::Left,
            ChangeType::Deleted => change::Type::Deleted,
            ChangeType::Resync => change::Type::Resync,
        };
        let operation = match (&c.operation, c.id) {
            (Some(op), _) => Some(convert::operation(op)),
            (None, Some(id)) => Some(Operation {
                name: id.name(),
                done: true,
                ..Operation::default()
            }),
            (None, None) => None,
        };
        OperationChange {
            cursor: c.cursor,
            r#type: r#type as i32,
            operation,
        }
    });
    (item, changes)
}

#[tonic::async_trait]
impl OperationWatcher for WatcherService {
    type WatchOperationStream = OperationStream;
    type WatchOperationsStream = OperationStream;

    async fn watch_operations(
        &self,
        request: Request<WatchOperationsRequest>,
    ) -> Result<Response<Self::WatchOperationsStream>, Status> {
        let caller = super::auth::caller(&request)?;
        let changes = self.engine.watch_changes(
            caller.scope(),
            &caller.tenant,
            &request.get_ref().filter,
            None,
        )?;
        // After an error the stream ends.
        let operations = stream::unfold(Some(changes), |state| async move {
            next_operation(state?).await
        });
        Ok(Response::new(Box::pin(operations)))
    }

    type WatchChangesStream = Pin<Box<dyn Stream<Item = Result<OperationChange, Status>> + Send>>;

    async fn watch_changes(
        &self,
        request: Request<WatchChangesRequest>,
    ) -> Result<Response<Self::WatchChangesStream>, Status> {
        let caller = super::auth::caller(&request)?;
        let req = request.get_ref();
        let changes = self.engine.watch_changes(
            caller.scope(),
            &caller.tenant,
            &req.filter,
            Some(&req.resume_after),
        )?;
        // After an error (the server stopping) the stream ends.
        let changes = stream::unfold(Some(changes), |state| async move {
            let (item, changes) = next_change(state?).await;
            let more = item.is_ok().then_some(changes);
            Some((item, more))
        });
        Ok(Response::new(Box::pin(changes)))
    }

    async fn watch_operation(
        &self,
        request: Request<WatchOperationRequest>,
    ) -> Result<Response<Self::WatchOperationStream>, Status> {
        let caller = super::auth::caller(&request)?;
        let id = convert::operation_id("name", &request.get_ref().name)?;
        let sub = self.engine.subscribe(&caller.scope(), id).await?;
        let permit = self.engine.watch_permit(&caller.tenant)?;
        let follow = Follow {
            id,
            sub,
            _permit: permit,
            shutdown: self.engine.shutdown_token().clone(),
            first: true,
            finished: false,
        };
        Ok(Response::new(Box::pin(stream::unfold(follow, next))))
    }
}
