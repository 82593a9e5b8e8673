//! `longrun sleep DURATION`: starts a Diagnostics.Sleep operation.

use std::process::ExitCode;
use std::time::Duration;

use super::ClientArgs;
use super::client::{connect, describe};
use super::ops::{print, wait, watch};
use crate::pb::longrun::v1::SleepRequest;

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
    /// An idempotency key (UUID): repeating it returns the same operation.
    #[arg(long, default_value = "")]
    request_id: String,
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
            duration: Some(prost_types::Duration {
                seconds: args.duration.as_secs() as i64,
                nanos: args.duration.subsec_nanos() as i32,
            }),
            steps: args.steps,
            fail_code: args.fail_code,
            request_id: args.request_id,
        })
        .await
        .map_err(|s| describe(&s))?
        .into_inner();
    if args.watch {
        watch(&mut clients, op.name, args.client.output).await
    } else if args.wait {
        wait(&mut clients, op.name, None, args.client.output).await
    } else {
        print(&op, args.client.output);
        Ok(ExitCode::SUCCESS)
    }
}
