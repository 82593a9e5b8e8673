//! `longrun queue list|pause|resume`: the queues of every kind, and an
//! admin's pause and resume.

use std::process::ExitCode;

use super::client::{connect, describe};
use super::output::json;
use super::{ClientArgs, Output};
use longrun::pb::longrun::v1::{GetQueueStatsRequest, PauseQueueRequest, ResumeQueueRequest};

/// Queue commands.
#[derive(Debug, clap::Subcommand)]
pub enum QueueCommand {
    /// Every kind's queue: what waits, what runs, the limit, and whether it
    /// is paused.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Pause a kind's queue on every node (admin): its operations are
    /// accepted and wait; none starts until it is resumed.
    Pause {
        #[command(flatten)]
        client: ClientArgs,
        /// The kind, e.g. `sleep` or `images.resize`.
        kind: String,
    },
    /// Resume a paused queue (admin): its backlog starts at once.
    Resume {
        #[command(flatten)]
        client: ClientArgs,
        /// The kind.
        kind: String,
    },
}

pub async fn run(command: QueueCommand) -> anyhow::Result<ExitCode> {
    match command {
        QueueCommand::List { client } => {
            let mut clients = connect(&client).await?;
            let stats = clients
                .console
                .get_queue_stats(GetQueueStatsRequest {})
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            if client.output == Output::Json {
                println!("{}", json(&stats));
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<40} {:>8} {:>8} {:>6}  STATE",
                "KIND", "QUEUED", "RUNNING", "LIMIT"
            );
            for q in stats.kinds {
                let limit = if q.concurrency > 0 {
                    q.concurrency.to_string()
                } else {
                    "-".to_owned()
                };
                let state = if q.paused { "paused" } else { "active" };
                println!(
                    "{:<40} {:>8} {:>8} {:>6}  {state}",
                    q.kind, q.queued, q.running, limit
                );
            }
        }
        QueueCommand::Pause { client, kind } => set(&client, kind, true).await?,
        QueueCommand::Resume { client, kind } => set(&client, kind, false).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Pauses or resumes `kind`'s queue and says what it is now.
async fn set(client: &ClientArgs, kind: String, paused: bool) -> anyhow::Result<()> {
    let mut queues = connect(client).await?.queues;
    let answer = if paused {
        queues.pause_queue(PauseQueueRequest { kind }).await
    } else {
        queues.resume_queue(ResumeQueueRequest { kind }).await
    };
    let queue = answer.map_err(|s| describe(&s))?.into_inner();
    match client.output {
        Output::Json => println!("{}", json(&queue)),
        Output::Text if queue.paused => println!("{} paused: its operations wait", queue.kind),
        Output::Text => println!("{} resumed", queue.kind),
    }
    Ok(())
}
