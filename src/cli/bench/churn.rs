//! The churn scenario: a steady stream of zero-length operations against a
//! server with a short retention. Disk and memory should level off once
//! expiry keeps pace with creation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tonic_types::StatusExt;

use super::Common;
use super::target::{Target, mib};
use crate::cli::Output;
use longrun::pb::longrun::v1::SleepRequest;
use longrun::pb::longrun::v1::diagnostics_client::DiagnosticsClient;

struct Sample {
    at: Duration,
    created: u64,
    disk: Option<u64>,
    rss: Option<u64>,
}

pub(super) async fn run(
    common: Common,
    count: u64,
    retention: Duration,
    sample_every: Duration,
    tail: Duration,
) -> anyhow::Result<()> {
    let retention_flag = humantime::format_duration(retention).to_string();
    let target = Target::start(&common, &["--retention".into(), retention_flag]).await?;
    let channels = target.channels(common.connections).await?;
    let created = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let throttled = Arc::new(AtomicU64::new(0));
    let started = Instant::now();

    let mut clients = Vec::new();
    for i in 0..common.concurrency.max(1) {
        let mut client = DiagnosticsClient::new(channels[i % channels.len()].clone());
        let created = Arc::clone(&created);
        let failed = Arc::clone(&failed);
        let throttled = Arc::clone(&throttled);
        clients.push(tokio::spawn(async move {
            loop {
                // Claim a slot first so the total stays exactly `count`.
                if created.fetch_add(1, Ordering::SeqCst) >= count {
                    created.fetch_sub(1, Ordering::SeqCst);
                    return Instant::now();
                }
                // A well-behaved client: when the queue is full, wait as
                // the server's RetryInfo says and try again.
                loop {
                    match client.sleep(SleepRequest::default()).await {
                        Ok(_) => break,
                        Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                            throttled.fetch_add(1, Ordering::Relaxed);
                            let delay = status
                                .get_error_details()
                                .retry_info()
                                .and_then(|r| r.retry_delay)
                                .unwrap_or(Duration::from_millis(100));
                            tokio::time::sleep(delay).await;
                        }
                        Err(status) => {
                            if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                                eprintln!("first failed create: {status:?}");
                            }
                            break;
                        }
                    }
                }
            }
        }));
    }

    let mut samples = Vec::new();
    let mut ticker = tokio::time::interval(sample_every);
    let mut done_at = None;
    loop {
        ticker.tick().await;
        samples.push(Sample {
            at: started.elapsed(),
            created: created.load(Ordering::SeqCst),
            disk: target.disk_usage(),
            rss: target.rss(),
        });
        if common.output == Output::Text {
            let s = samples.last().expect("just pushed");
            eprintln!(
                "{:>6.0}s  created {:>8}  disk {:>10}  rss {:>10}",
                s.at.as_secs_f64(),
                s.created,
                s.disk.map(mib).unwrap_or_default(),
                s.rss.map(mib).unwrap_or_default()
            );
        }
        if done_at.is_none() && clients.iter().all(|c| c.is_finished()) {
            let mut last = started;
            for client in clients.drain(..) {
                last = last.max(client.await?);
            }
            done_at = Some(last);
        }
        if done_at.is_some_and(|at| at.elapsed() >= tail) {
            break;
        }
    }
    let create_time = done_at.expect("loop ends after all clients finished") - started;
    let rate = count as f64 / create_time.as_secs_f64();
    let failures = failed.load(Ordering::Relaxed);
    let throttles = throttled.load(Ordering::Relaxed);
    match common.output {
        Output::Json => {
            let rows: Vec<_> = samples
                .iter()
                .map(|s| {
                    json!({
                        "seconds": s.at.as_secs_f64(),
                        "created": s.created,
                        "disk_bytes": s.disk,
                        "rss_bytes": s.rss,
                    })
                })
                .collect();
            say!(
                "{}",
                json!({
                    "scenario": "churn",
                    "count": count,
                    "failed": failures,
                    "queue_full_retries": throttles,
                    "creates_per_second": rate,
                    "retention_seconds": retention.as_secs_f64(),
                    "samples": rows,
                })
            );
        }
        Output::Text => {
            say!(
                "churn: {count} operations, {failures} failed creates, {throttles} QUEUE_FULL retries, {rate:.0} creates/s"
            );
            say!(
                "{:>8} {:>10} {:>12} {:>12}",
                "seconds",
                "created",
                "disk",
                "rss"
            );
            for s in &samples {
                say!(
                    "{:>8.0} {:>10} {:>12} {:>12}",
                    s.at.as_secs_f64(),
                    s.created,
                    s.disk.map(mib).unwrap_or_else(|| "-".into()),
                    s.rss.map(mib).unwrap_or_else(|| "-".into())
                );
            }
        }
    }
    Ok(())
}
