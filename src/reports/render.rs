//! The CreateReport kind: streams one month of orders, in order, to a file
//! in the file store, hashing it on the way. Memory stays flat however
//! large the month: orders are read, rendered and written a page at a time.
//!
//! The file becomes visible only when complete, so a cancelled or crashed
//! report leaves no partial file.

use std::io::Write;

use sha2::{Digest, Sha256};

use super::Reports;
use super::rows::COLUMNS;
use crate::engine::{Task, TaskContext, TaskError, TaskPolicy};
use crate::model::order::{Month, Order, OrderStatus};
use crate::model::{Code, FieldViolation, OperationId};
use crate::pb::longrun::v1::{self as api, ReportFormat};

/// Orders read per page; also the cancellation check interval.
pub const PAGE_ROWS: usize = 10_000;

/// The collection reports are named in: `reports/{operation uuid}`.
pub const REPORTS_COLLECTION: &str = "reports";

/// Renders monthly reports.
pub struct CreateReportTask {
    reports: Reports,
}

impl CreateReportTask {
    /// The kind, over `reports`.
    pub fn new(reports: Reports) -> Self {
        Self { reports }
    }
}

/// A writer that hashes and counts what passes through.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Running totals of a report.
#[derive(Default)]
struct Totals {
    orders: i64,
    amount: i64,
    by_status: [i64; 4],
}

impl Totals {
    fn add(&mut self, order: &Order) {
        self.orders += 1;
        self.amount = self.amount.saturating_add(order.amount_cents);
        self.by_status[usize::from(order.status.as_u8() - 1)] += 1;
    }

    fn counts(&self) -> api::StatusCounts {
        api::StatusCounts {
            placed: self.by_status[0],
            approved: self.by_status[1],
            delivered: self.by_status[2],
            cancelled: self.by_status[3],
        }
    }
}

/// The report being rendered, on a blocking thread a page at a time, into
/// a buffer that the task then hands to the file store.
struct Renderer {
    out: Hashing<Vec<u8>>,
    format: ReportFormat,
    month: Month,
    totals: Totals,
}

fn csv_field(out: &mut impl Write, value: &str) -> std::io::Result<()> {
    if value.contains([',', '"', '\n', '\r']) {
        write!(out, "\"{}\"", value.replace('"', "\"\""))
    } else {
        out.write_all(value.as_bytes())
    }
}

impl Renderer {
    fn start(&mut self) -> std::io::Result<()> {
        match self.format {
            ReportFormat::Json => write!(self.out, "{{\"month\":\"{}\",\"orders\":[", self.month),
            _ => writeln!(self.out, "{}", COLUMNS.join(",")),
        }
    }

    fn page(&mut self, orders: &[Order]) -> std::io::Result<()> {
        for order in orders {
            match self.format {
                ReportFormat::Json => {
                    if self.totals.orders > 0 {
                        self.out.write_all(b",")?;
                    }
                    let row = serde_json::json!({
                        "order_id": order.order_id,
                        "created_at": order.created_at_rfc3339(),
                        "customer_id": order.customer_id,
                        "status": order.status.as_str(),
                        "amount_cents": order.amount_cents,
                    });
                    self.out.write_all(b"\n")?;
                    serde_json::to_writer(&mut self.out, &row)?;
                }
                _ => {
                    csv_field(&mut self.out, &order.order_id)?;
                    write!(self.out, ",{},", order.created_at_rfc3339())?;
                    csv_field(&mut self.out, &order.customer_id)?;
                    writeln!(
                        self.out,
                        ",{},{}",
                        order.status.as_str(),
                        order.amount_cents
                    )?;
                }
            }
            self.totals.add(order);
        }
        Ok(())
    }

