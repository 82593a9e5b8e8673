//! Schedules through the real server: a clock's runs, one per tick, each
//! with its schedule and tick in its metadata; run now, pause, update and
//! delete; backfills across the daylight-saving days of two zones (one run
//! each local day, and none twice); bad input named by field; tenants kept
//! apart; and three PostgreSQL nodes, one killed midway, making exactly one
//! run per tick. (Overlap policies and catch-up run in paused time, in
//! `timing.rs`.)

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use longrun::pb::google::longrunning::Operation;
use longrun::pb::longrun::v1::operation_watcher_client::OperationWatcherClient;
use longrun::pb::longrun::v1::schedule::OverlapPolicy;
use longrun::pb::longrun::v1::schedules_client::SchedulesClient;
use longrun::pb::longrun::v1::{
    BackfillRequest, BackfillResponse, CreateScheduleRequest, DeleteScheduleRequest,
    GetScheduleRequest, ListRunsRequest, ListSchedulesRequest, PauseScheduleRequest, RunNowRequest,
    RunOptions, Schedule, UpdateScheduleRequest, WatchChangesRequest,
};
use prost::Message;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

use crate::common::{Person, TestServer, assert_status, auth_toml, meta, sleep, wait_done};
use crate::pg::TestDb;

const PATIENCE: Duration = Duration::from_secs(60);

fn sleeper(cron: &str, zone: &str) -> Schedule {
    Schedule {
        kind: "sleep".into(),
        payload: Some(prost_types::Any::from_msg(&sleep(Duration::from_millis(10), 1)).unwrap()),
        cron: cron.into(),
        time_zone: zone.into(),
        ..Schedule::default()
    }
}

async fn create<T>(client: &mut SchedulesClient<T>, id: &str, schedule: Schedule) -> Schedule
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    client
        .create_schedule(CreateScheduleRequest {
            schedule: Some(schedule),
            schedule_id: id.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("create {id}: {e:?}"))
        .into_inner()
}

fn tick_of(op: &Operation) -> SystemTime {
    let m = meta(op);
    longrun::pb::system_time(m.scheduled_time.as_ref().expect("a scheduled time")).unwrap()
}

/// Every run of a schedule, over all pages.
async fn runs(channel: &Channel, id: &str) -> Vec<Operation> {
    let mut client = SchedulesClient::new(channel.clone());
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_runs(ListRunsRequest {
                parent: format!("schedules/{id}"),
                page_size: 500,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.operations);
        if page.next_page_token.is_empty() {
            return all;
        }
        token = page.next_page_token;
    }
}

