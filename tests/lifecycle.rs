//! Retries, deadlines, backpressure, input limits and retention, over real
//! gRPC.

mod common;

use std::time::Duration;

use common::*;
use longrun::pb::google::longrunning::{CancelOperationRequest, GetOperationRequest};
use longrun::pb::longrun::v1::{SleepRequest, State};
use tonic::Code;
use tonic_types::StatusExt;

fn fast_retries(c: &mut longrun::ServerConfig) {
    c.sleep_policy.backoff_base = Duration::from_millis(10);
    c.sleep_policy.backoff_max = Duration::from_millis(50);
}

#[tokio::test]
async fn retryable_failures_are_retried_until_success() {
    let server = TestServer::start_with(fast_retries).await;
    let request = SleepRequest {
        fail_attempts: 2,
        ..sleep(Duration::ZERO, 1)
    };
    let op = start_sleep(&server, request).await;
    assert_eq!(meta(&op).max_attempts, 3);
    let done = wait_done(&server, &op.name).await;
    assert_eq!(state(&done), State::Succeeded);
    let m = meta(&done);
    assert_eq!(m.attempt, 3);
    let last = m.last_attempt_error.expect("the failure that was retried");
    assert_eq!(last.code, Code::Unavailable as i32);
    server.stop().await;
}

#[tokio::test]
async fn retries_stop_after_the_last_attempt() {
    let server = TestServer::start_with(fast_retries).await;
    let request = SleepRequest {
        fail_attempts: 10,
        ..sleep(Duration::ZERO, 1)
    };
    let op = start_sleep(&server, request).await;
    let done = wait_done(&server, &op.name).await;
    assert_eq!(state(&done), State::Failed);
    assert_eq!(meta(&done).attempt, 3);
    let error = op_error(&done);
    assert_eq!(error.code, Code::Unavailable as i32);
    assert!(
        error.message.contains("gave up after 3 attempts"),
        "{error:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn permanent_failures_are_not_retried() {
    let server = TestServer::start_with(fast_retries).await;
    let request = SleepRequest {
        fail_code: Code::InvalidArgument as i32,
        ..sleep(Duration::ZERO, 1)
    };
    let op = start_sleep(&server, request).await;
    let done = wait_done(&server, &op.name).await;
    assert_eq!(meta(&done).attempt, 1);
    assert_eq!(op_error(&done).code, Code::InvalidArgument as i32);
    server.stop().await;
}

#[tokio::test]
async fn an_attempt_past_its_deadline_ends_deadline_exceeded() {
    let server = TestServer::start_with(|c| {
        c.sleep_policy.timeout = Duration::from_millis(400);
    })
    .await;
    // A shorter timeout in the request wins.
    let request = SleepRequest {
        timeout: Some(prost_types::Duration {
            seconds: 0,
            nanos: 100_000_000,
        }),
        ..sleep(Duration::from_secs(60), 60)
    };
    let op = start_sleep(&server, request).await;
    let done = wait_done(&server, &op.name).await;
    assert_eq!(state(&done), State::Failed);
    assert_eq!(op_error(&done).code, Code::DeadlineExceeded as i32);

    // A longer one is capped by the kind's default.
    let request = SleepRequest {
        timeout: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
        ..sleep(Duration::from_secs(60), 60)
    };
    let op = start_sleep(&server, request).await;
    let done = wait_done(&server, &op.name).await;
    assert_eq!(op_error(&done).code, Code::DeadlineExceeded as i32);
    let m = meta(&done);
    let ran = m.end_time.unwrap().seconds - m.start_time.unwrap().seconds;
    assert!(ran < 30, "capped at the kind's timeout, ran {ran}s");

    let bad = SleepRequest {
        timeout: Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        }),
        ..sleep(Duration::ZERO, 1)
    };
    let err = server.diagnostics().await.sleep(bad).await.unwrap_err();
    assert_status(
        &err,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("timeout"),
    );
    server.stop().await;
}

