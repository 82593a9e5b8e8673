//! The CreateReport kind: streams one month of orders, in order, to a file
//! in the file store as CSV, JSON or PDF, hashing it on the way. Memory
//! stays flat however large the month: orders are read, rendered and
//! written a page at a time.
//!
//! The file becomes visible only when complete, so a cancelled or crashed
//! report leaves no partial file.

use std::io::Write;

use sha2::{Digest, Sha256};

use super::Reports;
use super::pdf::{Heading, PdfReport};
use super::rows::COLUMNS;
use crate::engine::{Task, TaskContext, TaskError, TaskPolicy};
use crate::model::order::{Month, Order, OrderStatus, Totals};
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

/// The record's count of each status.
fn status_counts(totals: &Totals) -> api::StatusCounts {
    api::StatusCounts {
        placed: totals.with_status(OrderStatus::Placed),
        approved: totals.with_status(OrderStatus::Approved),
        delivered: totals.with_status(OrderStatus::Delivered),
        cancelled: totals.with_status(OrderStatus::Cancelled),
    }
}

/// What the rendered bytes are.
enum Body {
    Csv,
    Json,
    Pdf(Box<PdfReport>),
}

/// The report being rendered, on a blocking thread a page at a time, into
/// a buffer that the task then hands to the file store.
struct Renderer {
    out: Hashing<Vec<u8>>,
    body: Body,
    month: Month,
    totals: Totals,
}

/// What rendering ends with.
struct Rendered {
    totals: Totals,
    size: u64,
    sha256: String,
    pages: u32,
    tail: Vec<u8>,
}

/// A text cell of a CSV report. One that a spreadsheet would run as a
/// formula (it starts with `=`, `+`, `-`, `@`, a tab or a carriage return)
/// gets a leading `'`, as OWASP advises, so that opening the report never
/// runs what an import put in it.
fn csv_field(out: &mut impl Write, value: &str) -> std::io::Result<()> {
    let formula = value.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let value = if formula {
        std::borrow::Cow::Owned(format!("'{value}"))
    } else {
        std::borrow::Cow::Borrowed(value)
    };
    if value.contains([',', '"', '\n', '\r']) {
        write!(out, "\"{}\"", value.replace('"', "\"\""))
    } else {
        out.write_all(value.as_bytes())
    }
}

impl Renderer {
    fn start(&mut self) -> std::io::Result<()> {
        match &mut self.body {
            Body::Json => write!(self.out, "{{\"month\":\"{}\",\"orders\":[", self.month),
            Body::Csv => writeln!(self.out, "{}", COLUMNS.join(",")),
            Body::Pdf(pdf) => pdf.start(&mut self.out),
        }
    }

    fn page(&mut self, orders: &[Order]) -> std::io::Result<()> {
        match &mut self.body {
            Body::Json => {
                for (i, order) in orders.iter().enumerate() {
                    if i > 0 || self.totals.orders > 0 {
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
            }
            Body::Csv => {
                for order in orders {
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
            Body::Pdf(pdf) => pdf.rows(orders, &mut self.out)?,
        }
        for order in orders {
            self.totals.add(order);
        }
        Ok(())
    }

    /// The bytes rendered since the last call.
    fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out.inner)
    }

    fn finish(mut self) -> std::io::Result<Rendered> {
        let t = &self.totals;
        let mut pages = 0;
        match &mut self.body {
            Body::Json => {
                let mut by_status = serde_json::Map::new();
                for status in OrderStatus::ALL {
                    by_status.insert(status.as_str().to_owned(), t.with_status(status).into());
                }
                let totals = serde_json::json!({
                    "order_count": t.orders,
                    "total_amount_cents": t.amount_cents,
                    "status_counts": by_status,
                });
                write!(self.out, "\n],\"totals\":{totals}}}\n")?;
            }
            Body::Csv => writeln!(self.out, "TOTAL,,,,{}", t.amount_cents)?,
            Body::Pdf(pdf) => pages = pdf.finish(t, &mut self.out)?,
        }
        Ok(Rendered {
            totals: self.totals,
            size: self.out.bytes,
            sha256: hex(&self.out.hasher.finalize()),
            pages,
            tail: self.out.inner,
        })
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

/// The currency when a request names none.
pub const DEFAULT_CURRENCY: &str = "USD";

/// The currency a request names: three capital letters (ISO 4217), or
/// the default when it names none.
pub fn currency(request: &api::CreateReportRequest) -> Result<&str, FieldViolation> {
    match request.currency.as_str() {
        "" => Ok(DEFAULT_CURRENCY),
        code if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) => Ok(code),
        other => Err(FieldViolation::new(
            "currency",
            format!(
                "{other:?} is not a currency code: three capital letters (ISO 4217), such as EUR"
            ),
        )),
    }
}

/// Checks a CreateReport request, returning the month.
pub fn validate(request: &api::CreateReportRequest) -> Result<Month, FieldViolation> {
    currency(request)?;
    let month = request
        .month
        .parse::<Month>()
        .map_err(|e| FieldViolation::new("month", e.to_string()))?;
    match ReportFormat::try_from(request.format) {
        Ok(ReportFormat::Csv | ReportFormat::Json | ReportFormat::Pdf) => Ok(month),
        _ => Err(FieldViolation::new(
            "format",
            "format must be CSV, JSON or PDF",
        )),
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
        let report_name = format!("{REPORTS_COLLECTION}/{}", ctx.operation_id().uuid());
        let body = match format {
            ReportFormat::Json => Body::Json,
            ReportFormat::Pdf => Body::Pdf(Box::new(PdfReport::new(Heading {
                month,
                tenant: ctx.tenant().to_string(),
                name: report_name.clone(),
                generated: time::OffsetDateTime::now_utc(),
                currency: currency(&request).unwrap_or(DEFAULT_CURRENCY).to_owned(),
            }))),
            _ => Body::Csv,
        };
        let renderer = Renderer {
            out: Hashing {
                inner: Vec::with_capacity(1 << 20),
                hasher: Sha256::new(),
                bytes: 0,
            },
            body,
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
        let rendered = tokio::task::spawn_blocking(move || renderer.finish())
            .await
            .map_err(store_failure)?
            .map_err(store_failure)?;
        file.write(&rendered.tail).await.map_err(store_failure)?;
        file.finish().await.map_err(store_failure)?;
        Ok(api::Report {
            name: report_name,
            month: month.to_string(),
            format: format as i32,
            order_count: rendered.totals.orders,
            total_amount_cents: rendered.totals.amount_cents,
            status_counts: Some(status_counts(&rendered.totals)),
            size_bytes: rendered.size as i64,
            sha256: rendered.sha256,
            create_time: Some(crate::pb::timestamp(std::time::SystemTime::now())),
            page_count: rendered.pages as i32,
            currency: currency(&request).unwrap_or(DEFAULT_CURRENCY).to_owned(),
            amount_not_cancelled_cents: rendered.totals.not_cancelled().1,
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
