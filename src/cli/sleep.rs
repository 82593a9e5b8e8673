//! `longrun sleep DURATION`: starts a Diagnostics.Sleep operation.

use std::process::ExitCode;
use std::time::Duration;

use super::ClientArgs;
use super::client::{connect, describe};
use super::ops::answer_created;
use longrun::pb::longrun::v1::SleepRequest;

/// Arguments of `longrun sleep`.
#[derive(Debug, clap::Args)]
pub struct SleepArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// How long the operation runs, e.g. 5s or 1m30s.
    #[arg(value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Progress updates spread over the duration.
    #[arg(long, default_value_t = 10)]
    steps: i32,
    /// End with this google.rpc.Code instead of succeeding (1-16).
    #[arg(long, default_value_t = 0)]
    fail_code: i32,
    /// Fail the first N attempts with a retryable error, to watch retries.
    #[arg(long, default_value_t = 0)]
    fail_attempts: i32,
    /// A shorter timeout per attempt than the server's default, e.g. 2s.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// An idempotency key (UUID): repeating it returns the same operation.
    #[arg(long, default_value = "")]
    request_id: String,
    /// POST the finished operation to this URL (a signed webhook).
    #[arg(long)]
    notify: Option<String>,
    #[command(flatten)]
    run: super::RunArgs,
    /// Block until the operation is done.
    #[arg(long, conflicts_with = "watch")]
    wait: bool,
    /// Follow the operation with a live progress bar.
    #[arg(long)]
    watch: bool,
}

pub(super) async fn run(args: SleepArgs) -> anyhow::Result<ExitCode> {
    let mut clients = connect(&args.client).await?;
    let op = clients
        .diagnostics
        .sleep(SleepRequest {
            duration: Some(longrun::pb::duration(args.duration)),
            steps: args.steps,
            fail_code: args.fail_code,
            request_id: args.request_id,
            fail_attempts: args.fail_attempts,
            timeout: args.timeout.map(longrun::pb::duration),
            notification: super::notification(args.notify),
            run: args.run.options(),
        })
        .await
        .map_err(|s| describe(&s))?
        .into_inner();
    answer_created(&mut clients, op, args.wait, args.watch, args.client.output).await
}