#[tokio::test]
async fn a_full_queue_refuses_creates_with_retry_info() {
    let server = TestServer::start_with(|c| {
        c.engine.workers = 1;
        c.engine.max_queued = 2;
    })
    .await;
    let running = start_sleep(&server, sleep(Duration::from_secs(300), 1)).await;
    wait_state(&server, &running.name, State::Running).await;
    let a = start_sleep(&server, sleep(Duration::from_secs(300), 1)).await;
    let b = start_sleep(&server, sleep(Duration::from_secs(300), 1)).await;
    let err = server
        .diagnostics()
        .await
        .sleep(sleep(Duration::ZERO, 1))
        .await
        .unwrap_err();
    assert_status(&err, Code::ResourceExhausted, "QUEUE_FULL", None);
    let retry = err.get_error_details().retry_info().cloned();
    assert!(retry.and_then(|r| r.retry_delay).is_some(), "{err:?}");

    // Room frees up as queued work leaves the queue.
    let mut ops = server.operations().await;
    for op in [&a, &b, &running] {
        ops.cancel_operation(CancelOperationRequest {
            name: op.name.clone(),
        })
        .await
        .unwrap();
    }
    start_sleep(&server, sleep(Duration::ZERO, 1)).await;
    server.stop().await;
}

#[tokio::test]
async fn oversized_messages_and_fields_are_invalid_arguments() {
    let server = TestServer::start_with(|c| c.max_message_size = 1024).await;
    let mut diag = server.diagnostics().await;
    let huge = SleepRequest {
        request_id: "x".repeat(4096),
        ..sleep(Duration::ZERO, 1)
    };
    let err = diag.sleep(huge).await.unwrap_err();
    assert_status(
        &err,
        Code::InvalidArgument,
        "MESSAGE_TOO_LARGE",
        Some("request"),
    );

    let long_id = SleepRequest {
        request_id: "x".repeat(500),
        ..sleep(Duration::ZERO, 1)
    };
    let err = diag.sleep(long_id).await.unwrap_err();
    assert_status(
        &err,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("request_id"),
    );

    let err = server
        .operations()
        .await
        .get_operation(GetOperationRequest {
            name: format!("operations/{}", "a".repeat(600)),
        })
        .await
        .unwrap_err();
    assert_status(
        &err,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("name"),
    );
    server.stop().await;
}

#[tokio::test]
async fn done_operations_expire_after_the_retention() {
    let server = TestServer::start_with(|c| c.engine.retention = Duration::from_millis(300)).await;
    let request = SleepRequest {
        request_id: "3b1f4f0e-5d57-4a8b-9c1e-0e6a3c2b7d11".into(),
        ..sleep(Duration::ZERO, 1)
    };
    let op = start_sleep(&server, request.clone()).await;
    wait_gone(&server, &op.name).await;

    let err = server
        .operations()
        .await
        .get_operation(GetOperationRequest {
            name: op.name.clone(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::NotFound, "NOT_FOUND", None);
    // Its request_id went with it: the same request makes a new operation.
    let again = start_sleep(&server, request).await;
    assert_ne!(again.name, op.name);
    server.stop().await;
}

#[tokio::test]
async fn running_operations_never_expire() {
    let server = TestServer::start_with(|c| c.engine.retention = Duration::from_millis(100)).await;
    let long = start_sleep(&server, sleep(Duration::from_millis(1500), 3)).await;
    // A short operation started after it expires first, which shows the
    // sweeper has run while the long one was still going.
    let short = start_sleep(&server, sleep(Duration::ZERO, 1)).await;
    wait_gone(&server, &short.name).await;
    let got = server
        .operations()
        .await
        .get_operation(GetOperationRequest {
            name: long.name.clone(),
        })
        .await
        .expect("still there")
        .into_inner();
    assert!(!got.done);
    server.stop().await;
}