/// Follows the runs of schedule `id` on `channel` until `enough` says the
/// runs seen (by tick) are enough.
async fn follow_runs(
    channel: &Channel,
    id: &str,
    mut enough: impl FnMut(&BTreeSet<SystemTime>) -> bool,
) -> BTreeSet<SystemTime> {
    let mut watcher = OperationWatcherClient::new(channel.clone());
    let mut stream = watcher
        .watch_changes(WatchChangesRequest {
            filter: format!("schedule = \"schedules/{id}\""),
            resume_after: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = BTreeSet::new();
    tokio::time::timeout(PATIENCE, async {
        while !enough(&seen) {
            let change = stream.next().await.expect("the stream goes on").unwrap();
            if let Some(op) = change.operation.filter(|op| op.metadata.is_some()) {
                seen.insert(tick_of(&op));
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("runs of {id}: only {} seen", seen.len()));
    seen
}

#[tokio::test]
async fn a_clock_makes_one_run_per_tick_and_a_schedule_is_run_paused_and_changed() {
    let server = TestServer::start().await;
    let channel = server.channel().await;
    let mut client = SchedulesClient::new(channel.clone());
    // Every tick runs, whether or not the last run has ended: the test
    // is of the clock, not of the overlap policy (see timing.rs).
    let every_tick = Schedule {
        overlap_policy: OverlapPolicy::AllowAll as i32,
        ..sleeper("* * * * * *", "")
    };
    let created = create(&mut client, "every-second", every_tick).await;
    assert_eq!(created.name, "schedules/every-second");
    assert_eq!(created.description, "every second UTC");
    assert_eq!(created.next_run_times.len(), 5);

    // Three ticks in a row, each a run of its own, a second apart.
    let ticks = follow_runs(&channel, "every-second", |seen| seen.len() >= 3).await;
    let ticks: Vec<SystemTime> = ticks.into_iter().collect();
    for pair in ticks.windows(2) {
        assert_eq!(
            pair[1].duration_since(pair[0]).unwrap(),
            Duration::from_secs(1)
        );
    }
    let listed = runs(&channel, "every-second").await;
    let names: BTreeSet<&str> = listed.iter().map(|op| op.name.as_str()).collect();
    assert_eq!(names.len(), listed.len(), "each run once");
    for op in &listed {
        assert_eq!(meta(op).schedule, "schedules/every-second");
    }

    // Paused: no next times; run now still runs.
    let paused = client
        .pause_schedule(PauseScheduleRequest {
            name: "schedules/every-second".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(paused.paused && paused.next_run_times.is_empty());
    let now = client
        .run_now(RunNowRequest {
            name: "schedules/every-second".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta(&now).schedule, "schedules/every-second");
    let got = client
        .get_schedule(GetScheduleRequest {
            name: "schedules/every-second".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.recent_runs[0].operation, now.name);
    assert!(!got.recent_runs[0].state.is_empty());
    // A page of the list carries the runs' states too.
    let listed = client
        .list_schedules(ListSchedulesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let run = listed
        .schedules
        .iter()
        .find(|s| s.name == "schedules/every-second")
        .map(|s| &s.recent_runs[0])
        .unwrap();
    assert_eq!(run.operation, now.name);
    assert!(!run.state.is_empty());

    // An update changes the clock; a stale etag is refused.
    let mut change = sleeper("0 3 * * *", "Europe/Berlin");
    change.name = "schedules/every-second".into();
    let updated = client
        .update_schedule(UpdateScheduleRequest {
            schedule: Some(change.clone()),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["cron".into(), "time_zone".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.description, "every day at 03:00 Europe/Berlin");
    change.etag = got.etag.clone();
    let stale = client
        .update_schedule(UpdateScheduleRequest {
            schedule: Some(change),
            update_mask: None,
        })
        .await
        .unwrap_err();
    assert_status(&stale, Code::Aborted, "ETAG_MISMATCH", None);

    client
        .delete_schedule(DeleteScheduleRequest {
            name: "schedules/every-second".into(),
        })
        .await
        .unwrap();
    let gone = client
        .get_schedule(GetScheduleRequest {
            name: "schedules/every-second".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test]
async fn bad_schedules_are_refused_naming_the_field() {
    let server = TestServer::start_with(|c| {
        c.outside_kinds = vec![longrun::engine::KindSpec::new("echo")];
    })
    .await;
    let mut client = SchedulesClient::new(server.channel().await);
    let with = |f: &dyn Fn(&mut Schedule)| {
        let mut s = sleeper("0 3 * * *", "");
        f(&mut s);
        s
    };
    let cases: Vec<(&str, Schedule, &str)> = vec![
        ("bad-cron", with(&|s| s.cron = "61 * * * *".into()), "cron"),
        ("short-cron", with(&|s| s.cron = "* *".into()), "cron"),
        ("never", with(&|s| s.cron = "0 0 30 2 *".into()), "cron"),
        (
            "zone",
            with(&|s| s.time_zone = "Mars/Olympus".into()),
            "time_zone",
        ),
        (
            "fast",
            with(&|s| {
                s.cron.clear();
                s.interval = Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 500_000_000,
                });
            }),
            "interval",
        ),
        ("no-clock", with(&|s| s.cron.clear()), "cron"),
        (
            "start",
            with(&|s| {
                s.run = Some(RunOptions {
                    start_time: Some(longrun::pb::timestamp(SystemTime::now())),
                    ..RunOptions::default()
                })
            }),
            "run.start_time",
        ),
        ("kind", with(&|s| s.kind = "no.such.kind".into()), "kind"),
        (
            "huge",
            with(&|s| {
                s.kind = "echo".into();
                s.payload = Some(prost_types::Any {
                    type_url: "type.googleapis.com/google.protobuf.BytesValue".into(),
                    value: vec![7; 65 * 1024],
                });
            }),
            "payload",
        ),
        ("Bad_Id", sleeper("0 3 * * *", ""), "schedule_id"),
    ];
    for (id, schedule, field) in cases {
        let status = client
            .create_schedule(CreateScheduleRequest {
                schedule: Some(schedule),
                schedule_id: id.into(),
            })
            .await
            .unwrap_err();
        assert_status(
            &status,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            Some(field),
        );
    }
    create(&mut client, "twice", sleeper("0 3 * * *", "")).await;
    let again = client
        .create_schedule(CreateScheduleRequest {
            schedule: Some(sleeper("0 3 * * *", "")),
            schedule_id: "twice".into(),
        })
        .await
        .unwrap_err();
    assert_status(&again, Code::AlreadyExists, "SCHEDULE_EXISTS", None);
}

/// Waits until the backfill `op` is done and returns what it did.
async fn backfilled(server: &TestServer, op: Operation) -> BackfillResponse {
    let done = wait_done(server, &op.name).await;
    match done.result {
        Some(longrun::pb::google::longrunning::operation::Result::Response(any)) => {
            BackfillResponse::decode(any.value.as_slice()).unwrap()
        }
        other => panic!("the backfill failed: {other:?}"),
    }
}

fn rfc3339(text: &str) -> SystemTime {
    humantime::parse_rfc3339(text).unwrap()
}

#[tokio::test]
async fn a_0230_daily_backfilled_over_daylight_saving_days_runs_once_each_day() {
    let server = TestServer::start().await;
    let channel = server.channel().await;
    let mut client = SchedulesClient::new(channel.clone());
    // Each range holds a change day: Berlin springs forward on 29 March
    // 2026 (02:30 does not exist), New York falls back on 1 November
    // 2026 (01:00 to 02:00 comes twice; 02:30 once).
    for (id, zone, from, to, expected) in [
        (
            "berlin",
            "Europe/Berlin",
            "2026-03-28T00:00:00Z",
            "2026-03-31T00:00:00Z",
            // 02:30 CET, 03:00 CEST (the first time after the gap), 02:30 CEST.
            [
                "2026-03-28T01:30:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:30:00Z",
            ],
        ),
        (
            "new-york",
            "America/New_York",
            "2026-10-31T00:00:00Z",
            "2026-11-03T00:00:00Z",
            [
                "2026-10-31T06:30:00Z",
                "2026-11-01T07:30:00Z",
                "2026-11-02T07:30:00Z",
            ],
        ),
    ] {
        create(&mut client, id, sleeper("30 2 * * *", zone)).await;
        let request = BackfillRequest {
            name: format!("schedules/{id}"),
            start_time: Some(longrun::pb::timestamp(rfc3339(from))),
            end_time: Some(longrun::pb::timestamp(rfc3339(to))),
            request_id: String::new(),
        };
        let op = client.backfill(request.clone()).await.unwrap().into_inner();
        let did = backfilled(&server, op).await;
        assert_eq!((did.ticks, did.created, did.existing), (3, 3, 0), "{id}");
        let ticks: BTreeSet<SystemTime> = runs(&channel, id).await.iter().map(tick_of).collect();
        let want: BTreeSet<SystemTime> = expected.iter().map(|t| rfc3339(t)).collect();
        assert_eq!(ticks, want, "{zone}");
        // The same range again finds every tick's run: none twice.
        let op = client.backfill(request).await.unwrap().into_inner();
        let again = backfilled(&server, op).await;
        assert_eq!((again.created, again.existing), (0, 3), "{id}");
        assert_eq!(runs(&channel, id).await.len(), 3, "{id}");
    }
    // A range in the future, or backwards, is refused.
    let future = client
        .backfill(BackfillRequest {
            name: "schedules/berlin".into(),
            start_time: Some(longrun::pb::timestamp(SystemTime::now())),
            end_time: Some(longrun::pb::timestamp(
                SystemTime::now() + Duration::from_secs(86_400),
            )),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_status(
        &future,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("end_time"),
    );
}

#[tokio::test]
async fn tenants_see_only_their_own_schedules_and_readers_cannot_write() {
    let acme = Person::new("acme-writer", "acme", "writer");
    let globex = Person::new("globex-writer", "globex", "writer");
    let reader = Person::new("acme-reader", "acme", "reader");
    let server =
        TestServer::start_with_auth(&auth_toml(&[&acme, &globex, &reader], ""), |_| {}).await;
    let mut as_acme = SchedulesClient::new(server.authed(acme.token()).await);
    let mut as_globex = SchedulesClient::new(server.authed(globex.token()).await);
    let mut as_reader = SchedulesClient::new(server.authed(reader.token()).await);
    create(&mut as_acme, "nightly", sleeper("0 3 * * *", "")).await;
    let name = || GetScheduleRequest {
        name: "schedules/nightly".into(),
    };
    let other = as_globex.get_schedule(name()).await.unwrap_err();
    assert_eq!(other.code(), Code::NotFound);
    // The same id in another tenant is another schedule.
    create(&mut as_globex, "nightly", sleeper("0 4 * * *", "")).await;
    assert_eq!(
        as_acme
            .get_schedule(name())
            .await
            .unwrap()
            .into_inner()
            .cron,
        "0 3 * * *"
    );
    assert!(as_reader.get_schedule(name()).await.is_ok());
    let refused = as_reader
        .run_now(RunNowRequest {
            name: "schedules/nightly".into(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let gone = as_globex
        .delete_schedule(DeleteScheduleRequest {
            name: "schedules/nightly".into(),
        })
        .await;
    assert!(gone.is_ok());
    assert!(as_acme.get_schedule(name()).await.is_ok(), "acme's stays");
}

#[tokio::test]
async fn a_per_second_schedule_on_three_postgres_nodes_runs_each_tick_once_though_one_dies() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        nodes.push(crate::cluster::start(&db, dir.path(), name).await);
    }
    let watch = nodes[0].channel.clone();
    let mut client = SchedulesClient::new(nodes[1].channel.clone());
    // Every tick runs even while the last run waits (as the ticks a dead
    // node left are caught up together), so that each tick shows.
    let every_tick = Schedule {
        overlap_policy: OverlapPolicy::AllowAll as i32,
        ..sleeper("*/1 * * * * *", "")
    };
    let created = create(&mut client, "tick", every_tick).await;
    let first = longrun::pb::system_time(&created.next_run_times[0]).unwrap();
    let last = first + Duration::from_secs(19);
    // Ten ticks in, node c dies (it may hold the schedule as it does).
    follow_runs(&watch, "tick", |seen| {
        seen.contains(&(first + Duration::from_secs(9)))
    })
    .await;
    nodes[2].kill().await;
    follow_runs(&watch, "tick", |seen| seen.contains(&last)).await;
    client
        .pause_schedule(PauseScheduleRequest {
            name: "schedules/tick".into(),
        })
        .await
        .unwrap();

    let all = runs(&watch, "tick").await;
    let mut by_tick: HashMap<SystemTime, usize> = HashMap::new();
    for op in &all {
        *by_tick.entry(tick_of(op)).or_default() += 1;
    }
    let twice: Vec<_> = by_tick.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "ticks run twice: {twice:?}");
    let window: Vec<SystemTime> = (0..20).map(|i| first + Duration::from_secs(i)).collect();
    let missing: Vec<_> = window.iter().filter(|t| !by_tick.contains_key(t)).collect();
    assert!(missing.is_empty(), "ticks without a run: {missing:?}");
    assert_eq!(
        window.iter().filter(|t| by_tick.contains_key(t)).count(),
        20
    );
}

/// Sends `method` to `url` with a JSON body (or none) and returns the
/// status and the JSON answer.
async fn send(
    method: reqwest::Method,
    url: String,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

#[tokio::test]
async fn schedules_are_served_over_http() {
    use reqwest::Method;
    let server = TestServer::start().await;
    let base = format!("{}/v1", server.url());
    let body = serde_json::json!({
        "kind": "sleep",
        "payload": {"@type": "type.googleapis.com/longrun.v1.SleepRequest", "duration": "0.01s"},
        "cron": "0 3 * * *",
        "timeZone": "Europe/Berlin",
        "overlapPolicy": "BUFFER_ONE",
    });
    let (status, created) = send(
        Method::POST,
        format!("{base}/schedules?scheduleId=nightly"),
        Some(body),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let (_, patched) = send(
        Method::PATCH,
        format!("{base}/schedules/nightly?updateMask=cron"),
        Some(serde_json::json!({"cron": "15 4 * * MON-FRI"})),
    )
    .await;
    assert_eq!(
        patched["description"],
        "every Monday to Friday at 04:15 Europe/Berlin"
    );
    assert_eq!(patched["overlapPolicy"], "BUFFER_ONE");
    let (_, run) = send(
        Method::POST,
        format!("{base}/schedules/nightly:runNow"),
        Some(serde_json::json!({})),
    )
    .await;
    assert_eq!(run["metadata"]["schedule"], "schedules/nightly");
    let (_, runs) = send(Method::GET, format!("{base}/schedules/nightly/runs"), None).await;
    assert_eq!(runs["operations"][0]["name"], run["name"]);
    let (status, refusal) = send(
        Method::POST,
        format!("{base}/schedules?scheduleId=bad"),
        Some(serde_json::json!({"kind": "sleep", "cron": "0 3 * * *", "timeZone": "Nowhere/City"})),
    )
    .await;
    assert_eq!(status, 400, "{refusal}");
    assert!(
        refusal.to_string().contains(r#""field":"time_zone""#),
        "a BadRequest names the field: {refusal}"
    );
    let (_, list) = send(Method::GET, format!("{base}/schedules"), None).await;
    assert_eq!(list["schedules"].as_array().map(Vec::len), Some(1));
}
