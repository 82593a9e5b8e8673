//! The gRPC load scenarios: the ceiling (health checks), creates, end to
//! end, dispatch latency, Get under load, watch fan-out and scale.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use prost::Message;
use serde_json::{Value, json};
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::target::{Target, mib};
use crate::cli::client::Connection;
use longrun::pb::google::longrunning::operations_client::OperationsClient;
use longrun::pb::google::longrunning::{
    CancelOperationRequest, GetOperationRequest, ListOperationsRequest, Operation,
    WaitOperationRequest,
};
use longrun::pb::longrun::v1::diagnostics_client::DiagnosticsClient;
use longrun::pb::longrun::v1::operation_watcher_client::OperationWatcherClient;
use longrun::pb::longrun::v1::{
    OperationMetadata, RunOptions, SleepRequest, WatchOperationRequest,
};

/// Latencies in microseconds, and how many calls made them.
pub struct Stats {
    pub calls: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub micros: Histogram<u64>,
}

impl Stats {
    fn new() -> Self {
        Self {
            calls: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            micros: Histogram::new(3).expect("valid precision"),
        }
    }

    fn merge(&mut self, other: &Stats) {
        self.calls += other.calls;
        self.errors += other.errors;
        let _ = self.micros.add(&other.micros);
    }

    fn record(&mut self, latency: Duration) {
        self.calls += 1;
        let _ = self.micros.record(latency.as_micros().max(1) as u64);
    }

    /// Calls per second.
    pub fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn ms(&self, q: f64) -> f64 {
        self.micros.value_at_quantile(q) as f64 / 1000.0
    }

    /// A JSON summary.
    pub fn json(&self) -> Value {
        json!({
            "calls": self.calls,
            "errors": self.errors,
            "seconds": self.elapsed.as_secs_f64(),
            // Only timed runs have a rate; sampled latencies do not.
            "per_second": (!self.elapsed.is_zero()).then(|| self.rate()),
            "p50_ms": self.ms(0.5),
            "p99_ms": self.ms(0.99),
            "max_ms": self.micros.max() as f64 / 1000.0,
        })
    }

    /// A one-line summary.
    pub fn line(&self) -> String {
        format!(
            "{:>10.0}/s  p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>8.3} ms  ({} calls, {} errors)",
            self.rate(),
            self.ms(0.5),
            self.ms(0.99),
            self.micros.max() as f64 / 1000.0,
            self.calls,
            self.errors
        )
    }
}

