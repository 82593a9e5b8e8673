//! Traces, through the real binary and a real OTLP collector (the
//! collector's trace service, served here over tonic): one operation is
//! one trace from the caller's span to its webhook, with each attempt in
//! it; the caller's context reaches the webhook receiver; with the
//! collector unreachable, spans are dropped and counted, and work goes
//! on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use longrun::pb::google::longrunning::operations_client::OperationsClient;
use longrun::pb::longrun::v1::diagnostics_client::DiagnosticsClient;
use longrun::pb::longrun::v1::{NotificationConfig, SleepRequest, State};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::io::AsyncBufReadExt;
use tokio::sync::{Notify, mpsc};
use tonic::transport::Channel;

use crate::common::*;

const PATIENCE: Duration = Duration::from_secs(60);
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// The spans a collector received.
#[derive(Default, Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    arrived: Arc<Notify>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = request
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        self.spans.lock().unwrap().extend(spans);
        self.arrived.notify_waiters();
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// Serves the collector on a free port; returns its URL.
    async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        url
    }

    /// Waits until `done` holds of the spans received.
    async fn until(&self, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let arrived = self.arrived.notified();
                {
                    let spans = self.spans.lock().unwrap();
                    if done(&spans) {
                        return spans.clone();
                    }
                }
                arrived.await;
            }
        })
        .await
        .expect("the spans arrived in time")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A span's attributes, as strings.
fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

/// A child's log, read a line at a time.
struct LogLines(tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>);

impl LogLines {
    /// What follows `marker` on the next line that has it.
    async fn after(&mut self, marker: &str) -> String {
        tokio::time::timeout(PATIENCE, async {
            while let Some(line) = self.0.next_line().await.unwrap() {
                if let Some((_, rest)) = line.split_once(marker) {
                    return rest.trim().to_owned();
                }
            }
            panic!("the log ended before {marker:?}");
        })
        .await
        .unwrap_or_else(|_| panic!("no {marker:?} in the log in time"))
    }
}

/// Starts the real binary with `flags`; returns it and its gRPC URL.
async fn spawn(dir: &std::path::Path, flags: &[&str]) -> (tokio::process::Child, String) {
    let flags = [&["--webhook-allow-private"], flags].concat();
    serve_binary(dir, "127.0.0.1:0", &flags).await
}

