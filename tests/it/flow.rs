//! Flow control through the real server: limits per concurrency key and
//! tenant and rate limits hold across nodes, tenants take turns, a queued
//! operation says why it waits, and bad limits are refused naming the
//! field.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use sqlx::Connection;
use tonic::Code;
use tonic::transport::Channel;

use crate::common::{Person, TestServer, assert_status, auth_toml, meta, state, wait_done};
use crate::pg::TestDb;
use crate::queues::{get, pause_sleep};
use longrun::pb::google::longrunning::operations_client::OperationsClient;
use longrun::pb::google::longrunning::{CancelOperationRequest, Operation};
use longrun::pb::longrun::v1::diagnostics_client::DiagnosticsClient;
use longrun::pb::longrun::v1::queues_client::QueuesClient;
use longrun::pb::longrun::v1::{
    DeleteLimitRequest, ListLimitsRequest, PauseQueueRequest, ResumeQueueRequest, RunOptions,
    SetLimitRequest, SleepRequest, State,
};

const SLEEP: &str = "longrun.v1.Diagnostics.Sleep";
const PATIENCE: Duration = Duration::from_secs(120);

fn sleep_keyed(duration: Duration, key: &str) -> SleepRequest {
    SleepRequest {
        run: Some(RunOptions {
            concurrency_key: key.to_owned(),
            ..RunOptions::default()
        }),
        ..crate::common::sleep(duration, 0)
    }
}

async fn create(channel: &Channel, request: SleepRequest) -> Operation {
    DiagnosticsClient::new(channel.clone())
        .sleep(request)
        .await
        .expect("created")
        .into_inner()
}

async fn set_limit(channel: &Channel, scope: &str, concurrency: i64, rates: &[&str]) {
    QueuesClient::new(channel.clone())
        .set_limit(SetLimitRequest {
            kind: "sleep".into(),
            scope: scope.into(),
            concurrency,
            rates: rates.iter().map(|r| (*r).to_owned()).collect(),
        })
        .await
        .expect("limit set");
}

fn started(op: &Operation) -> SystemTime {
    longrun::pb::system_time(&meta(op).start_time.expect("started")).expect("valid")
}

/// Creates `n` instant sleeps while the kind is paused, limits it to 50
/// starts a second, resumes it, and counts the starts of the ten seconds
/// after the first second (which also spends the burst).
async fn starts_in_ten_seconds(channels: &[Channel], n: usize) -> usize {
    let first = &channels[0];
    pause_sleep(first, true).await;
    let mut creators = Vec::new();
    for (i, channel) in channels.iter().enumerate() {
        let channel = channel.clone();
        let share = n / channels.len() + usize::from(i < n % channels.len());
        creators.push(tokio::spawn(async move {
            let mut names = Vec::new();
            for _ in 0..share {
                names.push(
                    create(&channel, crate::common::sleep(Duration::ZERO, 0))
                        .await
                        .name,
                );
            }
            names
        }));
    }
    let mut names = Vec::new();
    for creator in creators {
        names.extend(creator.await.unwrap());
    }
    set_limit(first, "kind", 0, &["50/s"]).await;
    pause_sleep(first, false).await;
    // Done in about n / 50 seconds.
    let mut ops_client =
        OperationsClient::new(tonic::service::interceptor::InterceptedService::new(
            first.clone(),
            crate::common::Bearer(None),
        ));
    let mut ops = Vec::with_capacity(names.len());
    for name in &names {
        let op = tokio::time::timeout(PATIENCE, crate::common::wait_done_on(&mut ops_client, name))
            .await
            .expect("done in time");
        ops.push(op);
    }
    let t0 = ops.iter().map(started).min().unwrap();
    let (from, to) = (t0 + Duration::from_secs(1), t0 + Duration::from_secs(11));
    ops.iter()
        .map(started)
        .filter(|t| *t >= from && *t < to)
        .count()
}

#[tokio::test]
async fn a_rate_of_fifty_a_second_starts_five_hundred_in_ten_seconds() {
    let server = TestServer::start().await;
    let started = starts_in_ten_seconds(&[server.channel().await], 700).await;
    assert!((475..=525).contains(&started), "{started} started in 10 s");
    server.stop().await;
}

/// Three nodes of the real binary on `db`.
async fn three_nodes(db: &TestDb, dir: &std::path::Path) -> Vec<crate::cluster::Node> {
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        nodes.push(crate::cluster::start(db, dir, name).await);
    }
    nodes
}

#[tokio::test]
async fn a_rate_holds_across_three_postgres_nodes() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let nodes = three_nodes(&db, dir.path()).await;
    let channels: Vec<Channel> = nodes.iter().map(|n| n.channel.clone()).collect();
    let started = starts_in_ten_seconds(&channels, 700).await;
    assert!((475..=525).contains(&started), "{started} started in 10 s");
}

