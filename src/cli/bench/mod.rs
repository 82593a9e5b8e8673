//! `longrun bench`: load generators over real gRPC, for BENCHMARKS.md.
//!
//! Each scenario drives a running server (`--server`) or, by default,
//! starts its own `longrun serve` child process on a temporary data
//! directory, so that the server's memory and disk can be measured apart
//! from the load generator's.

mod churn;
mod load;
mod reports;
mod store;
mod sustained;
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
    /// The started server's --concurrency, as KIND=N (default: each kind's
    /// own) or a limit such as sleep:key=1. Repeat it for several.
    #[arg(long = "server-concurrency")]
    pub server_concurrency: Vec<String>,
    /// Spread the creates of Sleep over this many concurrency keys, round
    /// robin (0: no key), to measure per-key limits.
    #[arg(long, default_value_t = 0)]
    pub keys: usize,
    /// Start the server with an auth file and call it with a bearer token,
    /// to measure what authentication costs.
    #[arg(long, conflicts_with = "server")]
    pub auth: bool,
    /// The bearer token for --server.
    #[arg(
        long,
        env = "LONGRUN_TOKEN",
        hide_env_values = true,
        requires = "server"
    )]
    pub token: Option<String>,
    /// Print results as a table (text) or JSON.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// The steady rate of the paced dispatch measure, operations per second.
const PACED_RATE: f64 = 1000.0;

/// The gRPC scenarios `bench run` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// grpc.health Check: the practical limit of gRPC here.
    Ceiling,
    /// Durable Diagnostics.Sleep(0) creations.
    Create,
    /// Zero-work operations from create to done, followed with Wait.
    E2e,
    /// Create to task start: one client, a steady 1,000/s, and flat out.
    Dispatch,
    /// GetOperation while end-to-end load runs at half its peak.
    Get,
    /// Many WatchOperation streams on one operation.
    Fanout,
    /// List and Get with many stored operations.
    Scale,
    /// End to end through an outside worker (Jobs.Enqueue, a Rust worker
    /// on Workers.Lease completing at once) beside the built-in Sleep(0),
    /// and the latency from create to the worker's receipt.
    Worker,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Run gRPC scenarios one after another against one server and print a
    /// table, each rate also as a ratio of the ceiling.
    Run {
        #[command(flatten)]
        common: Common,
        /// Which scenarios, comma separated.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "ceiling,create,e2e,dispatch,get,fanout"
        )]
        scenarios: Vec<Scenario>,
        /// How long each timed scenario runs.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Watch streams in the fan-out scenario.
        #[arg(long, default_value_t = 10_000)]
        watchers: usize,
        /// Stored operations in the scale scenario.
        #[arg(long, default_value_t = 1_000_000)]
        scale_count: u64,
    },
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
    /// Sleep(0) creates at a steady rate for a long time, on a server with
    /// a short retention: create-to-start latency, RSS and disk per window,
    /// which must all stay flat.
    Sustained {
        #[command(flatten)]
        common: Common,
        /// Creates per second.
        #[arg(long)]
        rate: f64,
        /// How long to keep it up.
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// The window each reported figure covers.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        window: Duration,
        /// Follow every N-th operation to its start (WaitOperation).
        #[arg(long, default_value_t = 50)]
        sample: u64,
        /// The started server's --retention.
        #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
        retention: Duration,
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
    /// Commit batches of creates straight to a sled store in this process,
    /// printing `committed N` once batch N is durable: the store's own
    /// rate, and what the crash test kills mid-batch.
    Store {
        /// The data directory (a fresh one each run).
        #[arg(long)]
        data_dir: std::path::PathBuf,
        /// Creates per batch.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// How many batches.
        #[arg(long, default_value_t = 1000)]
        batches: u64,
        /// The store's sync mode.
        #[arg(long, default_value = "always")]
        sync: longrun::store::SyncMode,
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
        BenchCommand::Sustained {
            common,
            rate,
            duration,
            window,
            sample,
            retention,
        } => sustained::run(common, rate, duration, window, sample, retention).await,
        BenchCommand::Run {
            common,
            scenarios,
            duration,
            watchers,
            scale_count,
        } => run_scenarios(common, scenarios, duration, watchers, scale_count).await,
        BenchCommand::Reports {
            common,
            count,
            months,
            seed,
        } => reports::run(common, count, months, seed).await,
        BenchCommand::Store {
            data_dir,
            batch,
            batches,
            sync,
        } => store::run(&data_dir, batch, batches, sync).await,
    }
}

