//! The reports scenario: import a generated CSV of orders, then render one
//! month in each format. Rates come from the operations' own start and end
//! times, so they measure the server's work, not the client's polling.

use std::time::{Duration, Instant};

use prost::Message;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio_stream::StreamExt;

use super::Common;
use super::target::{Target, mib};
use crate::cli::Output;
use crate::cli::client::Connection;
use longrun::model::order::Month;
use longrun::pb::google::longrunning::{Operation, operation};
use longrun::pb::longrun::v1::report_service_client::ReportServiceClient;
use longrun::pb::longrun::v1::{
    CreateReportRequest, ImportOrdersRequest, OperationMetadata, ReadReportRequest, Report,
    ReportFormat,
};
use longrun::reports::generate::{Spec, write_csv};

/// How long the operation ran, from its metadata.
fn run_time(op: &Operation) -> anyhow::Result<Duration> {
    let any = op
        .metadata
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no metadata"))?;
    let m = OperationMetadata::decode(any.value.as_slice())?;
    let (Some(start), Some(end)) = (m.start_time, m.end_time) else {
        anyhow::bail!("no start or end time");
    };
    let micros =
        (end.seconds - start.seconds) * 1_000_000 + i64::from(end.nanos - start.nanos) / 1000;
    Ok(Duration::from_micros(micros.max(1) as u64))
}

fn result<M: Message + Default>(op: &Operation) -> anyhow::Result<M> {
    match &op.result {
        Some(operation::Result::Response(any)) => Ok(M::decode(any.value.as_slice())?),
        other => anyhow::bail!("the operation did not succeed: {other:?}"),
    }
}

pub(super) async fn run(common: Common, count: u64, months: u8, seed: u64) -> anyhow::Result<()> {
    let months = months.clamp(1, 12);
    let first = Month::new(2024, 1).expect("valid");
    let last = Month::new(2024, months).expect("valid");
    let dir = tempfile::tempdir()?;
    let csv = dir.path().join("orders.csv");
    let spec = Spec {
        count,
        months: (first, last),
        seed,
    };
    let path = csv.clone();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let file = std::fs::File::create(path)?;
        write_csv(&spec, &mut std::io::BufWriter::with_capacity(1 << 20, file))
    })
    .await??;
    let csv_bytes = tokio::fs::metadata(&csv).await?.len();

    let target = Target::start(&common, &[]).await?;
    let channel = target.channels(1).await?.remove(0);
    let mut reports = ReportServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20);

    // Upload.
    let upload_started = Instant::now();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut file = tokio::fs::File::open(&csv).await?;
    let reader = tokio::spawn(async move {
        loop {
            let mut chunk = vec![0u8; 1 << 20];
            let n = file.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            chunk.truncate(n);
            let message = ImportOrdersRequest {
                csv_chunk: chunk,
                request_id: String::new(),
                notification: None,
                run: None,
            };
            if tx.send(message).await.is_err() {
                return Ok(());
            }
        }
    });
    let created = reports
        .import_orders(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    reader.await??;
    let upload_time = upload_started.elapsed();

    let imported_op = super::load::wait_done(channel.clone(), created.name).await?;
    let import_time = run_time(&imported_op)?;
    let imported: longrun::pb::longrun::v1::ImportOrdersResponse = result(&imported_op)?;

    // Render the third month (or the last, with fewer months) in each
    // format, one after another, and download each file.
    let month = Month::new(2024, months.min(3)).expect("valid");
    let mut rendered = Vec::new();
    for format in [ReportFormat::Csv, ReportFormat::Json, ReportFormat::Pdf] {
        rendered.push(render(&mut reports, channel.clone(), month, format).await?);
    }

    let import_rate = imported.imported as f64 / import_time.as_secs_f64();
    let peak = target.peak_rss();
    match common.output {
        Output::Json => say!(
            "{}",
            json!({
                "scenario": "reports",
                "orders": count,
                "csv_bytes": csv_bytes,
                "upload_seconds": upload_time.as_secs_f64(),
                "import_seconds": import_time.as_secs_f64(),
                "import_rows_per_second": import_rate,
                "imported": imported.imported,
                "failed": imported.failed,
                "report_month": month.to_string(),
                "reports": rendered.iter().map(|r| json!({
                    "format": r.format.as_str_name(),
                    "rows": r.report.order_count,
                    "seconds": r.time.as_secs_f64(),
                    "rows_per_second": r.rate(),
                    "bytes": r.report.size_bytes,
                    "pages": r.report.page_count,
                    "download_seconds": r.download_time.as_secs_f64(),
                })).collect::<Vec<_>>(),
                "server_peak_rss_bytes": peak,
                "data_dir_bytes": target.disk_usage(),
            })
        ),
        Output::Text => {
            say!("orders generated   {count} ({})", mib(csv_bytes));
            say!("upload             {:.2} s", upload_time.as_secs_f64());
            say!(
                "import             {} rows in {:.2} s = {:.0} rows/s ({} failed)",
                imported.imported,
                import_time.as_secs_f64(),
                import_rate,
                imported.failed
            );
            for r in &rendered {
                let pages = match r.report.page_count {
                    0 => String::new(),
                    n => format!(", {n} pages"),
                };
                say!(
                    "report {month} {:<4} {} rows in {:.3} s = {:.0} rows/s ({}{pages}); downloaded in {:.3} s",
                    r.format.as_str_name(),
                    r.report.order_count,
                    r.time.as_secs_f64(),
                    r.rate(),
                    mib(r.report.size_bytes as u64),
                    r.download_time.as_secs_f64()
                );
            }
            if let Some(peak) = peak {
                say!("server peak RSS    {}", mib(peak));
            }
            if let Some(disk) = target.disk_usage() {
                say!("data directory     {}", mib(disk));
            }
        }
    }
    Ok(())
}

/// One month rendered in one format, and downloaded.
struct Rendered {
    format: ReportFormat,
    report: Report,
    time: Duration,
    download_time: Duration,
}

impl Rendered {
    fn rate(&self) -> f64 {
        self.report.order_count as f64 / self.time.as_secs_f64()
    }
}

async fn render(
    reports: &mut ReportServiceClient<Connection>,
    channel: Connection,
    month: Month,
    format: ReportFormat,
) -> anyhow::Result<Rendered> {
    let created = reports
        .create_report(CreateReportRequest {
            currency: String::new(),
            month: month.to_string(),
            format: format as i32,
            request_id: String::new(),
            notification: None,
            run: None,
        })
        .await?
        .into_inner();
    let op = super::load::wait_done(channel, created.name).await?;
    let time = run_time(&op)?;
    let report: Report = result(&op)?;
    let started = Instant::now();
    let mut stream = reports
        .read_report(ReadReportRequest {
            name: report.name.clone(),
        })
        .await?
        .into_inner();
    let mut downloaded = 0u64;
    while let Some(chunk) = stream.next().await {
        downloaded += chunk?.data.len() as u64;
    }
    anyhow::ensure!(
        downloaded == report.size_bytes as u64,
        "downloaded {downloaded} bytes of {}",
        report.size_bytes
    );
    Ok(Rendered {
        format,
        report,
        time,
        download_time: started.elapsed(),
    })
}
