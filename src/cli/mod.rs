//! The `longrun` command line: `serve` runs the server; the other commands
//! are gRPC clients of a running one.

/// Prints a line to stdout. When the reader has gone (`longrun ops list |
/// head`), the command ends quietly, as other command-line tools do,
/// instead of panicking on the broken pipe.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            panic!("cannot write to stdout: {e}");
        }
    }};
}

mod auth;
mod batch;
mod bench;
pub(crate) mod client;
mod ops;
mod orders;
mod output;
mod queue;
mod report;
mod schedule;
mod serve;
mod sleep;
mod webhook;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

pub use self::serve::{DEFAULT_METRICS_LISTEN, MetricsListen, ServeArgs};

/// A gRPC server for long-running operations.
#[derive(Debug, Parser)]
#[command(name = "longrun", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Inspect and manage operations on a running server.
    #[command(subcommand)]
    Ops(ops::OpsCommand),
    /// Start a Diagnostics.Sleep operation, e.g. `longrun sleep 5s --watch`.
    Sleep(sleep::SleepArgs),
    /// Generate and import order files.
    #[command(subcommand)]
    Orders(orders::OrdersCommand),
    /// Create and download monthly reports.
    #[command(subcommand)]
    Report(report::ReportCommand),
    /// Webhooks: print the signing secret, verify a delivery, or receive
    /// deliveries to try them out.
    #[command(subcommand)]
    Webhook(webhook::WebhookCommand),
    /// Authentication: make tokens for the auth file.
    #[command(subcommand)]
    Auth(auth::AuthCommand),
    /// Measure a server under load (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Serve outside kinds by running a command per operation, e.g.
    /// `longrun worker --kind thumbnails -- ./make-thumbnail.sh`.
    Worker(worker::WorkerArgs),
    /// Create an operation of an outside kind, e.g.
    /// `longrun enqueue --kind thumbnails cat.png --wait`.
    Enqueue(worker::EnqueueArgs),
    /// The queues of every kind; pause and resume one (admin), e.g.
    /// `longrun queue pause sleep`.
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// Schedules: work on a clock, e.g. `longrun schedule create nightly
    /// --kind sleep --cron '0 3 * * *' --tz Europe/Berlin`.
    #[command(subcommand)]
    Schedule(Box<schedule::ScheduleCommand>),
    /// Batches: many operations followed as one, e.g. `longrun batch
    /// create --file children.jsonl --watch`.
    #[command(subcommand)]
    Batch(batch::BatchCommand),
    /// Print the HTTP/JSON API's OpenAPI 3.1 document (what GET
    /// /v1/openapi.json serves), e.g. for generating client types.
    Openapi,
}

/// Options every client command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The server to talk to.
    #[arg(long, env = "LONGRUN_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
    /// How to print results: text for people, json for scripts.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// The bearer token to authenticate with.
    #[arg(long, env = "LONGRUN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Trust this PEM CA for the server's certificate (implies TLS).
    #[arg(long, env = "LONGRUN_CA")]
    pub ca: Option<std::path::PathBuf>,
    /// Present this PEM client certificate (mTLS; implies TLS).
    #[arg(long, env = "LONGRUN_CERT", requires = "key")]
    pub cert: Option<std::path::PathBuf>,
    /// The PEM private key of --cert.
    #[arg(long, env = "LONGRUN_KEY", requires = "cert")]
    pub key: Option<std::path::PathBuf>,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable text.
    Text,
    /// One JSON document per result (proto3 JSON mapping).
    Json,
}

/// What a client command's exit status says.
pub mod exit {
    use std::process::ExitCode;

    /// (0: done, and it succeeded.)
    /// The operation followed ended failed or cancelled.
    pub const FAILED: u8 = 1;
    /// The command itself failed (a bad flag, an unreachable server, a
    /// refused call).
    pub const ERROR: u8 = 2;
    /// The operation is still running: `--timeout` passed, or Ctrl-C
    /// stopped following it.
    pub const STILL_RUNNING: u8 = 3;
    /// An import succeeded but skipped malformed rows.
    pub const ROWS_SKIPPED: u8 = 4;

