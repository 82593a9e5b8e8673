//! longrun.v1.Batches and longrun.v1.Bulk: batches made from a list or a
//! stream of child requests, bulk actions over a filter (each started as
//! an operation of its own), and the retry of one operation.

use std::time::Duration;

use tonic::{Request, Response, Status, Streaming};

use super::auth::{audit, caller, created_name, trace};
use super::status::{invalid_field, stalled};
use super::workers::enqueued;
use crate::bulk::{BulkTask, CancelMatching, DeleteMatching, Matching, RetryMatching};
use crate::engine::batches::{BatchDraft, ChildDraft, OpenBatch};
use crate::engine::{Engine, SubmitOptions};
use crate::model::{FieldViolation, Policy, Reason, Tenant, TraceContext};
use crate::pb::convert;
use crate::pb::google::longrunning::Operation;
use crate::pb::longrun::v1::batches_server::Batches;
use crate::pb::longrun::v1::bulk_server::Bulk;
use crate::pb::longrun::v1::{
    BatchPolicy, CreateBatchRequest, MatchingRequest, RetryOperationRequest,
};

/// The most children one message of a batch carries.
pub const MAX_CHILDREN_PER_MESSAGE: usize = 10_000;
/// How long a batch stream may send nothing before its batch is sealed
/// as it is.
pub const BATCH_STREAM_IDLE: Duration = Duration::from_secs(60);

/// The Batches and Bulk services.
#[derive(Clone)]
pub struct BatchesService {
    engine: Engine,
}

impl BatchesService {
    /// Serves `engine`, which must have the bulk kinds registered.
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }

    /// Opens the batch the first message of a request describes.
    async fn open(
        &self,
        tenant: &Tenant,
        first: &CreateBatchRequest,
        trace: Option<TraceContext>,
    ) -> Result<OpenBatch, Status> {
        let policy = match BatchPolicy::try_from(first.policy) {
            Ok(BatchPolicy::Unspecified | BatchPolicy::WaitAll) => Policy::WaitAll,
            Ok(BatchPolicy::FailFast) => Policy::FailFast,
            Err(_) => return Err(invalid_field("policy", "not a batch policy")),
        };
        let parent = match first.parent.as_str() {
            "" => None,
            name => Some(convert::operation_id("parent", name)?),
        };
        let draft = BatchDraft {
            tenant: tenant.clone(),
            policy,
            parent,
            notification: convert::notification(first.notification.as_ref())?,
            trace,
        };
        Ok(self.engine.open_batch(draft).await?)
    }

    /// Starts the bulk action `M` over the request's filter.
    async fn start<M: Matching>(
        &self,
        request: Request<MatchingRequest>,
        rpc: &str,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller(&request)?;
        let trace = trace(&request);
        let req = request.into_inner();
        // The kind's own check refuses a missing or bad filter, naming it.
        let result = async {
            let options = SubmitOptions {
                tenant: caller.tenant.clone(),
                trace,
                request_id: convert::request_id(&req.request_id)?,
                ..SubmitOptions::default()
            };
            let op = self.engine.submit::<BulkTask<M>>(&req, options).await?;
            Ok(Response::new(convert::operation(&op)))
        }
        .await;
        audit(&caller, rpc, created_name(&result), &result);
        result
    }
}

/// The children of one message, checked, each wrong field named by its
/// place in the message.
fn children(tenant: &Tenant, req: &CreateBatchRequest) -> Result<Vec<ChildDraft>, Status> {
    if req.children.len() > MAX_CHILDREN_PER_MESSAGE {
        return Err(invalid_field(
            "children",
            format!(
                "{} children in one message; at most {MAX_CHILDREN_PER_MESSAGE} (stream larger batches with StreamBatch)",
                req.children.len()
            ),
        ));
    }
    req.children
        .iter()
        .enumerate()
        .map(|(i, child)| {
            if child.kind.is_empty() {
                return Err(FieldViolation::new(
                    format!("children[{i}].kind"),
                    "a child needs a kind",
                ));
            }
            enqueued(tenant, child).map_err(|v| {
                FieldViolation::new(format!("children[{i}].{}", v.field), v.description)
            })
        })
        .collect::<Result<_, _>>()
        .map_err(Status::from)
}

