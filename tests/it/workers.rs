//! Outside workers, through the real server with real gRPC workers: the
//! lease stream, credits, heartbeats and progress, fenced completion after
//! a worker dies or hangs, cancellation reaching the worker, and the role
//! and kind checks.

use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::common::{
    Authed, PATIENCE, Person, TestServer, assert_status, auth_toml, meta, python_example,
    wait_done_as, wait_for_line,
};
use longrun::pb::google::longrunning::operation::Result as OpResult;
use longrun::pb::google::longrunning::operations_client::OperationsClient;
use longrun::pb::google::longrunning::{CancelOperationRequest, GetOperationRequest, Operation};
use longrun::pb::longrun::v1::jobs_client::JobsClient;
use longrun::pb::longrun::v1::lease_request::Message as FromWorker;
use longrun::pb::longrun::v1::lease_response::Message as ForWorker;
use longrun::pb::longrun::v1::workers_client::WorkersClient;
use longrun::pb::longrun::v1::{
    Assignment, Cancellation, CompleteRequest, Credits, EnqueueRequest, FailRequest,
    HeartbeatRequest, KindDeclaration, LeaseRequest, State, Subscribe,
};

/// A worker over a real Lease stream.
struct Worker {
    client: WorkersClient<Authed>,
    sender: Option<mpsc::Sender<LeaseRequest>>,
    stream: tonic::Streaming<longrun::pb::longrun::v1::LeaseResponse>,
}

fn declaration(name: &str, lease: Duration, attempts: i32) -> KindDeclaration {
    KindDeclaration {
        name: name.into(),
        max_attempts: attempts,
        lease_duration: Some(prost_types::Duration {
            seconds: lease.as_secs() as i64,
            nanos: lease.subsec_nanos() as i32,
        }),
        ..KindDeclaration::default()
    }
}

impl Worker {
    async fn try_connect(
        server: &TestServer,
        token: Option<&str>,
        kinds: Vec<KindDeclaration>,
        capacity: i32,
    ) -> Result<Self, tonic::Status> {
        let mut client = WorkersClient::new(server.authed(token).await);
        let (sender, receiver) = mpsc::channel(16);
        sender
            .send(LeaseRequest {
                message: Some(FromWorker::Subscribe(Subscribe {
                    kinds,
                    capacity,
                    worker_name: "test".into(),
                })),
            })
            .await
            .unwrap();
        let stream = client
            .lease(ReceiverStream::new(receiver))
            .await?
            .into_inner();
        Ok(Self {
            client,
            sender: Some(sender),
            stream,
        })
    }

    async fn connect(
        server: &TestServer,
        token: Option<&str>,
        kinds: Vec<KindDeclaration>,
        capacity: i32,
    ) -> Self {
        Self::try_connect(server, token, kinds, capacity)
            .await
            .expect("the worker subscribes")
    }

    async fn next(&mut self) -> ForWorker {
        tokio::time::timeout(PATIENCE, self.stream.message())
            .await
            .expect("a message in time")
            .expect("the stream reads")
            .expect("the stream is open")
            .message
            .expect("a message")
    }

    async fn assignment(&mut self) -> Assignment {
        match self.next().await {
            ForWorker::Assignment(a) => a,
            other => panic!("expected an assignment, got {other:?}"),
        }
    }

    async fn cancellation(&mut self) -> Cancellation {
        match self.next().await {
            ForWorker::Cancellation(c) => c,
            other => panic!("expected a cancellation, got {other:?}"),
        }
    }

    async fn complete(&mut self, a: &Assignment, text: &str) -> Result<(), tonic::Status> {
        complete(&mut self.client, a, text).await
    }

    async fn heartbeat(&mut self, a: &Assignment, percent: i32) -> Result<bool, tonic::Status> {
        self.client
            .heartbeat(HeartbeatRequest {
                name: a.name.clone(),
                attempt: a.attempt,
                progress_percent: percent,
                status_message: format!("{percent} percent"),
                lease_token: a.lease_token.clone(),
            })
            .await
            .map(|r| r.into_inner().cancel_requested)
    }

    async fn credits(&self, count: i32) {
        self.sender
            .as_ref()
            .unwrap()
            .send(LeaseRequest {
                message: Some(FromWorker::Credits(Credits { count })),
            })
            .await
            .unwrap();
    }
}

async fn complete(
    client: &mut WorkersClient<Authed>,
    a: &Assignment,
    text: &str,
) -> Result<(), tonic::Status> {
    client
        .complete(CompleteRequest {
            name: a.name.clone(),
            attempt: a.attempt,
            response: Some(text_any(text)),
            lease_token: a.lease_token.clone(),
        })
        .await
        .map(|_| ())
}

