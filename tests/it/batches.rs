//! Batches and bulk actions over real gRPC: a batch's roll-up is exact and
//! its progress never goes back, FAIL_FAST and a cancelled parent stop the
//! rest, the rolled-up estimate is near the truth, a retried operation
//! keeps its history, bulk actions report what they did, and across three
//! PostgreSQL nodes a batch whose children ran everywhere adds up.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use longrun::pb::google::longrunning::{
    CancelOperationRequest, GetOperationRequest, ListOperationsRequest, Operation,
};
use longrun::pb::longrun::v1::batches_client::BatchesClient;
use longrun::pb::longrun::v1::bulk_client::BulkClient;
use longrun::pb::longrun::v1::operation_watcher_client::OperationWatcherClient;
use longrun::pb::longrun::v1::queues_client::QueuesClient;
use longrun::pb::longrun::v1::{
    BatchPolicy, BatchResult, BulkResult, CreateBatchRequest, EnqueueRequest, MatchingRequest,
    PauseQueueRequest, ResumeQueueRequest, RetryOperationRequest, RunOptions, SleepRequest, State,
    WatchChangesRequest, WatchOperationRequest,
};
use prost::{Message, Name};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

use crate::common::*;

const SLEEP: &str = "longrun.v1.Diagnostics.Sleep";
const PATIENCE: Duration = Duration::from_secs(120);

/// A child that sleeps as `request` says.
pub(crate) fn child(request: &SleepRequest) -> EnqueueRequest {
    EnqueueRequest {
        kind: SLEEP.into(),
        payload: Some(prost_types::Any::from_msg(request).unwrap()),
        ..Default::default()
    }
}

fn batches(channel: Channel) -> BatchesClient<Channel> {
    BatchesClient::new(channel)
}