/// Runs `concurrency` loops of `call` for `duration` and gathers latencies.
/// `call` returns the latency to record, or an error.
pub async fn drive<F, Fut>(
    channels: &[Connection],
    concurrency: usize,
    duration: Duration,
    call: F,
) -> Stats
where
    F: Fn(Connection) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Duration, tonic::Status>> + Send,
{
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..concurrency.max(1) {
        let channel = channels[i % channels.len()].clone();
        let call = call.clone();
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats::new();
            while !stop.load(Ordering::Relaxed) {
                match call(channel.clone()).await {
                    Ok(latency) => stats.record(latency),
                    Err(_) => {
                        stats.errors += 1;
                        // A call that fails at once must not spin this
                        // thread: the timer that ends the run needs it too.
                        tokio::task::yield_now().await;
                    }
                }
            }
            stats
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Stats::new();
    for t in tasks {
        if let Ok(s) = t.await {
            total.merge(&s);
        }
    }
    total.elapsed = started.elapsed();
    total
}

fn meta(op: &Operation) -> Option<OperationMetadata> {
    OperationMetadata::decode(op.metadata.as_ref()?.value.as_slice()).ok()
}

fn ts(t: &Option<prost_types::Timestamp>) -> Option<SystemTime> {
    // Before 1970 counts as 1970 here.
    Some(longrun::pb::system_time(t.as_ref()?).unwrap_or(SystemTime::UNIX_EPOCH))
}

/// From create to the start of the first attempt, from the metadata.
pub(super) fn dispatch_latency(op: &Operation) -> Option<Duration> {
    let m = meta(op)?;
    ts(&m.start_time)?.duration_since(ts(&m.create_time)?).ok()
}

/// How many concurrency keys the creates are spread over (0: none), set
/// once by `bench run --keys`, and the number of the next create.
static KEYS: AtomicUsize = AtomicUsize::new(0);
static CREATED: AtomicUsize = AtomicUsize::new(0);

/// Spreads the creates that follow over `keys` concurrency keys.
pub fn spread_over_keys(keys: usize) {
    KEYS.store(keys, Ordering::Relaxed);
}

pub(super) async fn create(channel: Connection) -> Result<Operation, tonic::Status> {
    let keys = KEYS.load(Ordering::Relaxed);
    let run = (keys > 0).then(|| RunOptions {
        concurrency_key: format!("key-{}", CREATED.fetch_add(1, Ordering::Relaxed) % keys),
        ..RunOptions::default()
    });
    Ok(DiagnosticsClient::new(channel)
        .sleep(SleepRequest {
            run,
            ..SleepRequest::default()
        })
        .await?
        .into_inner())
}

/// Waits with WaitOperation until the operation is done.
pub(super) async fn wait_done(
    channel: Connection,
    name: String,
) -> Result<Operation, tonic::Status> {
    let mut ops = OperationsClient::new(channel);
    loop {
        let op = ops
            .wait_operation(WaitOperationRequest {
                name: name.clone(),
                timeout: Some(prost_types::Duration {
                    seconds: 30,
                    nanos: 0,
                }),
            })
            .await?
            .into_inner();
        if op.done {
            return Ok(op);
        }
    }
}

/// The ceiling: the cheapest unary RPC, grpc.health Check.
pub async fn ceiling(channels: &[Connection], concurrency: usize, duration: Duration) -> Stats {
    drive(channels, concurrency, duration, |channel| async move {
        let started = Instant::now();
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await?;
        Ok(started.elapsed())
    })
    .await
}

/// Durable creates of Sleep(0).
pub async fn creates(channels: &[Connection], concurrency: usize, duration: Duration) -> Stats {
    drive(channels, concurrency, duration, |channel| async move {
        let started = Instant::now();
        create(channel).await?;
        Ok(started.elapsed())
    })
    .await
}

/// End to end: create, then WaitOperation until done. Returns the
/// end-to-end stats and the dispatch latencies seen.
pub async fn end_to_end(
    channels: &[Connection],
    concurrency: usize,
    duration: Duration,
    pace: Option<Arc<tokio::sync::Semaphore>>,
) -> (Stats, Histogram<u64>) {
    let dispatch = Arc::new(std::sync::Mutex::new(
        Histogram::<u64>::new(3).expect("valid"),
    ));
    let seen = Arc::clone(&dispatch);
    let stats = drive(channels, concurrency, duration, move |channel| {
        let seen = Arc::clone(&seen);
        let pace = pace.clone();
        async move {
            if let Some(pace) = &pace {
                pace.acquire()
                    .await
                    .map_err(|_| tonic::Status::cancelled("stopped"))?
                    .forget();
            }
            let started = Instant::now();
            let op = create(channel.clone()).await?;
            let done = wait_done(channel, op.name).await?;
            if let Some(d) = dispatch_latency(&done) {
                let _ = seen
                    .lock()
                    .expect("not poisoned")
                    .record(d.as_micros().max(1) as u64);
            }
            Ok(started.elapsed())
        }
    })
    .await;
    let hist = dispatch.lock().expect("not poisoned").clone();
    (stats, hist)
}

/// A pacer: a semaphore that gains `rate` permits a second (at most a
/// thousand banked), and the task that feeds it, to abort when done.
fn pacer(rate: f64) -> (Arc<tokio::sync::Semaphore>, tokio::task::JoinHandle<()>) {
    let pace = Arc::new(tokio::sync::Semaphore::new(0));
    let feeding = Arc::clone(&pace);
    let task = tokio::spawn(async move {
        let period = Duration::from_secs_f64(1.0 / rate.max(1.0));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        loop {
            tick.tick().await;
            if feeding.available_permits() < 1000 {
                feeding.add_permits(1);
            }
        }
    });
    (pace, task)
}

/// End to end at a steady `rate` operations per second, with enough
/// clients that none waits for another: the dispatch latencies seen.
pub async fn end_to_end_paced(
    channels: &[Connection],
    concurrency: usize,
    duration: Duration,
    rate: f64,
) -> (Stats, Histogram<u64>) {
    let (pace, feeder) = pacer(rate);
    let result = end_to_end(channels, concurrency, duration, Some(pace)).await;
    feeder.abort();
    result
}

/// Get latency while end-to-end load runs at `rate` operations per second:
/// Gets at a steady `get_rate` a second, or as fast as they go when None.
pub async fn get_under_load(
    channels: &[Connection],
    concurrency: usize,
    duration: Duration,
    rate: f64,
    get_rate: Option<f64>,
) -> anyhow::Result<(Stats, Stats)> {
    // Some done operations to read.
    let mut names = Vec::new();
    for _ in 0..200 {
        names.push(create(channels[0].clone()).await?.name);
    }
    let names = Arc::new(names);
    let (pace, feeder) = pacer(rate);
    let load = {
        let channels = channels.to_vec();
        let pace = Arc::clone(&pace);
        tokio::spawn(async move {
            end_to_end(&channels, concurrency, duration, Some(pace))
                .await
                .0
        })
    };
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let get_pace = get_rate.map(pacer);
    let get_permits = get_pace.as_ref().map(|(pace, _)| Arc::clone(pace));
    let gets = drive(
        channels,
        concurrency.div_ceil(2),
        duration,
        move |channel| {
            let names = Arc::clone(&names);
            let i = counter.fetch_add(1, Ordering::Relaxed);
            let permits = get_permits.clone();
            async move {
                if let Some(permits) = &permits {
                    permits
                        .acquire()
                        .await
                        .map_err(|_| tonic::Status::cancelled("stopped"))?
                        .forget();
                }
                let started = Instant::now();
                OperationsClient::new(channel)
                    .get_operation(GetOperationRequest {
                        name: names[i % names.len()].clone(),
                    })
                    .await?;
                Ok(started.elapsed())
            }
        },
    )
    .await;
    // The load ends on its own clock; the pacer feeds it until then.
    let load = load.await?;
    feeder.abort();
    if let Some((_, get_pacer)) = get_pace {
        get_pacer.abort();
    }
    Ok((gets, load))
}

/// Watch fan-out: `watchers` streams on one operation; the time from its
/// completion until the last watcher has the final state, and the server's
/// RSS with the streams open.
pub async fn fanout(
    target: &Target,
    channels: &[Connection],
    watchers: usize,
) -> anyhow::Result<Value> {
    let rss_before = target.rss();
    let op = DiagnosticsClient::new(channels[0].clone())
        .sleep(SleepRequest {
            duration: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(watchers.max(1));
    let mut tasks = Vec::with_capacity(watchers);
    for i in 0..watchers {
        let mut client = OperationWatcherClient::new(channels[i % channels.len()].clone());
        let name = op.name.clone();
        let ready = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = client
                .watch_operation(WatchOperationRequest { name })
                .await?
                .into_inner();
            let mut first = true;
            while let Some(item) = stream.next().await {
                let item = item?;
                if first {
                    first = false;
                    let _ = ready.send(()).await;
                }
                if item.done {
                    return Ok::<_, tonic::Status>(Some((SystemTime::now(), item)));
                }
            }
            Ok(None)
        }));
    }
    drop(ready_tx);
    let opened = Instant::now();
    let mut ready = 0;
    while ready < watchers && ready_rx.recv().await.is_some() {
        ready += 1;
    }
    let open_time = opened.elapsed();
    let rss_open = target.rss();
    OperationsClient::new(channels[0].clone())
        .cancel_operation(CancelOperationRequest {
            name: op.name.clone(),
        })
        .await?;
    let mut latest = None::<SystemTime>;
    let mut end = None;
    let mut received = 0;
    for t in tasks {
        if let Ok(Ok(Some((at, item)))) = t.await {
            received += 1;
            latest = Some(latest.map_or(at, |l| l.max(at)));
            end = end.or_else(|| meta(&item).and_then(|m| ts(&m.end_time)));
        }
    }
    let spread = match (latest, end) {
        (Some(l), Some(e)) => l.duration_since(e).ok(),
        _ => None,
    };
    Ok(json!({
        "watchers": watchers,
        "opened": ready,
        "open_seconds": open_time.as_secs_f64(),
        "received_final": received,
        "completion_to_last_watcher_ms": spread.map(|d| d.as_secs_f64() * 1000.0),
        "server_rss_before": rss_before,
        "server_rss_with_streams": rss_open,
    }))
}

