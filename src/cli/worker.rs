//! `longrun worker --kind K -- CMD`: the command line as an outside worker.
//! It leases operations of its kinds and runs CMD once per operation: the
//! payload on stdin (a StringValue's or BytesValue's content, other types
//! as their JSON), the response from stdout, progress from stderr lines
//! `progress PERCENT [MESSAGE]` (other stderr lines pass through). Exit 0
//! completes the operation; exit 75 (EX_TEMPFAIL) or death by a signal
//! fails it as retryable; any other status fails it for good. A
//! cancellation stops the command.
//!
//! `longrun enqueue --kind K TEXT` creates an operation of an outside kind.

use std::collections::HashMap;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use prost::Message;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::ClientArgs;
use super::client::{Connection, connect, describe};
use super::ops::answer_created;
use longrun::pb::google::rpc;
use longrun::pb::longrun::v1::lease_request::Message as FromWorker;
use longrun::pb::longrun::v1::lease_response::Message as ForWorker;
use longrun::pb::longrun::v1::workers_client::WorkersClient;
use longrun::pb::longrun::v1::{
    Assignment, CompleteRequest, EnqueueRequest, FailRequest, HeartbeatRequest, KindDeclaration,
    LeaseRequest, Subscribe,
};

/// Arguments of `longrun worker`.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// A kind to serve; repeat for several. A kind nobody declared yet is
    /// declared with the settings below.
    #[arg(long = "kind", required = true)]
    kinds: Vec<String>,
    /// How many commands may run at once.
    #[arg(long, default_value_t = 1)]
    capacity: u32,
    /// How long a lease lasts between heartbeats (sent every third of it).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    lease: Duration,
    /// Attempts per operation, when declaring the kind.
    #[arg(long, default_value_t = 3)]
    attempts: u32,
    /// Time limit per attempt, when declaring the kind.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Stop after this many operations (for scripts and tests).
    #[arg(long)]
    max_operations: Option<u64>,
    /// The command to run per operation, after `--`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Arguments of `longrun enqueue`.
#[derive(Debug, clap::Args)]
pub struct EnqueueArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The outside kind.
    #[arg(long)]
    kind: String,
    /// The payload, as a google.protobuf.StringValue; `-` reads stdin.
    text: String,
    /// An idempotency key (UUID).
    #[arg(long, default_value = "")]
    request_id: String,
    #[command(flatten)]
    run: super::RunArgs,
    /// Block until the operation is done.
    #[arg(long, conflicts_with = "watch")]
    wait: bool,
    /// Follow the operation with a live progress bar.
    #[arg(long)]
    watch: bool,
}

const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";
const BYTES_VALUE: &str = "type.googleapis.com/google.protobuf.BytesValue";

/// The exit status that asks for another attempt (sysexits' EX_TEMPFAIL).
const TEMPFAIL: i32 = 75;

pub(super) async fn enqueue(args: EnqueueArgs) -> anyhow::Result<ExitCode> {
    let text = if args.text == "-" {
        let mut text = String::new();
        tokio::io::stdin().read_to_string(&mut text).await?;
        text
    } else {
        args.text.clone()
    };
    let mut clients = connect(&args.client).await?;
    let op = clients
        .jobs
        .enqueue(EnqueueRequest {
            kind: args.kind.clone(),
            payload: Some(prost_types::Any {
                type_url: STRING_VALUE.into(),
                value: text.encode_to_vec(),
            }),
            request_id: args.request_id.clone(),
            run: args.run.options(),
            ..EnqueueRequest::default()
        })
        .await
        .map_err(|s| describe(&s))?
        .into_inner();
    answer_created(&mut clients, op, args.wait, args.watch, args.client.output).await
}

/// What the command reads on stdin for a payload.
fn stdin_of(payload: Option<&prost_types::Any>) -> Vec<u8> {
    let Some(any) = payload else {
        return Vec::new();
    };
    match any.type_url.as_str() {
        STRING_VALUE => String::decode(any.value.as_slice())
            .map(String::into_bytes)
            .unwrap_or_default(),
        BYTES_VALUE => Vec::<u8>::decode(any.value.as_slice()).unwrap_or_default(),
        url => {
            let pool = longrun::pb::descriptor_pool();
            let name = url.rsplit('/').next().unwrap_or_default();
            pool.get_message_by_name(name)
                .and_then(|d| prost_reflect::DynamicMessage::decode(d, any.value.as_slice()).ok())
                .and_then(|m| serde_json::to_vec(&m).ok())
                .unwrap_or_else(|| any.value.clone())
        }
    }
}