/// Every child of `parent`, through ListOperations with a parent filter.
pub(crate) async fn children(channel: Channel, parent: &str) -> Vec<Operation> {
    let mut ops =
        longrun::pb::google::longrunning::operations_client::OperationsClient::new(channel);
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = ops
            .list_operations(ListOperationsRequest {
                filter: format!("parent = \"{parent}\""),
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.operations);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

/// The BatchResult a done batch carries: its response, or a detail of
/// its error.
fn batch_result(op: &Operation) -> BatchResult {
    use longrun::pb::google::longrunning::operation::Result as R;
    let any = match op.result.as_ref().expect("a done batch has a result") {
        R::Response(any) => any.clone(),
        R::Error(status) => status
            .details
            .iter()
            .find(|d| d.type_url == BatchResult::type_url())
            .expect("a failed batch lists its counts")
            .clone(),
    };
    assert_eq!(any.type_url, BatchResult::type_url());
    BatchResult::decode(any.value.as_slice()).unwrap()
}

/// Watches `name`.
async fn watch(channel: Channel, name: &str) -> tonic::Streaming<Operation> {
    OperationWatcherClient::new(channel)
        .watch_operation(WatchOperationRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
}

/// Shows each state the watch sees to `accept`, and returns the first it
/// accepts.
async fn until(
    watch: &mut tonic::Streaming<Operation>,
    mut accept: impl FnMut(&Operation) -> bool,
) -> Operation {
    tokio::time::timeout(PATIENCE, async {
        while let Some(op) = watch.next().await {
            let op = op.unwrap();
            if accept(&op) {
                return op;
            }
        }
        panic!("the watch ended first");
    })
    .await
    .expect("the watch saw it in time")
}

fn time(t: &Option<prost_types::Timestamp>) -> SystemTime {
    let t = t.as_ref().expect("a time");
    SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32)
}

#[tokio::test]
async fn a_streamed_batch_of_10000_rolls_up_exactly_and_never_goes_back() {
    let server = TestServer::start().await;
    // Held until the watch is on: the children would all be done before.
    let mut queues = QueuesClient::new(server.channel().await);
    queues
        .pause_queue(PauseQueueRequest { kind: SLEEP.into() })
        .await
        .unwrap();
    let zero = child(&sleep(Duration::ZERO, 1));
    // Two messages of 5,000: a stream, as a large batch is sent.
    let messages = vec![
        CreateBatchRequest {
            children: vec![zero.clone(); 5000],
            ..Default::default()
        },
        CreateBatchRequest {
            children: vec![zero; 5000],
            ..Default::default()
        },
    ];
    let parent = batches(server.channel().await)
        .stream_batch(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta(&parent).kind, "longrun.v1.Batch");
    let mut watch = watch(server.channel().await, &parent.name).await;
    queues
        .resume_queue(ResumeQueueRequest { kind: SLEEP.into() })
        .await
        .unwrap();
    let (mut last, mut seen) = (0, 0);
    let done = until(&mut watch, |op| {
        let m = meta(op);
        assert!(
            m.progress_percent >= last,
            "progress went from {last} back to {}",
            m.progress_percent
        );
        last = m.progress_percent;
        seen += 1;
        op.done
    })
    .await;
    assert_eq!(state(&done), State::Succeeded, "{done:?}");
    let counts = meta(&done).batch.unwrap();
    assert_eq!(
        (
            counts.total,
            counts.succeeded,
            counts.queued,
            counts.running
        ),
        (10_000, 10_000, 0, 0)
    );
    assert!(counts.sealed);
    assert_eq!(meta(&done).progress_percent, 100);
    assert_eq!(batch_result(&done).counts.unwrap(), counts);
    assert!(seen > 1, "the watch saw the batch move");

    // Every child names its parent; the parent ended in the same write
    // as its last child.
    let kids = children(server.channel().await, &parent.name).await;
    assert_eq!(kids.len(), 10_000);
    assert!(kids.iter().all(|k| meta(k).parent == parent.name));
    let last_child = kids.iter().map(|k| time(&meta(k).end_time)).max().unwrap();
    assert_eq!(time(&meta(&done).end_time), last_child);
    server.stop().await;
}

#[tokio::test]
async fn fail_fast_cancels_the_rest_and_names_the_failure() {
    let server = TestServer::start().await;
    let failing = EnqueueRequest {
        max_attempts: 1,
        ..child(&SleepRequest {
            fail_code: Code::DataLoss as i32,
            ..sleep(Duration::ZERO, 1)
        })
    };
    let mut kids = vec![failing];
    kids.extend(std::iter::repeat_n(
        child(&sleep(Duration::from_secs(600), 10)),
        999,
    ));
    let parent = batches(server.channel().await)
        .create_batch(CreateBatchRequest {
            children: kids,
            policy: BatchPolicy::FailFast as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let done = wait_done(&server, &parent.name).await;
    assert_eq!(state(&done), State::Failed);
    let error = op_error(&done);
    assert_eq!(error.code, Code::Aborted as i32);
    let result = batch_result(&done);
    let counts = result.counts.unwrap();
    assert_eq!(
        (counts.failed, counts.cancelled, counts.succeeded),
        (1, 999, 0)
    );
    assert_eq!(result.failures.len(), 1);
    let all = children(server.channel().await, &parent.name).await;
    let failed: Vec<_> = all.iter().filter(|k| state(k) == State::Failed).collect();
    assert_eq!(result.failures[0].name, failed[0].name);
    assert_eq!(
        result.failures[0].error.as_ref().unwrap().code,
        Code::DataLoss as i32
    );
    server.stop().await;
}

#[tokio::test]
async fn cancelling_a_batch_cancels_every_unfinished_child() {
    let server = TestServer::start().await;
    let parent = batches(server.channel().await)
        .create_batch(CreateBatchRequest {
            children: vec![child(&sleep(Duration::from_secs(600), 10)); 1000],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Some are running when the cancel comes.
    let mut watch = watch(server.channel().await, &parent.name).await;
    until(&mut watch, |op| meta(op).batch.unwrap().running > 0).await;
    server
        .operations()
        .await
        .cancel_operation(CancelOperationRequest {
            name: parent.name.clone(),
        })
        .await
        .unwrap();
    let done = wait_done(&server, &parent.name).await;
    assert_eq!(state(&done), State::Cancelled);
    let all = children(server.channel().await, &parent.name).await;
    assert_eq!(all.len(), 1000);
    for k in &all {
        assert!(
            matches!(state(k), State::Cancelled | State::Succeeded),
            "{} ended {:?}",
            k.name,
            state(k)
        );
    }
    let counts = meta(&done).batch.unwrap();
    assert_eq!(counts.cancelled + counts.succeeded, 1000);
    server.stop().await;
}

#[tokio::test]
async fn the_rolled_up_estimate_is_near_the_truth_after_the_first_wave() {
    let server = TestServer::start_with(|c| {
        c.engine.concurrency.insert("sleep".into(), 10);
    })
    .await;
    let run = Duration::from_millis(400);
    let parent = batches(server.channel().await)
        .create_batch(CreateBatchRequest {
            children: vec![child(&sleep(run, 4)); 100],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut watch = watch(server.channel().await, &parent.name).await;
    let mut estimate = None;
    let done = until(&mut watch, |op| {
        let m = meta(op);
        if estimate.is_none() && m.batch.unwrap().succeeded >= 10 {
            estimate = Some(time(&m.estimated_end_time));
        }
        op.done
    })
    .await;
    let m = meta(&done);
    let start = time(&m.create_time);
    let truth = time(&m.end_time).duration_since(start).unwrap();
    let guessed = estimate
        .expect("an estimate after the first wave")
        .duration_since(start)
        .unwrap();
    let error = (guessed.as_secs_f64() - truth.as_secs_f64()).abs() / truth.as_secs_f64();
    assert!(
        error <= 0.2,
        "estimated {guessed:?} after the first wave for a batch that took {truth:?}"
    );
    // Before any child ran, the children's own estimates at the kind's
    // concurrency (ten waves of 400 ms) said about the same.
    let first = time(&meta(&parent).estimated_end_time)
        .duration_since(start)
        .unwrap();
    let error = (first.as_secs_f64() - truth.as_secs_f64()).abs() / truth.as_secs_f64();
    assert!(
        error <= 0.2,
        "estimated {first:?} at the create for a batch that took {truth:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_retried_operation_runs_again_with_its_history_kept() {
    // One attempt each: the first fails for good, the retried one passes.
    let server = TestServer::start_with(|c| c.sleep_policy.max_attempts = 1).await;
    let failed = start_sleep(
        &server,
        SleepRequest {
            fail_attempts: 1,
            ..sleep(Duration::ZERO, 1)
        },
    )
    .await;
    let done = wait_done(&server, &failed.name).await;
    assert_eq!(state(&done), State::Failed);
    let mut bulk = BulkClient::new(server.channel().await);
    let retried = bulk
        .retry_operation(RetryOperationRequest {
            name: failed.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&retried), State::Queued);
    let again = wait_done(&server, &failed.name).await;
    assert_eq!(state(&again), State::Succeeded, "{again:?}");
    let m = meta(&again);
    assert_eq!(m.attempt, 2);
    assert_eq!(m.failed_attempts.len(), 1);
    assert_eq!(m.failed_attempts[0].attempt, 1);
    // A succeeded one cannot be retried; a wrong name is named.
    let status = bulk
        .retry_operation(RetryOperationRequest {
            name: failed.name.clone(),
        })
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::FailedPrecondition,
        "OPERATION_NOT_RETRYABLE",
        None,
    );
    let status = bulk
        .retry_operation(RetryOperationRequest {
            name: "operations/nope".into(),
        })
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("name"),
    );
    server.stop().await;
}

/// Starts a bulk action and waits for its result.
async fn bulk_done(server: &TestServer, op: Operation) -> (Operation, BulkResult) {
    let done = wait_done(server, &op.name).await;
    assert_eq!(state(&done), State::Succeeded, "{done:?}");
    use longrun::pb::google::longrunning::operation::Result as R;
    let Some(R::Response(any)) = &done.result else {
        panic!("no response: {done:?}");
    };
    (
        done.clone(),
        BulkResult::decode(any.value.as_slice()).unwrap(),
    )
}

#[tokio::test]
async fn bulk_actions_cancel_retry_and_delete_what_matches_and_count_it() {
    let server = TestServer::start().await;
    let later = SleepRequest {
        run: Some(RunOptions {
            start_delay: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            ..Default::default()
        }),
        ..sleep(Duration::ZERO, 1)
    };
    let mut names = HashSet::new();
    for _ in 0..1200 {
        names.insert(start_sleep(&server, later.clone()).await.name);
    }
    let finished = start_sleep(&server, sleep(Duration::ZERO, 1)).await;
    wait_done(&server, &finished.name).await;
    let mut bulk = BulkClient::new(server.channel().await);

    let status = bulk
        .cancel_matching(MatchingRequest::default())
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("filter"),
    );
    let status = bulk
        .cancel_matching(MatchingRequest {
            filter: "state = ".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("filter"),
    );

    let cancel = bulk
        .cancel_matching(MatchingRequest {
            filter: format!("kind = \"{SLEEP}\""),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (done, result) = bulk_done(&server, cancel).await;
    // Every Sleep matched; the finished one was skipped.
    assert_eq!(
        (result.matched, result.changed, result.skipped),
        (1201, 1200, 1)
    );
    assert_eq!(meta(&done).progress_percent, 100);
    for name in names.iter().take(20) {
        let op = wait_done(&server, name).await;
        assert_eq!(state(&op), State::Cancelled);
    }

    let retry = bulk
        .retry_matching(MatchingRequest {
            filter: format!("kind = \"{SLEEP}\" AND state = CANCELLED"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (_, result) = bulk_done(&server, retry).await;
    assert_eq!(
        (result.matched, result.changed, result.skipped),
        (1200, 1200, 0)
    );
    // Retried by a client, they start at once.
    for name in &names {
        let op = wait_done(&server, name).await;
        assert_eq!(state(&op), State::Succeeded);
    }
    let one = names.iter().next().unwrap();
    let delete = bulk
        .delete_matching(MatchingRequest {
            filter: format!("kind = \"{SLEEP}\""),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (_, result) = bulk_done(&server, delete).await;
    assert_eq!(
        (result.matched, result.changed, result.skipped),
        (1201, 1201, 0)
    );
    let status = server
        .operations()
        .await
        .get_operation(GetOperationRequest { name: one.clone() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn a_batch_refuses_bad_children_by_their_place() {
    let server = TestServer::start().await;
    let mut client = batches(server.channel().await);
    let status = client
        .create_batch(CreateBatchRequest {
            children: vec![
                child(&sleep(Duration::ZERO, 1)),
                EnqueueRequest {
                    kind: "no.such.kind".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    let status = client
        .create_batch(CreateBatchRequest {
            children: vec![EnqueueRequest {
                kind: SLEEP.into(),
                max_attempts: -1,
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("children[0].max_attempts"),
    );
    let status = client
        .create_batch(CreateBatchRequest {
            children: vec![child(&sleep(Duration::ZERO, 1)); 10_001],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("children"),
    );
    // A batch nests in an open batch only.
    let done = client
        .create_batch(CreateBatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    let done = wait_done(&server, &done.name).await;
    assert_eq!(state(&done), State::Succeeded);
    let status = client
        .create_batch(CreateBatchRequest {
            parent: done.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    server.stop().await;
}

/// A child that waits an hour before it may start.
fn an_hour_later() -> EnqueueRequest {
    EnqueueRequest {
        run: Some(RunOptions {
            start_delay: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            ..Default::default()
        }),
        ..child(&sleep(Duration::ZERO, 1))
    }
}

/// Starts the real binary on `dir` and waits until it serves.
async fn spawn(dir: &std::path::Path) -> (tokio::process::Child, Channel) {
    let (child, url) = serve_binary(dir, "127.0.0.1:0", &[]).await;
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    (child, channel)
}

#[tokio::test]
async fn a_bulk_cancel_killed_midway_resumes_without_counting_twice() {
    const N: usize = 50_000;
    let dir = tempfile::tempdir().unwrap();
    let (mut server, channel) = spawn(dir.path()).await;
    // 50,000 sleeps that wait an hour to start, made quickly as one batch.
    let later = an_hour_later();
    let messages: Vec<_> = (0..N / 5000)
        .map(|_| CreateBatchRequest {
            children: vec![later.clone(); 5000],
            ..Default::default()
        })
        .collect();
    let batch = batches(channel.clone())
        .stream_batch(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    let cancel = BulkClient::new(channel.clone())
        .cancel_matching(MatchingRequest {
            filter: format!("kind = \"{SLEEP}\""),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Killed once some pages are stored, and before the last.
    let mut watch = watch(channel, &cancel.name).await;
    until(&mut watch, |op| {
        assert!(!op.done, "the bulk cancel ended before it could be killed");
        meta(op).progress_percent >= 10
    })
    .await;
    server.start_kill().unwrap();
    server.wait().await.unwrap();

    let (mut server, channel) = spawn(dir.path()).await;
    let mut ops = longrun::pb::google::longrunning::operations_client::OperationsClient::new(
        tonic::service::interceptor::InterceptedService::new(channel.clone(), Bearer(None)),
    );
    let done = tokio::time::timeout(PATIENCE, wait_done_on(&mut ops, &cancel.name))
        .await
        .expect("the bulk cancel ends after the restart");
    use longrun::pb::google::longrunning::operation::Result as R;
    let Some(R::Response(any)) = &done.result else {
        panic!("no response: {done:?}");
    };
    let result = BulkResult::decode(any.value.as_slice()).unwrap();
    assert_eq!(
        (result.matched, result.changed, result.skipped),
        (N as i64, N as i64, 0)
    );
    assert!(meta(&done).attempt >= 2, "the kill cut an attempt short");
    // The batch agrees: every child cancelled, once.
    let batch = tokio::time::timeout(PATIENCE, wait_done_on(&mut ops, &batch.name))
        .await
        .expect("the batch ends");
    let counts = meta(&batch).batch.unwrap();
    assert_eq!((counts.total, counts.cancelled), (N as i64, N as i64));
    server.start_kill().unwrap();
    server.wait().await.unwrap();
}

#[tokio::test]
async fn a_batch_run_on_three_postgresql_nodes_rolls_up_exactly() {
    let Some(db) = crate::pg::TestDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Few slots each, so that every node takes a share: a node whose
    // claims find the batch busy waits its turn for it rather than being
    // left out while the other two keep it busy.
    let flags = ["--concurrency", "sleep=4"];
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        nodes.push(crate::cluster::start_with(&db, dir.path(), name, &flags).await);
    }
    // Who runs each child is seen on the change feed while it runs.
    let mut changes = OperationWatcherClient::new(nodes[2].channel.clone())
        .watch_changes(WatchChangesRequest {
            filter: "state = RUNNING".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let seen = tokio::spawn(async move {
        let mut holders = HashSet::new();
        while holders.len() < 3 {
            let Some(change) = changes.next().await else {
                break;
            };
            if let Some(op) = change.unwrap().operation.filter(|op| !op.done) {
                let m = meta(&op);
                if m.kind == SLEEP && !m.holder.is_empty() {
                    holders.insert(m.holder);
                }
            }
        }
        holders
    });
    let parent = batches(nodes[0].channel.clone())
        .create_batch(CreateBatchRequest {
            children: vec![child(&sleep(Duration::from_millis(50), 1)); 300],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut ops = longrun::pb::google::longrunning::operations_client::OperationsClient::new(
        tonic::service::interceptor::InterceptedService::new(
            nodes[1].channel.clone(),
            Bearer(None),
        ),
    );
    let done = tokio::time::timeout(PATIENCE, wait_done_on(&mut ops, &parent.name))
        .await
        .expect("the batch ends");
    assert_eq!(state(&done), State::Succeeded);
    let counts = meta(&done).batch.unwrap();
    assert_eq!(
        (
            counts.total,
            counts.succeeded,
            counts.queued,
            counts.running,
            counts.failed
        ),
        (300, 300, 0, 0, 0)
    );
    let kids = children(nodes[2].channel.clone(), &parent.name).await;
    assert_eq!(kids.len(), 300);
    assert!(kids.iter().all(|k| state(k) == State::Succeeded));
    let holders = tokio::time::timeout(PATIENCE, seen)
        .await
        .expect("the feed shows who ran them")
        .unwrap();
    assert_eq!(holders.len(), 3, "every node ran some: {holders:?}");
    for node in &mut nodes {
        node.kill().await;
    }
}

#[tokio::test]
async fn a_bulk_cancel_of_a_batchs_children_counts_them_and_ends_the_batch() {
    let server = TestServer::start().await;
    let later = an_hour_later();
    let parent = batches(server.channel().await)
        .create_batch(CreateBatchRequest {
            children: vec![later; 700],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let cancel = BulkClient::new(server.channel().await)
        .cancel_matching(MatchingRequest {
            filter: format!("parent = \"{}\"", parent.name),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (_, result) = bulk_done(&server, cancel).await;
    assert_eq!(
        (result.matched, result.changed, result.skipped),
        (700, 700, 0)
    );
    let done = wait_done(&server, &parent.name).await;
    let counts = meta(&done).batch.unwrap();
    assert_eq!((counts.total, counts.cancelled), (700, 700));
    server.stop().await;
}