/// A webhook receiver that answers 200 and passes on each delivery's
/// `traceparent`.
async fn receiver() -> (String, mpsc::UnboundedReceiver<String>) {
    let (tx, seen) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let tx = tx.clone();
            async move {
                let parent = headers
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let _ = tx.send(parent);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test]
async fn one_operation_is_one_trace_from_the_callers_span_to_its_webhook() {
    let collector = Collector::default();
    let endpoint = collector.serve().await;
    let (hook, mut deliveries) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--otlp-endpoint", &endpoint, "--metrics-listen", "off"];
    let (mut server, url) = spawn(dir.path(), &flags).await;
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();

    // Its first attempt fails (retryably), its second succeeds.
    let mut request = tonic::Request::new(SleepRequest {
        fail_attempts: 1,
        notification: Some(NotificationConfig {
            callback_url: hook,
            ..Default::default()
        }),
        ..sleep(Duration::ZERO, 1)
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE}-{CALLER_SPAN}-01").parse().unwrap(),
    );
    let op = DiagnosticsClient::new(channel.clone())
        .sleep(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta(&op).trace_id, TRACE);
    let mut ops = OperationsClient::new(tonic::service::interceptor::InterceptedService::new(
        channel,
        Bearer(None),
    ));
    let done = tokio::time::timeout(PATIENCE, wait_done_on(&mut ops, &op.name))
        .await
        .expect("done in time");
    assert_eq!(state(&done), State::Succeeded);
    let delivered = tokio::time::timeout(PATIENCE, deliveries.recv())
        .await
        .expect("the webhook came")
        .unwrap();
    assert!(
        delivered.starts_with(&format!("00-{TRACE}-")),
        "the webhook's traceparent is {delivered:?}"
    );

    let spans = collector
        .until(|spans| {
            let named = |name: &str| spans.iter().filter(|s| s.name == name).count();
            named("create") >= 1 && named("task") >= 2 && named("webhook") >= 1
        })
        .await;
    let ours: Vec<&Span> = spans.iter().filter(|s| hex(&s.trace_id) == TRACE).collect();
    let create = ours
        .iter()
        .find(|s| s.name == "create")
        .expect("the create's span is in the caller's trace");
    assert_eq!(hex(&create.parent_span_id), CALLER_SPAN);
    let mut attempts: Vec<HashMap<String, String>> = ours
        .iter()
        .filter(|s| s.name == "task")
        .inspect(|s| {
            assert_eq!(
                s.parent_span_id, create.span_id,
                "an attempt hangs off the create"
            )
        })
        .map(|s| attributes(s))
        .collect();
    attempts.sort_by_key(|a| a["attempt"].clone());
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    for (n, (attempt, outcome)) in [("1", "retried"), ("2", "succeeded")]
        .into_iter()
        .enumerate()
    {
        assert_eq!(attempts[n]["attempt"], attempt);
        assert_eq!(attempts[n]["outcome"], outcome);
        assert_eq!(attempts[n]["id"], op.name);
        assert_eq!(attempts[n]["kind"], "longrun.v1.Diagnostics.Sleep");
    }
    assert!(attempts[0].contains_key("retry_backoff_ms"));
    let webhook = ours
        .iter()
        .find(|s| s.name == "webhook")
        .expect("the delivery's span is in the trace");
    assert_eq!(webhook.parent_span_id, create.span_id);
    assert_eq!(attributes(webhook)["status_code"], "200");
    server.start_kill().unwrap();
    server.wait().await.unwrap();
}

#[tokio::test]
async fn with_the_collector_down_spans_are_dropped_and_counted_and_work_goes_on() {
    // A port nothing listens on.
    let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", gone.local_addr().unwrap());
    drop(gone);
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_at = metrics.local_addr().unwrap().to_string();
    drop(metrics);
    let dir = tempfile::tempdir().unwrap();
    // Its log is read here: the warning of the first failed export is the
    // event waited for.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_longrun"))
        .args(["serve", "--listen", "127.0.0.1:0", "--shutdown-grace", "1s"])
        .args([
            "--otlp-endpoint",
            &endpoint,
            "--metrics-listen",
            &metrics_at,
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env("LONGRUN_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut log = LogLines(tokio::io::BufReader::new(child.stderr.take().unwrap()).lines());
    let url = format!("http://{}", log.after("listening on ").await);
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    let mut ops = OperationsClient::new(tonic::service::interceptor::InterceptedService::new(
        channel.clone(),
        Bearer(None),
    ));
    for _ in 0..20 {
        let op = DiagnosticsClient::new(channel.clone())
            .sleep(sleep(Duration::ZERO, 1))
            .await
            .unwrap()
            .into_inner();
        let done = tokio::time::timeout(PATIENCE, wait_done_on(&mut ops, &op.name))
            .await
            .expect("work goes on without the collector");
        assert_eq!(state(&done), State::Succeeded);
    }
    // Counted before it is said.
    log.after("trace export failed").await;
    let text = reqwest::get(format!("http://{metrics_at}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dropped = text
        .lines()
        .find_map(|l| l.strip_prefix("longrun_trace_spans_dropped_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(dropped >= 1.0);
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

#[tokio::test]
async fn an_outside_python_workers_span_continues_its_attempt() {
    let Some(python) = crate::workers::python() else {
        return;
    };
    let collector = Collector::default();
    let endpoint = collector.serve().await;
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--otlp-endpoint", &endpoint, "--metrics-listen", "off"];
    let (mut server, url) = spawn(dir.path(), &flags).await;
    let address = url.trim_start_matches("http://").to_owned();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SERVICE_NAME", "python-worker"),
    ];
    let mut worker = python_example(&python, &address, &["--max-operations", "1"], &env).await;
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    let op = longrun::pb::longrun::v1::jobs_client::JobsClient::new(channel.clone())
        .enqueue(longrun::pb::longrun::v1::EnqueueRequest {
            kind: "text.reverse".into(),
            payload: Some(prost_types::Any::from_msg(&"hello".to_owned()).unwrap()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut ops = OperationsClient::new(tonic::service::interceptor::InterceptedService::new(
        channel,
        Bearer(None),
    ));
    let done = tokio::time::timeout(PATIENCE, wait_done_on(&mut ops, &op.name))
        .await
        .expect("done in time");
    assert_eq!(state(&done), State::Succeeded);
    let name = op.name.clone();
    let spans = collector
        .until(|spans| {
            spans.iter().any(|s| s.name == "text.reverse work")
                && spans
                    .iter()
                    .any(|s| s.name == "task" && attributes(s).get("id") == Some(&name))
        })
        .await;
    let attempt = spans
        .iter()
        .find(|s| s.name == "task" && attributes(s).get("id") == Some(&name))
        .unwrap();
    let work = spans
        .iter()
        .find(|s| s.name == "text.reverse work")
        .unwrap();
    assert_eq!(work.trace_id, attempt.trace_id);
    assert_eq!(
        work.parent_span_id, attempt.span_id,
        "the worker's span hangs off the attempt"
    );
    assert_eq!(attributes(work)["longrun.operation"], op.name);
    let _ = tokio::time::timeout(PATIENCE, worker.wait()).await;
    server.start_kill().unwrap();
    server.wait().await.unwrap();
}