/// Fills the batch from a stream's messages, opening it at the first.
async fn fill(
    service: &BatchesService,
    tenant: &Tenant,
    messages: &mut Streaming<CreateBatchRequest>,
    batch: &mut Option<OpenBatch>,
    trace: Option<TraceContext>,
) -> Result<(), Status> {
    let mut trace = trace;
    loop {
        let Ok(next) = tokio::time::timeout(BATCH_STREAM_IDLE, messages.message()).await else {
            return Err(stalled(Reason::UploadStalled, BATCH_STREAM_IDLE));
        };
        let Some(message) = next? else {
            return Ok(());
        };
        let drafts = children(tenant, &message)?;
        let open = match batch {
            Some(open) => {
                if message.policy != 0
                    || !message.parent.is_empty()
                    || message.notification.is_some()
                {
                    return Err(invalid_field(
                        "policy",
                        "only the first message of a stream says what the batch is",
                    ));
                }
                open
            }
            None => batch.insert(service.open(tenant, &message, trace.take()).await?),
        };
        open.add(drafts).await?;
    }
}

/// Seals a batch whose children are all in; one that could not take them
/// all is sealed as it is, to fail once the children it has end.
async fn finish(
    open: OpenBatch,
    filled: Result<(), Status>,
) -> Result<Response<Operation>, Status> {
    match filled {
        Ok(()) => Ok(Response::new(convert::operation(&open.seal().await?))),
        Err(e) => {
            open.abandon().await;
            Err(e)
        }
    }
}

#[tonic::async_trait]
impl Batches for BatchesService {
    async fn create_batch(
        &self,
        request: Request<CreateBatchRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller(&request)?;
        let trace = trace(&request);
        let req = request.into_inner();
        let result = async {
            let drafts = children(&caller.tenant, &req)?;
            let mut open = self.open(&caller.tenant, &req, trace).await?;
            let added = open.add(drafts).await.map_err(Status::from);
            finish(open, added).await
        }
        .await;
        audit(&caller, "CreateBatch", created_name(&result), &result);
        result
    }

    async fn stream_batch(
        &self,
        request: Request<Streaming<CreateBatchRequest>>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller(&request)?;
        let trace = trace(&request);
        let mut messages = request.into_inner();
        let result = async {
            let mut batch = None;
            let filled = fill(
                self,
                &caller.tenant,
                &mut messages,
                &mut batch,
                trace.clone(),
            )
            .await;
            match (batch, filled) {
                (Some(open), filled) => finish(open, filled).await,
                (None, Err(e)) => Err(e),
                // An empty stream makes an empty batch, which ends at once.
                (None, Ok(())) => {
                    let empty = CreateBatchRequest::default();
                    finish(self.open(&caller.tenant, &empty, trace).await?, Ok(())).await
                }
            }
        }
        .await;
        audit(&caller, "StreamBatch", created_name(&result), &result);
        result
    }
}

#[tonic::async_trait]
impl Bulk for BatchesService {
    async fn cancel_matching(
        &self,
        request: Request<MatchingRequest>,
    ) -> Result<Response<Operation>, Status> {
        self.start::<CancelMatching>(request, "CancelMatching")
            .await
    }

    async fn delete_matching(
        &self,
        request: Request<MatchingRequest>,
    ) -> Result<Response<Operation>, Status> {
        self.start::<DeleteMatching>(request, "DeleteMatching")
            .await
    }

    async fn retry_matching(
        &self,
        request: Request<MatchingRequest>,
    ) -> Result<Response<Operation>, Status> {
        self.start::<RetryMatching>(request, "RetryMatching").await
    }

    async fn retry_operation(
        &self,
        request: Request<RetryOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller(&request)?;
        let name = request.into_inner().name;
        let result = async {
            let id = convert::operation_id("name", &name)?;
            let op = self.engine.retry(&caller.scope(), id).await?;
            Ok(Response::new(convert::operation(&op)))
        }
        .await;
        audit(&caller, "RetryOperation", &name, &result);
        result
    }
}
