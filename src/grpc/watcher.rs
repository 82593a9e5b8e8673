//! longrun.v1.OperationWatcher: a server stream per watcher, built directly
//! on the engine's subscription, so an idle watcher costs no task, only its
//! place in the hub.

use std::pin::Pin;

use futures_util::Stream;
use futures_util::stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::engine::{ActivityStream, Engine, EngineError, Snapshot, Subscription, WatchPermit};
use crate::model::OperationId;
use crate::pb::convert;
use crate::pb::google::longrunning::Operation;
use crate::pb::longrun::v1::operation_watcher_server::OperationWatcher;
use crate::pb::longrun::v1::{WatchOperationRequest, WatchOperationsRequest};

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

/// The next change of an activity stream, as a stream item.
async fn next_change(
    mut activity: ActivityStream,
) -> Option<(Result<Operation, Status>, Option<ActivityStream>)> {
    match activity.next().await {
        Ok(op) => Some((Ok(convert::operation(&op)), Some(activity))),
        Err(e) => Some((Err(e.into()), None)),
    }
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
        let activity =
            self.engine
                .activity(caller.scope(), &caller.tenant, &request.get_ref().filter)?;
        // After an error the stream ends.
        let changes = stream::unfold(
            Some(activity),
            |state| async move { next_change(state?).await },
        );
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