/// The response for what the command printed.
fn response_of(stdout: Vec<u8>) -> prost_types::Any {
    match String::from_utf8(stdout) {
        Ok(text) => prost_types::Any {
            type_url: STRING_VALUE.into(),
            value: text.encode_to_vec(),
        },
        Err(e) => prost_types::Any {
            type_url: BYTES_VALUE.into(),
            value: e.into_bytes().encode_to_vec(),
        },
    }
}

/// A `progress PERCENT [MESSAGE]` line.
fn progress_line(line: &str) -> Option<(i32, String)> {
    let rest = line.strip_prefix("progress ")?;
    let (percent, message) = rest.split_once(' ').unwrap_or((rest, ""));
    let percent = percent.trim_end_matches('%').parse::<i32>().ok()?;
    Some((percent.clamp(0, 100), message.trim().to_owned()))
}

pub(super) async fn run(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let clients = connect(&args.client).await?;
    let mut workers = clients.workers;
    let kinds = args
        .kinds
        .iter()
        .map(|name| KindDeclaration {
            name: name.clone(),
            max_attempts: args.attempts as i32,
            attempt_timeout: args.timeout.map(longrun::pb::duration),
            concurrency: 0,
            lease_duration: Some(longrun::pb::duration(args.lease)),
        })
        .collect();
    let (sender, receiver) = mpsc::channel(8);
    sender
        .send(LeaseRequest {
            message: Some(FromWorker::Subscribe(Subscribe {
                kinds,
                capacity: args.capacity.max(1) as i32,
                worker_name: format!("longrun worker (pid {})", std::process::id()),
            })),
        })
        .await?;
    let mut stream = workers
        .lease(ReceiverStream::new(receiver))
        .await
        .map_err(|s| describe(&s))?
        .into_inner();
    eprintln!(
        "serving {} with: {}",
        args.kinds.join(", "),
        args.command.join(" ")
    );
    let running: Arc<Mutex<HashMap<String, CancellationToken>>> = Arc::default();
    let (finished_tx, mut finished_rx) = mpsc::unbounded_channel::<()>();
    let mut started = 0u64;
    let mut finished = 0u64;
    let command = Arc::new(args.command.clone());
    loop {
        if args.max_operations.is_some_and(|max| finished >= max) {
            break;
        }
        let can_take = args.max_operations.is_none_or(|max| started < max);
        tokio::select! {
            message = stream.message(), if can_take => {
                let Some(message) = message.map_err(|s| describe(&s))? else {
                    break;
                };
                match message.message {
                    Some(ForWorker::Assignment(a)) => {
                        started += 1;
                        let cancel = CancellationToken::new();
                        running.lock().unwrap_or_else(|e| e.into_inner()).insert(a.name.clone(), cancel.clone());
                        let workers = workers.clone();
                        let command = Arc::clone(&command);
                        let running = Arc::clone(&running);
                        let finished_tx = finished_tx.clone();
                        let lease = args.lease;
                        tokio::spawn(async move {
                            let name = a.name.clone();
                            if let Err(e) = run_one(workers, &command, a, lease, cancel).await {
                                eprintln!("{name}: {e:#}");
                            }
                            running.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
                            let _ = finished_tx.send(());
                        });
                    }
                    Some(ForWorker::Cancellation(c)) => {
                        if let Some(cancel) = running.lock().unwrap_or_else(|e| e.into_inner()).get(&c.name) {
                            cancel.cancel();
                        }
                    }
                    None => {}
                }
            }
            Some(()) = finished_rx.recv() => finished += 1,
        }
    }
    drop(sender);
    Ok(ExitCode::SUCCESS)
}

