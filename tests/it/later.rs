//! Time through the real server: an operation asked to start later starts
//! on time (and says it is SCHEDULED until then), one that has not started
//! by its expire time ends without ever running, and bad times are refused
//! naming the field.

use std::time::{Duration, SystemTime};

use tonic::Code;
use tonic::transport::Channel;

use crate::common::{TestServer, assert_status, meta, op_error, state, wait_done};
use crate::queues::pause_sleep;
use longrun::pb::google::longrunning::GetOperationRequest;
use longrun::pb::google::longrunning::operations_client::OperationsClient;
use longrun::pb::longrun::v1::diagnostics_client::DiagnosticsClient;
use longrun::pb::longrun::v1::{RunOptions, SleepRequest, State};

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    longrun::pb::timestamp(t)
}

fn time_of(t: &Option<prost_types::Timestamp>) -> SystemTime {
    longrun::pb::system_time(t.as_ref().expect("a time")).expect("valid")
}

async fn sleep_with(channel: &Channel, run: RunOptions) -> Result<String, tonic::Status> {
    DiagnosticsClient::new(channel.clone())
        .sleep(SleepRequest {
            run: Some(run),
            ..crate::common::sleep(Duration::ZERO, 0)
        })
        .await
        .map(|op| op.into_inner().name)
}

#[tokio::test]
async fn a_delayed_start_waits_as_scheduled_and_starts_on_time_under_load() {
    let server = TestServer::start().await;
    let channel = server.channel().await;
    let name = sleep_with(
        &channel,
        RunOptions {
            start_delay: Some(duration(Duration::from_secs(1))),
            ..RunOptions::default()
        },
    )
    .await
    .unwrap();
    let waiting = OperationsClient::new(channel.clone())
        .get_operation(GetOperationRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner();
    let m = meta(&waiting);
    assert_eq!(state(&waiting), State::Queued);
    let asked = time_of(&m.run.as_ref().unwrap().start_time);
    let why = m.waiting_reason.expect("a reason");
    assert_eq!(why.reason, "SCHEDULED");
    assert_eq!(time_of(&why.until), asked);
    assert!(time_of(&m.estimated_end_time) >= asked);

    // Load meanwhile: other work created and run while it waits.
    let mut load = Vec::new();
    for _ in 0..4 {
        let channel = channel.clone();
        load.push(tokio::spawn(async move {
            for _ in 0..150 {
                sleep_with(&channel, RunOptions::default()).await.unwrap();
            }
        }));
    }
    let done = wait_done(&server, &name).await;
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(state(&done), State::Succeeded);
    let started = time_of(&meta(&done).start_time);
    let late = started.duration_since(asked).expect("not before its time");
    assert!(late < Duration::from_millis(100), "started {late:?} late");
    server.stop().await;
}

#[tokio::test]
async fn an_operation_not_started_by_its_expiry_ends_without_running() {
    let server = TestServer::start().await;
    let channel = server.channel().await;
    // Paused, nothing would claim it: the expiry ends it anyway.
    pause_sleep(&channel, true).await;
    let name = sleep_with(
        &channel,
        RunOptions {
            ttl: Some(duration(Duration::from_millis(300))),
            ..RunOptions::default()
        },
    )
    .await
    .unwrap();
    let done = wait_done(&server, &name).await;
    assert_eq!(state(&done), State::Failed);
    let error = op_error(&done);
    assert_eq!(error.code, Code::DeadlineExceeded as i32);
    let info = <longrun::pb::google::rpc::ErrorInfo as prost::Message>::decode(
        error.details[0].value.as_slice(),
    )
    .unwrap();
    assert_eq!(info.reason, "EXPIRED_BEFORE_START");
    let m = meta(&done);
    assert_eq!(m.attempt, 0, "it never ran");
    assert_eq!(m.start_time, None);
    pause_sleep(&channel, false).await;
    server.stop().await;
}

#[tokio::test]
async fn bad_start_and_expire_times_are_refused_naming_the_field() {
    let server = TestServer::start().await;
    let channel = server.channel().await;
    let now = SystemTime::now();
    let cases = [
        (
            RunOptions {
                start_time: Some(timestamp(now - Duration::from_secs(120))),
                ..RunOptions::default()
            },
            "run.start_time",
        ),
        (
            RunOptions {
                start_time: Some(timestamp(now + Duration::from_secs(60))),
                start_delay: Some(duration(Duration::from_secs(1))),
                ..RunOptions::default()
            },
            "run.start_time",
        ),
        (
            RunOptions {
                start_delay: Some(duration(Duration::from_secs(60))),
                ttl: Some(duration(Duration::from_secs(30))),
                ..RunOptions::default()
            },
            "run.expire_time",
        ),
        (
            RunOptions {
                ttl: Some(prost_types::Duration {
                    seconds: -5,
                    nanos: 0,
                }),
                ..RunOptions::default()
            },
            "run.ttl",
        ),
    ];
    for (run, field) in cases {
        let refused = sleep_with(&channel, run).await.unwrap_err();
        assert_status(
            &refused,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            Some(field),
        );
    }
    server.stop().await;
}