/// A google.protobuf.StringValue as an Any.
pub(crate) fn text_any(text: &str) -> prost_types::Any {
    prost_types::Any {
        type_url: "type.googleapis.com/google.protobuf.StringValue".into(),
        value: text.to_owned().encode_to_vec(),
    }
}

pub(crate) async fn enqueue(
    server: &TestServer,
    token: Option<&str>,
    kind: &str,
    text: &str,
) -> Operation {
    JobsClient::new(server.authed(token).await)
        .enqueue(EnqueueRequest {
            kind: kind.into(),
            payload: Some(text_any(text)),
            ..EnqueueRequest::default()
        })
        .await
        .expect("enqueued")
        .into_inner()
}

async fn get(server: &TestServer, name: &str) -> Operation {
    OperationsClient::new(server.authed(None).await)
        .get_operation(GetOperationRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
}

pub(crate) fn response_text(op: &Operation) -> String {
    match &op.result {
        Some(OpResult::Response(any)) => String::decode(any.value.as_slice()).unwrap(),
        other => panic!("no response: {other:?}"),
    }
}

#[tokio::test]
async fn a_worker_leases_reports_progress_and_completes() {
    let server = TestServer::start().await;
    let mut worker = Worker::connect(
        &server,
        None,
        vec![declaration("images.resize", Duration::from_secs(30), 3)],
        4,
    )
    .await;
    let op = enqueue(&server, None, "images.resize", "cat.png").await;
    assert_eq!(meta(&op).kind, "images.resize");

    let a = worker.assignment().await;
    assert_eq!((a.name.as_str(), a.attempt), (op.name.as_str(), 1));
    assert_eq!(a.kind, "images.resize");
    assert_eq!(a.payload, Some(text_any("cat.png")));
    assert!(a.lease_expire_time.is_some() && a.deadline.is_some());

    assert!(!worker.heartbeat(&a, 40).await.unwrap());
    // The progress reaches the operation (stored at a bounded rate).
    let id = longrun::pb::convert::operation_id("name", &op.name).unwrap();
    let mut sub = server
        .engine
        .subscribe(&longrun::model::Scope::All, id)
        .await
        .unwrap();
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let longrun::engine::Snapshot::Present(now) = sub.current()
                && now.progress_percent == 40
            {
                return;
            }
            sub.changed().await;
        }
    })
    .await
    .expect("the progress reached the operation");
    assert_eq!(meta(&get(&server, &op.name).await).progress_percent, 40);

    worker.complete(&a, "cat-small.png").await.unwrap();
    let done = wait_done_as(&server, None, &op.name).await;
    assert_eq!(meta(&done).state, State::Succeeded as i32);
    assert_eq!(response_text(&done), "cat-small.png");
    // A second Complete of the same attempt changes nothing.
    let again = worker.complete(&a, "other").await.unwrap_err();
    assert_status(&again, Code::FailedPrecondition, "STALE_ATTEMPT", None);
    assert_eq!(
        response_text(&get(&server, &op.name).await),
        "cat-small.png"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_killed_worker_loses_its_lease_and_its_late_complete_is_refused() {
    let server = TestServer::start().await;
    let kinds = || vec![declaration("reports.pdf", Duration::from_secs(30), 3)];
    let mut first = Worker::connect(&server, None, kinds(), 1).await;
    let op = enqueue(&server, None, "reports.pdf", "march").await;
    let a = first.assignment().await;
    assert_eq!(a.attempt, 1);

    // The worker dies: its stream goes, its client stays to call late.
    let late = first.client.clone();
    drop(first);
    let mut second = Worker::connect(&server, None, kinds(), 1).await;
    let b = second.assignment().await;
    assert_eq!((b.name.as_str(), b.attempt), (op.name.as_str(), 2));
    let retried = get(&server, &op.name).await;
    let error = meta(&retried)
        .last_attempt_error
        .expect("why attempt 1 ended");
    assert_eq!(error.code, Code::Aborted as i32);

    // The first worker's late result is refused and changes nothing.
    let mut late = late;
    let refused = complete(&mut late, &a, "from the dead").await.unwrap_err();
    assert_status(&refused, Code::FailedPrecondition, "STALE_ATTEMPT", None);

    second.complete(&b, "from the living").await.unwrap();
    let done = wait_done_as(&server, None, &op.name).await;
    assert_eq!(response_text(&done), "from the living");
    assert_eq!(meta(&done).attempt, 2);
    let refused = complete(&mut late, &a, "from the dead").await.unwrap_err();
    assert_status(&refused, Code::FailedPrecondition, "STALE_ATTEMPT", None);
    assert_eq!(
        response_text(&get(&server, &op.name).await),
        "from the living"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_hung_worker_loses_its_lease_without_disconnecting() {
    let server = TestServer::start().await;
    let mut worker = Worker::connect(
        &server,
        None,
        vec![declaration("slow", Duration::from_millis(300), 2)],
        1,
    )
    .await;
    let op = enqueue(&server, None, "slow", "x").await;
    let a = worker.assignment().await;
    // No heartbeat: the lease expires while the stream stays open, and the
    // next attempt comes to the same (still connected) worker.
    let b = worker.assignment().await;
    assert_eq!((b.name.as_str(), b.attempt), (a.name.as_str(), 2));
    let stale = worker.heartbeat(&a, 50).await.unwrap_err();
    assert_status(&stale, Code::FailedPrecondition, "STALE_ATTEMPT", None);
    // The last attempt expires too: the operation ends ABORTED.
    let done = wait_done_as(&server, None, &op.name).await;
    match &done.result {
        Some(OpResult::Error(e)) => assert_eq!(e.code, Code::Aborted as i32, "{e:?}"),
        other => panic!("expected an error, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn a_cancellation_reaches_the_worker() {
    let server = TestServer::start().await;
    let mut worker = Worker::connect(
        &server,
        None,
        vec![declaration("long", Duration::from_secs(30), 3)],
        1,
    )
    .await;
    let op = enqueue(&server, None, "long", "x").await;
    let a = worker.assignment().await;
    OperationsClient::new(server.authed(None).await)
        .cancel_operation(CancelOperationRequest {
            name: op.name.clone(),
        })
        .await
        .unwrap();
    let c = worker.cancellation().await;
    assert_eq!((c.name.as_str(), c.attempt), (a.name.as_str(), a.attempt));
    assert!(worker.heartbeat(&a, 10).await.unwrap(), "cancel_requested");
    worker
        .client
        .fail(FailRequest {
            name: a.name.clone(),
            attempt: a.attempt,
            error: Some(longrun::pb::google::rpc::Status {
                code: Code::Cancelled as i32,
                message: "stopped as asked".into(),
                details: vec![],
            }),
            retryable: false,
            lease_token: a.lease_token.clone(),
        })
        .await
        .unwrap();
    let done = wait_done_as(&server, None, &op.name).await;
    assert_eq!(meta(&done).state, State::Cancelled as i32);
    server.stop().await;
}

#[tokio::test]
async fn credits_bound_what_a_worker_holds() {
    let server = TestServer::start().await;
    let mut worker = Worker::connect(
        &server,
        None,
        vec![declaration("thumbs", Duration::from_secs(30), 3)],
        2,
    )
    .await;
    let mut names = Vec::new();
    for i in 0..5 {
        names.push(enqueue(&server, None, "thumbs", &format!("{i}")).await.name);
    }
    let a = worker.assignment().await;
    let b = worker.assignment().await;
    // Two held: the store agrees that exactly two run and three wait.
    let count = |state: State| {
        let server = &server;
        let names = names.clone();
        async move {
            let mut n = 0;
            for name in &names {
                if meta(&get(server, name).await).state == state as i32 {
                    n += 1;
                }
            }
            n
        }
    };
    assert_eq!(count(State::Running).await, 2);
    assert_eq!(count(State::Queued).await, 3);
    // A completion gives a credit back: the third comes.
    worker.complete(&a, "done").await.unwrap();
    let c = worker.assignment().await;
    assert_eq!(count(State::Running).await, 2);
    // More credits: the last two come at once.
    worker.credits(2).await;
    let d = worker.assignment().await;
    let e = worker.assignment().await;
    assert_eq!(count(State::Queued).await, 0);
    for held in [&b, &c, &d, &e] {
        worker.complete(held, "done").await.unwrap();
    }
    for name in &names {
        let done = wait_done_as(&server, None, name).await;
        assert_eq!(meta(&done).state, State::Succeeded as i32);
    }
    server.stop().await;
}

#[tokio::test]
async fn workers_lease_only_their_kinds_and_tenant() {
    let writer = Person::new("alice", "acme", "writer");
    let other = Person::new("gary", "globex", "writer");
    let reader = Person::new("rita", "acme", "reader");
    let admin = Person::new("root", "ops", "admin");
    let worker = Person::new("resizer", "acme", "worker");
    let mut toml = auth_toml(&[&writer, &other, &reader, &admin], "");
    toml.push_str(&auth_toml(&[&worker], "").replace(
        "roles = [\"worker\"]",
        "roles = [\"worker\"]\nkinds = [\"resize\"]",
    ));
    let server = TestServer::start_with_auth(&toml, |_| {}).await;
    let kinds = |name: &str| vec![declaration(name, Duration::from_secs(30), 3)];

    // A kind the worker is not listed for; a reader; no token.
    let refused = Worker::try_connect(&server, worker.token(), kinds("other"), 1)
        .await
        .err()
        .unwrap();
    assert_status(&refused, Code::PermissionDenied, "KIND_NOT_ALLOWED", None);
    let refused = Worker::try_connect(&server, reader.token(), kinds("resize"), 1)
        .await
        .err()
        .unwrap();
    assert_status(&refused, Code::PermissionDenied, "ROLE_TOO_LOW", None);
    let refused = Worker::try_connect(&server, None, kinds("resize"), 1)
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), Code::Unauthenticated);

    // An undeclared kind cannot be enqueued.
    let status = JobsClient::new(server.authed(writer.token()).await)
        .enqueue(EnqueueRequest {
            kind: "resize".into(),
            ..EnqueueRequest::default()
        })
        .await
        .unwrap_err();
    assert_status(&status, Code::NotFound, "UNKNOWN_KIND", None);

    let mut acme = Worker::connect(&server, worker.token(), kinds("resize"), 2).await;
    // A worker may do nothing else.
    let status = OperationsClient::new(server.authed(worker.token()).await)
        .list_operations(longrun::pb::google::longrunning::ListOperationsRequest::default())
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "ROLE_TOO_LOW", None);
    // A writer may not lease.
    let refused = Worker::try_connect(&server, writer.token(), kinds("resize"), 1)
        .await
        .err()
        .unwrap();
    assert_status(&refused, Code::PermissionDenied, "ROLE_TOO_LOW", None);

    // acme's worker declared the kind for acme alone: globex cannot use it.
    let status = JobsClient::new(server.authed(other.token()).await)
        .enqueue(EnqueueRequest {
            kind: "resize".into(),
            ..EnqueueRequest::default()
        })
        .await
        .unwrap_err();
    assert_status(&status, Code::NotFound, "UNKNOWN_KIND", None);
    // An admin's worker declares it for every tenant, serves them all, and
    // is told whose each operation is; globex's is never acme's worker's.
    let mut any = Worker::connect(&server, admin.token(), kinds("resize"), 1).await;
    let theirs = enqueue(&server, other.token(), "resize", "globex.png").await;
    let g = any.assignment().await;
    assert_eq!(
        (g.name.as_str(), g.tenant.as_str()),
        (theirs.name.as_str(), "globex")
    );
    let ours = enqueue(&server, writer.token(), "resize", "acme.png").await;
    let a = acme.assignment().await;
    assert_eq!(
        (a.name.as_str(), a.tenant.as_str()),
        (ours.name.as_str(), "acme")
    );
    // acme's worker cannot finish globex's operation.
    let status = acme.complete(&g, "stolen").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    acme.complete(&a, "ok").await.unwrap();
    any.complete(&g, "ok").await.unwrap();
    wait_done_as(&server, writer.token(), &ours.name).await;
    wait_done_as(&server, other.token(), &theirs.name).await;
    tokio::time::timeout(Duration::from_secs(30), server.stop())
        .await
        .unwrap();
}

#[tokio::test]
async fn declared_kinds_and_their_work_survive_a_restart() {
    let temp = tempfile::tempdir().unwrap();
    let cfg = crate::common::config(temp.path());
    let server = TestServer::start_config(cfg.clone()).await;
    let mut worker = Worker::connect(
        &server,
        None,
        vec![declaration("etl", Duration::from_secs(30), 5)],
        1,
    )
    .await;
    let held = enqueue(&server, None, "etl", "held").await;
    let a = worker.assignment().await;
    assert_eq!(a.name, held.name);
    let queued = enqueue(&server, None, "etl", "queued").await;
    drop(worker);
    server.stop().await;

    // No worker yet: the kind is still declared, so enqueues work and the
    // work waits rather than failing.
    let server = TestServer::start_config(cfg).await;
    let third = enqueue(&server, None, "etl", "third").await;
    assert_eq!(
        meta(&get(&server, &queued.name).await).state,
        State::Queued as i32
    );
    let mut worker = Worker::connect(
        &server,
        None,
        vec![declaration("etl", Duration::from_secs(30), 5)],
        3,
    )
    .await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let a = worker.assignment().await;
        seen.push(a.name.clone());
        worker.complete(&a, "ok").await.unwrap();
    }
    seen.sort();
    let mut want = vec![held.name.clone(), queued.name.clone(), third.name.clone()];
    want.sort();
    assert_eq!(seen, want);
    let done = wait_done_as(&server, None, &held.name).await;
    assert!(
        meta(&done).attempt >= 2,
        "the interrupted attempt was not reused"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_cli_runs_a_command_per_operation() {
    let server = TestServer::start().await;
    // The command upper-cases its stdin, reports progress on stderr, and
    // fails for good on "boom", asks for a retry on "again" (first time).
    let script = r#"
        input=$(cat)
        echo "progress 50 halfway" >&2
        case "$input" in
          boom) echo "it blew up" >&2; exit 3 ;;
          again) [ "$LONGRUN_ATTEMPT" = 1 ] && exit 75 ;;
          trace) printf '%s' "$TRACEPARENT"; exit 0 ;;
        esac
        printf '%s' "$input" | tr a-z A-Z
    "#;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_longrun"))
        .args([
            "worker",
            "--server",
            &format!("http://{}", server.addr),
            "--kind",
            "shell.upper",
            "--capacity",
            "2",
            "--max-operations",
            "5",
            "--",
            "sh",
            "-c",
            script,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The worker says so once its subscription (which declares the kind)
    // is accepted.
    wait_for_line(
        child.stderr.take().unwrap(),
        PATIENCE,
        "the worker's subscription",
        |line| line.starts_with("serving shell.upper").then_some(()),
    )
    .await;
    assert!(
        server
            .engine
            .find_outside_kind(&longrun::model::Tenant::default_tenant(), "shell.upper")
            .await
            .unwrap()
    );
    let hello = enqueue(&server, None, "shell.upper", "hello").await;
    let boom = enqueue(&server, None, "shell.upper", "boom").await;
    let again = enqueue(&server, None, "shell.upper", "again").await;
    // The attempt's trace reaches the command as TRACEPARENT (this test's
    // server exports no spans, so it is the caller's own).
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut traced = tonic::Request::new(EnqueueRequest {
        kind: "shell.upper".into(),
        payload: Some(text_any("trace")),
        ..EnqueueRequest::default()
    });
    traced
        .metadata_mut()
        .insert("traceparent", parent.parse().unwrap());
    let traced = JobsClient::new(server.authed(None).await)
        .enqueue(traced)
        .await
        .unwrap()
        .into_inner();

    let done = wait_done_as(&server, None, &hello.name).await;
    assert_eq!(response_text(&done), "HELLO");
    let failed = wait_done_as(&server, None, &boom.name).await;
    match &failed.result {
        Some(OpResult::Error(e)) => {
            assert_eq!(e.code, Code::Unknown as i32);
            assert!(
                e.message.contains("exited with 3") && e.message.contains("it blew up"),
                "{e:?}"
            );
        }
        other => panic!("expected an error, got {other:?}"),
    }
    let retried = wait_done_as(&server, None, &again.name).await;
    assert_eq!(response_text(&retried), "AGAIN");
    assert_eq!(meta(&retried).attempt, 2);
    let done = wait_done_as(&server, None, &traced.name).await;
    assert_eq!(response_text(&done), parent);
    // Five operations (one retried), then the worker exits by itself.
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("the worker stopped after --max-operations")
        .unwrap();
    assert!(status.success());
    server.stop().await;
}

/// The Python interpreter with the example's requirements (`.ci/run`
/// prepares a venv and sets LONGRUN_TEST_PYTHON); None skips the test
/// loudly unless LONGRUN_TEST_PYTHON_REQUIRED=1 makes that a failure.
pub(crate) fn python() -> Option<String> {
    match std::env::var("LONGRUN_TEST_PYTHON") {
        Ok(python) => Some(python),
        Err(_) => {
            assert!(
                std::env::var("LONGRUN_TEST_PYTHON_REQUIRED").as_deref() != Ok("1"),
                "LONGRUN_TEST_PYTHON is not set, and LONGRUN_TEST_PYTHON_REQUIRED=1"
            );
            eprintln!(
                "SKIPPED: set LONGRUN_TEST_PYTHON to a Python with examples/python_worker/requirements.txt"
            );
            None
        }
    }
}

#[tokio::test]
async fn the_python_example_serves_operations() {
    let Some(python) = python() else { return };
    let server = TestServer::start().await;
    let address = server.addr.to_string();
    let mut child = python_example(&python, &address, &["--max-operations", "2"], &[]).await;

    let hello = enqueue(&server, None, "text.reverse", "hello").await;
    let done = wait_done_as(&server, None, &hello.name).await;
    assert_eq!(response_text(&done), "olleh");
    assert_eq!(meta(&done).state, State::Succeeded as i32);
    let fail = enqueue(&server, None, "text.reverse", "fail").await;
    let failed = wait_done_as(&server, None, &fail.name).await;
    match &failed.result {
        Some(OpResult::Error(e)) => assert_eq!(e.code, Code::InvalidArgument as i32),
        other => panic!("expected an error, got {other:?}"),
    }
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("the Python worker stopped after --max-operations")
        .unwrap();
    assert!(status.success());
    server.stop().await;
}

#[tokio::test]
async fn on_postgresql_a_lost_lease_moves_to_a_worker_of_another_node() {
    let Some(db) = crate::pg::TestDb::create().await else {
        return;
    };
    let node = |name: &'static str| {
        let url = db.url.clone();
        move |c: &mut longrun::ServerConfig| {
            c.backend = longrun::store::Backend::Postgres(url);
            c.engine.node = name.into();
        }
    };
    let a = TestServer::start_with(node("a")).await;
    let b = TestServer::start_with(node("b")).await;
    let kinds = || vec![declaration("pg.work", Duration::from_secs(30), 3)];
    let mut on_a = Worker::connect(&a, None, kinds(), 1).await;
    let op = enqueue(&a, None, "pg.work", "x").await;
    let first = on_a.assignment().await;
    assert_eq!((first.name.as_str(), first.attempt), (op.name.as_str(), 1));
    // Node b opened before the kind was declared, yet knows it from the
    // store.
    let other = enqueue(&b, None, "pg.work", "y").await;
    let mut on_b = Worker::connect(&b, None, kinds(), 1).await;
    let late = on_a.client.clone();
    drop(on_a);
    // b's worker gets the queued one, then the lost one under attempt 2.
    let queued = on_b.assignment().await;
    assert_eq!(
        (queued.name.as_str(), queued.attempt),
        (other.name.as_str(), 1)
    );
    on_b.complete(&queued, "other").await.unwrap();
    let second = on_b.assignment().await;
    assert_eq!(
        (second.name.as_str(), second.attempt),
        (op.name.as_str(), 2)
    );
    let mut late = late;
    let refused = complete(&mut late, &first, "late").await.unwrap_err();
    assert_status(&refused, Code::FailedPrecondition, "STALE_ATTEMPT", None);
    on_b.complete(&second, "done on b").await.unwrap();
    let done = wait_done_as(&a, None, &op.name).await;
    assert_eq!(response_text(&done), "done on b");
    drop(on_b);
    a.stop().await;
    b.stop().await;
}

