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

/// Splits `orders` into `n` parts, each in the file's order, by a hash of
/// the order_id: every row of one order_id lands in the same part, so parts
/// stored side by side still leave the file's last row of each order.
fn split_by_order_id(orders: Vec<Order>, n: usize) -> Vec<Vec<Order>> {
    use std::hash::{Hash, Hasher};
    if n <= 1 {
        return vec![orders];
    }
    let mut parts: Vec<Vec<Order>> = (0..n)
        .map(|_| Vec::with_capacity(orders.len() / n + 1))
        .collect();
    for order in orders {
        let mut hasher = std::hash::DefaultHasher::new();
        order.order_id.hash(&mut hasher);
        parts[(hasher.finish() % n as u64) as usize].push(order);
    }
    parts.retain(|part| !part.is_empty());
    parts
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

        let writers = self.reports.orders().writers().max(1);
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
            let parts = split_by_order_id(batch.orders, writers);
            let puts = futures_util::future::join_all(parts.into_iter().map(|part| async move {
                let n = part.len() as i64;
                let put = orders.put_orders(tenant, part, limit).await;
                (n, put)
            }))
            .await;
            let mut over_limit = None;
            let mut failure = None;
            for (n, put) in puts {
                match put {
                    Ok(PutOrders::Stored) => response.imported += n,
                    Ok(PutOrders::OverLimit { stored }) => over_limit = Some(stored),
                    Err(e) => failure = Some(e),
                }
            }
            if let Some(e) = failure {
                return Err(TaskError::retryable(
                    Code::Unavailable,
                    "ORDERS_NOT_STORED",
                    e.to_string(),
                ));
            }
            if let Some(held) = over_limit {
                return Err(TaskError::new(
                    Code::ResourceExhausted,
                    "TENANT_ORDER_LIMIT",
                    format!(
                        "the tenant's order limit would be passed (it stores {held}); the {} orders imported so far are kept",
                        response.imported
                    ),
                ));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::order::OrderStatus;

    fn order(id: &str, amount: i64) -> Order {
        Order {
            order_id: id.into(),
            created_at: 0,
            customer_id: String::new(),
            status: OrderStatus::Placed,
            amount_cents: amount,
        }
    }

    #[test]
    fn each_order_id_lands_in_one_part_in_the_files_order() {
        let ids: Vec<String> = (0..200).map(|i| format!("o{}", i % 50)).collect();
        let orders: Vec<Order> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| order(id, i as i64))
            .collect();
        let parts = split_by_order_id(orders, 3);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 200);
        for id in ids.iter().take(50) {
            let holding: Vec<&Vec<Order>> = parts
                .iter()
                .filter(|p| p.iter().any(|o| &o.order_id == id))
                .collect();
            assert_eq!(holding.len(), 1, "{id} is in several parts");
            let amounts: Vec<i64> = holding[0]
                .iter()
                .filter(|o| &o.order_id == id)
                .map(|o| o.amount_cents)
                .collect();
            assert!(amounts.is_sorted(), "{id}: {amounts:?}");
            assert_eq!(amounts.len(), 4);
        }
        assert_eq!(split_by_order_id(vec![order("a", 1)], 1).len(), 1);
    }
}
