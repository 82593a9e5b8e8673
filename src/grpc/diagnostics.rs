//! longrun.v1.Diagnostics: starts Sleep operations.

use tonic::{Request, Response, Status};

use super::auth::{audit, caller, created_name, trace};
use crate::auth::Principal;
use crate::diagnostics::SleepTask;
use crate::engine::{Engine, SubmitOptions};
use crate::pb::convert;
use crate::pb::google::longrunning::Operation;
use crate::pb::longrun::v1::SleepRequest;
use crate::pb::longrun::v1::diagnostics_server::Diagnostics;

/// The Diagnostics service.
#[derive(Clone)]
pub struct DiagnosticsService {
    engine: Engine,
}

impl DiagnosticsService {
    /// Serves `engine`, which must have [`SleepTask`] registered.
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }
}

#[tonic::async_trait]
impl Diagnostics for DiagnosticsService {
    async fn sleep(&self, request: Request<SleepRequest>) -> Result<Response<Operation>, Status> {
        let caller = caller(&request)?;
        let trace = trace(&request);
        let req = request.into_inner();
        let result = self.create(&caller, &req, trace).await;
        audit(&caller, "Sleep", created_name(&result), &result);
        result
    }
}

impl DiagnosticsService {
    async fn create(
        &self,
        caller: &Principal,
        req: &SleepRequest,
        trace: Option<crate::model::TraceContext>,
    ) -> Result<Response<Operation>, Status> {
        let options = SubmitOptions {
            tenant: caller.tenant.clone(),
            trace,
            request_id: convert::request_id(&req.request_id)?,
            timeout: req
                .timeout
                .as_ref()
                .map(|t| convert::duration("timeout", t))
                .transpose()?,
            notification: convert::notification(req.notification.as_ref())?,
            run: convert::run_spec(req.run.as_ref(), std::time::SystemTime::now())?,
            ..SubmitOptions::default()
        };
        let op = self.engine.submit::<SleepTask>(req, options).await?;
        Ok(Response::new(convert::operation(&op)))
    }
}
