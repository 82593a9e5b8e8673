//! `longrun orders generate|import`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::AsyncReadExt;

use super::client::{connect, describe};
use super::ops::{print, wait, watch};
use super::{ClientArgs, exit};
use longrun::model::order::Month;
use longrun::pb::google::longrunning::{GetOperationRequest, operation};
use longrun::pb::longrun::v1::{ImportOrdersRequest, ImportOrdersResponse};
use longrun::reports::generate::{Spec, write_csv};

/// Bytes per upload message.
const CHUNK: usize = 1 << 20;

/// Order commands.
#[derive(Debug, clap::Subcommand)]
pub enum OrdersCommand {
    /// Write a realistic, deterministic CSV of orders.
    Generate {
        /// How many orders.
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// The months they fall in, FIRST..LAST, e.g. 2024-01..2024-12.
        #[arg(long, default_value = "2024-01..2024-12", value_parser = parse_months)]
        months: (Month, Month),
        /// The random seed; the same seed gives the same file.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Upload a CSV file of orders and start importing it.
    Import {
        #[command(flatten)]
        client: ClientArgs,
        /// The CSV file.
        file: PathBuf,
        /// Follow the import with a progress bar until it is done.
        #[arg(long, conflicts_with = "wait")]
        watch: bool,
        /// Block until the import is done.
        #[arg(long)]
        wait: bool,
        /// An idempotency key (UUID).
        #[arg(long, default_value = "")]
        request_id: String,
        /// POST the finished operation to this URL (a signed webhook).
        #[arg(long)]
        notify: Option<String>,
        #[command(flatten)]
        run: Box<super::RunArgs>,
    },
}

fn parse_months(text: &str) -> Result<(Month, Month), String> {
    let (first, last) = text.split_once("..").unwrap_or((text, text));
    let first: Month = first.parse().map_err(|e| format!("{e}"))?;
    let last: Month = last.parse().map_err(|e| format!("{e}"))?;
    if last < first {
        return Err(format!("{last} comes before {first}"));
    }
    Ok((first, last))
}

pub(super) async fn run(cmd: OrdersCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        OrdersCommand::Generate {
            count,
            months,
            seed,
            out,
        } => {
            let spec = Spec {
                count,
                months,
                seed,
            };
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                match out {
                    Some(path) => {
                        let file = std::fs::File::create(&path)
                            .with_context(|| format!("cannot create {}", path.display()))?;
                        write_csv(&spec, &mut std::io::BufWriter::new(file))?;
                    }
                    None => write_csv(
                        &spec,
                        &mut std::io::BufWriter::new(std::io::stdout().lock()),
                    )?,
                }
                Ok(())
            })
            .await??;
            Ok(ExitCode::SUCCESS)
        }
        OrdersCommand::Import {
            client,
            file,
            watch: follow,
            wait: block,
            request_id,
            notify,
            run,
        } => {
            let mut clients = connect(&client).await?;
            let mut input = tokio::fs::File::open(&file)
                .await
                .with_context(|| format!("cannot open {}", file.display()))?;
            let size = input.metadata().await?.len();
            let bar = ProgressBar::new(size);
            bar.set_style(
                ProgressStyle::with_template(
                    "uploading [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .expect("the template is valid")
                .progress_chars("=> "),
            );
            if client.output == super::Output::Json {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let reader_bar = bar.clone();
            let reader = tokio::spawn(async move {
                let mut first = true;
                loop {
                    let mut chunk = vec![0u8; CHUNK];
                    let n = input.read(&mut chunk).await?;
                    if n == 0 {
                        return Ok::<(), std::io::Error>(());
                    }
                    chunk.truncate(n);
                    reader_bar.inc(n as u64);
                    let message = ImportOrdersRequest {
                        csv_chunk: chunk,
                        request_id: if first {
                            request_id.clone()
                        } else {
                            String::new()
                        },
                        notification: if first {
                            super::notification(notify.clone())
                        } else {
                            None
                        },
                        run: if first { run.options() } else { None },
                    };
                    first = false;
                    if tx.send(message).await.is_err() {
                        return Ok(());
                    }
                }
            });
            let reply = clients
                .reports
                .import_orders(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await;
            reader.await??;
            bar.finish_and_clear();
            let op = reply.map_err(|s| describe(&s))?.into_inner();
            if !follow && !block {
                print(&op, client.output);
                return Ok(ExitCode::SUCCESS);
            }
            let name = op.name.clone();
            let code = if follow {
                watch(&mut clients, op.name, client.output).await?
            } else {
                wait(&mut clients, op.name, None, client.output).await?
            };
            if code != ExitCode::SUCCESS {
                return Ok(code);
            }
            // Done: say how many rows went in, and fail when some were
            // skipped, so that a script notices.
            let done = clients
                .operations
                .get_operation(GetOperationRequest { name })
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            let Some(operation::Result::Response(any)) = done.result else {
                return Ok(code);
            };
            let result: ImportOrdersResponse = prost::Message::decode(any.value.as_slice())?;
            if client.output == super::Output::Text {
                eprintln!(
                    "imported {} rows, skipped {} malformed",
                    result.imported, result.failed
                );
                for e in result.errors.iter().take(10) {
                    eprintln!("  row {}: {}: {}", e.row, e.column, e.reason);
                }
                if result.errors.len() > 10 {
                    eprintln!("  ... (longrun ops get {} shows them all)", done.name);
                }
            }
            Ok(if result.failed > 0 {
                exit::code(exit::ROWS_SKIPPED)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
