//! WatchOperation over real gRPC.

use std::time::Duration;

use crate::common::*;
use longrun::pb::google::longrunning::{CancelOperationRequest, DeleteOperationRequest};
use longrun::pb::longrun::v1::{State, WatchOperationRequest};
use tokio_stream::StreamExt;
use tonic::Code;

fn watch(name: &str) -> WatchOperationRequest {
    WatchOperationRequest { name: name.into() }
}

#[tokio::test]
async fn the_stream_starts_with_the_current_state_and_ends_after_done() {
    let server = TestServer::start().await;
    let op = start_sleep(&server, sleep(Duration::from_millis(500), 5)).await;
    let mut stream = server
        .watcher()
        .await
        .watch_operation(watch(&op.name))
        .await
        .unwrap()
        .into_inner();
    let mut updates = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while let Some(item) = stream.next().await {
            updates.push(item.expect("no error before the end"));
        }
    })
    .await
    .expect("stream ended in time");

    assert!(updates.len() >= 2, "{updates:?}");
    assert!(!updates[0].done);
    let last = updates.last().unwrap();
    assert!(last.done);
    assert_eq!(state(last), State::Succeeded);
    assert_eq!(updates.iter().filter(|u| u.done).count(), 1);
    // Progress never goes backwards within the attempt.
    let progress: Vec<i32> = updates.iter().map(|u| meta(u).progress_percent).collect();
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_watcher_that_connects_after_completion_gets_the_final_state() {
    let server = TestServer::start().await;
    let op = start_sleep(&server, sleep(Duration::ZERO, 1)).await;
    let done = wait_done(&server, &op.name).await;
    let mut stream = server
        .watcher()
        .await
        .watch_operation(watch(&op.name))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.expect("one message").expect("ok");
    assert_eq!(first, done);
    assert!(stream.next().await.is_none(), "the stream ends with OK");
    server.stop().await;
}

#[tokio::test]
async fn unknown_deleted_and_malformed_operations_are_refused() {
    let server = TestServer::start().await;
    let mut watcher = server.watcher().await;
    let err = watcher
        .watch_operation(watch("operations/0190b2d4-7d7c-7f7e-8000-000000000000"))
        .await
        .unwrap_err();
    assert_status(&err, Code::NotFound, "NOT_FOUND", None);
    let err = watcher.watch_operation(watch("nope")).await.unwrap_err();
    assert_status(
        &err,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("name"),
    );

    let op = start_sleep(&server, sleep(Duration::ZERO, 1)).await;
    wait_done(&server, &op.name).await;
    server
        .operations()
        .await
        .delete_operation(DeleteOperationRequest {
            name: op.name.clone(),
        })
        .await
        .unwrap();
    let err = watcher.watch_operation(watch(&op.name)).await.unwrap_err();
    assert_status(&err, Code::NotFound, "NOT_FOUND", None);
    server.stop().await;
}

#[tokio::test]
async fn a_cancelled_operation_streams_cancelling_then_cancelled() {
    let server = TestServer::start().await;
    let op = start_sleep(&server, sleep(Duration::from_secs(300), 300)).await;
    wait_state(&server, &op.name, State::Running).await;
    let mut stream = server
        .watcher()
        .await
        .watch_operation(watch(&op.name))
        .await
        .unwrap()
        .into_inner();
    server
        .operations()
        .await
        .cancel_operation(CancelOperationRequest {
            name: op.name.clone(),
        })
        .await
        .unwrap();
    let mut last = None;
    tokio::time::timeout(PATIENCE, async {
        while let Some(item) = stream.next().await {
            last = Some(item.unwrap());
        }
    })
    .await
    .unwrap();
    let last = last.unwrap();
    assert!(last.done);
    assert_eq!(state(&last), State::Cancelled);
    assert_eq!(op_error(&last).code, Code::Cancelled as i32);
    server.stop().await;
}

#[tokio::test]
async fn a_thousand_watchers_all_receive_the_final_state() {
    let server = TestServer::start().await;
    let op = start_sleep(&server, sleep(Duration::from_secs(300), 1)).await;
    let channel = server.channel().await;
    let mut ready = Vec::new();
    let mut joins = Vec::new();
    for _ in 0..1000 {
        let mut watcher =
            longrun::pb::longrun::v1::operation_watcher_client::OperationWatcherClient::new(
                channel.clone(),
            );
        let name = op.name.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        ready.push(rx);
        joins.push(tokio::spawn(async move {
            let mut stream = watcher.watch_operation(watch(&name)).await?.into_inner();
            let mut tx = Some(tx);
            let mut last = None;
            while let Some(item) = stream.next().await {
                let item = item?;
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
                last = Some(item);
            }
            Ok::<_, tonic::Status>(last)
        }));
    }
    // Every watcher has its first message before the operation ends.
    for rx in ready {
        tokio::time::timeout(PATIENCE, rx).await.unwrap().unwrap();
    }
    server
        .operations()
        .await
        .cancel_operation(CancelOperationRequest {
            name: op.name.clone(),
        })
        .await
        .unwrap();
    for join in joins {
        let last = tokio::time::timeout(PATIENCE, join)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .expect("a final message");
        assert!(last.done);
        assert_eq!(state(&last), State::Cancelled);
    }
    server.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_streams_with_unavailable() {
    let server = TestServer::start().await;
    let op = start_sleep(&server, sleep(Duration::from_secs(300), 1)).await;
    let mut stream = server
        .watcher()
        .await
        .watch_operation(watch(&op.name))
        .await
        .unwrap()
        .into_inner();
    stream.next().await.unwrap().unwrap();
    let stopping = tokio::spawn(server.stop());
    let end = tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(status)) => return Some(status),
                None => return None,
            }
        }
    })
    .await
    .unwrap();
    let status = end.expect("an error, not a clean end: the operation is not done");
    assert_eq!(status.code(), Code::Unavailable);
    stopping.await.unwrap();
}
