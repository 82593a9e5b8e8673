//! The sustained scenario: Sleep(0) creates at a steady rate for a long
//! time (30 minutes in BENCHMARKS), on a server with a short retention.
//! Every window (10 s by default) it reports how long the operations
//! created then waited from create to start (the server's own timestamps,
//! read back with WaitOperation from a steady sample of them), how many
//! creates were made and refused, and the server's RSS and data-directory
//! size: latency, memory and disk must all stay flat.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use super::Common;
use super::load::{create, dispatch_latency, wait_done};
use super::target::{Target, mib};
use crate::cli::Output;

/// At most this many sampled operations are followed at once; a sample
/// beyond it is left out (and counted), so a server that falls behind
/// cannot make the client grow without bound.
const MAX_FOLLOWED: usize = 10_000;

/// What one window saw.
struct Window {
    /// Create-to-start latencies of the sampled operations created in it,
    /// in microseconds.
    latency: Histogram<u64>,
    created: u64,
    failed: u64,
}

impl Window {
    fn new() -> Self {
        Self {
            latency: Histogram::new(3).expect("three significant figures are valid"),
            created: 0,
            failed: 0,
        }
    }
}

/// Runs the scenario: `rate` creates a second for `duration`, every
/// `sample`-th followed to its start, reported per `window`.
pub(super) async fn run(
    common: Common,
    rate: f64,
    duration: Duration,
    window: Duration,
    sample: u64,
    retention: Duration,
) -> anyhow::Result<()> {
    let retention_flag = humantime::format_duration(retention).to_string();
    let target = Target::start(&common, &["--retention".into(), retention_flag]).await?;
    let channels = target.channels(common.connections).await?;
    let windows = (duration.as_secs_f64() / window.as_secs_f64()).ceil() as usize;
    let seen: Arc<Mutex<Vec<Window>>> =
        Arc::new(Mutex::new((0..windows).map(|_| Window::new()).collect()));
    let dropped = Arc::new(AtomicU64::new(0));
    let followed = Arc::new(tokio::sync::Semaphore::new(MAX_FOLLOWED));
    // The creates in flight at once: as many as the clients a real
    // service would have, so that a slow create delays the next only as
    // it would there.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(common.concurrency.max(1)));
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1.0)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sampler = tokio::time::interval_at(tokio::time::Instant::now() + window, window);
    let mut samples = Vec::new();
    let mut sent: u64 = 0;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let at = started.elapsed();
                if at >= duration {
                    break;
                }
                let slot = ((at.as_secs_f64() / window.as_secs_f64()) as usize).min(windows - 1);
                let permit = Arc::clone(&in_flight).acquire_owned().await?;
                let channel = channels[(sent as usize) % channels.len()].clone();
                let sampled = sent.is_multiple_of(sample.max(1));
                let follow = sampled
                    .then(|| Arc::clone(&followed).try_acquire_owned().ok())
                    .flatten();
                if sampled && follow.is_none() {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
                sent += 1;
                let seen = Arc::clone(&seen);
                tasks.spawn(async move {
                    let made = create(channel.clone()).await;
                    drop(permit);
                    let latency = match (made, follow) {
                        (Ok(op), Some(_follow)) => wait_done(channel, op.name)
                            .await
                            .ok()
                            .as_ref()
                            .and_then(dispatch_latency)
                            .map(Ok),
                        (Ok(_), None) => None,
                        (Err(status), _) => Some(Err(status)),
                    };
                    let mut seen = seen.lock().expect("not poisoned");
                    let w = &mut seen[slot];
                    match latency {
                        Some(Err(_)) => w.failed += 1,
                        Some(Ok(d)) => {
                            w.created += 1;
                            let _ = w.latency.record(d.as_micros().max(1) as u64);
                        }
                        None => w.created += 1,
                    }
                });
                // Finished tasks are reaped as we go.
                while tasks.try_join_next().is_some() {}
            }
            _ = sampler.tick() => {
                samples.push((started.elapsed(), target.rss(), target.disk_usage()));
                if common.output == Output::Text {
                    let (at, rss, disk) = samples.last().expect("just pushed");
                    eprintln!(
                        "{:>6.0}s  sent {sent:>9}  rss {:>10}  disk {:>10}",
                        at.as_secs_f64(),
                        rss.map(mib).unwrap_or_default(),
                        disk.map(mib).unwrap_or_default(),
                    );
                }
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    if samples.len() < windows {
        samples.push((started.elapsed(), target.rss(), target.disk_usage()));
    }
    let seen = seen.lock().expect("not poisoned");
    let ms = |h: &Histogram<u64>, q: f64| {
        if h.is_empty() {
            None
        } else {
            Some(h.value_at_quantile(q) as f64 / 1000.0)
        }
    };
    let rows: Vec<_> = seen
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let sampled = samples.get(i);
            json!({
                "seconds": (i + 1) as f64 * window.as_secs_f64(),
                "created": w.created,
                "failed": w.failed,
                "sampled": w.latency.len(),
                "add_to_start_p50_ms": ms(&w.latency, 0.5),
                "add_to_start_p99_ms": ms(&w.latency, 0.99),
                "add_to_start_max_ms": ms(&w.latency, 1.0),
                "rss_bytes": sampled.and_then(|s| s.1),
                "disk_bytes": sampled.and_then(|s| s.2),
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new(3).expect("valid");
    for w in seen.iter() {
        all.add(&w.latency).expect("same precision");
    }
    let created: u64 = seen.iter().map(|w| w.created).sum();
    let failed: u64 = seen.iter().map(|w| w.failed).sum();
    let summary = json!({
        "scenario": "sustained",
        "rate": rate,
        "seconds": duration.as_secs_f64(),
        "created": created,
        "failed": failed,
        "samples_left_out": dropped.load(Ordering::Relaxed),
        "retention_seconds": retention.as_secs_f64(),
        "add_to_start_p50_ms": ms(&all, 0.5),
        "add_to_start_p99_ms": ms(&all, 0.99),
        "add_to_start_max_ms": ms(&all, 1.0),
        "windows": rows,
    });
    match common.output {
        Output::Json => say!("{summary}"),
        Output::Text => {
            say!(
                "sustained: {created} created ({:.0}/s asked), {failed} failed; create to start p50 {} ms, p99 {} ms",
                rate,
                ms(&all, 0.5).unwrap_or(f64::NAN),
                ms(&all, 0.99).unwrap_or(f64::NAN),
            );
            say!(
                "{:>8} {:>9} {:>8} {:>8} {:>8} {:>10} {:>10}",
                "seconds",
                "created",
                "p50 ms",
                "p99 ms",
                "max ms",
                "rss",
                "disk"
            );
            for (i, w) in seen.iter().enumerate() {
                let sampled = samples.get(i);
                let cell = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.2}"));
                say!(
                    "{:>8.0} {:>9} {:>8} {:>8} {:>8} {:>10} {:>10}",
                    (i + 1) as f64 * window.as_secs_f64(),
                    w.created,
                    cell(ms(&w.latency, 0.5)),
                    cell(ms(&w.latency, 0.99)),
                    cell(ms(&w.latency, 1.0)),
                    sampled.and_then(|s| s.1).map(mib).unwrap_or_default(),
                    sampled.and_then(|s| s.2).map(mib).unwrap_or_default(),
                );
            }
        }
    }
    Ok(())
}
