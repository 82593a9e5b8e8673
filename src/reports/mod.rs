//! The report service's domain: bulk order imports and monthly reports,
//! both ordinary engine kinds.
//!
//! - `order`: orders, months, and reading one CSV row;
//! - `upload`: staging an uploaded CSV file on disk, checked, before any
//!   operation exists;
//! - `import`: the ImportOrders kind, a parser thread feeding a writer;
//! - `render`: the CreateReport kind, streaming one month to a file;
//! - `generate`: realistic, deterministic order files for demos and
//!   benchmarks.

pub mod generate;
pub mod import;
pub mod order;
pub mod render;
pub mod upload;

use std::io;
use std::path::{Path, PathBuf};

use crate::engine::{OperationId, Registry};
use crate::pb::longrun::v1::ReportFormat;
use crate::store::DynOrderStore;

pub use self::import::ImportOrdersTask;
pub use self::render::CreateReportTask;
pub use self::upload::{StagedUpload, Upload, UploadError};

/// The default largest upload, in bytes.
pub const DEFAULT_MAX_UPLOAD: u64 = 1 << 30;

/// Shared state of the report service; a cheap-clone handle.
#[derive(Clone)]
pub struct Reports {
    orders: DynOrderStore,
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
        orders: DynOrderStore,
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
    pub fn orders(&self) -> &DynOrderStore {
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
