//! `longrun ops list|get|wait|watch|cancel|delete|retry|deliveries`; cancel,
//! delete and retry act on one operation or, with `--filter`, start a bulk
//! operation over every match.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use tokio_stream::StreamExt;

use super::client::{Clients, connect, describe};
use super::output;
use super::{ClientArgs, Output, exit};
use longrun::pb::google::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
    Operation, WaitOperationRequest, operation,
};
use longrun::pb::longrun::v1::{
    ListDeliveriesRequest, MatchingRequest, RetryOperationRequest, WatchOperationRequest,
};

/// Operation commands.
#[derive(Debug, Subcommand)]
pub enum OpsCommand {
    /// List operations, newest first.
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// A filter such as 'done = false AND kind = "longrun.v1.Diagnostics.Sleep"'.
        #[arg(long, default_value = "")]
        filter: String,
        /// Operations per page (server default 50, at most 1000).
        #[arg(long, default_value_t = 0)]
        page_size: i32,
        /// Continue from a next_page_token.
        #[arg(long, default_value = "")]
        page_token: String,
        /// Follow next_page_token until the last page.
        #[arg(long)]
        all: bool,
    },
    /// Show one operation.
    Get {
        #[command(flatten)]
        client: ClientArgs,
        /// The operation: operations/{id}, or the bare id.
        #[arg(value_parser = super::operation_name)]
        name: String,
    },
    /// Block until the operation is done (or --timeout passes).
    Wait {
        #[command(flatten)]
        client: ClientArgs,
        /// The operation: operations/{id}, or the bare id.
        #[arg(value_parser = super::operation_name)]
        name: String,
        /// Give up after this long (e.g. 30s); by default wait until done.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
    /// Follow the operation live with a progress bar until it is done.
    Watch {
        #[command(flatten)]
        client: ClientArgs,
        /// The operation: operations/{id}, or the bare id.
        #[arg(value_parser = super::operation_name)]
        name: String,
    },
    /// Ask the operation to stop, or, with --filter, every unfinished one
    /// that matches (a bulk operation of its own).
    Cancel(Target),
    /// Forget a finished operation, or, with --filter, every done one that
    /// matches.
    Delete(Target),
    /// Put a failed, cancelled or aborted operation back in the queue as
    /// its next attempt, or, with --filter, every such one that matches.
    Retry(Target),
    /// List an operation's webhook deliveries.
    Deliveries {
        #[command(flatten)]
        client: ClientArgs,
        /// The operation: operations/{id}, or the bare id.
        #[arg(value_parser = super::operation_name)]
        name: String,
    },
}

/// One operation by name, or every operation a filter matches.
#[derive(Debug, clap::Args)]
pub struct Target {
    #[command(flatten)]
    client: ClientArgs,
    /// The operation: operations/{id}, or the bare id.
    #[arg(value_parser = super::operation_name, required_unless_present = "filter", conflicts_with = "filter")]
    name: Option<String>,
    /// Every operation of your tenant that matches, e.g.
    /// 'kind = "thumbnails" AND state = FAILED'.
    #[arg(long)]
    filter: Option<String>,
    /// With --filter: block until the bulk operation is done.
    #[arg(long, requires = "filter", conflicts_with = "watch")]
    wait: bool,
    /// With --filter: follow the bulk operation with a progress bar.
    #[arg(long, requires = "filter")]
    watch: bool,
}

/// What `ops cancel|delete|retry` does.
#[derive(Debug, Clone, Copy)]
enum Action {
    Cancel,
    Delete,
    Retry,
}

