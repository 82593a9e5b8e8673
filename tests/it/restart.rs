//! Restarts: acknowledged operations survive, unfinished ones run again.

use std::time::Duration;

use crate::common::*;
use longrun::pb::google::longrunning::{GetOperationRequest, operation};
use longrun::pb::longrun::v1::{SleepResponse, State};
use prost::Message;

#[tokio::test]
async fn a_restart_finds_acknowledged_operations_and_reruns_unfinished_ones() {
    let temp = tempfile::tempdir().unwrap();
    let mut cfg = config(temp.path());
    one_sleep_at_a_time(&mut cfg);
    cfg.engine.shutdown_grace = Duration::from_secs(2);

    let server = TestServer::start_config(cfg.clone()).await;
    let finished = start_sleep(&server, sleep(Duration::ZERO, 1)).await;
    let finished = wait_done(&server, &finished.name).await;
    let interrupted = start_sleep(&server, sleep(Duration::from_millis(1500), 3)).await;
    wait_state(&server, &interrupted.name, State::Running).await;
    let queued = start_sleep(&server, sleep(Duration::from_millis(10), 1)).await;
    server.stop().await;

    let server = TestServer::start_config(cfg).await;
    let mut ops = server.operations().await;
    let again = ops
        .get_operation(GetOperationRequest {
            name: finished.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, finished, "a finished operation is unchanged");

    let rerun = wait_done(&server, &interrupted.name).await;
    assert_eq!(state(&rerun), State::Succeeded);
    assert_eq!(
        meta(&rerun).attempt,
        2,
        "the interrupted attempt runs again as attempt 2"
    );
    let Some(operation::Result::Response(any)) = &rerun.result else {
        panic!("{rerun:?}");
    };
    assert_eq!(
        SleepResponse::decode(any.value.as_slice()).unwrap().attempt,
        2
    );

    let queued = wait_done(&server, &queued.name).await;
    assert_eq!(state(&queued), State::Succeeded);
    assert_eq!(meta(&queued).attempt, 1);
    server.stop().await;
}
