//! Paused queues through the real server: a paused kind accepts creates
//! and starts nothing, on every node and across a restart, until it is
//! resumed; only an admin may pause, and only a kind that exists.
//!
//! "Starts nothing" is shown without waiting for time to pass: after the
//! paused operation is created, an operation of another kind is created
//! and runs to its end. Every claim round asks for every kind with a free
//! slot, so the round that started it would have started the paused one
//! too, which is older.

use std::time::Duration;

use tonic::Code;
use tonic::transport::Channel;

use crate::common::{Person, TestServer, assert_status, auth_toml, state, wait_done};
use crate::pg::TestDb;
use longrun::pb::google::longrunning::operations_client::OperationsClient;
use longrun::pb::google::longrunning::{GetOperationRequest, Operation};
use longrun::pb::longrun::v1::console_client::ConsoleClient;
use longrun::pb::longrun::v1::diagnostics_client::DiagnosticsClient;
use longrun::pb::longrun::v1::queues_client::QueuesClient;
use longrun::pb::longrun::v1::report_service_client::ReportServiceClient;
use longrun::pb::longrun::v1::{
    CreateReportRequest, GetQueueStatsRequest, PauseQueueRequest, ReportFormat, ResumeQueueRequest,
    SleepRequest, State,
};

const SLEEP: &str = "longrun.v1.Diagnostics.Sleep";
const PATIENCE: Duration = Duration::from_secs(60);

async fn sleep_on(channel: &Channel) -> Operation {
    DiagnosticsClient::new(channel.clone())
        .sleep(SleepRequest::default())
        .await
        .expect("a paused kind still accepts creates")
        .into_inner()
}

