//! Backpressure and input limits over real gRPC. (Retries, deadlines and
//! retention at their real lengths are in `timing`, with paused time.)

use std::time::Duration;

use crate::common::*;
use longrun::pb::google::longrunning::{CancelOperationRequest, GetOperationRequest};
use longrun::pb::longrun::v1::{SleepRequest, State};
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test]
async fn a_timeout_must_be_a_positive_duration() {
    let server = TestServer::start().await;
    for (seconds, nanos) in [(-1, 0), (0, 0), (1, -5)] {
        let bad = SleepRequest {
            timeout: Some(prost_types::Duration { seconds, nanos }),
            ..sleep(Duration::ZERO, 1)
        };
        let err = server.diagnostics().await.sleep(bad).await.unwrap_err();
        assert_status(
            &err,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            Some("timeout"),
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_full_queue_refuses_creates_with_retry_info() {
    let server = TestServer::start_with(|c| {
        one_sleep_at_a_time(c);
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
