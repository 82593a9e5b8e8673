//! The report service's domain: bulk order imports and monthly reports,
//! both ordinary engine kinds.
//!
//! - `rows`: reading one CSV row into an order (orders and months
//!   themselves are in the model);
//! - `upload`: staging an uploaded CSV file on disk, checked, before any
//!   operation exists;
//! - `import`: the ImportOrders kind, a parser thread feeding a writer;
//! - `render`: the CreateReport kind, streaming one month to a file;
//! - `generate`: realistic, deterministic order files for demos and
//!   benchmarks.

pub mod generate;
pub mod import;
pub mod render;
pub mod rows;
pub mod upload;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::Stream;
use tokio::io::AsyncReadExt;

use crate::engine::{Engine, EngineError, Registry, SubmitOptions, Task};
use crate::model::{OperationId, Outcome, Scope, State};
use crate::pb::longrun::v1::{Report, ReportFormat};
use crate::store::{OrderStore, StoreError};

pub use self::import::ImportOrdersTask;
pub use self::render::CreateReportTask;
pub use self::upload::{StagedUpload, Upload, UploadError};

/// The default largest upload, in bytes.
pub const DEFAULT_MAX_UPLOAD: u64 = 1 << 30;

/// Shared state of the report service; a cheap-clone handle.
#[derive(Clone)]
pub struct Reports {
    orders: Arc<dyn OrderStore>,
    uploads: PathBuf,
    files: PathBuf,
    max_upload: u64,
    max_orders: Option<u64>,
}

impl Reports {
    /// Uses `orders` for storage and `data_dir` for uploads and report
    /// files, refusing uploads over `max_upload` bytes and keeping each
    /// tenant to `max_orders` stored orders.
    pub fn open(
        data_dir: &Path,
        orders: Arc<dyn OrderStore>,
        max_upload: u64,
        max_orders: Option<u64>,
    ) -> io::Result<Self> {
        let uploads = data_dir.join("uploads");
        let files = data_dir.join("reports");
        std::fs::create_dir_all(&uploads)?;
        std::fs::create_dir_all(&files)?;
        Ok(Self {
            orders,
            uploads,
            files,
            max_upload,
            max_orders,
        })
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

    /// Starts staging a new upload.
    pub async fn upload(&self) -> Result<Upload, UploadError> {
        Upload::create(&self.uploads, self.max_upload).await
    }

    /// Where a staged upload lives.
    pub(crate) fn upload_path(&self, name: &str) -> PathBuf {
        self.uploads.join(name)
    }

    /// Where the report made by operation `id` lives.
    pub fn report_path(&self, id: OperationId, format: ReportFormat) -> PathBuf {
        let extension = match format {
            ReportFormat::Json => "json",
            _ => "csv",
        };
        self.files.join(format!("{}.{extension}", id.uuid()))
    }
}

/// Bytes per chunk when a report file is read.
pub const READ_CHUNK: usize = 64 * 1024;

impl From<UploadError> for EngineError {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::Io(io) => StoreError::Backend(io.to_string()).into(),
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
            let _ = tokio::fs::remove_file(&staged.path).await;
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

    /// The file of a finished report, as chunks of at most [`READ_CHUNK`]
    /// bytes.
    pub async fn read(
        &self,
        id: OperationId,
        format: ReportFormat,
    ) -> Result<impl Stream<Item = Result<Vec<u8>, EngineError>> + Send + 'static, EngineError>
    {
        let file = match tokio::fs::File::open(self.report_path(id, format)).await {
            Ok(file) => file,
            // Expiring right now: the record goes next.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(EngineError::NotFound {
                    name: format!("{}/{}", render::REPORTS_COLLECTION, id.uuid()),
                });
            }
            Err(e) => return Err(io_failure("cannot open the report", e)),
        };
        Ok(futures_util::stream::unfold(
            Some(file),
            |file| async move {
                let mut file = file?;
                let mut buf = vec![0u8; READ_CHUNK];
                match file.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok(buf), Some(file)))
                    }
                    Err(e) => Some((Err(io_failure("cannot read the report", e)), None)),
                }
            },
        ))
    }
}

fn io_failure(what: &str, e: io::Error) -> EngineError {
    StoreError::Backend(format!("{what}: {e}")).into()
}
