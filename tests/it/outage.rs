//! The store failing under load: PostgreSQL cut off and stalled by a proxy
//! between two nodes and the database, and a sled store whose writes fail
//! (a faulting wrapper). Clients keep creating, retrying a failed create
//! with its request_id, as the README tells them to. Afterwards nothing
//! acknowledged is lost, every operation ends, a kind that is not
//! retry-safe ran no operation twice, nothing stays RUNNING long after the
//! store is back, and the servers report NOT_SERVING while it is gone and
//! SERVING again by themselves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use longrun::engine::{SubmitOptions, TaskPolicy};
use longrun::model::OperationId;
use longrun::pb::google::longrunning::operations_client::OperationsClient;
use longrun::pb::google::longrunning::{Operation, WaitOperationRequest};
use longrun::pb::longrun::v1::diagnostics_client::DiagnosticsClient;
use longrun::pb::longrun::v1::{SleepRequest, State};
use longrun::store::{SledStore, Stores, SyncMode};
use longrun::{Registry, ServerConfig, Task, TaskContext, TaskError};
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use crate::common::{TestServer, config, meta, state};
use crate::pg::TestDb;
use crate::proxy::{Link, Proxy, target_of};
use crate::spy::{Fault, Spy};

/// How long a lease lasts in these tests: short, so that failover shows.
const LEASE: Duration = Duration::from_secs(2);

/// The longest the test waits for everything to end.
const PATIENCE: Duration = Duration::from_secs(90);

#[derive(Clone, PartialEq, prost::Message)]
struct Charge {
    #[prost(uint64, tag = "1")]
    number: u64,
}

impl prost::Name for Charge {
    const PACKAGE: &'static str = "test.v1";
    const NAME: &'static str = "Charge";
}

/// A kind that must not run twice: it counts its runs per operation.
#[derive(Clone, Default)]
struct Once {
    runs: Arc<Mutex<HashMap<OperationId, u32>>>,
}

impl Task for Once {
    type Request = Charge;
    type Response = Charge;
    const KIND: &'static str = "test.v1.Once";

    fn policy(&self) -> TaskPolicy {
        TaskPolicy {
            retry_safe: false,
            ..TaskPolicy::default()
        }
    }

    async fn run(&self, ctx: TaskContext, charge: Charge) -> Result<Charge, TaskError> {
        *self
            .runs
            .lock()
            .unwrap()
            .entry(ctx.operation_id())
            .or_default() += 1;
        ctx.sleep(Duration::from_millis(30)).await;
        Ok(charge)
    }
}

/// What the clients were told was created.
#[derive(Default)]
struct Acknowledged {
    sleeps: Vec<String>,
    charges: Vec<String>,
}