/// An auth file with these workers (each with its kinds) and people.
fn with_workers(people: &[&Person], workers: &[(&Person, &[&str])]) -> String {
    let mut toml = auth_toml(people, "");
    for (worker, kinds) in workers {
        let kinds: Vec<String> = kinds.iter().map(|k| format!("{k:?}")).collect();
        toml.push_str(&auth_toml(&[worker], "").replace(
            "roles = [\"worker\"]",
            &format!("roles = [\"worker\"]\nkinds = [{}]", kinds.join(", ")),
        ));
    }
    toml
}

#[tokio::test]
async fn only_the_worker_holding_a_lease_may_report_on_it() {
    let writer = Person::new("wanda", "acme", "writer");
    let resizer = Person::new("resizer", "acme", "worker");
    let thumbs = Person::new("thumbs", "acme", "worker");
    let toml = with_workers(
        &[&writer],
        &[(&resizer, &["resize"]), (&thumbs, &["thumb"])],
    );
    let server = TestServer::start_with_auth(&toml, |_| {}).await;
    let long = Duration::from_secs(30);
    let mut holder = Worker::connect(
        &server,
        resizer.token(),
        vec![declaration("resize", long, 3)],
        1,
    )
    .await;
    let op = enqueue(&server, writer.token(), "resize", "a.png").await;
    let a = holder.assignment().await;
    assert_eq!(a.name, op.name);
    assert_eq!(a.lease_token.len(), 32, "128 random bits in hex");
    // The operation says which worker holds it.
    let mut watch =
        longrun::pb::longrun::v1::operation_watcher_client::OperationWatcherClient::new(
            server.authed(writer.token()).await,
        )
        .watch_operation(longrun::pb::longrun::v1::WatchOperationRequest {
            name: op.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(PATIENCE, async {
        while let Some(seen) = watch.message().await.unwrap() {
            if meta(&seen).holder.ends_with(": test") {
                return;
            }
        }
        panic!("the watch ended");
    })
    .await
    .expect("the holder is named");
    drop(watch);

    // A worker of another kind of the same tenant, even knowing the token:
    // its principal may not serve the kind.
    let mut other = Worker::connect(
        &server,
        thumbs.token(),
        vec![declaration("thumb", long, 3)],
        1,
    )
    .await;
    let status = other.complete(&a, "not mine").await.unwrap_err();
    assert_status(&status, Code::PermissionDenied, "KIND_NOT_ALLOWED", None);
    // Another session of a worker that may serve the kind, without the
    // lease's token: refused, whatever attempt it names.
    let mut rival = Worker::connect(
        &server,
        resizer.token(),
        vec![declaration("resize", long, 3)],
        1,
    )
    .await;
    for token in ["", "00000000000000000000000000000000"] {
        let guess = Assignment {
            lease_token: token.into(),
            ..a.clone()
        };
        let status = rival.complete(&guess, "stolen").await.unwrap_err();
        let (code, reason, field) = if token.is_empty() {
            (
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
                Some("lease_token"),
            )
        } else {
            (Code::FailedPrecondition, "LEASE_NOT_HELD", None)
        };
        assert_status(&status, code, reason, field);
        let status = rival.heartbeat(&guess, 50).await.unwrap_err();
        assert_eq!(status.code(), code);
    }
    // None of it touched the operation.
    let now = OperationsClient::new(server.authed(writer.token()).await)
        .get_operation(GetOperationRequest {
            name: op.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta(&now).state, State::Running as i32);
    // The holder finishes it.
    holder.complete(&a, "ok").await.unwrap();
    let done = wait_done_as(&server, writer.token(), &op.name).await;
    assert_eq!(response_text(&done), "ok");
    drop((other, rival));
    server.stop().await;
}

#[tokio::test]
async fn a_tenants_kind_declarations_are_its_own_and_bounded() {
    let acme = Person::new("wanda", "acme", "writer");
    let globex = Person::new("gus", "globex", "writer");
    let acme_worker = Person::new("acme-w", "acme", "worker");
    let globex_worker = Person::new("globex-w", "globex", "worker");
    let toml = with_workers(
        &[&acme, &globex],
        &[(&acme_worker, &["*"]), (&globex_worker, &["*"])],
    );
    let server = TestServer::start_with_auth(&toml, |_| {}).await;
    let timed = |name: &str, timeout: Duration| KindDeclaration {
        attempt_timeout: Some(prost_types::Duration {
            seconds: timeout.as_secs() as i64,
            nanos: timeout.subsec_nanos() as i32,
        }),
        ..declaration(name, Duration::from_secs(30), 3)
    };

    // A declaration out of bounds is refused, naming the field.
    let refused = Worker::try_connect(
        &server,
        globex_worker.token(),
        vec![timed("acme.invoices", Duration::from_millis(1))],
        1,
    )
    .await
    .err()
    .unwrap();
    assert_status(
        &refused,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("attempt_timeout"),
    );

    // globex declares acme's kind name first, with a short timeout: it is
    // globex's declaration alone.
    let globex_side = Worker::connect(
        &server,
        globex_worker.token(),
        vec![
            timed("acme.invoices", Duration::from_secs(2)),
            timed("globex.only", Duration::from_secs(2)),
        ],
        1,
    )
    .await;
    let status = JobsClient::new(server.authed(acme.token()).await)
        .enqueue(EnqueueRequest {
            kind: "acme.invoices".into(),
            ..EnqueueRequest::default()
        })
        .await
        .unwrap_err();
    assert_status(&status, Code::NotFound, "UNKNOWN_KIND", None);

    // acme's own declaration governs acme's operations.
    let mut acme_side = Worker::connect(
        &server,
        acme_worker.token(),
        vec![timed("acme.invoices", Duration::from_secs(3600))],
        1,
    )
    .await;
    let op = enqueue(&server, acme.token(), "acme.invoices", "march").await;
    let a = acme_side.assignment().await;
    assert_eq!(a.name, op.name);
    let deadline =
        std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(a.deadline.unwrap().seconds as u64);
    let left = deadline
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(left > Duration::from_secs(3500), "{left:?}");

    // acme's console lists its kind, not globex's.
    let queues = longrun::pb::longrun::v1::console_client::ConsoleClient::new(
        server.authed(acme.token()).await,
    )
    .get_queue_stats(longrun::pb::longrun::v1::GetQueueStatsRequest::default())
    .await
    .unwrap()
    .into_inner();
    let kinds: Vec<&str> = queues.kinds.iter().map(|k| k.kind.as_str()).collect();
    assert!(kinds.contains(&"acme.invoices"), "{kinds:?}");
    assert!(!kinds.contains(&"globex.only"), "{kinds:?}");
    acme_side.complete(&a, "ok").await.unwrap();
    drop(globex_side);
    server.stop().await;
}

#[tokio::test]
async fn idle_lease_streams_make_creates_no_dearer() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::common::config(dir.path());
    cfg.engine.max_worker_streams = 300;
    let mut stores = longrun::store::Stores::from_backend(
        longrun::store::SledStore::open(dir.path(), longrun::store::SyncMode::Always).unwrap(),
    );
    let spy = crate::spy::Spy::wrap(&mut stores);
    let server = TestServer::start_stores(cfg, stores, longrun::Registry::new()).await;
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(
            Worker::connect(
                &server,
                None,
                vec![declaration("idle", Duration::from_secs(30), 3)],
                4,
            )
            .await,
        );
    }
    let before = spy.claims_of("idle");
    let mut sleeps = Vec::new();
    for _ in 0..200 {
        sleeps.push(
            crate::common::start_sleep(&server, crate::common::sleep(Duration::ZERO, 1)).await,
        );
    }
    for op in &sleeps {
        crate::common::wait_done(&server, &op.name).await;
    }
    // Creates of another kind never wake the outside claim loop: no claim
    // for the idle kind at all (one per two seconds of fallback at most).
    let claims = spy.claims_of("idle") - before;
    assert!(claims <= 5, "{claims} claims for the idle workers' kind");
    // And one principal may hold only so many streams.
    let refused = Worker::try_connect(
        &server,
        None,
        vec![declaration("idle", Duration::from_secs(30), 3)],
        1,
    )
    .await
    .err()
    .unwrap();
    assert_status(
        &refused,
        Code::ResourceExhausted,
        "TOO_MANY_WORKER_STREAMS",
        None,
    );
    drop(idle);
    server.stop().await;
}

#[tokio::test]
async fn what_a_worker_stores_is_bounded() {
    let server = TestServer::start_with(|c| c.max_message_size = 8 * 1024 * 1024).await;
    let mut worker = Worker::connect(
        &server,
        None,
        vec![declaration("big", Duration::from_secs(30), 3)],
        32,
    )
    .await;
    // A response over the bound is refused, naming the field; the attempt
    // still holds the operation.
    let op = enqueue(&server, None, "big", "x").await;
    let a = worker.assignment().await;
    let huge = "x".repeat(3 * 1024 * 1024);
    let status = worker.complete(&a, &huge).await.unwrap_err();
    assert_status(
        &status,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("response"),
    );
    // A status message is cut to a few KiB.
    worker
        .client
        .heartbeat(HeartbeatRequest {
            name: a.name.clone(),
            attempt: a.attempt,
            progress_percent: 10,
            status_message: "y".repeat(1024 * 1024),
            lease_token: a.lease_token.clone(),
        })
        .await
        .unwrap();
    let running = crate::common::wait_state(&server, &op.name, State::Running).await;
    let shown = tokio::time::timeout(PATIENCE, async {
        loop {
            let op = get(&server, &running.name).await;
            if meta(&op).progress_percent == 10 {
                return meta(&op).status_message;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert!(
        shown.len() <= 4096 && shown.starts_with("yyy"),
        "{}",
        shown.len()
    );
    worker.complete(&a, &"z".repeat(900 * 1024)).await.unwrap();

    // Nineteen operations with large responses: a List page holds what
    // fits well within a client's 4 MiB, and the next page has the rest.
    let mut names = vec![op.name.clone()];
    for _ in 0..18 {
        let op = enqueue(&server, None, "big", "x").await;
        let a = worker.assignment().await;
        worker.complete(&a, &"z".repeat(900 * 1024)).await.unwrap();
        names.push(op.name);
    }
    let mut ops = OperationsClient::new(server.authed(None).await);
    let mut seen = 0;
    let mut token = String::new();
    loop {
        let page = ops
            .list_operations(longrun::pb::google::longrunning::ListOperationsRequest {
                filter: "kind = \"big\"".into(),
                page_size: 50,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("a page within the client's default limit")
            .into_inner();
        assert!(
            page.encoded_len() < 4 * 1024 * 1024,
            "{}",
            page.encoded_len()
        );
        seen += page.operations.len();
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, 19);
    server.stop().await;
}
