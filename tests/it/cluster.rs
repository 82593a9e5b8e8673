//! Several nodes of the real binary on one PostgreSQL database.
//!
//! Any node answers for any operation (Get, Wait and Watch see what
//! another node did); a node killed with SIGKILL loses nothing it
//! acknowledged, its running work starts again on the others once its
//! lease lapses and ends once, each webhook of it is delivered once, and
//! the node, restarted, takes work again. Deliveries are signed with the
//! secret the cluster keeps, which `longrun webhook secret --store` prints;
//! uploads and reports are read on every node.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use axum::body::Bytes;
use longrun::pb::google::longrunning::operations_client::OperationsClient;
use longrun::pb::google::longrunning::{GetOperationRequest, Operation, WaitOperationRequest};
use longrun::pb::longrun::v1::delivery::DeliveryState;
use longrun::pb::longrun::v1::diagnostics_client::DiagnosticsClient;
use longrun::pb::longrun::v1::notifications_client::NotificationsClient;
use longrun::pb::longrun::v1::operation_watcher_client::OperationWatcherClient;
use longrun::pb::longrun::v1::{
    ListDeliveriesRequest, NotificationConfig, SleepRequest, SleepResponse, State,
    WatchOperationRequest,
};
use longrun::webhook::{Secret, verify};
use prost::Message;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::common::{meta, sleep, state};
use crate::pg::TestDb;

const PATIENCE: Duration = Duration::from_secs(60);
/// Short, so that failover is quick to see.
const LEASE: &str = "2s";

pub(crate) struct Node {
    child: Child,
    pub(crate) channel: Channel,
}

/// Starts `longrun serve` on `db` as node `name`, and waits until it serves.
pub(crate) async fn start(db: &TestDb, dir: &Path, name: &str) -> Node {
    start_with(db, dir, name, &[]).await
}

/// As [`start`], with more flags.
pub(crate) async fn start_with(db: &TestDb, dir: &Path, name: &str, flags: &[&str]) -> Node {
    let (child, url) = crate::common::spawn_listening(
        Command::new(env!("CARGO_BIN_EXE_longrun"))
            .args(["serve", "--listen", "127.0.0.1:0", "--store", &db.url])
            .args(["--node-name", name, "--lease", LEASE])
            .args(["--shutdown-grace", "1s", "--webhook-allow-private"])
            .args(["--webhook-retry-schedule", "100ms,100ms,100ms"])
            .arg("--data-dir")
            .arg(dir.join(name))
            .args(flags),
    )
    .await;
    let channel = Channel::from_shared(url)
        .unwrap()
        .connect()
        .await
        .expect("connect");
    Node { child, channel }
}

impl Node {
    fn ops(&self) -> OperationsClient<Channel> {
        OperationsClient::new(self.channel.clone())
    }

    fn diagnostics(&self) -> DiagnosticsClient<Channel> {
        DiagnosticsClient::new(self.channel.clone())
    }

    async fn get(&self, name: &str) -> Operation {
        self.ops()
            .get_operation(GetOperationRequest { name: name.into() })
            .await
            .unwrap_or_else(|e| panic!("get {name}: {e:?}"))
            .into_inner()
    }

