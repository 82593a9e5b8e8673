//! The ImportOrders kind: a parser thread reads the staged CSV (streamed
//! from the file store) and sends batches through a bounded channel to a
//! writer that stores them. The channel bounds memory, and both ends check
//! for cancellation every batch.

use std::io::{BufReader, Read};

use futures_util::TryStreamExt;
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};
use tokio_util::sync::CancellationToken;

use super::Reports;
use super::rows::{ColumnMap, RowError};
use crate::engine::{Size, Task, TaskContext, TaskError, TaskPolicy};
use crate::model::order::Order;
use crate::model::{Code, OperationId};
use crate::pb::longrun::v1 as api;
use crate::store::PutOrders;

/// Rows per batch: the cancellation check interval and the write unit.
pub const BATCH_ROWS: usize = 5000;
/// Batches in flight between parser and writer.
const PIPELINE_DEPTH: usize = 4;
/// The most rows the writer stores at once, from the batches waiting.
const GROUP_ROWS: usize = BATCH_ROWS * PIPELINE_DEPTH;
/// Row errors kept in the response; the rest are only counted.
pub const MAX_ROW_ERRORS: usize = 1000;

/// The stored request of an import: which staged upload to load. The
/// client never sees it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImportJob {
    /// The upload's name among uploads.
    #[prost(string, tag = "1")]
    pub upload: String,
    /// Its size, for progress.
    #[prost(uint64, tag = "2")]
    pub size_bytes: u64,
}

impl prost::Name for ImportJob {
    const PACKAGE: &'static str = "longrun.internal";
    const NAME: &'static str = "ImportJob";
}

/// Loads a staged CSV upload into the order store.
pub struct ImportOrdersTask {
    reports: Reports,
}

impl ImportOrdersTask {
    /// The kind, over `reports`.
    pub fn new(reports: Reports) -> Self {
        Self { reports }
    }
}

struct Batch {
    orders: Vec<Order>,
    errors: Vec<RowError>,
    rows: u64,
    bytes: u64,
}

impl Batch {
    /// Appends the batch parsed after this one.
    fn absorb(&mut self, next: Batch) {
        self.orders.extend(next.orders);
        self.errors.extend(next.errors);
        self.rows += next.rows;
        self.bytes = next.bytes;
    }
}

fn io_failure(e: impl std::fmt::Display) -> TaskError {
    TaskError::retryable(
        Code::Unavailable,
        "UPLOAD_UNREADABLE",
        format!("cannot read the upload: {e}"),
    )
}

/// Reads the file and sends batches until the end, a cancellation, or the
/// writer going away.
fn parse(
    file: impl Read,
    out: mpsc::Sender<Batch>,
    cancel: CancellationToken,
) -> Result<(), TaskError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(BufReader::with_capacity(1 << 20, file));
    let header = reader.headers().map_err(io_failure)?.clone();
    let columns = ColumnMap::from_header(header.iter())
        .map_err(|e| TaskError::new(Code::InvalidArgument, "BAD_HEADER", e))?;
    let mut record = csv::StringRecord::new();
    let mut batch = Batch {
        orders: Vec::with_capacity(BATCH_ROWS),
        errors: Vec::new(),
        rows: 0,
        bytes: 0,
    };
    let mut row = 1u64;
    loop {
        let more = match reader.read_record(&mut record) {
            Ok(more) => more,
            Err(e) if e.is_io_error() => return Err(io_failure(e)),
            Err(e) => {
                row += 1;
                batch.errors.push(RowError {
                    row,
                    column: String::new(),
                    reason: format!("not valid CSV: {e}"),
                });
                batch.rows += 1;
                continue;
            }
        };
        if !more {
            break;
        }
        row += 1;
        let fields: Vec<&str> = record.iter().collect();
        match columns.parse(row, &fields) {
            Ok(order) => batch.orders.push(order),
            Err(e) => batch.errors.push(e),
        }
        batch.rows += 1;
        if batch.rows as usize >= BATCH_ROWS {
            if cancel.is_cancelled() {
                return Ok(());
            }
            batch.bytes = reader.position().byte();
            let full = std::mem::replace(
                &mut batch,
                Batch {
                    orders: Vec::with_capacity(BATCH_ROWS),
                    errors: Vec::new(),
                    rows: 0,
                    bytes: 0,
                },
            );
            if out.blocking_send(full).is_err() {
                return Ok(());
            }
        }
    }
    batch.bytes = reader.position().byte();
    let _ = out.blocking_send(batch);
    Ok(())
}