/// A client that creates 50 ms Sleeps on `channel` until `stop`, retrying
/// every failed create with the same request_id until it is acknowledged.
async fn sleeper(channel: Channel, stop: watch::Receiver<bool>, acked: Arc<Mutex<Acknowledged>>) {
    let mut client = DiagnosticsClient::new(channel);
    while !*stop.borrow() {
        let request_id = uuid::Uuid::now_v7().to_string();
        let giving_up = tokio::time::Instant::now() + PATIENCE;
        loop {
            let mut request = tonic::Request::new(SleepRequest {
                duration: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 50_000_000,
                }),
                steps: 1,
                request_id: request_id.clone(),
                ..Default::default()
            });
            request.set_timeout(Duration::from_secs(2));
            match client.sleep(request).await {
                Ok(op) => {
                    acked.lock().unwrap().sleeps.push(op.into_inner().name);
                    break;
                }
                Err(status) => {
                    assert!(
                        matches!(
                            status.code(),
                            tonic::Code::Unavailable
                                | tonic::Code::DeadlineExceeded
                                | tonic::Code::Cancelled
                        ),
                        "a failing store is a state, not an error: {status:?}"
                    );
                    assert!(
                        tokio::time::Instant::now() < giving_up,
                        "never acknowledged"
                    );
                    // A client's pause before trying again.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// A client of the engine itself, creating [`Once`] operations the same
/// way.
async fn charger(
    engine: longrun::Engine,
    stop: watch::Receiver<bool>,
    acked: Arc<Mutex<Acknowledged>>,
) {
    let mut number = 0;
    while !*stop.borrow() {
        number += 1;
        let request_id = uuid::Uuid::now_v7().to_string().parse().unwrap();
        let giving_up = tokio::time::Instant::now() + PATIENCE;
        loop {
            let options = SubmitOptions {
                request_id: Some(request_id),
                ..SubmitOptions::default()
            };
            match engine.submit::<Once>(&Charge { number }, options).await {
                Ok(op) => {
                    acked.lock().unwrap().charges.push(op.id.name());
                    break;
                }
                Err(e) => {
                    assert_eq!(e.reason().as_str(), "STORAGE_UNAVAILABLE", "{e}");
                    assert!(
                        tokio::time::Instant::now() < giving_up,
                        "never acknowledged"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Whether `channel`'s server reported NOT_SERVING at some point, and
/// whether it is SERVING now: follows its health stream until the handle
/// is aborted (an open stream would hold the server's shutdown).
fn follow_health(channel: Channel) -> (watch::Receiver<(bool, bool)>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel((false, true));
    let following = tokio::spawn(async move {
        let mut stream = HealthClient::new(channel)
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health watch")
            .into_inner();
        while let Some(Ok(item)) = stream.next().await {
            let serving = item.status == ServingStatus::Serving as i32;
            tx.send_modify(|(seen_down, now)| {
                *seen_down |= !serving;
                *now = serving;
            });
        }
    });
    (rx, following)
}

/// Waits until the followed server is SERVING again, checks that it was
/// not at some point, and stops following it.
async fn served_again(followed: (watch::Receiver<(bool, bool)>, tokio::task::JoinHandle<()>)) {
    let (mut health, following) = followed;
    tokio::time::timeout(PATIENCE, health.wait_for(|(_, serving)| *serving))
        .await
        .expect("SERVING again")
        .unwrap();
    assert!(
        health.borrow().0,
        "NOT_SERVING while the store could not be written"
    );
    following.abort();
}

/// Waits until `name` is done, asking `channel` again and again; any
/// failure to answer (the store was out of reach a moment ago) is asked
/// again too.
async fn done(channel: Channel, name: String) -> Operation {
    let mut ops = OperationsClient::new(channel);
    loop {
        let answer = ops
            .wait_operation(WaitOperationRequest {
                name: name.clone(),
                timeout: Some(prost_types::Duration {
                    seconds: 5,
                    nanos: 0,
                }),
            })
            .await;
        match answer {
            Ok(op) if op.get_ref().done => return op.into_inner(),
            Ok(_) => {}
            Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
        }
    }
}

/// Checks what the clients were told against what the store holds:
/// every acknowledged operation exists and ends, and no operation of the
/// kind that is not retry-safe ran twice (or more than its one attempt).
async fn check_everything_ended(channel: Channel, acked: &Acknowledged, once: &Once) -> usize {
    let names: Vec<(String, bool)> = acked
        .sleeps
        .iter()
        .map(|n| (n.clone(), false))
        .chain(acked.charges.iter().map(|n| (n.clone(), true)))
        .collect();
    let mut waits = tokio::task::JoinSet::new();
    for (name, charge) in names {
        let channel = channel.clone();
        waits.spawn(async move { (done(channel, name).await, charge) });
    }
    let mut aborted = 0;
    while let Some(joined) = waits.join_next().await {
        let (op, charge) = joined.expect("a wait");
        if !charge {
            continue;
        }
        let meta = meta(&op);
        let id = OperationId::parse_name(&op.name).unwrap();
        let runs = once.runs.lock().unwrap().get(&id).copied().unwrap_or(0);
        assert!(runs <= 1, "{} ran {runs} times", op.name);
        match state(&op) {
            State::Succeeded => assert_eq!((meta.attempt, runs), (1, 1), "{}", op.name),
            // Interrupted while its node could not prove it held it: ended,
            // never run again.
            State::Failed => {
                assert_eq!(
                    crate::common::op_error(&op).code,
                    tonic::Code::Aborted as i32
                );
                aborted += 1;
            }
            other => panic!("{} ended {other:?}", op.name),
        }
    }
    aborted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_outage_loses_nothing_and_strands_nothing() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let proxy = Proxy::start(target_of(&db.url)).await;
    let url = proxy.url(&db.url);
    let dir = tempfile::tempdir().unwrap();
    let once = Once::default();
    let mut nodes = Vec::new();
    for name in ["a", "b"] {
        let mut cfg = config(&dir.path().join(name));
        cfg.backend = longrun::store::Backend::Postgres(url.clone());
        cfg.engine.node = name.into();
        cfg.engine.lease = LEASE;
        cfg.engine.shutdown_grace = Duration::from_secs(1);
        let mut registry = Registry::new();
        registry.register(once.clone());
        nodes.push(TestServer::start_registry(cfg, registry).await);
    }
    let channels = [nodes[0].channel().await, nodes[1].channel().await];
    let health = [
        follow_health(channels[0].clone()),
        follow_health(channels[1].clone()),
    ];

    let (stop, stopped) = watch::channel(false);
    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..6 {
        clients.spawn(sleeper(
            channels[i % 2].clone(),
            stopped.clone(),
            Arc::clone(&acked),
        ));
    }
    for node in &nodes {
        clients.spawn(charger(
            node.engine.clone(),
            stopped.clone(),
            Arc::clone(&acked),
        ));
    }
    // Under load: cut (as a restart does), up, stalled for longer than a
    // lease (so the nodes stop what they cannot prove is theirs), up, cut
    // again.
    let phase = |d: u64| tokio::time::sleep(Duration::from_millis(d));
    phase(1500).await;
    proxy.set(Link::Cut);
    phase(3000).await;
    proxy.set(Link::Up);
    phase(1500).await;
    proxy.set(Link::Stalled);
    phase(3000).await;
    proxy.set(Link::Up);
    phase(1500).await;
    proxy.set(Link::Cut);
    phase(2000).await;
    proxy.set(Link::Up);
    let back = tokio::time::Instant::now();
    stop.send_replace(true);
    while let Some(client) = clients.join_next().await {
        client.expect("a client");
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(acked.sleeps.len() > 100 && acked.charges.len() > 20);

    let aborted = tokio::time::timeout(
        PATIENCE,
        check_everything_ended(channels[0].clone(), &acked, &once),
    )
    .await
    .expect("every operation ended");
    let took = back.elapsed();
    eprintln!(
        "{} sleeps and {} charges acknowledged; {aborted} charges ended ABORTED; all ended {took:?} after the database was back",
        acked.sleeps.len(),
        acked.charges.len()
    );
    // Nothing stays RUNNING longer than a lease and a second after the
    // database is back, plus the time to run what queued meanwhile.
    assert!(took < LEASE + Duration::from_secs(6), "{took:?}");
    for followed in health {
        served_again(followed).await;
    }
    // Nothing is left running anywhere.
    let page = nodes[0]
        .engine
        .list(&longrun::model::Scope::All, "done = false", 1000, "")
        .await
        .unwrap();
    assert!(page.operations.is_empty(), "{:?}", page.operations.len());
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_disk_on_sled_loses_nothing_and_strands_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sled = SledStore::open(dir.path(), SyncMode::Always).unwrap();
    let mut stores = Stores::from_backend(sled);
    let faulty = Spy::wrap(&mut stores);
    let once = Once::default();
    let mut registry = Registry::new();
    registry.register(once.clone());
    let cfg: ServerConfig = config(dir.path());
    let server = TestServer::start_stores(cfg, stores, registry).await;
    let channel = server.channel().await;
    let health = follow_health(channel.clone());

    let (stop, stopped) = watch::channel(false);
    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..4 {
        clients.spawn(sleeper(
            channel.clone(),
            stopped.clone(),
            Arc::clone(&acked),
        ));
    }
    clients.spawn(charger(
        server.engine.clone(),
        stopped.clone(),
        Arc::clone(&acked),
    ));
    let phase = |d: u64| tokio::time::sleep(Duration::from_millis(d));
    phase(1000).await;
    faulty.fail(Fault::BeforeApplying);
    phase(1500).await;
    faulty.fail(Fault::None);
    phase(1000).await;
    faulty.fail(Fault::AfterApplying);
    phase(1500).await;
    faulty.fail(Fault::None);
    let back = tokio::time::Instant::now();
    stop.send_replace(true);
    while let Some(client) = clients.join_next().await {
        client.expect("a client");
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(acked.sleeps.len() > 50 && acked.charges.len() > 10);
    let aborted = tokio::time::timeout(
        PATIENCE,
        check_everything_ended(channel.clone(), &acked, &once),
    )
    .await
    .expect("every operation ended");
    // One process: nothing was interrupted, so nothing was given up.
    assert_eq!(aborted, 0);
    // Results that waited are stored within a second of the disk working.
    let took = back.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    served_again(health).await;
    let page = server
        .engine
        .list(&longrun::model::Scope::All, "done = false", 1000, "")
        .await
        .unwrap();
    assert!(page.operations.is_empty());
    server.stop().await;
}