    /// Waits (WaitOperation, again and again) until `name` is done.
    async fn wait_done(&self, name: &str) -> Operation {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let op = self
                    .ops()
                    .wait_operation(WaitOperationRequest {
                        name: name.into(),
                        timeout: Some(prost_types::Duration {
                            seconds: 5,
                            nanos: 0,
                        }),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                if op.done {
                    return op;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{name} done in time"))
    }

    pub(crate) async fn kill(&mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }
}

fn response(op: &Operation) -> SleepResponse {
    match op.result.as_ref() {
        Some(longrun::pb::google::longrunning::operation::Result::Response(any)) => {
            SleepResponse::decode(any.value.as_slice()).unwrap()
        }
        other => panic!("{} did not succeed: {other:?}", op.name),
    }
}

/// The cluster's webhook secret, as `longrun webhook secret --store`
/// prints it (creating it when no node has yet).
fn cluster_secret(db: &TestDb) -> Secret {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_longrun"))
        .args(["webhook", "secret", "--store", &db.url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A webhook receiver: each POST's operation name, as it arrives, marked
/// `unverified` when its signature does not check out with `secret`.
async fn receiver(secret: Secret) -> (String, mpsc::UnboundedReceiver<String>) {
    let (tx, posts) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: Bytes| {
            let tx = tx.clone();
            let secret = secret.clone();
            async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let verified = verify(
                    &[secret],
                    &header("webhook-id"),
                    &header("webhook-timestamp"),
                    &header("webhook-signature"),
                    &body,
                    std::time::SystemTime::now(),
                    Duration::from_secs(300),
                );
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let name = json["data"]["name"].as_str().unwrap_or_default();
                let _ = tx.send(match verified {
                    Ok(()) => name.to_owned(),
                    Err(e) => format!("unverified {name}: {e}"),
                });
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, posts)
}

#[tokio::test]
async fn any_node_answers_for_an_operation_made_on_another() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = start(&db, dir.path(), "a").await;
    let b = start(&db, dir.path(), "b").await;
    let c = start(&db, dir.path(), "c").await;

    let op = a
        .diagnostics()
        .sleep(sleep(Duration::from_millis(1500), 3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.get(&op.name).await.name, op.name);
    let mut stream = OperationWatcherClient::new(c.channel.clone())
        .watch_operation(WatchOperationRequest {
            name: op.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let waited = b.wait_done(&op.name).await;
    assert_eq!(state(&waited), State::Succeeded);
    let watched = tokio::time::timeout(PATIENCE, async {
        while let Some(seen) = stream.next().await {
            let seen = seen.unwrap();
            if seen.done {
                return seen;
            }
        }
        panic!("the watch ended before the operation was done");
    })
    .await
    .expect("the watch saw the end");
    assert_eq!(watched, c.get(&op.name).await);
    assert_eq!(meta(&watched).attempt, 1);
}

#[tokio::test]
async fn a_killed_nodes_work_finishes_on_the_others_once() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Printed before any node ran, the secret is the one every node signs
    // with.
    let secret = cluster_secret(&db);
    assert_eq!(cluster_secret(&db), secret);
    let (hook, mut posts) = receiver(secret).await;
    // Node a alone takes the first work, so that it is running there.
    let mut a = start(&db, dir.path(), "a").await;
    let request = SleepRequest {
        notification: Some(NotificationConfig {
            callback_url: hook.clone(),
            events: Vec::new(),
        }),
        ..sleep(Duration::from_secs(4), 4)
    };
    let mut running = Vec::new();
    for _ in 0..20 {
        let op = a.diagnostics().sleep(request.clone()).await.unwrap();
        running.push(op.into_inner().name);
    }
    for name in &running {
        tokio::time::timeout(PATIENCE, async {
            while state(&a.get(name).await) != State::Running {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("running on a");
    }
    let b = start(&db, dir.path(), "b").await;
    let c = start(&db, dir.path(), "c").await;
    // Creates acknowledged just before the kill, queued or running.
    let mut late = Vec::new();
    for _ in 0..20 {
        let op = a
            .diagnostics()
            .sleep(sleep(Duration::from_millis(200), 1))
            .await
            .unwrap();
        late.push(op.into_inner().name);
    }
    a.kill().await;

    for name in &running {
        let op = b.wait_done(name).await;
        // Run again by a survivor, as attempt 2, after a's lease lapsed.
        assert_eq!(state(&op), State::Succeeded, "{name}");
        assert_eq!(response(&op).attempt, 2, "{name} ran again once");
        assert_eq!(op, c.get(name).await);
    }
    for name in &late {
        let op = c.wait_done(name).await;
        assert_eq!(state(&op), State::Succeeded, "{name} was not lost");
    }
    // Each final state was posted, and recorded as delivered...
    let mut posted: HashMap<String, usize> = HashMap::new();
    tokio::time::timeout(PATIENCE, async {
        while !running.iter().all(|name| posted.contains_key(name)) {
            let name = posts.recv().await.expect("the receiver runs");
            assert!(!name.starts_with("unverified"), "{name}");
            *posted.entry(name).or_default() += 1;
        }
    })
    .await
    .expect("every webhook delivered");
    let mut notifications = NotificationsClient::new(b.channel.clone());
    for name in &running {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let list = notifications
                    .list_deliveries(ListDeliveriesRequest { name: name.clone() })
                    .await
                    .unwrap()
                    .into_inner()
                    .deliveries;
                if list
                    .iter()
                    .any(|d| d.state == DeliveryState::Delivered as i32)
                {
                    return;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the delivery recorded");
    }
    // ... and by one node only: nothing else arrived meanwhile.
    while let Ok(name) = posts.try_recv() {
        *posted.entry(name).or_default() += 1;
    }
    for name in &running {
        assert_eq!(posted[name], 1, "{name} posted once");
    }

    // Restarted, a takes work again: the others stop, and a runs the next.
    let a = start(&db, dir.path(), "a").await;
    drop(b);
    drop(c);
    let op = a
        .diagnostics()
        .sleep(sleep(Duration::from_millis(100), 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&a.wait_done(&op.name).await), State::Succeeded);
}

#[tokio::test]
async fn uploads_and_reports_are_read_on_any_node() {
    use longrun::pb::longrun::v1::report_service_client::ReportServiceClient;
    use longrun::pb::longrun::v1::{
        CreateReportRequest, ImportOrdersRequest, ImportOrdersResponse, ReadReportRequest, Report,
        ReportFormat,
    };
    use longrun::reports::generate::{Spec, write_csv};
    use sha2::{Digest, Sha256};

    let Some(db) = TestDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = start(&db, dir.path(), "a").await;
    let b = start(&db, dir.path(), "b").await;
    let reports = |node: &Node| ReportServiceClient::new(node.channel.clone());

    // 3 MiB or so of CSV, so that the upload spans several stored chunks.
    let spec = Spec {
        count: 40_000,
        months: ("2024-03".parse().unwrap(), "2024-03".parse().unwrap()),
        seed: 7,
    };
    let mut csv = Vec::new();
    write_csv(&spec, &mut csv).unwrap();
    let upload = csv.chunks(64 * 1024).map(|chunk| ImportOrdersRequest {
        csv_chunk: chunk.to_vec(),
        ..Default::default()
    });
    let op = reports(&a)
        .import_orders(tokio_stream::iter(upload.collect::<Vec<_>>()))
        .await
        .unwrap()
        .into_inner();
    let done = b.wait_done(&op.name).await;
    assert_eq!(state(&done), State::Succeeded, "{done:?}");
    let Some(longrun::pb::google::longrunning::operation::Result::Response(any)) = done.result
    else {
        panic!("the import did not succeed");
    };
    assert_eq!(
        ImportOrdersResponse::decode(any.value.as_slice())
            .unwrap()
            .imported,
        40_000
    );

    let op = reports(&b)
        .create_report(CreateReportRequest {
            month: "2024-03".into(),
            format: ReportFormat::Csv as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let done = a.wait_done(&op.name).await;
    let Some(longrun::pb::google::longrunning::operation::Result::Response(any)) = done.result
    else {
        panic!("the report did not succeed: {done:?}");
    };
    let report = Report::decode(any.value.as_slice()).unwrap();
    assert_eq!(report.order_count, 40_000);
    // Each node reads the file, whichever node wrote it.
    for node in [&a, &b] {
        let mut stream = reports(node)
            .read_report(ReadReportRequest {
                name: report.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut file = Vec::new();
        while let Some(chunk) = stream.next().await {
            file.extend(chunk.unwrap().data);
        }
        assert_eq!(file.len() as i64, report.size_bytes);
        let sha: String = Sha256::digest(&file)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(sha, report.sha256);
        // A header, one line per order, and the total.
        assert_eq!(file.iter().filter(|b| **b == b'\n').count(), 40_002);
    }
}
