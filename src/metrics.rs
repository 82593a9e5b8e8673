//! What a server has done, as Prometheus metrics: one [`Metrics`] per
//! server, fed by the engine (operations created, started, finished,
//! retried; queue wait and run time), the committer (batch size and
//! latency), the webhook deliverer and both faces (requests by method and
//! code), and rendered in the text format for a scrape. Only this module
//! names prometheus-client.
//!
//! The names follow the job-queue exporters operators already know (Oban's
//! PromEx, Sidekiq's, River's): counters end in `_total`, durations are in
//! seconds, and every per-operation series carries its `kind`.

use std::sync::atomic::AtomicI64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::model::{Backlog, State};

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    kind: String,
    scope: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RateLabels {
    kind: String,
    rate: String,
}

/// One limit's use, as the gauges show it.
#[derive(Clone, Debug)]
pub struct LimitGauge {
    pub kind: String,
    /// kind, key or tenant.
    pub scope: &'static str,
    /// For the whole kind, how many run holding it; per key or tenant,
    /// how many keys or tenants run as many as they may.
    pub in_use: u64,
    /// Whole tokens left in each whole-kind rate, by rate.
    pub tokens: Vec<(String, f64)>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    kind: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    kind: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    code: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds, from 1 ms to about 4.6 hours, doubling.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 24))
}

/// Writes per commit batch, 1 to 4096, doubling.
fn batch_sizes() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

/// One kind's series, looked up once: the hot path then counts without
/// building a label.
struct KindSeries {
    created: Counter,
    started: Counter,
    retries: Counter,
    succeeded: Counter,
    failed: Counter,
    cancelled: Counter,
    queue_wait: Histogram,
    run_time: Histogram,
}