/// An operation, read through `channel`.
pub(crate) async fn get(channel: &Channel, name: &str) -> Operation {
    OperationsClient::new(channel.clone())
        .get_operation(GetOperationRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
}

/// Pauses (or resumes) the Sleep kind's queue through `channel`.
pub(crate) async fn pause_sleep(channel: &Channel, paused: bool) {
    let mut queues = QueuesClient::new(channel.clone());
    let kind = "sleep".to_owned();
    if paused {
        queues
            .pause_queue(PauseQueueRequest { kind })
            .await
            .unwrap();
    } else {
        queues
            .resume_queue(ResumeQueueRequest { kind })
            .await
            .unwrap();
    }
}

/// Waits until `name`, read through `channel`, is done.
async fn done_on(channel: &Channel, name: &str) -> Operation {
    let mut ops = OperationsClient::new(tonic::service::interceptor::InterceptedService::new(
        channel.clone(),
        crate::common::Bearer(None),
    ));
    tokio::time::timeout(PATIENCE, crate::common::wait_done_on(&mut ops, name))
        .await
        .expect("done in time")
}

/// Runs an operation of another kind (an empty month's report) to its end
/// through `channel`: a claim round that passed over every queued kind.
async fn another_kind_runs(channel: &Channel) {
    let op = ReportServiceClient::new(channel.clone())
        .create_report(CreateReportRequest {
            month: "2024-03".into(),
            format: ReportFormat::Csv as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let done = done_on(channel, &op.name).await;
    assert_eq!(state(&done), State::Succeeded);
}

async fn paused_kinds(channel: &Channel) -> Vec<String> {
    ConsoleClient::new(channel.clone())
        .get_queue_stats(GetQueueStatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .kinds
        .into_iter()
        .filter(|q| q.paused)
        .map(|q| q.kind)
        .collect()
}

#[tokio::test]
async fn a_paused_kind_queues_its_work_across_a_restart_until_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_config(crate::common::config(dir.path())).await;
    let channel = server.channel().await;
    // By its short name; the answer names it in full.
    let queue = QueuesClient::new(channel.clone())
        .pause_queue(PauseQueueRequest {
            kind: "sleep".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((queue.kind.as_str(), queue.paused), (SLEEP, true));
    assert_eq!(paused_kinds(&channel).await, vec![SLEEP.to_owned()]);

    let waiting = sleep_on(&channel).await;
    another_kind_runs(&channel).await;
    assert_eq!(state(&get(&channel, &waiting.name).await), State::Queued);

    // The pause is stored: a restarted server keeps it.
    server.stop().await;
    let server = TestServer::start_config(crate::common::config(dir.path())).await;
    let channel = server.channel().await;
    assert_eq!(paused_kinds(&channel).await, vec![SLEEP.to_owned()]);
    another_kind_runs(&channel).await;
    assert_eq!(state(&get(&channel, &waiting.name).await), State::Queued);

    // Resumed over HTTP, the backlog starts at once.
    let response = reqwest::Client::builder()
        .http1_only()
        .build()
        .unwrap()
        .post(format!("http://{}/v1/queues/sleep:resume", server.addr))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["kind"], SLEEP);
    let done = wait_done(&server, &waiting.name).await;
    assert_eq!(state(&done), State::Succeeded);
    assert!(paused_kinds(&channel).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn only_an_admin_pauses_and_only_a_kind_that_exists() {
    let writer = Person::new("alice", "acme", "writer");
    let admin = Person::new("root", "acme", "admin");
    let server = TestServer::start_with_auth(&auth_toml(&[&writer, &admin], ""), |_| {}).await;
    let refused = QueuesClient::new(server.authed(writer.token()).await)
        .pause_queue(PauseQueueRequest {
            kind: "sleep".into(),
        })
        .await
        .unwrap_err();
    assert_status(&refused, Code::PermissionDenied, "ROLE_TOO_LOW", None);

    let mut queues = QueuesClient::new(server.authed(admin.token()).await);
    for kind in ["", "no.such.kind", &"k".repeat(300)] {
        let refused = queues
            .resume_queue(ResumeQueueRequest { kind: kind.into() })
            .await
            .unwrap_err();
        assert_status(
            &refused,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            Some("kind"),
        );
    }
    let queue = queues
        .pause_queue(PauseQueueRequest { kind: SLEEP.into() })
        .await
        .unwrap()
        .into_inner();
    assert!(queue.paused);
    server.stop().await;
}

#[tokio::test]
async fn a_pause_on_one_node_holds_on_every_node() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = crate::cluster::start(&db, dir.path(), "a").await;
    let b = crate::cluster::start(&db, dir.path(), "b").await;
    pause_sleep(&a.channel, true).await;
    // Created on b, which never heard of the pause but through the store.
    let waiting = sleep_on(&b.channel).await;
    another_kind_runs(&b.channel).await;
    another_kind_runs(&a.channel).await;
    assert_eq!(state(&get(&b.channel, &waiting.name).await), State::Queued);
    assert_eq!(paused_kinds(&b.channel).await, vec![SLEEP.to_owned()]);

    // Resumed on a: b's queue, or a's, starts it at once.
    pause_sleep(&a.channel, false).await;
    let done = done_on(&b.channel, &waiting.name).await;
    assert_eq!(state(&done), State::Succeeded);
}

#[tokio::test]
async fn the_cli_pauses_lists_and_resumes() {
    let server = TestServer::start().await;
    let out = crate::cli::longrun(&server, &["queue", "pause", "sleep"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("paused"));
    let out = crate::cli::longrun(&server, &["queue", "list"]).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let row = text
        .lines()
        .find(|l| l.starts_with(SLEEP))
        .unwrap_or_else(|| panic!("no Sleep row in:\n{text}"));
    assert!(row.ends_with("paused"), "{row}");
    let out = crate::cli::longrun(&server, &["queue", "resume", "sleep", "--output", "json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["kind"], SLEEP);
    assert_eq!(json.get("paused"), None, "false is left out: {json}");
    let out = crate::cli::longrun(&server, &["queue", "pause", "nothing"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("kind"));
    server.stop().await;
}

#[tokio::test]
async fn a_high_priority_starts_before_ten_thousand_older_ones() {
    // One at a time, so that the first claim round takes exactly one.
    let server = TestServer::start_with(crate::common::one_sleep_at_a_time).await;
    let channel = server.channel().await;
    pause_sleep(&channel, true).await;
    let mut creators = Vec::new();
    for _ in 0..10 {
        let channel = channel.clone();
        creators.push(tokio::spawn(async move {
            let mut names = Vec::new();
            for _ in 0..1_000 {
                names.push(sleep_on(&channel).await.name);
            }
            names
        }));
    }
    // Each creator's first is the oldest of its own; the oldest of those
    // is the oldest of all.
    let mut firsts = Vec::new();
    for creator in creators {
        let names = creator.await.unwrap();
        assert_eq!(names.len(), 1_000);
        firsts.push(names[0].clone());
    }
    let oldest = {
        let mut ops = Vec::new();
        for name in &firsts {
            ops.push(get(&channel, name).await);
        }
        ops.into_iter()
            .min_by_key(|op| {
                crate::common::meta(op)
                    .create_time
                    .map(|t| (t.seconds, t.nanos))
            })
            .unwrap()
    };

    // Created over HTTP, with a "run" object.
    let response = reqwest::Client::builder()
        .http1_only()
        .build()
        .unwrap()
        .post(format!("http://{}/v1/diagnostics:sleep", server.addr))
        .header("content-type", "application/json")
        .body(r#"{"duration": "0s", "run": {"priority": 10}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    let high: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(high["metadata"]["run"]["priority"], 10);
    let high = high["name"].as_str().unwrap().to_owned();

    pause_sleep(&channel, false).await;
    let done = wait_done(&server, &high).await;
    let started = |op: &Operation| {
        crate::common::meta(op)
            .start_time
            .map(|t| (t.seconds, t.nanos))
    };
    let oldest = get(&channel, &oldest.name).await;
    // The oldest low one, first in line without priorities, started after
    // the high one (or not yet).
    assert!(
        started(&oldest).is_none_or(|t| Some(t) > started(&done)),
        "the oldest low-priority operation started first"
    );
    server.stop().await;
}
