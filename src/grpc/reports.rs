//! longrun.v1.ReportService: stages uploads, starts imports and reports,
//! and serves finished report files.

use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, stream};
use tokio::io::AsyncReadExt;
use tonic::{Code, Request, Response, Status, Streaming};

use super::auth::{audit, caller, created_name};
use super::convert;
use super::status::{invalid_field, status};
use crate::auth::Principal;
use crate::engine::{
    Engine, EngineError, Operation, OperationId, Outcome, Scope, State, SubmitOptions,
};
use crate::pb::google::longrunning::Operation as ProtoOperation;
use crate::pb::longrun::v1::report_service_server::ReportService;
use crate::pb::longrun::v1::{
    CreateReportRequest, GetReportRequest, ImportOrdersRequest, ReadReportRequest,
    ReadReportResponse, Report, ReportFormat,
};
use crate::reports::import::ImportJob;
use crate::reports::render::REPORTS_COLLECTION;
use crate::reports::{CreateReportTask, ImportOrdersTask, Reports, UploadError};

/// Bytes per ReadReport message.
const READ_CHUNK: usize = 64 * 1024;

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
    ) -> Result<Response<ProtoOperation>, Status> {
        let mut upload = self.reports.upload().await.map_err(upload_status)?;
        let mut request_id = None;
        let mut notification = None;
        let mut first = true;
        loop {
            let Ok(next) = tokio::time::timeout(self.upload_idle, messages.message()).await else {
                return Err(status(
                    Code::DeadlineExceeded,
                    "UPLOAD_STALLED",
                    format!(
                        "no part of the upload arrived for {} s; it was abandoned",
                        self.upload_idle.as_secs_f64()
                    ),
                ));
            };
            let Some(message) = next? else { break };
            if first {
                request_id = convert::request_id(&message.request_id)?;
                notification = convert::notification(message.notification.as_ref())?;
                first = false;
            }
            upload
                .write(&message.csv_chunk)
                .await
                .map_err(upload_status)?;
        }
        let staged = upload.finish().await.map_err(upload_status)?;
        let job = ImportJob {
            upload: staged.name.clone(),
            size_bytes: staged.size,
        };
        let options = SubmitOptions {
            tenant: caller.tenant.clone(),
            request_id,
            notification,
            timeout: None,
            // A retry uploads the same bytes under a new name: compare
            // content, not names.
            fingerprint: Some(staged.sha256),
        };
        let submitted = self.engine.submit::<ImportOrdersTask>(&job, options).await;
        let keep = matches!(&submitted, Ok(op) if op.request.unpack::<ImportJob>().is_ok_and(|j| j.upload == staged.name));
        if !keep {
            // A repeat of an earlier import, or refused: this copy is unused.
            let _ = tokio::fs::remove_file(&staged.path).await;
        }
        Ok(Response::new(convert::operation(&submitted?)))
    }

    /// The finished report named `name` that `scope` reaches, with its
    /// operation.
    async fn finished(&self, scope: &Scope, name: &str) -> Result<(OperationId, Report), Status> {
        if name.len() > 256 {
            return Err(invalid_field("name", "name is longer than 256 bytes"));
        }
        let id = OperationId::parse_in(REPORTS_COLLECTION, name)
            .map_err(|_| invalid_field("name", "name must have the form reports/{uuid}"))?;
        let not_found = || {
            Status::from(EngineError::NotFound {
                name: name.to_owned(),
            })
        };
        let op: Operation = match self.engine.get(scope, id).await {
            Ok(op) => op,
            Err(EngineError::NotFound { .. }) => return Err(not_found()),
            Err(e) => return Err(e.into()),
        };
        if op.kind != <CreateReportTask as crate::engine::Task>::KIND
            || op.state != State::Succeeded
        {
            return Err(not_found());
        }
        match &op.outcome {
            Some(Outcome::Response(payload)) => {
                let report = payload.unpack::<Report>().map_err(|e| {
                    Status::internal(format!("stored report of {name} is unreadable: {e}"))
                })?;
                Ok((id, report))
            }
            _ => Err(not_found()),
        }
    }
}

fn upload_status(e: UploadError) -> Status {
    match e {
        UploadError::Io(io) => Status::from(EngineError::Store(crate::store::StoreError::Backend(
            io.to_string(),
        ))),
        other => invalid_field("csv_chunk", other.to_string()),
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
        let result = self.import(&caller, request.into_inner()).await;
        audit(&caller, "ImportOrders", created_name(&result), &result);
        result
    }

    async fn create_report(
        &self,
        request: Request<CreateReportRequest>,
    ) -> Result<Response<ProtoOperation>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let result = async {
            let options = SubmitOptions {
                tenant: caller.tenant.clone(),
                request_id: convert::request_id(&req.request_id)?,
                notification: convert::notification(req.notification.as_ref())?,
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
        let (_, report) = self.finished(&scope, &request.get_ref().name).await?;
        Ok(Response::new(report))
    }

    type ReadReportStream = ChunkStream;

    async fn read_report(
        &self,
        request: Request<ReadReportRequest>,
    ) -> Result<Response<Self::ReadReportStream>, Status> {
        let scope = caller(&request)?.scope();
        let name = request.into_inner().name;
        let (id, report) = self.finished(&scope, &name).await?;
        let format = ReportFormat::try_from(report.format).unwrap_or(ReportFormat::Csv);
        let file = match tokio::fs::File::open(self.reports.report_path(id, format)).await {
            Ok(file) => file,
            // Expiring right now: the record goes next.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(EngineError::NotFound { name }.into());
            }
            Err(e) => return Err(Status::internal(format!("cannot open the report: {e}"))),
        };
        let chunks = stream::unfold(Some(file), |file| async move {
            let mut file = file?;
            let mut buf = vec![0u8; READ_CHUNK];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(ReadReportResponse { data: buf }), Some(file)))
                }
                Err(e) => Some((
                    Err(Status::internal(format!("cannot read the report: {e}"))),
                    None,
                )),
            }
        });
        Ok(Response::new(Box::pin(chunks)))
    }
}