#[tokio::test]
async fn a_key_limit_of_two_holds_across_three_postgres_nodes() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let nodes = three_nodes(&db, dir.path()).await;
    set_limit(&nodes[0].channel, "key", 2, &[]).await;
    let mut sampler = sqlx::PgConnection::connect(&db.url).await.unwrap();

    let mut creators = Vec::new();
    for node in &nodes {
        let channel = node.channel.clone();
        creators.push(tokio::spawn(async move {
            for i in 0..100 {
                let key = format!("customer-{}", i % 10);
                create(&channel, sleep_keyed(Duration::from_millis(30), &key)).await;
            }
        }));
    }
    // Sampled every 50 ms until all 300 are done: never more than 2 of a
    // key running at one moment (one statement sees one snapshot).
    let mut most = 0;
    let mut ticks = tokio::time::interval(Duration::from_millis(50));
    tokio::time::timeout(PATIENCE, async {
        loop {
            ticks.tick().await;
            let rows: Vec<(Option<String>, i64)> = sqlx::query_as(
                "SELECT concurrency_key, count(*) FROM longrun_operations
                  WHERE state IN (2, 5) GROUP BY concurrency_key",
            )
            .fetch_all(&mut sampler)
            .await
            .unwrap();
            for (key, running) in rows {
                if running > 2 {
                    // Say what the store held, to tell why.
                    let slots: Vec<(i16, String, i32)> =
                        sqlx::query_as("SELECT scope, key, running FROM longrun_slots")
                            .fetch_all(&mut sampler)
                            .await
                            .unwrap();
                    let rows: Vec<(uuid::Uuid, i16, Option<String>, i32)> = sqlx::query_as(
                        "SELECT id, state, lease_holder, attempt FROM longrun_operations
                          WHERE state IN (2, 5) AND concurrency_key = $1",
                    )
                    .bind(&key)
                    .fetch_all(&mut sampler)
                    .await
                    .unwrap();
                    panic!("{running} of {key:?} running at once; slots {slots:?}; {rows:?}");
                }
                most = most.max(running);
            }
            let (done,): (i64,) =
                sqlx::query_as("SELECT count(*) FROM longrun_operations WHERE state = 3")
                    .fetch_one(&mut sampler)
                    .await
                    .unwrap();
            if done == 300 {
                return;
            }
        }
    })
    .await
    .expect("all 300 done in time");
    for creator in creators {
        creator.await.unwrap();
    }
    assert_eq!(most, 2, "the limit was reached, so the test could fail");
}

#[tokio::test]
async fn one_tenants_backlog_delays_another_by_one_round() {
    let a = Person::new("a", "alpha", "writer");
    let b = Person::new("b", "beta", "writer");
    let admin = Person::new("root", "alpha", "admin");
    let server = TestServer::start_with_auth(&auth_toml(&[&a, &b, &admin], ""), |config| {
        config.engine.concurrency.insert("sleep".into(), 4);
    })
    .await;
    let admin_channel = server.authed(admin.token()).await;
    QueuesClient::new(admin_channel.clone())
        .pause_queue(PauseQueueRequest {
            kind: "sleep".into(),
        })
        .await
        .unwrap();
    let mut creators = Vec::new();
    for _ in 0..8 {
        let channel = server.authed(a.token()).await;
        creators.push(tokio::spawn(async move {
            let mut diagnostics = DiagnosticsClient::new(channel);
            for _ in 0..2_500 {
                diagnostics
                    .sleep(crate::common::sleep(Duration::from_millis(20), 0))
                    .await
                    .unwrap();
            }
        }));
    }
    for creator in creators {
        creator.await.unwrap();
    }
    QueuesClient::new(admin_channel)
        .resume_queue(ResumeQueueRequest {
            kind: "sleep".into(),
        })
        .await
        .unwrap();
    // Alpha's 20,000 run four at a time, 20 ms each: in line behind them,
    // beta's would wait 100 s.
    let op = DiagnosticsClient::new(server.authed(b.token()).await)
        .sleep(crate::common::sleep(Duration::ZERO, 0))
        .await
        .unwrap()
        .into_inner();
    let done = crate::common::wait_done_as(&server, b.token(), &op.name).await;
    let m = meta(&done);
    let created = longrun::pb::system_time(&m.create_time.unwrap()).unwrap();
    let waited = started(&done).duration_since(created).unwrap();
    assert!(
        waited < Duration::from_millis(100),
        "beta waited {waited:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_queued_operation_says_why_it_waits() {
    let server = TestServer::start().await;
    let channel = server.channel().await;
    set_limit(&channel, "key", 1, &[]).await;
    let holder = create(&channel, sleep_keyed(Duration::from_secs(3600), "acme")).await;
    crate::common::wait_state(&server, &holder.name, State::Running).await;
    let waiting = create(&channel, sleep_keyed(Duration::ZERO, "acme")).await;
    let m = meta(&get(&channel, &waiting.name).await);
    let why = m.waiting_reason.expect("a reason");
    assert_eq!(why.reason, "KEY_CONCURRENCY");
    assert_eq!(why.concurrency_key, "acme");
    assert_eq!(m.run.unwrap().concurrency_key, "acme");

    // The CLI says it too.
    let out = crate::cli::longrun(&server, &["ops", "get", &waiting.name]).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("waiting:   KEY_CONCURRENCY (key acme)"),
        "{text}"
    );

    // Paused, nothing can be promised.
    pause_sleep(&channel, true).await;
    let m = meta(&get(&channel, &waiting.name).await);
    assert_eq!(m.waiting_reason.unwrap().reason, "QUEUE_PAUSED");
    assert_eq!(m.estimated_end_time, None);
    pause_sleep(&channel, false).await;

    // The slot comes back when the holder ends: the waiting one runs.
    OperationsClient::new(channel.clone())
        .cancel_operation(CancelOperationRequest {
            name: holder.name.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        state(&wait_done(&server, &waiting.name).await),
        State::Succeeded
    );
    let m = meta(&get(&channel, &waiting.name).await);
    assert_eq!(m.waiting_reason, None);
    server.stop().await;
}

#[tokio::test]
async fn a_spent_rate_says_when_the_next_start_comes() {
    let server = TestServer::start().await;
    let channel = server.channel().await;
    set_limit(&channel, "kind", 0, &["1/h"]).await;
    let first = create(&channel, crate::common::sleep(Duration::ZERO, 0)).await;
    wait_done(&server, &first.name).await;
    let second = create(&channel, crate::common::sleep(Duration::ZERO, 0)).await;
    let m = meta(&get(&channel, &second.name).await);
    let why = m.waiting_reason.expect("a reason");
    assert_eq!(why.reason, "RATE_LIMITED");
    let until = why.until.expect("when the next token comes");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now + 3000..=now + 3600).contains(&until.seconds),
        "{until:?}"
    );
    // The estimate counts the wait.
    assert!(m.estimated_end_time.unwrap().seconds >= until.seconds);
    server.stop().await;
}