    /// The exit code `code`.
    pub fn code(code: u8) -> ExitCode {
        ExitCode::from(code)
    }
}

/// An operation's name as given: `operations/{id}`, or the bare id (as the
/// dashboard shows it).
pub fn operation_name(text: &str) -> Result<String, String> {
    resource_name("operations", text)
}

/// A report's name as given: `reports/{id}`, or the bare id.
pub fn report_name(text: &str) -> Result<String, String> {
    resource_name("reports", text)
}

fn resource_name(collection: &str, text: &str) -> Result<String, String> {
    let text = text.trim();
    if uuid::Uuid::parse_str(text).is_ok() {
        return Ok(format!("{collection}/{text}"));
    }
    match text.split_once('/') {
        Some((c, id)) if c == collection && uuid::Uuid::parse_str(id).is_ok() => {
            Ok(text.to_owned())
        }
        _ => Err(format!(
            "{text:?} is not a name: {collection}/ID or the bare ID (a UUID)"
        )),
    }
}

/// The NotificationConfig for a `--notify URL` flag.
fn notification(url: Option<String>) -> Option<longrun::pb::longrun::v1::NotificationConfig> {
    url.map(
        |callback_url| longrun::pb::longrun::v1::NotificationConfig {
            callback_url,
            events: Vec::new(),
        },
    )
}

/// How a created operation runs: the flags behind RunOptions.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Higher starts first among the kind's queued operations (default 0).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// The concurrency key the kind's per-key limits count it under (a
    /// customer id, say; at most 128 bytes).
    #[arg(long)]
    concurrency_key: Option<String>,
    /// Not to start before this time (RFC 3339, e.g. 2026-12-24T09:00:00Z).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak, conflicts_with = "delay")]
    start_at: Option<std::time::SystemTime>,
    /// Not to start before this long from now, e.g. 10m.
    #[arg(long, value_parser = humantime::parse_duration)]
    delay: Option<std::time::Duration>,
    /// Not started by this time (RFC 3339), it ends without running.
    #[arg(long, value_parser = humantime::parse_rfc3339_weak, conflicts_with = "ttl")]
    expire_at: Option<std::time::SystemTime>,
    /// Not started this long from now, it ends without running, e.g. 1h.
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<std::time::Duration>,
}

impl RunArgs {
    /// The RunOptions the flags ask for (none for the defaults).
    fn options(&self) -> Option<longrun::pb::longrun::v1::RunOptions> {
        let options = longrun::pb::longrun::v1::RunOptions {
            priority: self.priority,
            concurrency_key: self.concurrency_key.clone().unwrap_or_default(),
            start_time: self.start_at.map(longrun::pb::timestamp),
            start_delay: self.delay.map(longrun::pb::duration),
            expire_time: self.expire_at.map(longrun::pb::timestamp),
            ttl: self.ttl.map(longrun::pb::duration),
        };
        (options != longrun::pb::longrun::v1::RunOptions::default()).then_some(options)
    }
}

/// Runs a client command (anything but `serve`) and returns the process
/// exit code (see [`exit`]).
pub async fn run_client(command: Command) -> ExitCode {
    let result = match command {
        Command::Serve(_) => unreachable!("serve is handled by main"),
        Command::Ops(cmd) => ops::run(cmd).await,
        Command::Sleep(args) => sleep::run(args).await,
        Command::Orders(cmd) => orders::run(cmd).await,
        Command::Report(cmd) => report::run(cmd).await,
        Command::Webhook(cmd) => webhook::run(cmd).await,
        Command::Auth(cmd) => auth::run(cmd),
        Command::Bench(cmd) => bench::run(cmd).await.map(|()| ExitCode::SUCCESS),
        Command::Worker(args) => worker::run(args).await,
        Command::Enqueue(args) => worker::enqueue(args).await,
        Command::Queue(cmd) => queue::run(cmd).await,
        Command::Schedule(cmd) => schedule::run(*cmd).await,
        Command::Batch(cmd) => batch::run(cmd).await,
        Command::Openapi => {
            say!("{}", longrun::http::openapi_json());
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::code(exit::ERROR)
        }
    }
}