/// Scale: populate `count` operations, then time List (first and deep
/// pages) and Get, and report bytes per operation and RSS.
pub async fn scale(
    target: &Target,
    channels: &[Connection],
    count: u64,
    concurrency: usize,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    let created = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..concurrency.max(1) {
        let channel = channels[i % channels.len()].clone();
        let created = Arc::clone(&created);
        tasks.push(tokio::spawn(async move {
            let mut names = Vec::new();
            while created.fetch_add(1, Ordering::Relaxed) < count {
                loop {
                    match create(channel.clone()).await {
                        Ok(op) => {
                            if names.len() < 100 {
                                names.push(op.name);
                            }
                            break;
                        }
                        Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(_) => break,
                    }
                }
            }
            names
        }));
    }
    let mut sample = Vec::new();
    for t in tasks {
        sample.extend(t.await?);
    }
    let populate = started.elapsed();
    let mut ops = OperationsClient::new(channels[0].clone());
    let list = |token: String| ListOperationsRequest {
        page_size: 50,
        page_token: token,
        ..Default::default()
    };
    let mut first = Stats::new();
    for _ in 0..200 {
        let t = Instant::now();
        ops.list_operations(list(String::new())).await?;
        first.record(t.elapsed());
    }
    // Walk to about 90% of the set in pages of 1000, then time that page.
    let mut token = String::new();
    for _ in 0..(count * 9 / 10 / 1000) {
        let page = ops
            .list_operations(ListOperationsRequest {
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut deep = Stats::new();
    for _ in 0..200 {
        let t = Instant::now();
        ops.list_operations(list(token.clone())).await?;
        deep.record(t.elapsed());
    }
    let mut gets = Stats::new();
    for i in 0..2000 {
        let t = Instant::now();
        ops.get_operation(GetOperationRequest {
            name: sample[i % sample.len().max(1)].clone(),
        })
        .await?;
        gets.record(t.elapsed());
    }
    let disk = target.disk_usage();
    Ok(json!({
        "operations": count,
        "populate_seconds": populate.as_secs_f64(),
        "list_first_page": first.json(),
        "list_deep_page": deep.json(),
        "get": gets.json(),
        "data_dir_bytes": disk,
        "bytes_per_operation": disk.map(|d| d as f64 / count.max(1) as f64),
        "server_rss_bytes": target.rss(),
        "server_rss": target.rss().map(mib),
    }))
}

/// The outside kind the worker scenario serves.
const OUTSIDE_KIND: &str = "bench.echo";

/// A worker in this process that serves [`OUTSIDE_KIND`]: it completes
/// every assignment at once, recording the time from its create (the
/// payload is the creator's clock) to its receipt.
async fn bench_worker(
    channel: Connection,
    capacity: i32,
    dispatch: Arc<std::sync::Mutex<Histogram<u64>>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use longrun::pb::longrun::v1::lease_request::Message as FromWorker;
    use longrun::pb::longrun::v1::lease_response::Message as ForWorker;
    use longrun::pb::longrun::v1::workers_client::WorkersClient;
    use longrun::pb::longrun::v1::{CompleteRequest, KindDeclaration, LeaseRequest, Subscribe};
    let mut workers = WorkersClient::new(channel);
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    sender
        .send(LeaseRequest {
            message: Some(FromWorker::Subscribe(Subscribe {
                kinds: vec![KindDeclaration {
                    name: OUTSIDE_KIND.into(),
                    ..KindDeclaration::default()
                }],
                capacity,
                worker_name: "longrun bench".into(),
            })),
        })
        .await?;
    let mut stream = workers
        .lease(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await?
        .into_inner();
    Ok(tokio::spawn(async move {
        let _open = sender;
        while let Ok(Some(message)) = stream.message().await {
            let Some(ForWorker::Assignment(a)) = message.message else {
                continue;
            };
            if let Some(sent) = a
                .payload
                .as_ref()
                .and_then(|p| prost_types::Timestamp::decode(p.value.as_slice()).ok())
                .and_then(|t| ts(&Some(t)))
                && let Ok(latency) = SystemTime::now().duration_since(sent)
            {
                let _ = dispatch
                    .lock()
                    .expect("not poisoned")
                    .record(latency.as_micros().max(1) as u64);
            }
            let mut workers = workers.clone();
            tokio::spawn(async move {
                let _ = workers
                    .complete(CompleteRequest {
                        name: a.name,
                        attempt: a.attempt,
                        response: a.payload,
                        lease_token: a.lease_token,
                    })
                    .await;
            });
        }
    }))
}

/// End to end through an outside worker: Enqueue, then WaitOperation until
/// done, while a worker in this process serves the kind. Returns the
/// end-to-end stats and the latencies from create to the worker's receipt.
pub async fn outside(
    channels: &[Connection],
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<(Stats, Histogram<u64>)> {
    use longrun::pb::longrun::v1::EnqueueRequest;
    use longrun::pb::longrun::v1::jobs_client::JobsClient;
    let dispatch = Arc::new(std::sync::Mutex::new(
        Histogram::<u64>::new(3).expect("valid"),
    ));
    let worker = bench_worker(
        channels[channels.len() - 1].clone(),
        i32::try_from(concurrency * 2).unwrap_or(i32::MAX),
        Arc::clone(&dispatch),
    )
    .await?;
    let stats = drive(channels, concurrency, duration, |channel| async move {
        let started = Instant::now();
        let now = longrun::pb::timestamp(SystemTime::now());
        let op = JobsClient::new(channel.clone())
            .enqueue(EnqueueRequest {
                kind: OUTSIDE_KIND.into(),
                payload: Some(prost_types::Any {
                    type_url: "type.googleapis.com/google.protobuf.Timestamp".into(),
                    value: now.encode_to_vec(),
                }),
                ..EnqueueRequest::default()
            })
            .await?
            .into_inner();
        wait_done(channel, op.name).await?;
        Ok(started.elapsed())
    })
    .await;
    worker.abort();
    let hist = dispatch.lock().expect("not poisoned").clone();
    Ok((stats, hist))
}