impl Task for ImportOrdersTask {
    type Request = ImportJob;
    type Response = api::ImportOrdersResponse;

    const KIND: &'static str = "longrun.v1.ReportService.ImportOrders";
    const SHORT_NAME: Option<&'static str> = Some("import");

    /// Parsing and storing keep a core busy.
    fn policy(&self) -> TaskPolicy {
        TaskPolicy::cpu_bound()
    }

    /// An import's work is its upload's bytes.
    fn size(&self, job: &ImportJob) -> Size {
        Size {
            length: None,
            work: Some(job.size_bytes),
        }
    }

    async fn run(
        &self,
        ctx: TaskContext,
        job: ImportJob,
    ) -> Result<api::ImportOrdersResponse, TaskError> {
        let upload = Reports::upload_file(&job.upload);
        let file = self
            .reports
            .files()
            .open(&upload)
            .await
            .map_err(io_failure)?
            .ok_or_else(|| {
                TaskError::new(
                    Code::DataLoss,
                    "UPLOAD_MISSING",
                    "the staged upload is gone; upload the file again",
                )
            })?;
        let bytes = StreamReader::new(file.chunks.map_err(std::io::Error::other));
        let file = SyncIoBridge::new(bytes);
        let total = job.size_bytes.max(1);
        let (tx, mut rx) = mpsc::channel(PIPELINE_DEPTH);
        let cancel = ctx.cancellation().clone();
        let parser = tokio::task::spawn_blocking(move || parse(file, tx, cancel));

        let mut response = api::ImportOrdersResponse::default();
        let mut rows = 0u64;
        let mut cancelled = false;
        while let Some(mut batch) = rx.recv().await {
            // Batches parsed meanwhile go to the store together.
            while batch.orders.len() < GROUP_ROWS {
                match rx.try_recv() {
                    Ok(next) => batch.absorb(next),
                    Err(_) => break,
                }
            }
            if ctx.is_cancelled() {
                cancelled = true;
                break;
            }
            let (orders, tenant, limit) = (
                self.reports.orders(),
                ctx.tenant(),
                self.reports.max_orders(),
            );
            let n = batch.orders.len() as i64;
            match orders.put_orders(tenant, batch.orders, limit).await {
                Ok(PutOrders::Stored) => response.imported += n,
                Ok(PutOrders::OverLimit { stored }) => {
                    return Err(TaskError::new(
                        Code::ResourceExhausted,
                        "TENANT_ORDER_LIMIT",
                        format!(
                            "the tenant's order limit would be passed (it stores {stored}); the {} orders imported so far are kept",
                            response.imported
                        ),
                    ));
                }
                Err(e) => {
                    return Err(TaskError::retryable(
                        Code::Unavailable,
                        "ORDERS_NOT_STORED",
                        e.to_string(),
                    ));
                }
            }
            response.failed += batch.errors.len() as i64;
            let room = MAX_ROW_ERRORS.saturating_sub(response.errors.len());
            response
                .errors
                .extend(batch.errors.into_iter().take(room).map(|e| api::RowError {
                    row: e.row as i64,
                    column: e.column,
                    reason: e.reason,
                }));
            rows += batch.rows;
            ctx.set_progress(
                (batch.bytes.min(total) * 100 / total) as u32,
                format!(
                    "{rows} rows read: {} imported, {} failed",
                    response.imported, response.failed
                ),
            );
        }
        drop(rx);
        let parsed = parser
            .await
            .map_err(|e| TaskError::new(Code::Internal, "PARSER_FAILED", e.to_string()))?;
        if cancelled || ctx.is_cancelled() {
            ctx.set_progress(
                0,
                format!(
                    "cancelled after {rows} rows; the {} rows imported so far are kept",
                    response.imported
                ),
            );
            return Err(TaskError::cancelled());
        }
        parsed?;
        // The upload has served its purpose.
        let _ = self.reports.files().remove(&upload).await;
        Ok(response)
    }

    async fn expire(&self, _id: OperationId, job: ImportJob) {
        let _ = self
            .reports
            .files()
            .remove(&Reports::upload_file(&job.upload))
            .await;
    }
}