/// Runs the command for one assignment and reports how it ended.
async fn run_one(
    mut workers: WorkersClient<Connection>,
    command: &[String],
    a: Assignment,
    lease: Duration,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut command_line = tokio::process::Command::new(&command[0]);
    command_line
        .args(&command[1..])
        .env("LONGRUN_OPERATION", &a.name)
        .env("LONGRUN_ATTEMPT", a.attempt.to_string())
        .env("LONGRUN_KIND", &a.kind)
        .env("LONGRUN_TENANT", &a.tenant);
    // The attempt's span, where OpenTelemetry's environment propagators
    // look for it, so that the command's spans continue the trace.
    for (name, value) in [
        ("TRACEPARENT", &a.traceparent),
        ("TRACESTATE", &a.tracestate),
    ] {
        if !value.is_empty() {
            command_line.env(name, value);
        }
    }
    let mut child = command_line
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {}", command[0]))?;
    let input = stdin_of(a.payload.as_ref());
    let mut stdin = child.stdin.take().context("stdin")?;
    let writing = tokio::spawn(async move {
        let _ = stdin.write_all(&input).await;
    });
    let mut stdout = child.stdout.take().context("stdout")?;
    let reading = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out).await;
        out
    });
    let (progress_tx, progress_rx) = watch::channel((0, String::new()));
    let last_error = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().context("stderr")?;
    let errors = Arc::clone(&last_error);
    let name = a.name.clone();
    let relaying = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match progress_line(&line) {
                Some(progress) => {
                    let _ = progress_tx.send(progress);
                }
                None => {
                    eprintln!("{name}: {line}");
                    *errors.lock().unwrap_or_else(|e| e.into_inner()) = line;
                }
            }
        }
    });
    let mut beat = tokio::time::interval((lease / 3).max(Duration::from_millis(50)));
    let mut cancelled = false;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            _ = beat.tick() => {
                let (percent, message) = progress_rx.borrow().clone();
                match workers
                    .heartbeat(HeartbeatRequest {
                        name: a.name.clone(),
                        attempt: a.attempt,
                        progress_percent: percent,
                        status_message: message,
                        lease_token: a.lease_token.clone(),
                    })
                    .await
                {
                    Ok(answer) if answer.get_ref().cancel_requested && !cancelled => {
                        cancelled = true;
                        let _ = child.start_kill();
                    }
                    Ok(_) => {}
                    Err(status) => {
                        // The lease is gone (stale attempt): stop; the
                        // operation is someone else's now.
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                        return Err(describe(&status));
                    }
                }
            }
            () = cancel.cancelled(), if !cancelled => {
                cancelled = true;
                let _ = child.start_kill();
            }
        }
    };
    let _ = writing.await;
    let _ = relaying.await;
    let stdout = reading.await.unwrap_or_default();
    let error = |code: i32, reason: &str, message: String| rpc::Status {
        code,
        message,
        details: vec![prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.ErrorInfo".into(),
            value: rpc::ErrorInfo {
                reason: reason.into(),
                domain: "longrun.worker".into(),
                metadata: Default::default(),
            }
            .encode_to_vec(),
        }],
    };
    let last = last_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let failed = |status: rpc::Status, retryable: bool| FailRequest {
        name: a.name.clone(),
        attempt: a.attempt,
        error: Some(status),
        retryable,
        lease_token: a.lease_token.clone(),
    };
    let outcome = if cancelled {
        Err(failed(
            error(
                1,
                "CANCELLED",
                "stopped: the operation was cancelled".into(),
            ),
            false,
        ))
    } else {
        match status.code() {
            Some(0) => Ok(()),
            Some(TEMPFAIL) => Err(failed(
                error(
                    14,
                    "COMMAND_TEMPFAIL",
                    format!("the command asked to be retried: {last}"),
                ),
                true,
            )),
            Some(code) => Err(failed(
                error(
                    2,
                    "COMMAND_FAILED",
                    format!("the command exited with {code}: {last}"),
                ),
                false,
            )),
            None => Err(failed(
                error(
                    14,
                    "COMMAND_KILLED",
                    "the command was killed by a signal".into(),
                ),
                true,
            )),
        }
    };
    match outcome {
        Ok(()) => {
            workers
                .complete(CompleteRequest {
                    name: a.name.clone(),
                    attempt: a.attempt,
                    response: Some(response_of(stdout)),
                    lease_token: a.lease_token.clone(),
                })
                .await
                .map_err(|s| describe(&s))?;
        }
        Err(request) => {
            workers.fail(request).await.map_err(|s| describe(&s))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_are_read_and_others_are_not() {
        assert_eq!(
            progress_line("progress 40 halfway"),
            Some((40, "halfway".into()))
        );
        assert_eq!(progress_line("progress 100%"), Some((100, String::new())));
        assert_eq!(
            progress_line("progress 250 too much"),
            Some((100, "too much".into()))
        );
        assert_eq!(progress_line("progressive"), None);
        assert_eq!(progress_line("progress x"), None);
    }
}
