//! `longrun report create|read`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;

use super::client::{Clients, connect, describe};
use super::ops::{print, wait, watch};
use super::{ClientArgs, Output};
use longrun::pb::google::longrunning::{ListOperationsRequest, operation};
use longrun::pb::longrun::v1::{
    CreateReportRequest, GetReportRequest, ReadReportRequest, Report, ReportFormat,
};

/// Report commands.
#[derive(Debug, clap::Subcommand)]
pub enum ReportCommand {
    /// Start a report over one month; with --watch or --out, follow it and
    /// download the file when it is done.
    Create {
        #[command(flatten)]
        client: ClientArgs,
        /// The month, YYYY-MM.
        #[arg(long)]
        month: String,
        /// csv, json or pdf.
        #[arg(long, default_value = "csv", value_parser = parse_format)]
        format: ReportFormat,
        /// Follow the operation with a progress bar.
        #[arg(long, conflicts_with = "wait")]
        watch: bool,
        /// Block until the report is done.
        #[arg(long)]
        wait: bool,
        /// Download the finished report to this file (- for standard
        /// output); waits for it.
        #[arg(long)]
        out: Option<PathBuf>,
        /// The currency the orders' amounts are in (ISO 4217), shown on the
        /// report; USD by default.
        #[arg(long, default_value = "")]
        currency: String,
        /// An idempotency key (UUID).
        #[arg(long, default_value = "")]
        request_id: String,
        /// POST the finished operation to this URL (a signed webhook).
        #[arg(long)]
        notify: Option<String>,
        #[command(flatten)]
        run: super::RunArgs,
    },
    /// Download a finished report.
    Read {
        #[command(flatten)]
        client: ClientArgs,
        /// The report: reports/{id}, or the bare id.
        #[arg(value_parser = super::report_name)]
        name: String,
        /// The file to write; - for standard output.
        #[arg(long)]
        out: PathBuf,
    },
    /// List the finished reports, newest first.
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

fn parse_format(text: &str) -> Result<ReportFormat, String> {
    match text.to_ascii_lowercase().as_str() {
        "csv" => Ok(ReportFormat::Csv),
        "json" => Ok(ReportFormat::Json),
        "pdf" => Ok(ReportFormat::Pdf),
        other => Err(format!(
            "unknown format {other:?}; expected csv, json or pdf"
        )),
    }
}

/// A write to standard output whose reader went away (`... --out - | head`)
/// ends the command quietly, as other command-line tools do.
fn quietly_on_broken_pipe(written: std::io::Result<()>) -> std::io::Result<()> {
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => other,
    }
}

/// Streams report `name` into `out` (or standard output for `-`).
async fn download(
    clients: &mut Clients,
    name: &str,
    out: &Path,
    quiet: bool,
) -> anyhow::Result<u64> {
    let mut stream = clients
        .reports
        .read_report(ReadReportRequest {
            name: name.to_owned(),
        })
        .await
        .map_err(|s| describe(&s))?
        .into_inner();
    let to_stdout = out == Path::new("-");
    let mut file = if to_stdout {
        None
    } else {
        Some(
            tokio::fs::File::create(out)
                .await
                .with_context(|| format!("cannot create {}", out.display()))?,
        )
    };
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("downloading {bytes} {bytes_per_sec}")
            .expect("the template is valid"),
    );
    if quiet || to_stdout {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut total = 0u64;
    let mut stdout = tokio::io::stdout();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|s| describe(&s))?;
        total += chunk.data.len() as u64;
        bar.set_position(total);
        match file.as_mut() {
            Some(f) => f.write_all(&chunk.data).await?,
            None => quietly_on_broken_pipe(stdout.write_all(&chunk.data).await)?,
        }
    }
    match file.as_mut() {
        Some(f) => f.flush().await?,
        None => quietly_on_broken_pipe(stdout.flush().await)?,
    }
    bar.finish_and_clear();
    Ok(total)
}

