//! Spans out over OTLP: batched, bounded, never on the request path.
//!
//! A finished span goes into a bounded queue (`on_end` never waits); one
//! task takes what waits, up to a batch, and hands it to the OTLP exporter
//! (gRPC or HTTP/protobuf) with a deadline. A full queue or a failed
//! export drops the spans and counts them, so a collector that is down
//! costs memory up to the queue and nothing else. While exports fail, a
//! breaker keeps spans from being made at all (each one counted as
//! dropped), trying again every few seconds, so that an outage costs the
//! hot path nearly nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter, SpanProcessor};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

/// Spans sent in one export.
const BATCH: usize = 512;
/// How long spans are not made after a failed export, before one more
/// batch is tried.
const BREAK: Duration = Duration::from_secs(5);

/// Open while the collector does not take spans: then spans are not made
/// (and count as dropped) until the next try.
#[derive(Debug)]
struct Breaker {
    /// Milliseconds since `base` until which spans are not made; 0 while
    /// closed.
    open_until: AtomicU64,
    base: Instant,
}

impl Breaker {
    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a span may be made now.
    fn allows(&self) -> bool {
        let until = self.open_until.load(Ordering::Relaxed);
        until == 0 || self.now() >= until
    }

    fn open(&self) {
        let until = self.now() + BREAK.as_millis() as u64;
        self.open_until.store(until.max(1), Ordering::Relaxed);
    }

    fn close(&self) {
        self.open_until.store(0, Ordering::Relaxed);
    }
}
/// How long one export may take before its spans count as dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// How spans reach the collector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (port 4317 by convention).
    #[default]
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318, `/v1/traces`).
    HttpProtobuf,
}

/// Where and how to export.
#[derive(Clone, Debug)]
pub struct TraceConfig {
    /// The collector: `http://host:4317` for gRPC; for HTTP the full
    /// traces URL (`http://host:4318/v1/traces`).
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// The most finished spans waiting for export.
    pub queue: usize,
}

/// Why exporting could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("could not set up trace export to {endpoint}: {message}")]
pub struct TraceError {
    endpoint: String,
    message: String,
}

/// Spans being exported. Dropping it stops nothing; [`Exporting::shutdown`]
/// sends what waits.
pub struct Exporting {
    provider: SdkTracerProvider,
    breaker: Arc<Breaker>,
    dropped: DropCounter,
    queue: mpsc::Sender<Message>,
    /// The export task's (it ends with the runtime).
    _tasks: TaskTracker,
}

impl Exporting {
    /// Starts exporting (within a tokio runtime); `dropped` is told of
    /// every span dropped (queue full, collector unreachable).
    pub fn start(
        config: &TraceConfig,
        dropped: Arc<dyn Fn(u64) + Send + Sync>,
    ) -> Result<Self, TraceError> {
        let failed = |e: &dyn std::fmt::Display| TraceError {
            endpoint: config.endpoint.clone(),
            message: e.to_string(),
        };
        let exporter = match config.protocol {
            OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(&config.endpoint)
                .with_timeout(EXPORT_TIMEOUT)
                .build(),
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(&config.endpoint)
                .with_timeout(EXPORT_TIMEOUT)
                .build(),
        }
        .map_err(|e| failed(&e))?;
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .build();
        let tasks = TaskTracker::new();
        let breaker = Arc::new(Breaker {
            open_until: AtomicU64::new(0),
            base: Instant::now(),
        });
        let processor = Bounded::start(
            exporter,
            resource.clone(),
            config.queue.max(1),
            DropCounter(Arc::clone(&dropped)),
            Arc::clone(&breaker),
            &tasks,
        );
        let queue = processor.queue.clone();
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_span_processor(processor)
            .build();
        tasks.close();
        Ok(Self {
            provider,
            breaker,
            dropped: DropCounter(dropped),
            queue,
            _tasks: tasks,
        })
    }