async fn run_scenarios(
    common: Common,
    scenarios: Vec<Scenario>,
    duration: Duration,
    watchers: usize,
    scale_count: u64,
) -> anyhow::Result<()> {
    use serde_json::{Map, Value, json};
    // Enough connections for the fan-out's streams at the default HTTP/2
    // stream limits.
    let stream_connections = watchers.div_ceil(500).max(common.connections);
    let c = common.concurrency;
    load::spread_over_keys(common.keys);
    let mut results = Map::new();
    let mut ceiling = None::<f64>;
    let ratio = |rate: f64, ceiling: Option<f64>| ceiling.map(|c| rate / c);
    for scenario in scenarios {
        let name = format!("{scenario:?}").to_lowercase();
        // Each scenario gets a fresh server (unless --server names one), so
        // work queued by one does not slow the next.
        let target = target::Target::start(&common, &[]).await?;
        let channels = target.channels(common.connections).await?;
        let value: Value = match scenario {
            Scenario::Ceiling => {
                let s = load::ceiling(&channels, c, duration).await;
                ceiling = Some(s.rate());
                report(&common, &name, &s.line());
                s.json()
            }
            Scenario::Create => {
                let s = load::creates(&channels, c, duration).await;
                report(
                    &common,
                    &name,
                    &with_ratio(&s.line(), ratio(s.rate(), ceiling)),
                );
                json!({ "stats": s.json(), "of_ceiling": ratio(s.rate(), ceiling) })
            }
            Scenario::E2e => {
                let (s, _) = load::end_to_end(&channels, c, duration, None).await;
                report(
                    &common,
                    &name,
                    &with_ratio(&s.line(), ratio(s.rate(), ceiling)),
                );
                json!({ "stats": s.json(), "of_ceiling": ratio(s.rate(), ceiling) })
            }
            Scenario::Dispatch => {
                let mut out = Map::new();
                for (label, conc, rate) in [
                    ("low", 1usize, None),
                    ("paced", c, Some(PACED_RATE)),
                    ("high", c, None),
                ] {
                    let (s, d) = match rate {
                        None => load::end_to_end(&channels, conc, duration, None).await,
                        Some(rate) => load::end_to_end_paced(&channels, conc, duration, rate).await,
                    };
                    let line = format!(
                        "{label:>4} load ({:.0} ops/s): p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
                        s.rate(),
                        d.value_at_quantile(0.5) as f64 / 1000.0,
                        d.value_at_quantile(0.99) as f64 / 1000.0,
                        d.max() as f64 / 1000.0
                    );
                    report(&common, &name, &line);
                    out.insert(
                        label.into(),
                        json!({
                            "ops_per_second": s.rate(),
                            "p50_ms": d.value_at_quantile(0.5) as f64 / 1000.0,
                            "p99_ms": d.value_at_quantile(0.99) as f64 / 1000.0,
                            "max_ms": d.max() as f64 / 1000.0,
                        }),
                    );
                }
                Value::Object(out)
            }
            Scenario::Worker => {
                let (builtin, built_dispatch) =
                    load::end_to_end(&channels, c, duration, None).await;
                let (outside, dispatch) = load::outside(&channels, c, duration).await?;
                let quantiles = |d: &hdrhistogram::Histogram<u64>| {
                    (
                        d.value_at_quantile(0.5) as f64 / 1000.0,
                        d.value_at_quantile(0.99) as f64 / 1000.0,
                    )
                };
                let (b50, b99) = quantiles(&built_dispatch);
                let (o50, o99) = quantiles(&dispatch);
                report(
                    &common,
                    &name,
                    &format!(
                        "built-in e2e {:.0} ops/s (dispatch p50 {b50:.3} ms, p99 {b99:.3} ms); \
                         outside worker e2e {:.0} ops/s (create to receipt p50 {o50:.3} ms, p99 {o99:.3} ms)",
                        builtin.rate(),
                        outside.rate()
                    ),
                );
                json!({
                    "builtin": {"stats": builtin.json(), "dispatch_p50_ms": b50, "dispatch_p99_ms": b99},
                    "outside": {"stats": outside.json(), "receipt_p50_ms": o50, "receipt_p99_ms": o99},
                    "outside_of_builtin": outside.rate() / builtin.rate().max(1e-9),
                })
            }
            Scenario::Get => {
                let (peak, _) = load::end_to_end(&channels, c, duration / 2, None).await;
                let mut out = Map::new();
                out.insert("peak_e2e_per_second".into(), json!(peak.rate()));
                // Gets at a steady rate measure their latency; flat out,
                // they measure how many the server answers beside the load.
                for (label, get_rate) in [("paced", Some(PACED_RATE)), ("flat", None)] {
                    let (gets, load) =
                        load::get_under_load(&channels, c, duration, peak.rate() / 2.0, get_rate)
                            .await?;
                    report(
                        &common,
                        &name,
                        &format!(
                            "{label:>5} {} while e2e ran at {:.0}/s",
                            gets.line(),
                            load.rate()
                        ),
                    );
                    out.insert(
                        label.into(),
                        json!({ "get": gets.json(), "background_e2e_per_second": load.rate() }),
                    );
                }
                Value::Object(out)
            }
            Scenario::Fanout => {
                let stream_channels = target.channels(stream_connections).await?;
                let v = load::fanout(&target, &stream_channels, watchers).await?;
                report(&common, &name, &v.to_string());
                v
            }
            Scenario::Scale => {
                let v = load::scale(&target, &channels, scale_count, c).await?;
                report(&common, &name, &v.to_string());
                v
            }
        };
        results.insert(name, value);
    }
    if common.output == super::Output::Json {
        say!("{}", Value::Object(results));
    }
    Ok(())
}

fn with_ratio(line: &str, ratio: Option<f64>) -> String {
    match ratio {
        Some(r) => format!("{line}  [{:.0}% of ceiling]", r * 100.0),
        None => line.to_owned(),
    }
}

fn report(common: &Common, scenario: &str, line: &str) {
    if common.output == super::Output::Text {
        say!("{scenario:<9} {line}");
    }
}
