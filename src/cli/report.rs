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
use longrun::pb::google::longrunning::operation;
use longrun::pb::longrun::v1::{CreateReportRequest, ReadReportRequest, Report, ReportFormat};

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
        #[arg(long)]
        watch: bool,
        /// Download the finished report to this file.
        #[arg(long)]
        out: Option<PathBuf>,
        /// An idempotency key (UUID).
        #[arg(long, default_value = "")]
        request_id: String,
        /// POST the finished operation to this URL (a signed webhook).
        #[arg(long)]
        notify: Option<String>,
    },
    /// Download a finished report.
    Read {
        #[command(flatten)]
        client: ClientArgs,
        /// The report, reports/{id}.
        name: String,
        /// The file to write; - for standard output.
        #[arg(long)]
        out: PathBuf,
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
            None => stdout.write_all(&chunk.data).await?,
        }
    }
    match file.as_mut() {
        Some(f) => f.flush().await?,
        None => stdout.flush().await?,
    }
    bar.finish_and_clear();
    Ok(total)
}

pub(super) async fn run(cmd: ReportCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ReportCommand::Create {
            client,
            month,
            format,
            watch: follow,
            out,
            request_id,
            notify,
        } => {
            let mut clients = connect(&client).await?;
            let op = clients
                .reports
                .create_report(CreateReportRequest {
                    month,
                    format: format as i32,
                    request_id,
                    notification: super::notification(notify),
                })
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            if !follow && out.is_none() {
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
            let bytes = download(&mut clients, &name, &out, client.output == Output::Json).await?;
            if client.output == Output::Json {
                say!(
                    "{}",
                    serde_json::json!({ "name": name, "bytes": bytes, "out": out })
                );
            } else if out != Path::new("-") {
                eprintln!("wrote {} ({bytes} bytes)", out.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