    /// A layer that makes longrun's `tracing` spans (down to debug, the
    /// creates among them, whatever the log level) OpenTelemetry spans
    /// exported here; none while the breaker is open.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        use tracing_subscriber::Layer;
        use tracing_subscriber::filter::FilterExt;
        let (breaker, dropped) = (Arc::clone(&self.breaker), self.dropped.clone());
        let flowing = tracing_subscriber::filter::filter_fn(move |meta| {
            let allowed = breaker.allows();
            if !allowed && meta.is_span() {
                (dropped.0)(1);
            }
            allowed
        });
        let ours = tracing_subscriber::filter::Targets::new()
            .with_target("longrun", tracing::Level::DEBUG);
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("longrun"))
            .with_filter(ours.and(flowing))
    }

    /// Sends the spans that wait (for at most a few seconds), then stops.
    pub async fn shutdown(&self) {
        let (done, flushed) = oneshot::channel();
        if self.queue.send(Message::Flush(done)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), flushed).await;
        }
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "trace export did not shut down cleanly");
        }
    }
}

enum Message {
    Span(Box<SpanData>),
    Flush(oneshot::Sender<()>),
}

/// The span processor: a bounded queue in front of one export task.
#[derive(Debug)]
struct Bounded {
    queue: mpsc::Sender<Message>,
    dropped: DropCounter,
    closed: Arc<AtomicBool>,
}

#[derive(Clone)]
struct DropCounter(Arc<dyn Fn(u64) + Send + Sync>);

impl std::fmt::Debug for DropCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DropCounter")
    }
}

impl Bounded {
    fn start<E: SpanExporter + 'static>(
        mut exporter: E,
        resource: Resource,
        queue: usize,
        counter: DropCounter,
        breaker: Arc<Breaker>,
        tasks: &TaskTracker,
    ) -> Self {
        exporter.set_resource(&resource);
        let (tx, mut rx) = mpsc::channel::<Message>(queue);
        let on_failure = counter.clone();
        tasks.spawn(async move {
            // Said once per outage, not per batch.
            let mut failing = false;
            let mut waiting = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut waiting, BATCH).await > 0 {
                let mut batch = Vec::with_capacity(waiting.len());
                let mut flushed = Vec::new();
                for message in waiting.drain(..) {
                    match message {
                        Message::Span(span) => batch.push(*span),
                        Message::Flush(done) => flushed.push(done),
                    }
                }
                if !batch.is_empty() {
                    let n = batch.len() as u64;
                    let error = match tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(batch)).await
                    {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some(e.to_string()),
                        Err(_) => Some(format!("no answer within {EXPORT_TIMEOUT:?}")),
                    };
                    match error {
                        None if failing => {
                            failing = false;
                            breaker.close();
                            tracing::info!("trace export works again");
                        }
                        None => {}
                        Some(error) => {
                            (on_failure.0)(n);
                            breaker.open();
                            if !failing {
                                failing = true;
                                tracing::warn!(
                                    %error,
                                    "trace export failed; spans are dropped (and counted) until the collector takes them again"
                                );
                            }
                        }
                    }
                }
                for done in flushed {
                    let _ = done.send(());
                }
            }
        });
        Self {
            queue: tx,
            dropped: counter,
            closed: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl SpanProcessor for Bounded {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if self.closed.load(Ordering::Relaxed)
            || self.queue.try_send(Message::Span(Box::new(span))).is_err()
        {
            (self.dropped.0)(1);
        }
    }

    /// Asks for what waits to be sent, without waiting (it may be called
    /// on a runtime thread); [`Exporting::shutdown`] waits for it.
    fn force_flush(&self) -> OTelSdkResult {
        let (done, _) = oneshot::channel();
        self.queue
            .try_send(Message::Flush(done))
            .map_err(|_| OTelSdkError::InternalFailure("the trace queue is full".into()))
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.closed.store(true, Ordering::Relaxed);
        Ok(())
    }
}
