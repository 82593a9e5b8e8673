//! The real binary, killed with SIGKILL at random moments while clients
//! create operations, restarted each time. Every acknowledged operation must
//! survive and finish exactly once; SIGTERM must shut down cleanly.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use longrun::pb::google::longrunning::operations_client::OperationsClient;
use longrun::pb::google::longrunning::{
    GetOperationRequest, ListOperationsRequest, Operation, operation,
};
use longrun::pb::longrun::v1::diagnostics_client::DiagnosticsClient;
use longrun::pb::longrun::v1::{OperationMetadata, SleepRequest, SleepResponse, State};
use prost::Message;
use rand::Rng;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const PATIENCE: Duration = Duration::from_secs(60);
const ROUNDS: usize = 5;
/// Clients creating operations at once.
const CLIENTS: usize = 8;
/// Operations each client creates per round, at most: enough to have many
/// running and many queued at the kill, few enough to check quickly.
const PER_CLIENT: usize = 60;

struct Process {
    child: Child,
    url: String,
}

/// Starts `longrun serve` on a free port, with default settings but for
/// a short shutdown grace, and waits until it is serving.
async fn start(dir: &Path) -> Process {
    start_on(dir, None).await
}

/// `start`, on the PostgreSQL database at `store` if given.
async fn start_on(dir: &Path, store: Option<&str>) -> Process {
    let (child, url) = crate::common::spawn_listening(
        Command::new(env!("CARGO_BIN_EXE_longrun"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(["--shutdown-grace", "1s"])
            .args(store.map(|url| ["--store", url]).into_iter().flatten())
            .arg("--data-dir")
            .arg(dir),
    )
    .await;
    Process { child, url }
}

async fn channel(p: &Process) -> Channel {
    Channel::from_shared(p.url.clone())
        .unwrap()
        .connect()
        .await
        .expect("connect")
}

/// An Operations client that waits with the shared test helper.
async fn operations(p: &Process) -> OperationsClient<crate::common::Authed> {
    OperationsClient::new(tonic::service::interceptor::InterceptedService::new(
        channel(p).await,
        crate::common::Bearer(None),
    ))
}

fn meta(op: &Operation) -> OperationMetadata {
    OperationMetadata::decode(op.metadata.as_ref().unwrap().value.as_slice()).unwrap()
}

fn random_request(rng: &mut impl Rng) -> SleepRequest {
    let millis = rng.random_range(0..1000u64);
    SleepRequest {
        duration: Some(prost_types::Duration {
            seconds: 0,
            nanos: (millis * 1_000_000) as i32,
        }),
        steps: rng.random_range(1..5),
        fail_code: if rng.random_bool(0.2) { 13 } else { 0 },
        fail_attempts: i32::from(rng.random_bool(0.1)),
        request_id: if rng.random_bool(0.3) {
            uuid::Uuid::now_v7().to_string()
        } else {
            String::new()
        },
        timeout: None,
        notification: None,
        run: rng
            .random_bool(0.3)
            .then(|| longrun::pb::longrun::v1::RunOptions {
                priority: rng.random_range(-2..3),
                concurrency_key: format!("customer-{}", rng.random_range(0..3)),
                ..Default::default()
            }),
    }
}

/// Creates operations until the server dies or `stop` fires; records every
/// acknowledged name.
async fn submit(channel: Channel, acked: Arc<Mutex<Vec<String>>>, stop: CancellationToken) {
    let mut client = DiagnosticsClient::new(channel);
    for _ in 0..PER_CLIENT {
        let request = random_request(&mut rand::rng());
        let reply = tokio::select! {
            _ = stop.cancelled() => return,
            reply = client.sleep(request) => reply,
        };
        match reply {
            Ok(op) => acked.lock().unwrap().push(op.into_inner().name),
            Err(_) => return,
        }
    }
}

/// Every acknowledged operation exists; a done one is exactly as it was
/// when first seen done (it never completes twice).
async fn check(p: &Process, acked: &[String], finished: &mut HashMap<String, Operation>) {
    let mut ops = OperationsClient::new(channel(p).await);
    for name in acked {
        let op = ops
            .get_operation(GetOperationRequest { name: name.clone() })
            .await
            .unwrap_or_else(|e| panic!("acknowledged {name} lost: {e:?}"))
            .into_inner();
        if op.done {
            match finished.get(name) {
                Some(first) => assert_eq!(first, &op, "{name} changed after it was done"),
                None => {
                    finished.insert(name.clone(), op);
                }
            }
        }
    }
}

/// Waits with WaitOperation until `name` is done.
async fn wait_done(ops: &mut OperationsClient<crate::common::Authed>, name: &str) -> Operation {
    tokio::time::timeout(PATIENCE, crate::common::wait_done_on(ops, name))
        .await
        .unwrap_or_else(|_| panic!("{name} never finished"))
}

fn assert_finished_once(op: &Operation) {
    let m = meta(op);
    match &op.result {
        Some(operation::Result::Response(any)) => {
            assert_eq!(m.state, State::Succeeded as i32);
            let response = SleepResponse::decode(any.value.as_slice()).unwrap();
            assert_eq!(
                response.attempt, m.attempt,
                "the response is the last attempt's"
            );
        }
        Some(operation::Result::Error(e)) => {
            assert_eq!(m.state, State::Failed as i32, "{op:?}");
            assert!([13, 14, 10].contains(&e.code), "{e:?}");
        }
        None => panic!("done without a result: {op:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_operations_survive_sigkill_and_finish_once() {
    let dir = tempfile::tempdir().unwrap();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut finished = HashMap::new();

    for _ in 0..ROUNDS {
        let mut process = start(dir.path()).await;
        let snapshot = acked.lock().unwrap().clone();
        check(&process, &snapshot, &mut finished).await;

        let stop = CancellationToken::new();
        let mut submitters = Vec::new();
        for _ in 0..CLIENTS {
            submitters.push(tokio::spawn(submit(
                channel(&process).await,
                Arc::clone(&acked),
                stop.clone(),
            )));
        }
        // A random moment to crash; this picks when, it waits for nothing.
        let alive = rand::rng().random_range(30..400);
        tokio::time::sleep(Duration::from_millis(alive)).await;
        process.child.kill().await.expect("SIGKILL");
        stop.cancel();
        for s in submitters {
            s.await.unwrap();
        }
    }

    let mut process = start(dir.path()).await;
    let all = acked.lock().unwrap().clone();
    assert!(
        all.len() > ROUNDS,
        "only {} operations were acknowledged",
        all.len()
    );
    check(&process, &all, &mut finished).await;

    // Everything finishes.
    let mut ops = operations(&process).await;
    for name in &all {
        let op = wait_done(&mut ops, name).await;
        assert_finished_once(&op);
    }
    check(&process, &all, &mut finished).await;

    // The store reads back whole: every record decodes in a full listing.
    let mut listed = 0;
    let mut token = String::new();
    loop {
        let page = ops
            .list_operations(ListOperationsRequest {
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        listed += page.operations.len();
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert!(listed >= all.len());

    // SIGTERM shuts down cleanly.
    let pid = process.child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(PATIENCE, process.child.wait())
        .await
        .expect("exited after SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_running_work_which_resumes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut process = start(dir.path()).await;
    let mut diag = DiagnosticsClient::new(channel(&process).await);
    let op = diag
        .sleep(SleepRequest {
            duration: Some(prost_types::Duration {
                seconds: 2,
                nanos: 0,
            }),
            steps: 4,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Wait until it runs.
    let mut watcher =
        longrun::pb::longrun::v1::operation_watcher_client::OperationWatcherClient::new(
            channel(&process).await,
        );
    let mut stream = watcher
        .watch_operation(longrun::pb::longrun::v1::WatchOperationRequest {
            name: op.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(PATIENCE, async {
        while let Some(item) = stream.message().await.unwrap() {
            if meta(&item).state == State::Running as i32 {
                return;
            }
        }
    })
    .await
    .unwrap();

    let pid = process.child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let exit = tokio::time::timeout(PATIENCE, process.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success());

    let process = start(dir.path()).await;
    let mut ops = operations(&process).await;
    let done = wait_done(&mut ops, &op.name).await;
    assert_eq!(meta(&done).state, State::Succeeded as i32);
    assert_eq!(meta(&done).attempt, 2);
}

/// A batch cut short by a crash is all or nothing: `longrun bench store`
/// commits batches of creates, each create carrying its batch number, and
/// is killed at a random moment; reopened, the store holds every batch the
/// process reported as committed, whole, and no part of any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cut_short_by_sigkill_is_all_or_nothing() {
    const BATCH: usize = 50;
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_longrun"))
            .args(["bench", "store", "--batch", &BATCH.to_string()])
            .args(["--batches", "1000000", "--data-dir"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start longrun bench store");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // A random number of batches reported before the kill; the kill
        // lands wherever the writer is then.
        let before_kill = rand::rng().random_range(5..60u64);
        let mut reported = 0u64;
        tokio::time::timeout(PATIENCE, async {
            while reported < before_kill {
                let line = lines.next_line().await.unwrap().expect("still running");
                assert_eq!(line, format!("committed {reported}"));
                reported += 1;
            }
        })
        .await
        .expect("batches were committed in time");
        child.kill().await.expect("SIGKILL");
        // What it managed to print between the read and the kill counts too.
        while let Ok(Some(line)) = lines.next_line().await {
            assert_eq!(line, format!("committed {reported}"));
            reported += 1;
        }

        let store = crate::common::reopen_sled(dir.path()).await;
        let unfinished = longrun::store::OperationStore::unfinished(&store)
            .await
            .expect("every record reads back");
        let mut per_batch: HashMap<u64, usize> = HashMap::new();
        for op in &unfinished {
            let number = u64::from_be_bytes(op.request.value[..].try_into().unwrap());
            *per_batch.entry(number).or_default() += 1;
        }
        for (number, count) in &per_batch {
            assert_eq!(*count, BATCH, "batch {number} is partly there");
        }
        for number in 0..reported {
            assert_eq!(
                per_batch.get(&number),
                Some(&BATCH),
                "batch {number} was reported committed and is not whole"
            );
        }
    }
}

/// An import killed with SIGKILL while its slices are written and its
/// runs merged resumes after the restart and leaves the store holding
/// exactly the file: every order in its month, once, with its own
/// values, in listing order, and each month's count right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_cut_short_by_sigkill_stores_the_file_exactly_once_resumed() {
    import_cut_short(None).await;
}

/// The same on PostgreSQL, whose runs are merged in the background: the
/// kill may also cut a merge short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_on_postgresql_cut_short_by_sigkill_stores_the_file_exactly_once_resumed() {
    let Some(db) = crate::pg::TestDb::create().await else {
        return;
    };
    import_cut_short(Some(&db.url)).await;
}

/// Imports a generated file on the sled store, or on PostgreSQL at
/// `store`, kills the server part way, and checks the file after the
/// restart.
async fn import_cut_short(store: Option<&str>) {
    use longrun::model::Tenant;
    use longrun::model::order::Month;
    use longrun::pb::longrun::v1::ImportOrdersRequest;
    use longrun::pb::longrun::v1::report_service_client::ReportServiceClient;
    use longrun::reports::generate::{Spec, write_csv};
    use longrun::store::OrderStore;

    let months: Vec<Month> = (1..=4).map(|m| Month::new(2024, m).unwrap()).collect();
    let mut csv = Vec::new();
    let spec = Spec {
        count: 120_000,
        months: (months[0], months[3]),
        seed: rand::rng().random(),
    };
    write_csv(&spec, &mut csv).unwrap();
    // What each month must hold: order_id to amount, from the file itself.
    let text = String::from_utf8(csv.clone()).unwrap();
    let mut expected: HashMap<String, HashMap<String, i64>> = HashMap::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        expected
            .entry(fields[1][..7].to_owned())
            .or_default()
            .insert(fields[0].to_owned(), fields[4].parse().unwrap());
    }

    let dir = tempfile::tempdir().unwrap();
    let mut process = start_on(dir.path(), store).await;
    let chunks: Vec<ImportOrdersRequest> = csv
        .chunks(256 * 1024)
        .map(|c| ImportOrdersRequest {
            csv_chunk: c.to_vec(),
            ..Default::default()
        })
        .collect();
    let op = ReportServiceClient::new(channel(&process).await)
        .import_orders(tokio_stream::iter(chunks))
        .await
        .unwrap()
        .into_inner();
    // Killed once the import has stored a random part of the file.
    let at = rand::rng().random_range(5..80);
    let mut ops = operations(&process).await;
    tokio::time::timeout(PATIENCE, async {
        loop {
            let now = ops
                .get_operation(GetOperationRequest {
                    name: op.name.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            if now.done || meta(&now).progress_percent >= at {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the import progressed");
    process.child.kill().await.expect("SIGKILL");

    let mut process = start_on(dir.path(), store).await;
    let done = wait_done(&mut operations(&process).await, &op.name).await;
    assert_eq!(meta(&done).state, State::Succeeded as i32, "{done:?}");
    process.child.kill().await.unwrap();

    let store: Box<dyn OrderStore> = match store {
        None => Box::new(crate::common::reopen_sled(dir.path()).await),
        Some(url) => {
            let config = longrun::store::postgres::PgConfig::new(url.to_owned());
            Box::new(longrun::store::PgStore::open(&config).await.unwrap())
        }
    };
    let tenant = Tenant::default();
    for month in months {
        let want = &expected[&month.to_string()];
        let count = store.month_count(&tenant, month).await.unwrap();
        assert_eq!(count, want.len() as u64, "{month}'s count");
        let mut listed = Vec::new();
        let mut cursor = None;
        loop {
            let (page, next) = store
                .month_page(&tenant, month, cursor, 7_000)
                .await
                .unwrap();
            listed.extend(page);
            match next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert!(
            listed
                .windows(2)
                .all(|w| (w[0].created_at, &w[0].order_id) < (w[1].created_at, &w[1].order_id)),
            "{month} is listed in order, each order once"
        );
        let got: HashMap<String, i64> = listed
            .into_iter()
            .map(|o| (o.order_id, o.amount_cents))
            .collect();
        assert_eq!(&got, want, "{month}'s orders");
    }
}
