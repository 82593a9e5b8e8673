//! longrun.v1.ReportService: translates calls to the report domain
//! (`crate::reports`), which stages uploads and reads report files.

use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::auth::{audit, caller, created_name, trace};
use super::status::stalled;
use crate::auth::Principal;
use crate::engine::{Engine, EngineError, SubmitOptions};
use crate::model::Reason;
use crate::pb::convert;
use crate::pb::google::longrunning::Operation as ProtoOperation;
use crate::pb::longrun::v1::report_service_server::ReportService;
use crate::pb::longrun::v1::{
    CreateReportRequest, GetReportRequest, ImportOrdersRequest, ReadReportRequest,
    ReadReportResponse, Report, ReportFormat,
};
use crate::reports::{CreateReportTask, Reports};

/// The ReportService.
#[derive(Clone)]
pub struct ReportsService {
    engine: Engine,
    reports: Reports,
    upload_idle: Duration,
}

impl ReportsService {
    /// Serves `reports` through `engine`, which must have the report kinds
    /// registered. An upload that sends nothing for `upload_idle` is
    /// abandoned, so a stalled client cannot hold a staged file open.
    pub fn new(engine: Engine, reports: Reports, upload_idle: Duration) -> Self {
        Self {
            engine,
            reports,
            upload_idle,
        }
    }

    /// Stages an upload and starts its import, for `caller`'s tenant.
    async fn import(
        &self,
        caller: &Principal,
        mut messages: Streaming<ImportOrdersRequest>,
        trace: Option<crate::model::TraceContext>,
    ) -> Result<Response<ProtoOperation>, Status> {
        let mut upload = self.reports.upload().await.map_err(EngineError::from)?;
        let mut options = SubmitOptions {
            tenant: caller.tenant.clone(),
            trace,
            ..SubmitOptions::default()
        };
        let mut first = true;
        loop {
            let Ok(next) = tokio::time::timeout(self.upload_idle, messages.message()).await else {
                return Err(stalled(Reason::UploadStalled, self.upload_idle));
            };
            let Some(message) = next? else { break };
            if first {
                options.request_id = convert::request_id(&message.request_id)?;
                options.notification = convert::notification(message.notification.as_ref())?;
                options.run =
                    convert::run_spec(message.run.as_ref(), std::time::SystemTime::now())?;
                first = false;
            }
            upload
                .write(&message.csv_chunk)
                .await
                .map_err(EngineError::from)?;
        }
        let staged = upload.finish().await.map_err(EngineError::from)?;
        let op = self
            .reports
            .start_import(&self.engine, staged, options)
            .await?;
        Ok(Response::new(convert::operation(&op)))
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<ReadReportResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ReportService for ReportsService {
    async fn import_orders(
        &self,
        request: Request<Streaming<ImportOrdersRequest>>,
    ) -> Result<Response<ProtoOperation>, Status> {
        let caller = caller(&request)?;
        let trace = trace(&request);
        let result = self.import(&caller, request.into_inner(), trace).await;
        audit(&caller, "ImportOrders", created_name(&result), &result);
        result
    }

    async fn create_report(
        &self,
        request: Request<CreateReportRequest>,
    ) -> Result<Response<ProtoOperation>, Status> {
        let caller = caller(&request)?;
        let trace = trace(&request);
        let req = request.into_inner();
        let result = async {
            let options = SubmitOptions {
                tenant: caller.tenant.clone(),
                trace,
                request_id: convert::request_id(&req.request_id)?,
                notification: convert::notification(req.notification.as_ref())?,
                run: convert::run_spec(req.run.as_ref(), std::time::SystemTime::now())?,
                ..SubmitOptions::default()
            };
            let op = self
                .engine
                .submit::<CreateReportTask>(&req, options)
                .await?;
            Ok(Response::new(convert::operation(&op)))
        }
        .await;
        audit(&caller, "CreateReport", created_name(&result), &result);
        result
    }

    async fn get_report(
        &self,
        request: Request<GetReportRequest>,
    ) -> Result<Response<Report>, Status> {
        let scope = caller(&request)?.scope();
        let (_, report) = self
            .reports
            .finished(&self.engine, &scope, &request.get_ref().name)
            .await?;
        Ok(Response::new(report))
    }

    type ReadReportStream = ChunkStream;

    async fn read_report(
        &self,
        request: Request<ReadReportRequest>,
    ) -> Result<Response<Self::ReadReportStream>, Status> {
        let scope = caller(&request)?.scope();
        let name = request.into_inner().name;
        let (id, report) = self.reports.finished(&self.engine, &scope, &name).await?;
        let format = ReportFormat::try_from(report.format).unwrap_or(ReportFormat::Csv);
        let chunks = self.reports.read(id, format).await?;
        Ok(Response::new(Box::pin(chunks.map(|chunk| {
            chunk
                .map(|data| ReadReportResponse { data })
                .map_err(Status::from)
        }))))
    }
}