/// The metrics of one server.
pub struct Metrics {
    /// Each kind's series, by name.
    kinds: std::sync::RwLock<std::collections::HashMap<String, std::sync::Arc<KindSeries>>>,
    registry: Registry,
    created: Family<KindLabel, Counter>,
    started: Family<KindLabel, Counter>,
    finished: Family<OutcomeLabels, Counter>,
    retries: Family<KindLabel, Counter>,
    depth: Family<StateLabels, Gauge>,
    oldest: Family<KindLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    paused: Family<KindLabel, Gauge>,
    limit_in_use: Family<LimitLabels, Gauge>,
    limit_tokens: Family<RateLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    queue_wait: Histograms<KindLabel>,
    run_time: Histograms<KindLabel>,
    watches: Gauge<i64, AtomicI64>,
    deliveries: Family<DeliveryLabel, Counter>,
    ticks: Family<DeliveryLabel, Counter>,
    tick_lateness: Histogram,
    batch_size: Histogram,
    commit_time: Histogram,
    grpc: Family<GrpcLabels, Counter>,
    http: Family<HttpLabels, Counter>,
    spans_dropped: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered under the `longrun_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("longrun");
        let created = Family::default();
        let started = Family::default();
        let finished = Family::default();
        let retries = Family::default();
        let depth = Family::default();
        let oldest = Family::default();
        let paused = Family::default();
        let limit_in_use = Family::default();
        let limit_tokens = Family::default();
        let queue_wait: Histograms<KindLabel> = Family::new_with_constructor(seconds);
        let run_time: Histograms<KindLabel> = Family::new_with_constructor(seconds);
        let watches = Gauge::default();
        let deliveries = Family::default();
        let ticks = Family::default();
        let tick_lateness = seconds();
        let batch_size = batch_sizes();
        let commit_time = seconds();
        let grpc = Family::default();
        let http = Family::default();
        registry.register(
            "operations_created",
            "Operations created, by kind",
            created.clone(),
        );
        registry.register(
            "operations_started",
            "Attempts started, by kind",
            started.clone(),
        );
        registry.register(
            "operations_finished",
            "Operations finished, by kind and outcome (succeeded, failed, cancelled)",
            finished.clone(),
        );
        registry.register(
            "operation_retries",
            "Failed attempts queued again for a retry, by kind",
            retries.clone(),
        );
        registry.register(
            "queue_depth",
            "Unfinished operations in the store, by kind and state (QUEUED, RUNNING, CANCELLING)",
            depth.clone(),
        );
        registry.register(
            "queue_oldest_age_seconds",
            "Age of the oldest queued operation, by kind",
            oldest.clone(),
        );
        registry.register(
            "queue_paused",
            "1 for each kind whose queue is paused (its operations wait)",
            paused.clone(),
        );
        registry.register(
            "limit_in_use",
            "Each limit's use: for a whole-kind limit (scope kind) how many run holding it; \
             per key or tenant, how many keys or tenants run as many as they may, whose work waits",
            limit_in_use.clone(),
        );
        registry.register(
            "limit_tokens",
            "Whole tokens left in each whole-kind rate limit's bucket, by kind and rate",
            limit_tokens.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "Time from an operation's create to its first attempt's start, by kind",
            queue_wait.clone(),
        );
        registry.register(
            "run_seconds",
            "Run time of attempts that ended, by kind",
            run_time.clone(),
        );
        registry.register(
            "watch_streams",
            "Open watch streams (gRPC and Server-Sent Events) and long polls",
            watches.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts, by outcome (delivered, retrying, failed, disabled)",
            deliveries.clone(),
        );
        registry.register(
            "schedule_ticks",
            "Schedule ticks handled, by outcome (run, skipped, buffered, retrying, failed)",
            ticks.clone(),
        );
        registry.register(
            "schedule_tick_lateness_seconds",
            "How long after its tick a schedule's run was made",
            tick_lateness.clone(),
        );
        registry.register(
            "store_commit_batch_size",
            "Writes per store commit",
            batch_size.clone(),
        );
        registry.register(
            "store_commit_seconds",
            "Latency of store commits",
            commit_time.clone(),
        );
        registry.register(
            "grpc_requests",
            "gRPC calls answered, by method and status code",
            grpc.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP/JSON requests answered, by method, route and status code",
            http.clone(),
        );
        let spans_dropped = Counter::default();
        registry.register(
            "trace_spans_dropped",
            "Finished spans not exported: the export queue was full, or the collector did not take them",
            spans_dropped.clone(),
        );
        Self {
            kinds: std::sync::RwLock::default(),
            registry,
            created,
            started,
            finished,
            retries,
            depth,
            oldest,
            paused,
            limit_in_use,
            limit_tokens,
            queue_wait,
            run_time,
            watches,
            deliveries,
            ticks,
            tick_lateness,
            batch_size,
            commit_time,
            grpc,
            http,
            spans_dropped,
        }
    }

    /// `n` finished spans were dropped, not exported.
    pub fn spans_dropped(&self, n: u64) {
        self.spans_dropped.inc_by(n);
    }

    fn kind(kind: &str) -> KindLabel {
        KindLabel {
            kind: kind.to_owned(),
        }
    }

    /// The series of `kind`, made on first use.
    fn series(&self, kind: &str) -> std::sync::Arc<KindSeries> {
        if let Some(series) = self
            .kinds
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(kind)
        {
            return std::sync::Arc::clone(series);
        }
        let label = Self::kind(kind);
        let outcome = |outcome: &str| {
            self.finished
                .get_or_create(&OutcomeLabels {
                    kind: kind.to_owned(),
                    outcome: outcome.to_owned(),
                })
                .clone()
        };
        let series = std::sync::Arc::new(KindSeries {
            created: self.created.get_or_create(&label).clone(),
            started: self.started.get_or_create(&label).clone(),
            retries: self.retries.get_or_create(&label).clone(),
            succeeded: outcome("succeeded"),
            failed: outcome("failed"),
            cancelled: outcome("cancelled"),
            queue_wait: self.queue_wait.get_or_create(&label).clone(),
            run_time: self.run_time.get_or_create(&label).clone(),
        });
        self.kinds
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind.to_owned())
            .or_insert(series)
            .clone()
    }

    /// An operation of `kind` was created.
    pub fn created(&self, kind: &str) {
        self.series(kind).created.inc();
    }

    /// An attempt of `kind` started; the first attempt of an operation
    /// (`first`) after waiting `waited` since its create.
    pub fn started(&self, kind: &str, waited: Duration, first: bool) {
        let series = self.series(kind);
        series.started.inc();
        if first {
            series.queue_wait.observe(waited.as_secs_f64());
        }
    }

    /// An attempt of `kind` that ran for `ran` ended.
    pub fn ran(&self, kind: &str, ran: Duration) {
        self.series(kind).run_time.observe(ran.as_secs_f64());
    }

    /// An operation of `kind` finished with `outcome` ("succeeded",
    /// "failed" or "cancelled"; anything else counts as failed).
    pub fn finished(&self, kind: &str, outcome: &str) {
        let series = self.series(kind);
        match outcome {
            "succeeded" => &series.succeeded,
            "cancelled" => &series.cancelled,
            _ => &series.failed,
        }
        .inc();
    }

    /// A failed attempt of `kind` was queued again.
    pub fn retried(&self, kind: &str) {
        self.series(kind).retries.inc();
    }

    /// A watch stream or long poll opened (`+1`) or closed (`-1`).
    pub fn watch(&self, change: i64) {
        self.watches.inc_by(change);
    }

    /// A webhook delivery attempt ended with `outcome`.
    pub fn delivery(&self, outcome: &str) {
        self.deliveries
            .get_or_create(&DeliveryLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// A schedule's tick was handled with `outcome`; a run made for it
    /// was made `late` after the tick.
    pub fn tick(&self, outcome: &str, late: Option<Duration>) {
        self.ticks
            .get_or_create(&DeliveryLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
        if let Some(late) = late {
            self.tick_lateness.observe(late.as_secs_f64());
        }
    }

    /// The store committed `writes` writes in `took`.
    pub fn commit(&self, writes: usize, took: Duration) {
        self.batch_size.observe(writes as f64);
        self.commit_time.observe(took.as_secs_f64());
    }

    /// A gRPC call to `method` ("/package.Service/Method") ended with the
    /// status `code` (its canonical name).
    pub fn grpc(&self, method: &str, code: &str) {
        self.grpc
            .get_or_create(&GrpcLabels {
                method: method.to_owned(),
                code: code.to_owned(),
            })
            .inc();
    }

    /// An HTTP request `method route` was answered with `code`.
    pub fn http(&self, method: &str, route: &str, code: u16) {
        self.http
            .get_or_create(&HttpLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                code: code.to_string(),
            })
            .inc();
    }

    /// Replaces the limit gauges with what the store holds now.
    pub fn set_limits(&self, limits: &[LimitGauge]) {
        self.limit_in_use.clear();
        self.limit_tokens.clear();
        for limit in limits {
            self.limit_in_use
                .get_or_create(&LimitLabels {
                    kind: limit.kind.clone(),
                    scope: limit.scope.to_owned(),
                })
                .set(i64::try_from(limit.in_use).unwrap_or(i64::MAX));
            for (rate, tokens) in &limit.tokens {
                self.limit_tokens
                    .get_or_create(&RateLabels {
                        kind: limit.kind.clone(),
                        rate: rate.clone(),
                    })
                    .set(*tokens);
            }
        }
    }

    /// Replaces the queue gauges with what the store counts now.
    pub fn set_backlog(&self, backlog: &[Backlog], paused: &[String], now: SystemTime) {
        self.depth.clear();
        self.oldest.clear();
        self.paused.clear();
        for kind in paused {
            self.paused.get_or_create(&Self::kind(kind)).set(1);
        }
        for entry in backlog {
            self.depth
                .get_or_create(&StateLabels {
                    kind: entry.kind.clone(),
                    state: entry.state.to_owned(),
                })
                .set(i64::try_from(entry.count).unwrap_or(i64::MAX));
            if entry.state == State::Queued.as_str()
                && let Some(oldest) = entry.oldest
            {
                let age = now.duration_since(oldest).unwrap_or_default();
                self.oldest
                    .get_or_create(&Self::kind(&entry.kind))
                    .set(age.as_secs_f64());
            }
        }
    }

    /// Every metric in the text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Counts a watch stream as open while it lives.
#[derive(Debug)]
pub struct WatchGauge(std::sync::Arc<Metrics>);

impl WatchGauge {
    /// Counts one more open stream on `metrics`.
    pub fn open(metrics: &std::sync::Arc<Metrics>) -> Self {
        metrics.watch(1);
        Self(std::sync::Arc::clone(metrics))
    }
}

impl Drop for WatchGauge {
    fn drop(&mut self) {
        self.0.watch(-1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_under_their_names_with_labels() {
        let metrics = Metrics::new();
        metrics.created("longrun.v1.Sleep");
        metrics.created("longrun.v1.Sleep");
        metrics.finished("longrun.v1.Sleep", "succeeded");
        let text = metrics.render();
        assert!(
            text.contains("longrun_operations_created_total{kind=\"longrun.v1.Sleep\"} 2"),
            "{text}"
        );
        assert!(text.contains(
            "longrun_operations_finished_total{kind=\"longrun.v1.Sleep\",outcome=\"succeeded\"} 1"
        ));
    }

    #[test]
    fn limit_gauges_show_each_limits_use() {
        let metrics = Metrics::new();
        metrics.set_limits(&[
            LimitGauge {
                kind: "k".into(),
                scope: "key",
                in_use: 3,
                tokens: Vec::new(),
            },
            LimitGauge {
                kind: "k".into(),
                scope: "kind",
                in_use: 7,
                tokens: vec![("100/s".into(), 42.0)],
            },
        ]);
        let text = metrics.render();
        assert!(
            text.contains("longrun_limit_in_use{kind=\"k\",scope=\"key\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("longrun_limit_tokens{kind=\"k\",rate=\"100/s\"} 42.0"),
            "{text}"
        );
        // Replaced, not added to.
        metrics.set_limits(&[]);
        assert!(!metrics.render().contains("longrun_limit_in_use{"));
    }

    #[test]
    fn the_backlog_replaces_what_was_there() {
        let metrics = Metrics::new();
        let now = SystemTime::now();
        let entry = |kind: &str, count| Backlog {
            kind: kind.into(),
            state: "QUEUED",
            count,
            oldest: Some(now - Duration::from_secs(5)),
        };
        metrics.set_backlog(&[entry("a", 3), entry("b", 1)], &["b".into()], now);
        metrics.set_backlog(&[entry("a", 2)], &["a".into()], now);
        let text = metrics.render();
        assert!(text.contains("longrun_queue_depth{kind=\"a\",state=\"QUEUED\"} 2"));
        assert!(
            text.contains("longrun_queue_paused{kind=\"a\"} 1"),
            "{text}"
        );
        assert!(!text.contains("kind=\"b\""), "{text}");
        assert!(text.contains("longrun_queue_oldest_age_seconds{kind=\"a\"} 5"));
    }
}