    /// The bytes rendered since the last call.
    fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out.inner)
    }

    fn finish(mut self) -> std::io::Result<(Totals, u64, String, Vec<u8>)> {
        let t = &self.totals;
        match self.format {
            ReportFormat::Json => {
                let mut by_status = serde_json::Map::new();
                for status in OrderStatus::ALL {
                    by_status.insert(
                        status.as_str().to_owned(),
                        t.by_status[usize::from(status.as_u8() - 1)].into(),
                    );
                }
                let totals = serde_json::json!({
                    "order_count": t.orders,
                    "total_amount_cents": t.amount,
                    "status_counts": by_status,
                });
                write!(self.out, "\n],\"totals\":{totals}}}\n")?;
            }
            _ => writeln!(self.out, "TOTAL,,,,{}", t.amount)?,
        }
        let sha = hex(&self.out.hasher.finalize());
        Ok((self.totals, self.out.bytes, sha, self.out.inner))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn store_failure(e: impl std::fmt::Display) -> TaskError {
    TaskError::retryable(
        Code::Unavailable,
        "REPORT_NOT_WRITTEN",
        format!("cannot write the report: {e}"),
    )
}

/// Runs `f` on the renderer on a blocking thread, and hands it back with
/// the bytes rendered.
async fn rendered(
    mut renderer: Renderer,
    f: impl FnOnce(&mut Renderer) -> std::io::Result<()> + Send + 'static,
) -> Result<(Renderer, Vec<u8>), TaskError> {
    tokio::task::spawn_blocking(move || {
        f(&mut renderer)?;
        let bytes = renderer.take();
        Ok((renderer, bytes))
    })
    .await
    .map_err(store_failure)?
    .map_err(|e: std::io::Error| store_failure(e))
}

/// Checks a CreateReport request, returning the month.
pub fn validate(request: &api::CreateReportRequest) -> Result<Month, FieldViolation> {
    let month = request
        .month
        .parse::<Month>()
        .map_err(|e| FieldViolation::new("month", e.to_string()))?;
    match ReportFormat::try_from(request.format) {
        Ok(ReportFormat::Csv | ReportFormat::Json) => Ok(month),
        _ => Err(FieldViolation::new("format", "format must be CSV or JSON")),
    }
}

impl Task for CreateReportTask {
    type Request = api::CreateReportRequest;
    type Response = api::Report;

    const KIND: &'static str = "longrun.v1.ReportService.CreateReport";
    const SHORT_NAME: Option<&'static str> = Some("report");

    /// Rendering keeps a core busy.
    fn policy(&self) -> TaskPolicy {
        TaskPolicy::cpu_bound()
    }

    fn validate(&self, request: &api::CreateReportRequest) -> Result<(), FieldViolation> {
        validate(request).map(|_| ())
    }

    async fn run(
        &self,
        ctx: TaskContext,
        request: api::CreateReportRequest,
    ) -> Result<api::Report, TaskError> {
        let month = validate(&request)
            .map_err(|v| TaskError::new(Code::InvalidArgument, "INVALID_REQUEST", v.description))?;
        let format = ReportFormat::try_from(request.format).unwrap_or(ReportFormat::Csv);
        let orders = self.reports.orders();
        let expected = orders
            .month_count(ctx.tenant(), month)
            .await
            .map_err(store_failure)?;
        let name = Reports::report_file(ctx.operation_id(), format);
        // Dropped unfinished (cancelled, failed), it leaves nothing behind.
        let mut file = self
            .reports
            .files()
            .create(&name)
            .await
            .map_err(store_failure)?;
        let renderer = Renderer {
            out: Hashing {
                inner: Vec::with_capacity(1 << 20),
                hasher: Sha256::new(),
                bytes: 0,
            },
            format,
            month,
            totals: Totals::default(),
        };
        let (mut renderer, head) = rendered(renderer, Renderer::start).await?;
        file.write(&head).await.map_err(store_failure)?;
        let mut cursor = None;
        loop {
            if ctx.is_cancelled() {
                return Err(TaskError::cancelled());
            }
            let (page, next) = orders
                .month_page(ctx.tenant(), month, cursor, PAGE_ROWS)
                .await
                .map_err(store_failure)?;
            let (r, bytes) = rendered(renderer, move |r| r.page(&page)).await?;
            renderer = r;
            file.write(&bytes).await.map_err(store_failure)?;
            let written = renderer.totals.orders as u64;
            ctx.set_progress(
                (written * 100 / expected.max(1)).min(99) as u32,
                format!("{written} of {expected} orders written"),
            );
            match next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let (totals, size, sha256, tail) = tokio::task::spawn_blocking(move || renderer.finish())
            .await
            .map_err(store_failure)?
            .map_err(store_failure)?;
        file.write(&tail).await.map_err(store_failure)?;
        file.finish().await.map_err(store_failure)?;
        Ok(api::Report {
            name: format!("{REPORTS_COLLECTION}/{}", ctx.operation_id().uuid()),
            month: month.to_string(),
            format: format as i32,
            order_count: totals.orders,
            total_amount_cents: totals.amount,
            status_counts: Some(totals.counts()),
            size_bytes: size as i64,
            sha256,
            create_time: Some(crate::pb::timestamp(std::time::SystemTime::now())),
        })
    }

    async fn expire(&self, id: OperationId, request: api::CreateReportRequest) {
        let format = ReportFormat::try_from(request.format).unwrap_or(ReportFormat::Csv);
        let _ = self
            .reports
            .files()
            .remove(&Reports::report_file(id, format))
            .await;
    }
}