/// Lists the finished reports: the responses of the report operations that
/// succeeded, newest first.
async fn list(clients: &mut Clients, limit: usize, format: Output) -> anyhow::Result<()> {
    let mut token = String::new();
    let mut shown = 0;
    if format == Output::Text {
        say!(
            "{:<46} {:<8} {:<5} {:>9} {:>12}  CREATED",
            "NAME",
            "MONTH",
            "TYPE",
            "ORDERS",
            "BYTES"
        );
    }
    while shown < limit {
        let page = clients
            .operations
            .list_operations(ListOperationsRequest {
                name: "operations".into(),
                filter: "kind = \"longrun.v1.ReportService.CreateReport\" AND state = SUCCEEDED"
                    .into(),
                page_size: i32::try_from(limit - shown).unwrap_or(1000).min(1000),
                page_token: token.clone(),
                return_partial_success: false,
            })
            .await
            .map_err(|s| describe(&s))?
            .into_inner();
        for op in &page.operations {
            let Some(operation::Result::Response(any)) = &op.result else {
                continue;
            };
            let Ok(report) = <Report as prost::Message>::decode(any.value.as_slice()) else {
                continue;
            };
            shown += 1;
            match format {
                Output::Json => say!("{}", super::output::json(&report)),
                Output::Text => {
                    let format = ReportFormat::try_from(report.format)
                        .map(|f| f.as_str_name().to_ascii_lowercase())
                        .unwrap_or_default();
                    let created = super::output::metadata(op)
                        .and_then(|m| m.end_time)
                        .as_ref()
                        .and_then(longrun::pb::system_time)
                        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                        .unwrap_or_default();
                    say!(
                        "{:<46} {:<8} {:<5} {:>9} {:>12}  {created}",
                        report.name,
                        report.month,
                        format,
                        report.order_count,
                        report.size_bytes
                    );
                }
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    Ok(())
}

pub(super) async fn run(cmd: ReportCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ReportCommand::Create {
            client,
            month,
            format,
            watch: follow,
            wait: block,
            out,
            currency,
            request_id,
            notify,
            run,
        } => {
            let mut clients = connect(&client).await?;
            let op = clients
                .reports
                .create_report(CreateReportRequest {
                    currency,
                    month,
                    format: format as i32,
                    request_id,
                    notification: super::notification(notify),
                    run: run.options(),
                })
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            if !follow && !block && out.is_none() {
                print(&op, client.output);
                return Ok(ExitCode::SUCCESS);
            }
            let code = if follow {
                watch(&mut clients, op.name.clone(), client.output).await?
            } else {
                wait(&mut clients, op.name.clone(), None, client.output).await?
            };
            if let Some(out) = out {
                let done = clients
                    .operations
                    .get_operation(longrun::pb::google::longrunning::GetOperationRequest {
                        name: op.name,
                    })
                    .await
                    .map_err(|s| describe(&s))?
                    .into_inner();
                if let Some(operation::Result::Response(any)) = done.result {
                    let report: Report = prost::Message::decode(any.value.as_slice())?;
                    let bytes = download(
                        &mut clients,
                        &report.name,
                        &out,
                        client.output == Output::Json,
                    )
                    .await?;
                    if client.output == Output::Text {
                        eprintln!(
                            "wrote {} ({bytes} bytes, sha256 {})",
                            out.display(),
                            report.sha256
                        );
                    }
                }
            }
            Ok(code)
        }
        ReportCommand::Read { client, name, out } => {
            let mut clients = connect(&client).await?;
            let report = clients
                .reports
                .get_report(GetReportRequest { name: name.clone() })
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            let bytes = download(&mut clients, &name, &out, client.output == Output::Json).await?;
            if client.output == Output::Json {
                say!(
                    "{}",
                    serde_json::json!({ "name": name, "bytes": bytes, "out": out, "sha256": report.sha256 })
                );
            } else if out != Path::new("-") {
                eprintln!(
                    "wrote {} ({bytes} bytes, sha256 {})",
                    out.display(),
                    report.sha256
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ReportCommand::List { client, limit } => {
            let mut clients = connect(&client).await?;
            list(&mut clients, limit, client.output).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