#[tokio::test]
async fn bad_limits_and_keys_are_refused_naming_the_field() {
    let server = TestServer::start().await;
    let channel = server.channel().await;
    let mut queues = QueuesClient::new(channel.clone());
    let cases = [
        ("no.such.kind", "key", 2, vec![], "kind"),
        ("sleep", "key", 0, vec![], "concurrency"),
        ("sleep", "key", -3, vec![], "concurrency"),
        ("sleep", "kind", 0, vec!["10/fortnight"], "rates"),
        ("sleep", "kind", 0, vec!["0/s"], "rates"),
        ("sleep", "everything", 2, vec![], "scope"),
    ];
    for (kind, scope, concurrency, rates, field) in cases {
        let refused = queues
            .set_limit(SetLimitRequest {
                kind: kind.into(),
                scope: scope.into(),
                concurrency,
                rates: rates.into_iter().map(str::to_owned).collect(),
            })
            .await
            .unwrap_err();
        assert_status(
            &refused,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            Some(field),
        );
    }
    let refused = DiagnosticsClient::new(channel.clone())
        .sleep(sleep_keyed(Duration::ZERO, &"k".repeat(129)))
        .await
        .unwrap_err();
    assert_status(
        &refused,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("run.concurrency_key"),
    );
    // Nothing was stored by any of them.
    let limits = queues
        .list_limits(ListLimitsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(limits.limits.is_empty(), "{limits:?}");
    server.stop().await;
}

#[tokio::test]
async fn limits_by_flag_are_stored_listed_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = crate::common::spawn_listening(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_longrun"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(["--concurrency", "sleep=50,sleep:key=2,sleep:tenant=5"])
            .args([
                "--rate",
                "sleep=100/s;5000/h",
                "--rate",
                "sleep:key=10/s:burst=20",
            ]),
    )
    .await;
    let channel = Channel::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let limits: HashMap<String, (i64, Vec<String>)> = QueuesClient::new(channel.clone())
        .list_limits(ListLimitsRequest {})
        .await
        .unwrap()
        .into_inner()
        .limits
        .into_iter()
        .map(|l| {
            assert_eq!(l.kind, SLEEP);
            (l.scope, (l.concurrency, l.rates))
        })
        .collect();
    assert_eq!(limits["kind"], (0, vec!["100/s".into(), "5000/h".into()]));
    assert_eq!(limits["key"], (2, vec!["10/s:burst=20".into()]));
    assert_eq!(limits["tenant"], (5, vec![]));

    // The CLI lists, sets and removes them.
    let cli = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_longrun"));
        command.args(args).args(["--server", &url]);
        command.output().unwrap()
    };
    let out = cli(&["queue", "limits"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("key: 2 at once, 10/s:burst=20"), "{text}");
    let out = cli(&[
        "queue",
        "limit",
        "sleep",
        "--scope",
        "tenant",
        "--concurrency",
        "7",
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = cli(&["queue", "unlimit", "sleep", "--scope", "key"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("removed"),
        "{out:?}"
    );
    let out = cli(&["queue", "list"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("limit tenant: 7 at once"), "{text}");
    assert!(!text.contains("limit key"), "{text}");
    let out = cli(&["queue", "limit", "sleep", "--rate", "10/fortnight"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rates"),
        "{out:?}"
    );
    let deleted = QueuesClient::new(channel)
        .delete_limit(DeleteLimitRequest {
            kind: "sleep".into(),
            scope: "key".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!deleted.deleted, "already removed");
    child.kill().await.unwrap();
}
