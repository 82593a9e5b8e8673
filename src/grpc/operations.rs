//! google.longrunning.Operations: translates calls to the engine.

use std::time::Duration;

use tonic::{Request, Response, Status};

use super::auth::{audit, caller};
use super::status::{invalid_field, unimplemented};
use crate::engine::Engine;
use crate::model::Reason;
use crate::pb::convert;
use crate::pb::google::longrunning::operations_server::Operations;
use crate::pb::google::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
    ListOperationsResponse, Operation, WaitOperationRequest,
};

/// How long WaitOperation blocks when the request names no timeout.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// The Operations service.
#[derive(Clone)]
pub struct OperationsService {
    engine: Engine,
    max_wait: Duration,
}

impl OperationsService {
    /// Serves `engine`; WaitOperation never blocks longer than `max_wait`.
    pub fn new(engine: Engine, max_wait: Duration) -> Self {
        Self { engine, max_wait }
    }
}

/// Reads the grpc-timeout header: digits followed by a unit letter.
fn call_deadline<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[tonic::async_trait]
impl Operations for OperationsService {
    async fn list_operations(
        &self,
        request: Request<ListOperationsRequest>,
    ) -> Result<Response<ListOperationsResponse>, Status> {
        let scope = caller(&request)?.scope();
        let req = request.into_inner();
        if !matches!(req.name.as_str(), "" | "operations") {
            return Err(invalid_field(
                "name",
                "name must be empty or \"operations\"; longrun has one operations collection",
            ));
        }
        if req.return_partial_success {
            return Err(unimplemented(
                Reason::PartialSuccessUnsupported,
                "return_partial_success is not supported: the operations collection is never partly unreachable",
            ));
        }
        let page = self
            .engine
            .list(&scope, &req.filter, req.page_size, &req.page_token)
            .await?;
        Ok(Response::new(ListOperationsResponse {
            operations: page.operations.iter().map(convert::operation).collect(),
            next_page_token: page.next_page_token,
            unreachable: Vec::new(),
        }))
    }

    async fn get_operation(
        &self,
        request: Request<GetOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let scope = caller(&request)?.scope();
        let id = convert::operation_id("name", &request.get_ref().name)?;
        let op = self.engine.get(&scope, id).await?;
        // A queued one says why it waits.
        let answer = match self.engine.waiting(&op).await {
            Some(waiting) => convert::waiting_operation(&op, &waiting),
            None => convert::operation(&op),
        };
        Ok(Response::new(answer))
    }

    async fn delete_operation(
        &self,
        request: Request<DeleteOperationRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller(&request)?;
        let name = &request.get_ref().name;
        let result = async {
            let id = convert::operation_id("name", name)?;
            self.engine.delete(&caller.scope(), id).await?;
            Ok(Response::new(()))
        }
        .await;
        audit(&caller, "DeleteOperation", name, &result);
        result
    }

    async fn cancel_operation(
        &self,
        request: Request<CancelOperationRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller(&request)?;
        let name = &request.get_ref().name;
        let result = async {
            let id = convert::operation_id("name", name)?;
            self.engine.cancel(&caller.scope(), id).await?;
            Ok(Response::new(()))
        }
        .await;
        audit(&caller, "CancelOperation", name, &result);
        result
    }

    async fn wait_operation(
        &self,
        request: Request<WaitOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller(&request)?;
        let scope = caller.scope();
        let deadline = call_deadline(&request);
        let req = request.into_inner();
        let id = convert::operation_id("name", &req.name)?;
        let mut timeout = match &req.timeout {
            Some(t) => convert::duration("timeout", t)?,
            None => DEFAULT_WAIT,
        }
        .min(self.max_wait);
        if let Some(deadline) = deadline {
            // Answer a little before the caller gives up, so that it gets the
            // latest state rather than DEADLINE_EXCEEDED.
            let margin = (deadline / 10).min(Duration::from_millis(200));
            timeout = timeout.min(deadline.saturating_sub(margin));
        }
        // A long poll holds a subscription like a Watch stream does, and
        // counts against the same per-tenant limit.
        let _permit = self.engine.watch_permit(&caller.tenant)?;
        let op = self.engine.wait(&scope, id, timeout).await?;
        Ok(Response::new(convert::operation(&op)))
    }
}