/// Acts on one operation, or starts the bulk operation over a filter.
async fn act(action: Action, target: Target) -> anyhow::Result<ExitCode> {
    let mut clients = connect(&target.client).await?;
    let format = target.client.output;
    if let Some(filter) = target.filter {
        let request = MatchingRequest {
            filter,
            ..MatchingRequest::default()
        };
        let bulk = &mut clients.bulk;
        let op = match action {
            Action::Cancel => bulk.cancel_matching(request).await,
            Action::Delete => bulk.delete_matching(request).await,
            Action::Retry => bulk.retry_matching(request).await,
        }
        .map_err(|s| describe(&s))?
        .into_inner();
        return answer_created(&mut clients, op, target.wait, target.watch, format).await;
    }
    let name = target.name.unwrap_or_default();
    match action {
        Action::Cancel => {
            clients
                .operations
                .cancel_operation(CancelOperationRequest { name: name.clone() })
                .await
                .map_err(|s| describe(&s))?;
            acknowledge(format, "cancel requested", &name);
        }
        Action::Delete => {
            clients
                .operations
                .delete_operation(DeleteOperationRequest { name: name.clone() })
                .await
                .map_err(|s| describe(&s))?;
            acknowledge(format, "deleted", &name);
        }
        Action::Retry => {
            let op = clients
                .bulk
                .retry_operation(RetryOperationRequest { name })
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            print(&op, format);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn run(cmd: OpsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        OpsCommand::List {
            client,
            filter,
            page_size,
            page_token,
            all,
        } => {
            let mut clients = connect(&client).await?;
            let mut token = page_token;
            let mut first = true;
            loop {
                let page = clients
                    .operations
                    .list_operations(ListOperationsRequest {
                        name: "operations".into(),
                        filter: filter.clone(),
                        page_size,
                        page_token: token.clone(),
                        return_partial_success: false,
                    })
                    .await
                    .map_err(|s| describe(&s))?
                    .into_inner();
                match client.output {
                    Output::Json => say!("{}", output::json(&page)),
                    Output::Text => {
                        if first {
                            say!(
                                "{:<48} {:<11} {:>5}  {:<30} CREATED",
                                "NAME",
                                "STATE",
                                "PROG",
                                "KIND"
                            );
                        }
                        for op in &page.operations {
                            say!("{}", output::row(op));
                        }
                        if !all && !page.next_page_token.is_empty() {
                            say!("next page: --page-token {}", page.next_page_token);
                        }
                    }
                }
                first = false;
                if !all || page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            Ok(ExitCode::SUCCESS)
        }
        OpsCommand::Get { client, name } => {
            let mut clients = connect(&client).await?;
            let op = clients
                .operations
                .get_operation(GetOperationRequest { name: name.clone() })
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            match client.output {
                // The operation in the proto3 JSON mapping, nothing added
                // (`ops deliveries` lists the deliveries).
                Output::Json => say!("{}", output::json(&op)),
                Output::Text => {
                    say!("{}", output::text(&op).trim_end());
                    let deliveries = deliveries(&mut clients, name).await?;
                    if deliveries.deliveries.is_empty() {
                        say!("webhooks:  none");
                    }
                    for d in &deliveries.deliveries {
                        say!("{}", output::delivery(d));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        OpsCommand::Deliveries { client, name } => {
            let mut clients = connect(&client).await?;
            let list = deliveries(&mut clients, name).await?;
            match client.output {
                Output::Json => say!("{}", output::json(&list)),
                Output::Text if list.deliveries.is_empty() => say!("no webhook deliveries"),
                Output::Text => {
                    for d in &list.deliveries {
                        say!("{}", output::delivery(d));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        OpsCommand::Wait {
            client,
            name,
            timeout,
        } => {
            let mut clients = connect(&client).await?;
            wait(&mut clients, name, timeout, client.output).await
        }
        OpsCommand::Watch { client, name } => {
            let mut clients = connect(&client).await?;
            watch(&mut clients, name, client.output).await
        }
        OpsCommand::Cancel(target) => act(Action::Cancel, target).await,
        OpsCommand::Delete(target) => act(Action::Delete, target).await,
        OpsCommand::Retry(target) => act(Action::Retry, target).await,
    }
}

async fn deliveries(
    clients: &mut Clients,
    name: String,
) -> anyhow::Result<longrun::pb::longrun::v1::ListDeliveriesResponse> {
    Ok(clients
        .notifications
        .list_deliveries(ListDeliveriesRequest { name })
        .await
        .map_err(|s| describe(&s))?
        .into_inner())
}

fn acknowledge(format: Output, what: &str, name: &str) {
    match format {
        Output::Json => say!("{}", serde_json::json!({ "name": name, "result": what })),
        Output::Text => say!("{what}: {name}"),
    }
}

/// What a create command does with the operation it made: follows it
/// (`--watch`), waits for it (`--wait`), or prints it.
pub(super) async fn answer_created(
    clients: &mut Clients,
    op: Operation,
    wait_for_it: bool,
    watch_it: bool,
    format: Output,
) -> anyhow::Result<ExitCode> {
    if watch_it {
        watch(clients, op.name, format).await
    } else if wait_for_it {
        wait(clients, op.name, None, format).await
    } else {
        print(&op, format);
        Ok(ExitCode::SUCCESS)
    }
}

/// Prints one operation in the chosen format.
pub(super) fn print(op: &Operation, format: Output) {
    match format {
        Output::Json => say!("{}", output::json(op)),
        Output::Text => say!("{}", output::text(op).trim_end()),
    }
}

/// Draws `op` on the bar: its progress, or, while it runs quietly, how far
/// along its estimate it should be by now; its state, ETA and message.
fn draw(bar: &ProgressBar, op: &Operation) {
    let Some(m) = output::metadata(op) else {
        return;
    };
    let reported = m.progress_percent.clamp(0, 100) as u64;
    let expected = output::expected_percent(&m).unwrap_or(0).min(99);
    bar.set_position(reported.max(expected));
    let eta = output::eta(&m)
        .map(|e| format!(" · {e}"))
        .unwrap_or_default();
    bar.set_message(format!(
        "{}{eta} {}",
        output::state_name(op),
        m.status_message
    ));
}

/// The exit code for a finished operation: 0 when it succeeded.
pub(super) fn outcome_code(op: &Operation) -> ExitCode {
    match op.result {
        Some(operation::Result::Response(_)) => ExitCode::SUCCESS,
        _ => exit::code(exit::FAILED),
    }
}

/// Waits with repeated WaitOperation calls until done or `timeout`.
pub(super) async fn wait(
    clients: &mut Clients,
    name: String,
    timeout: Option<Duration>,
    format: Output,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    loop {
        let remaining = timeout.map(|t| t.saturating_sub(started.elapsed()));
        let this_call = remaining
            .unwrap_or(Duration::MAX)
            .min(Duration::from_secs(60));
        let op = clients
            .operations
            .wait_operation(WaitOperationRequest {
                name: name.clone(),
                timeout: Some(prost_types::Duration {
                    seconds: this_call.as_secs() as i64,
                    nanos: this_call.subsec_nanos() as i32,
                }),
            })
            .await
            .map_err(|s| describe(&s))?
            .into_inner();
        if op.done || remaining.is_some_and(|r| r.is_zero() || r <= this_call) {
            print(&op, format);
            return Ok(if op.done {
                outcome_code(&op)
            } else {
                eprintln!(
                    "{} is still running after {}",
                    op.name,
                    output::short_duration(started.elapsed())
                );
                exit::code(exit::STILL_RUNNING)
            });
        }
    }
}

/// Follows WatchOperation, drawing a progress bar (text) or printing each
/// update as a JSON line.
pub(super) async fn watch(
    clients: &mut Clients,
    name: String,
    format: Output,
) -> anyhow::Result<ExitCode> {
    let mut stream = clients
        .watcher
        .watch_operation(WatchOperationRequest { name: name.clone() })
        .await
        .map_err(|s| describe(&s))?
        .into_inner();
    let bar = match format {
        Output::Text => {
            let bar = ProgressBar::new(100);
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{bar:40}] {pos:>3}% {wide_msg}")
                    .expect("the template is valid")
                    .progress_chars("=> "),
            );
            bar.set_prefix(name.clone());
            Some(bar)
        }
        Output::Json => None,
    };
    if let Some(bar) = &bar {
        eprintln!("following {name} (Ctrl-C stops following; the operation goes on)");
        bar.enable_steady_tick(Duration::from_millis(100));
    }
    // Between updates the bar moves on by itself, towards the estimate, so
    // that a long, quiet task does not look hung.
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last: Option<Operation> = None;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            _ = &mut interrupted => {
                if let Some(bar) = &bar {
                    bar.abandon();
                }
                eprintln!("stopped following {name}; it is still running (longrun ops watch {name})");
                return Ok(exit::code(exit::STILL_RUNNING));
            }
            _ = tick.tick(), if bar.is_some() && last.as_ref().is_some_and(|op| !op.done) => {
                if let (Some(bar), Some(op)) = (&bar, &last) {
                    draw(bar, op);
                }
                continue;
            }
        };
        let Some(item) = item else { break };
        let op = item.map_err(|s| describe(&s))?;
        match &bar {
            Some(bar) => draw(bar, &op),
            None => say!("{}", output::json(&op)),
        }
        last = Some(op);
    }
    let Some(op) = last.filter(|op| op.done) else {
        if let Some(bar) = bar {
            bar.abandon();
        }
        anyhow::bail!("the stream ended before the operation was done");
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
        say!("{}", output::text(&op).trim_end());
    }
    Ok(outcome_code(&op))
}
