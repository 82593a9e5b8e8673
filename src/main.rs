//! The `longrun` binary: parses arguments, sets up logging, and hands over
//! to the library. The command line (`cli/`) lives here, not in the
//! library, so that embedders of the engine do not compile it.

mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use cli::{Cli, Command, MetricsListen, ServeArgs};
use longrun::telemetry::Exporting;
use longrun::{Registry, Server};
use tokio_util::task::TaskTracker;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

// sled allocates and frees a node copy on most writes; mimalloc handles
// that churn far better than the system allocator (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    without_huge_pages();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Serve(args) => {
            // Log lines (an audit line per mutating call among them) are
            // written by a thread of their own, several to a write, so a
            // call never waits on stderr. None is dropped: a full buffer
            // makes the logging call wait instead. The guard flushes what is
            // left at exit.
            let (writer, _flush_at_exit) =
                tracing_appender::non_blocking::NonBlockingBuilder::default()
                    .lossy(false)
                    .thread_name("longrun-log")
                    .finish(std::io::BufWriter::new(std::io::stderr()));
            let logs = tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(std::io::stderr().is_terminal())
                .with_filter(
                    EnvFilter::try_from_env("LONGRUN_LOG")
                        .unwrap_or_else(|_| EnvFilter::new("info")),
                );
            // The server's metrics, made here so that the trace exporter
            // can count its drops in them.
            let metrics = std::sync::Arc::new(longrun::metrics::Metrics::new());
            let counters = std::sync::Arc::clone(&metrics);
            // Traces, when asked for (see telemetry::Exporting::layer).
            let exporting = match args.traces() {
                None => None,
                Some(traces) => {
                    let _entered = runtime.enter();
                    let dropped = move |n| metrics.spans_dropped(n);
                    match Exporting::start(&traces, std::sync::Arc::new(dropped)) {
                        Ok(exporting) => Some(exporting),
                        Err(e) => {
                            eprintln!("error: {e}");
                            return ExitCode::from(2);
                        }
                    }
                }
            };
            let spans = exporting.as_ref().map(Exporting::layer);
            tracing_subscriber::registry().with(logs).with(spans).init();
            let served = runtime.block_on(async {
                let served = serve(*args, counters).await;
                if let Some(exporting) = &exporting {
                    exporting.shutdown().await;
                }
                served
            });
            match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        command => runtime.block_on(cli::run_client(command)),
    }
}

/// Turns transparent huge pages off for this process, before any thread
/// starts. With them, mimalloc asks the kernel for 2 MiB pages, and every
/// block it hands back and takes again under load comes back as a fresh
/// 2 MiB page zeroed at once: durable creates ran 10–17% slower and the
/// server's peak memory was two thirds higher (BENCHMARKS.md, "No
/// transparent huge pages"). A kernel that refuses the call keeps its
/// own setting.
fn without_huge_pages() {
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

async fn serve(
    args: ServeArgs,
    counters: std::sync::Arc<longrun::metrics::Metrics>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("could not listen on {}", args.listen))?;
    let secrets = args
        .webhook_secrets()
        .context("could not load the webhook secret")?;
    // Listen for SIGHUP before the (possibly long) recovery, so that a
    // reload sent meanwhile waits instead of killing the process.
    #[cfg(unix)]
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let metrics = match args.metrics_listen {
        Some(MetricsListen::Off) => None,
        Some(MetricsListen::On(address)) => Some(
            tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("could not serve metrics on {address} (--metrics-listen; `off` turns them off)"))?,
        ),
        // The default port may be another server's on this machine: that
        // costs this one its metrics, not its start.
        None => match tokio::net::TcpListener::bind(cli::DEFAULT_METRICS_LISTEN).await {
            Ok(listener) => Some(listener),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "metrics are off: {} is taken; pass --metrics-listen ADDRESS to serve them elsewhere",
                    cli::DEFAULT_METRICS_LISTEN
                );
                None
            }
        },
    };
    let mut config = args.config(secrets);
    // The metrics the trace exporter counts its drops in.
    config.engine.metrics = counters;
    let mut server = Server::open(config, Registry::new()).await?;
    if let Some(metrics) = metrics {
        server.metrics_on(metrics);
    }
    let reloading = TaskTracker::new();
    #[cfg(unix)]
    match hangups {
        Ok(hangups) => {
            reloading.spawn(reload_on_hangup(hangups, server.reloader()));
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading needs a restart")
        }
    }
    let served = server.serve(listener, shutdown_signal()).await;
    // The reloader waits for signals forever; the process ends with it.
    reloading.close();
    served?;
    Ok(())
}

/// Reloads the auth file and TLS certificates on every SIGHUP.
#[cfg(unix)]
async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    reloader: longrun::server::Reloader,
) {
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the auth file and certificates");
        reloader.reload();
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(signal) => signal,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
