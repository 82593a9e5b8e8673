//! `longrun queue list|pause|resume|limit|unlimit|limits`: the queues of
//! every kind, and an admin's pause, resume and limits.

use std::process::ExitCode;

use super::client::{connect, describe};
use super::output::json;
use super::{ClientArgs, Output};
use longrun::pb::longrun::v1::{
    DeleteLimitRequest, GetQueueStatsRequest, Limit, ListLimitsRequest, PauseQueueRequest,
    ResumeQueueRequest, SetLimitRequest,
};

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
    /// Set a limit of a kind on every node (admin), replacing the kind's
    /// limit of the same scope: `queue limit partner.sync --scope key
    /// --concurrency 2 --rate 10/s --rate 500/h`.
    Limit {
        #[command(flatten)]
        client: ClientArgs,
        /// The kind.
        kind: String,
        /// What it counts over: kind (all of it), key (each concurrency key)
        /// or tenant (each tenant).
        #[arg(long, default_value = "kind")]
        scope: String,
        /// At most this many at once.
        #[arg(long, allow_negative_numbers = true)]
        concurrency: Option<i64>,
        /// A token bucket, COUNT/UNIT[:burst=N] (unit s, m, h or d); repeat
        /// it to stack several.
        #[arg(long = "rate")]
        rates: Vec<String>,
    },
    /// Remove a limit of a kind (admin).
    Unlimit {
        #[command(flatten)]
        client: ClientArgs,
        /// The kind.
        kind: String,
        /// kind, key or tenant.
        #[arg(long, default_value = "kind")]
        scope: String,
    },
    /// Every kind's limits (admin).
    Limits {
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// A limit in one line: `key: 2 at once, 10/s, 500/h`.
fn describe_limit(limit: &Limit) -> String {
    let mut parts = Vec::new();
    if limit.concurrency > 0 {
        parts.push(format!("{} at once", limit.concurrency));
    }
    parts.extend(limit.rates.iter().cloned());
    format!("{}: {}", limit.scope, parts.join(", "))
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
                for used in &q.limits {
                    let Some(limit) = &used.limit else { continue };
                    let at = match (limit.scope.as_str(), used.at_limit) {
                        ("kind", n) => format!("{n} running"),
                        (scope, 1) => format!("1 {scope} at its limit"),
                        (scope, n) => format!("{n} {scope}s at their limit"),
                    };
                    println!("    limit {}  ({at})", describe_limit(limit));
                }
            }
        }
        QueueCommand::Limit {
            client,
            kind,
            scope,
            concurrency,
            rates,
        } => {
            let mut queues = connect(&client).await?.queues;
            let limit = queues
                .set_limit(SetLimitRequest {
                    kind,
                    scope,
                    concurrency: concurrency.unwrap_or(0),
                    rates,
                })
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            match client.output {
                Output::Json => println!("{}", json(&limit)),
                Output::Text => println!("{} limited, {}", limit.kind, describe_limit(&limit)),
            }
        }
        QueueCommand::Unlimit {
            client,
            kind,
            scope,
        } => {
            let mut queues = connect(&client).await?.queues;
            let answer = queues
                .delete_limit(DeleteLimitRequest {
                    kind: kind.clone(),
                    scope: scope.clone(),
                })
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            match client.output {
                Output::Json => println!("{}", json(&answer)),
                Output::Text if answer.deleted => println!("{kind}: the {scope} limit is removed"),
                Output::Text => println!("{kind} had no {scope} limit"),
            }
        }
        QueueCommand::Limits { client } => {
            let mut queues = connect(&client).await?.queues;
            let list = queues
                .list_limits(ListLimitsRequest {})
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            if client.output == Output::Json {
                println!("{}", json(&list));
                return Ok(ExitCode::SUCCESS);
            }
            if list.limits.is_empty() {
                println!("no limits");
            }
            for limit in &list.limits {
                println!("{:<40} {}", limit.kind, describe_limit(limit));
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
