//! `longrun batch create --file children.jsonl`: one batch from a file of
//! child requests (an EnqueueRequest in JSON per line), streamed to the
//! server so that a file of any length is sent in constant memory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use tokio::io::AsyncBufReadExt;
use tokio_stream::wrappers::ReceiverStream;

use super::ClientArgs;
use super::client::{connect, describe};
use super::ops::answer_created;
use longrun::pb::longrun::v1::{BatchPolicy, CreateBatchRequest, EnqueueRequest};

/// Children sent in one message of the stream.
const CHILDREN_PER_MESSAGE: usize = 1000;

/// Batch commands.
#[derive(Debug, Subcommand)]
pub enum BatchCommand {
    /// Create a batch from a file with one child request per line, e.g.
    /// {"kind": "longrun.v1.Diagnostics.Sleep", "payload": {"@type":
    /// "type.googleapis.com/longrun.v1.SleepRequest", "duration": "1s"}}.
    Create(CreateArgs),
}

/// When the batch ends.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Policy {
    /// When every child has ended; it fails if any did.
    WaitAll,
    /// At the first failed child, whose failure cancels the rest.
    FailFast,
}

/// Arguments of `longrun batch create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The children: a JSON EnqueueRequest per line (blank lines and lines
    /// starting with # are skipped).
    #[arg(long)]
    file: PathBuf,
    #[arg(long, value_enum, default_value_t = Policy::WaitAll)]
    policy: Policy,
    /// An open batch this one joins as a child.
    #[arg(long, value_parser = super::operation_name)]
    parent: Option<String>,
    /// POST the finished batch to this URL (a signed webhook).
    #[arg(long)]
    notify: Option<String>,
    /// Block until the whole batch is done.
    #[arg(long, conflicts_with = "watch")]
    wait: bool,
    /// Follow the whole batch with a live progress bar.
    #[arg(long)]
    watch: bool,
}

pub(super) async fn run(cmd: BatchCommand) -> anyhow::Result<ExitCode> {
    let BatchCommand::Create(args) = cmd;
    // The whole file is read once first, so that a bad line is found
    // before the batch exists rather than leaving half a batch.
    let mut count = 0u64;
    let mut children = Children::open(&args.file).await?;
    while children.next().await?.is_some() {
        count += 1;
    }
    let mut clients = connect(&args.client).await?;
    let first = CreateBatchRequest {
        policy: match args.policy {
            Policy::WaitAll => BatchPolicy::WaitAll,
            Policy::FailFast => BatchPolicy::FailFast,
        } as i32,
        parent: args.parent.unwrap_or_default(),
        notification: super::notification(args.notify),
        children: Vec::new(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut children = Children::open(&args.file).await?;
    let sender = tokio::spawn(async move {
        let mut message = first;
        while let Some(child) = children.next().await? {
            message.children.push(child);
            if message.children.len() == CHILDREN_PER_MESSAGE
                && tx.send(std::mem::take(&mut message)).await.is_err()
            {
                // The call ended; its answer says why.
                return Ok(());
            }
        }
        tx.send(message).await.ok();
        anyhow::Ok(())
    });
    let op = clients
        .batches
        .stream_batch(ReceiverStream::new(rx))
        .await
        .map_err(|s| describe(&s))?
        .into_inner();
    sender.await??;
    eprintln!("{}: {count} children", op.name);
    answer_created(&mut clients, op, args.wait, args.watch, args.client.output).await
}

/// The children of a file, read a line at a time.
struct Children {
    path: PathBuf,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::fs::File>>,
    number: u64,
}

impl Children {
    async fn open(path: &Path) -> anyhow::Result<Self> {
        let file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("could not open {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            lines: tokio::io::BufReader::new(file).lines(),
            number: 0,
        })
    }

    /// The next child; a bad line is an error naming it.
    async fn next(&mut self) -> anyhow::Result<Option<EnqueueRequest>> {
        while let Some(line) = self.lines.next_line().await? {
            self.number += 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            return longrun::pb::from_json::<EnqueueRequest>(line.as_bytes())
                .map(Some)
                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", self.path.display(), self.number));
        }
        Ok(None)
    }
}
