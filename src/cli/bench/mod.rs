//! `longrun bench`: load generators over real gRPC, for BENCHMARKS.md.
//!
//! Each scenario drives a running server (`--server`) or, by default,
//! starts its own `longrun serve` child process on a temporary data
//! directory, so that the server's memory and disk can be measured apart
//! from the load generator's.

mod churn;
mod reports;
mod target;

use std::time::Duration;

use clap::Subcommand;

use super::Output;

/// Options shared by every scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Drive this server instead of starting one.
    #[arg(long)]
    pub server: Option<String>,
    /// Concurrent client tasks.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// gRPC connections the tasks share.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// The started server's --sync mode.
    #[arg(long, default_value = "always")]
    pub sync: String,
    /// The started server's --workers (default: its own default).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Print results as a table (text) or JSON.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Steady stream of operations with a short retention: data-directory
    /// size and server RSS over time must stay flat.
    Churn {
        #[command(flatten)]
        common: Common,
        /// How many operations to create in all.
        #[arg(long, default_value_t = 200_000)]
        count: u64,
        /// The started server's --retention.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        retention: Duration,
        /// How often to sample size and memory.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        sample_every: Duration,
        /// How long to keep sampling after the last create, to watch expiry.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        tail: Duration,
    },

    /// Import generated orders, then render one month: rows per second for
    /// each, and the server's peak RSS.
    Reports {
        #[command(flatten)]
        common: Common,
        /// How many orders to import.
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
        /// How many months they spread over (from 2024-01); a month then
        /// holds about count / months orders.
        #[arg(long, default_value_t = 10)]
        months: u8,
        /// The random seed of the generated file.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// Runs a benchmark scenario.
pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Churn {
            common,
            count,
            retention,
            sample_every,
            tail,
        } => churn::run(common, count, retention, sample_every, tail).await,
        BenchCommand::Reports {
            common,
            count,
            months,
            seed,
        } => reports::run(common, count, months, seed).await,
    }
}
