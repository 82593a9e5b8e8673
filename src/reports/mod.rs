//! The report service's domain: bulk order imports and monthly reports,
//! both ordinary engine kinds.
//!
//! - `rows`: reading one CSV row into an order (orders and months
//!   themselves are in the model);
//! - `upload`: staging an uploaded CSV file in the file store, checked,
//!   before any operation exists;
//! - `import`: the ImportOrders kind, a parser thread feeding a writer;
//! - `render`: the CreateReport kind, streaming one month to a file;
//! - `pdf`: the PDF layout of a report, written page by page;
//!
//! Uploads and report files live in the backend's [`FileStore`]: the data
//! directory for sled, the database for PostgreSQL, where every node reads
//! them.
//! - `generate`: realistic, deterministic order files for demos and
//!   benchmarks.

pub mod generate;
pub mod import;
mod pdf;
pub mod render;
pub mod rows;
pub mod upload;

use std::sync::Arc;

use futures_util::{Stream, StreamExt};

use crate::engine::{Engine, EngineError, Registry, SubmitOptions, Task};
use crate::model::{OperationId, Outcome, Scope, State};
use crate::pb::longrun::v1::{Report, ReportFormat};
use crate::store::{FileStore, OrderStore, StoreError};

pub use self::import::ImportOrdersTask;
pub use self::render::CreateReportTask;
pub use self::upload::{StagedUpload, Upload, UploadError};

/// The default largest upload, in bytes.
pub const DEFAULT_MAX_UPLOAD: u64 = 1 << 30;

/// Shared state of the report service; a cheap-clone handle.
#[derive(Clone)]
pub struct Reports {
    orders: Arc<dyn OrderStore>,
    files: Arc<dyn FileStore>,
    max_upload: u64,
    max_orders: Option<u64>,
}

impl Reports {
    /// Uses `orders` for orders and `files` for uploads and report files,
    /// refusing uploads over `max_upload` bytes and keeping each tenant to
    /// `max_orders` stored orders.
    pub fn new(
        orders: Arc<dyn OrderStore>,
        files: Arc<dyn FileStore>,
        max_upload: u64,
        max_orders: Option<u64>,
    ) -> Self {
        Self {
            orders,
            files,
            max_upload,
            max_orders,
        }
    }

    /// The most orders one tenant may store; None when unlimited.
    pub fn max_orders(&self) -> Option<u64> {
        self.max_orders
    }

    /// Adds the ImportOrders and CreateReport kinds.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(ImportOrdersTask::new(self.clone()));
        registry.register(CreateReportTask::new(self.clone()));
    }

    /// The order store.
    pub fn orders(&self) -> &Arc<dyn OrderStore> {
        &self.orders
    }

    /// The file store.
    pub(crate) fn files(&self) -> &Arc<dyn FileStore> {
        &self.files
    }

    /// Starts staging a new upload.
    pub async fn upload(&self) -> Result<Upload, UploadError> {
        Upload::create(self.files.as_ref(), self.max_upload).await
    }

    /// The file name of the staged upload called `name`.
    pub(crate) fn upload_file(name: &str) -> String {
        format!("uploads/{name}")
    }

    /// The file name of the report made by operation `id`.
    pub fn report_file(id: OperationId, format: ReportFormat) -> String {
        let extension = match format {
            ReportFormat::Json => "json",
            ReportFormat::Pdf => "pdf",
            _ => "csv",
        };
        format!("{}/{}.{extension}", render::REPORTS_COLLECTION, id.uuid())
    }
}

impl From<UploadError> for EngineError {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::Store(e) => e.into(),
            other => EngineError::invalid("csv_chunk", other.to_string()),
        }
    }
}

impl Reports {
    /// Starts the import of a staged upload. A repeat of an earlier import
    /// (by request_id) or a refused one leaves this copy unused, and it is
    /// removed.
    pub async fn start_import(
        &self,
        engine: &Engine,
        staged: StagedUpload,
        options: SubmitOptions,
    ) -> Result<crate::model::Operation, EngineError> {
        let job = import::ImportJob {
            upload: staged.name.clone(),
            size_bytes: staged.size,
        };
        let options = SubmitOptions {
            // A retry uploads the same bytes under a new name: compare
            // content, not names.
            fingerprint: Some(staged.sha256),
            ..options
        };
        let submitted = engine.submit::<ImportOrdersTask>(&job, options).await;
        let kept = matches!(&submitted, Ok(op)
            if op.request.unpack::<import::ImportJob>().is_ok_and(|j| j.upload == staged.name));
        if !kept {
            let _ = self.files.remove(&Self::upload_file(&staged.name)).await;
        }
        submitted
    }

    /// The finished report called `name` (`reports/{uuid}`) that `scope`
    /// reaches, with the operation that made it. Anything else by that
    /// name (missing, another tenant's, not a report, not finished) is
    /// NOT_FOUND.
    pub async fn finished(
        &self,
        engine: &Engine,
        scope: &Scope,
        name: &str,
    ) -> Result<(OperationId, Report), EngineError> {
        if name.len() > crate::pb::convert::MAX_NAME_LEN {
            return Err(EngineError::invalid(
                "name",
                "name is longer than 256 bytes",
            ));
        }
        let id = OperationId::parse_in(render::REPORTS_COLLECTION, name)
            .map_err(|_| EngineError::invalid("name", "name must have the form reports/{uuid}"))?;
        let not_found = || EngineError::NotFound {
            name: name.to_owned(),
        };
        let op = match engine.get(scope, id).await {
            Err(EngineError::NotFound { .. }) => return Err(not_found()),
            other => other?,
        };
        if op.kind != CreateReportTask::KIND || op.state != State::Succeeded {
            return Err(not_found());
        }
        match &op.outcome {
            Some(Outcome::Response(payload)) => {
                let report = payload.unpack::<Report>().map_err(|e| {
                    EngineError::Store(StoreError::Corrupt(format!(
                        "the stored report of {name} is unreadable: {e}"
                    )))
                })?;
                Ok((id, report))
            }
            _ => Err(not_found()),
        }
    }

    /// The file of a finished report, as chunks of at most
    /// [`READ_CHUNK`](crate::store::files::READ_CHUNK) bytes.
    pub async fn read(
        &self,
        id: OperationId,
        format: ReportFormat,
    ) -> Result<impl Stream<Item = Result<Vec<u8>, EngineError>> + Send + 'static, EngineError>
    {
        let Some(file) = self.files.open(&Self::report_file(id, format)).await? else {
            // Expiring right now: the record goes next.
            return Err(EngineError::NotFound {
                name: format!("{}/{}", render::REPORTS_COLLECTION, id.uuid()),
            });
        };
        Ok(file.chunks.map(|chunk| {
            chunk.map(Vec::from).map_err(|e| match e {
                StoreError::NotFound => EngineError::Store(StoreError::Backend(
                    "the report was removed while it was read".into(),
                )),
                other => other.into(),
            })
        }))
    }
}
