//! Recovery of attempts that a crash interrupted. The on-disk state a crash
//! leaves (a claim with no result) is written through the store directly,
//! then a server is started on it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::common::*;
use longrun::engine::{Registry, Task, TaskContext, TaskError, TaskPolicy};
use longrun::model::{Code, Edit, Holds, Limits, Operation, Payload, Tenant};
use longrun::pb::longrun::v1::{SleepRequest, State};
use longrun::store::{Applied, Created, OperationStore, SledStore, SyncMode, Write};

#[derive(Clone, PartialEq, prost::Message)]
struct ChargeRequest {
    #[prost(int64, tag = "1")]
    cents: i64,
}

impl prost::Name for ChargeRequest {
    const PACKAGE: &'static str = "test.v1";
    const NAME: &'static str = "ChargeRequest";
}

/// A kind with outside effects that must not happen twice.
struct Charge;

impl Task for Charge {
    type Request = ChargeRequest;
    type Response = ChargeRequest;
    const KIND: &'static str = "test.v1.Charge";

    fn policy(&self) -> TaskPolicy {
        TaskPolicy {
            retry_safe: false,
            ..TaskPolicy::default()
        }
    }

    async fn run(&self, _ctx: TaskContext, r: ChargeRequest) -> Result<ChargeRequest, TaskError> {
        Err(TaskError::new(
            Code::Internal,
            "MUST_NOT_RUN",
            format!("charged {}", r.cents),
        ))
    }
}

/// Leaves `op` as a crash would: claimed (running), no result.
async fn crashed_while_running(dir: &std::path::Path, op: Operation, claims: u32) -> String {
    let store: Arc<dyn OperationStore> = Arc::new(SledStore::open(dir, SyncMode::Always).unwrap());
    let one = |write| {
        let store = Arc::clone(&store);
        async move {
            store
                .commit(vec![write], SystemTime::now())
                .await
                .remove(0)
                .unwrap()
        }
    };
    let Applied::Created(Created::New(op)) = one(Write::Create(op)).await else {
        panic!("new");
    };
    for i in 0..claims {
        let edit = Edit::Claim {
            lease: None,
            by: None,
            holds: Holds::NONE,
        };
        let Applied::Updated(_) = one(Write::Update { id: op.id, edit }).await else {
            panic!("claimed");
        };
        if i + 1 < claims {
            // An earlier crash, recovered: an attempt that counts.
            let edit = Edit::RecoverOrphan(longrun::model::OrphanRetry::Allowed);
            one(Write::Update { id: op.id, edit }).await;
        }
    }
    store.flush().await.unwrap();
    op.id.name()
}

fn operation(kind: &str, request: Payload, max_attempts: u32) -> Operation {
    Operation::new(
        kind,
        request,
        None,
        [0; 32],
        Limits {
            timeout: Duration::from_secs(60),
            max_attempts,
        },
        Tenant::default_tenant(),
        SystemTime::now(),
    )
}

#[tokio::test]
async fn an_interrupted_attempt_of_an_unsafe_kind_ends_aborted() {
    let temp = tempfile::tempdir().unwrap();
    let request = Payload::pack(&ChargeRequest { cents: 500 });
    let name = crashed_while_running(temp.path(), operation(Charge::KIND, request, 3), 1).await;

    let mut registry = Registry::new();
    registry.register(Charge);
    let server = TestServer::start_registry(config(temp.path()), registry).await;
    let done = wait_done(&server, &name).await;
    assert_eq!(state(&done), State::Failed);
    let error = op_error(&done);
    assert_eq!(error.code, Code::Aborted.as_i32());
    assert!(error.message.contains("not safe to run twice"), "{error:?}");
    server.stop().await;
}

#[tokio::test]
async fn an_interrupted_retry_safe_attempt_runs_again() {
    let temp = tempfile::tempdir().unwrap();
    let request = Payload::pack(&SleepRequest::default());
    let name = crashed_while_running(
        temp.path(),
        operation("longrun.v1.Diagnostics.Sleep", request, 3),
        1,
    )
    .await;
    let server = TestServer::start_config(config(temp.path())).await;
    let done = wait_done(&server, &name).await;
    assert_eq!(state(&done), State::Succeeded);
    assert_eq!(meta(&done).attempt, 2);
    server.stop().await;
}

#[tokio::test]
async fn an_interrupted_last_attempt_ends_aborted() {
    let temp = tempfile::tempdir().unwrap();
    let request = Payload::pack(&SleepRequest::default());
    let name = crashed_while_running(
        temp.path(),
        operation("longrun.v1.Diagnostics.Sleep", request, 2),
        2,
    )
    .await;
    let server = TestServer::start_config(config(temp.path())).await;
    let done = wait_done(&server, &name).await;
    assert_eq!(op_error(&done).code, Code::Aborted.as_i32());
    assert!(op_error(&done).message.contains("no attempts are left"));
    server.stop().await;
}
