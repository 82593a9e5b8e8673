//! Attacks on authentication and tenant isolation, over real gRPC: every
//! RPC against every kind of caller, probes across tenants, and the
//! per-tenant quotas.

use std::time::Duration;

use crate::common::*;
use longrun::ServerConfig;
use longrun::pb::google::longrunning::operations_client::OperationsClient;
use longrun::pb::google::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
    Operation, WaitOperationRequest,
};
use longrun::pb::longrun::v1::batches_client::BatchesClient;
use longrun::pb::longrun::v1::bulk_client::BulkClient;
use longrun::pb::longrun::v1::diagnostics_client::DiagnosticsClient;
use longrun::pb::longrun::v1::notifications_client::NotificationsClient;
use longrun::pb::longrun::v1::operation_watcher_client::OperationWatcherClient;
use longrun::pb::longrun::v1::report_service_client::ReportServiceClient;
use longrun::pb::longrun::v1::{
    CreateBatchRequest, CreateReportRequest, GetReportRequest, ImportOrdersRequest,
    ListDeliveriesRequest, MatchingRequest, ReadReportRequest, Report, RetryOperationRequest,
    SleepRequest, State, WatchOperationRequest,
};
use prost::Message;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

const MONTH: &str = "2024-06";

/// A server with an auth file and four principals: a reader and a writer of
/// tenant acme, a writer of tenant globex, and an admin.
struct World {
    server: TestServer,
    reader: Person,
    writer: Person,
    other: Person,
    admin: Person,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Nobody,
    BadToken,
    Reader,
    Writer,
    OtherTenant,
    Admin,
}

const EVERYONE: [Who; 6] = [
    Who::Nobody,
    Who::BadToken,
    Who::Reader,
    Who::Writer,
    Who::OtherTenant,
    Who::Admin,
];

impl World {
    async fn start(tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let reader = Person::new("rita", "acme", "reader");
        let writer = Person::new("alice", "acme", "writer");
        let other = Person::new("gary", "globex", "writer");
        let admin = Person::new("root", "ops", "admin");
        let auth = auth_toml(&[&reader, &writer, &other, &admin], "");
        let server = TestServer::start_with_auth(&auth, tweak).await;
        Self {
            server,
            reader,
            writer,
            other,
            admin,
        }
    }

    fn token(&self, who: Who) -> Option<&str> {
        match who {
            Who::Nobody => None,
            Who::BadToken => Some("lr_this-token-was-never-issued"),
            Who::Reader => self.reader.token(),
            Who::Writer => self.writer.token(),
            Who::OtherTenant => self.other.token(),
            Who::Admin => self.admin.token(),
        }
    }

    async fn ops(&self, who: Who) -> OperationsClient<Authed> {
        OperationsClient::new(self.server.authed(self.token(who)).await)
    }

    async fn diagnostics(&self, who: Who) -> DiagnosticsClient<Authed> {
        DiagnosticsClient::new(self.server.authed(self.token(who)).await)
    }

    async fn reports(&self, who: Who) -> ReportServiceClient<Authed> {
        ReportServiceClient::new(self.server.authed(self.token(who)).await)
    }

    async fn sleep(&self, who: Who, request: SleepRequest) -> Result<Operation, tonic::Status> {
        self.diagnostics(who)
            .await
            .sleep(request)
            .await
            .map(|r| r.into_inner())
    }

    async fn wait_done(&self, name: &str) -> Operation {
        wait_done_as(&self.server, self.admin.token(), name).await
    }

    /// A finished zero-length Sleep of `who`'s tenant.
    async fn finished_sleep(&self, who: Who) -> String {
        let op = self.sleep(who, sleep(Duration::ZERO, 1)).await.unwrap();
        self.wait_done(&op.name).await.name
    }

    async fn import(&self, who: Who, csv: &str) -> Result<Operation, tonic::Status> {
        let message = ImportOrdersRequest {
            csv_chunk: csv.as_bytes().to_vec(),
            ..Default::default()
        };
        self.reports(who)
            .await
            .import_orders(tokio_stream::iter(vec![message]))
            .await
            .map(|r| r.into_inner())
    }

    /// A finished report of `who`'s tenant for MONTH.
    async fn report(&self, who: Who) -> Report {
        let op = self
            .reports(who)
            .await
            .create_report(CreateReportRequest {
                month: MONTH.into(),
                format: longrun::pb::longrun::v1::ReportFormat::Csv as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let done = self.wait_done(&op.name).await;
        assert_eq!(state(&done), State::Succeeded, "{done:?}");
        match done.result {
            Some(longrun::pb::google::longrunning::operation::Result::Response(any)) => {
                Report::decode(any.value.as_slice()).unwrap()
            }
            other => panic!("no report: {other:?}"),
        }
    }

    async fn list(&self, who: Who, filter: &str) -> Vec<String> {
        self.ops(who)
            .await
            .list_operations(ListOperationsRequest {
                filter: filter.into(),
                page_size: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .operations
            .into_iter()
            .map(|op| op.name)
            .collect()
    }
}

fn code<T>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => {
            // Every refusal explains itself.
            let details = status.get_error_details();
            let info = details
                .error_info()
                .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
            assert_eq!(info.domain, "longrun");
            status.code()
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Rpc {
    Get,
    List,
    Wait,
    Watch,
    Cancel,
    Delete,
    Sleep,
    ImportOrders,
    CreateReport,
    GetReport,
    ReadReport,
    ListDeliveries,
    Health,
    Reflection,
    CreateBatch,
    CancelMatching,
    RetryOperation,
}

/// Targets owned by the writer (tenant acme).
struct Targets {
    done: String,
    running: String,
    report: String,
}

async fn call(world: &World, targets: &Targets, rpc: Rpc, who: Who) -> Code {
    let channel = world.server.authed(world.token(who)).await;
    let name = || targets.done.clone();
    match rpc {
        Rpc::Get => code(
            world
                .ops(who)
                .await
                .get_operation(GetOperationRequest { name: name() })
                .await,
        ),
        Rpc::List => code(
            world
                .ops(who)
                .await
                .list_operations(ListOperationsRequest::default())
                .await,
        ),
        Rpc::Wait => code(
            world
                .ops(who)
                .await
                .wait_operation(WaitOperationRequest {
                    name: name(),
                    timeout: None,
                })
                .await,
        ),
        Rpc::Watch => code(
            OperationWatcherClient::new(channel)
                .watch_operation(WatchOperationRequest { name: name() })
                .await,
        ),
        Rpc::Cancel => code(
            world
                .ops(who)
                .await
                .cancel_operation(CancelOperationRequest {
                    name: targets.running.clone(),
                })
                .await,
        ),
        Rpc::Delete => {
            // Each caller gets a target of its own to delete.
            let target = world.finished_sleep(Who::Writer).await;
            code(
                world
                    .ops(who)
                    .await
                    .delete_operation(DeleteOperationRequest { name: target })
                    .await,
            )
        }
        Rpc::Sleep => code(world.sleep(who, sleep(Duration::ZERO, 1)).await),
        Rpc::ImportOrders => code(
            world
                .import(
                    who,
                    "order_id,created_at,customer_id,status,amount_cents\nz,2024-06-09T00:00:00Z,c,placed,1\n",
                )
                .await,
        ),
        Rpc::CreateReport => code(
            world
                .reports(who)
                .await
                .create_report(CreateReportRequest {
                    month: MONTH.into(),
                    format: longrun::pb::longrun::v1::ReportFormat::Csv as i32,
                    ..Default::default()
                })
                .await,
        ),
        Rpc::GetReport => code(
            world
                .reports(who)
                .await
                .get_report(GetReportRequest {
                    name: targets.report.clone(),
                })
                .await,
        ),
        Rpc::ReadReport => code(
            world
                .reports(who)
                .await
                .read_report(ReadReportRequest {
                    name: targets.report.clone(),
                })
                .await,
        ),
        Rpc::CreateBatch => code(
            BatchesClient::new(channel)
                .create_batch(CreateBatchRequest::default())
                .await,
        ),
        Rpc::CancelMatching => code(
            BulkClient::new(channel)
                .cancel_matching(MatchingRequest {
                    filter: "kind = \"nothing.at.all\"".into(),
                    ..Default::default()
                })
                .await,
        ),
        Rpc::RetryOperation => code(
            BulkClient::new(channel)
                .retry_operation(RetryOperationRequest { name: name() })
                .await,
        ),
        Rpc::ListDeliveries => code(
            NotificationsClient::new(channel)
                .list_deliveries(ListDeliveriesRequest { name: name() })
                .await,
        ),
        Rpc::Health => code(
            HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await,
        ),
        Rpc::Reflection => {
            use tonic_reflection::pb::v1::ServerReflectionRequest;
            use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut client = ServerReflectionClient::new(channel);
            match client
                .server_reflection_info(tokio_stream::iter(vec![request]))
                .await
            {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    code(stream.message().await)
                }
                Err(status) => status.code(),
            }
        }
    }
}

#[tokio::test]
async fn every_rpc_answers_every_kind_of_caller_with_the_exact_code() {
    let world = World::start(|_| {}).await;
    let done = world.finished_sleep(Who::Writer).await;
    let running = world
        .sleep(Who::Writer, sleep(Duration::from_secs(3600), 1))
        .await
        .unwrap()
        .name;
    let report = world.report(Who::Writer).await.name;
    let targets = Targets {
        done,
        running,
        report,
    };

    use Code::{FailedPrecondition, NotFound, Ok, PermissionDenied, Unauthenticated as Unauth};
    // Columns: nobody, bad token, reader, writer, another tenant's writer,
    // admin.
    let read = [Unauth, Unauth, Ok, Ok, NotFound, Ok];
    let change = [Unauth, Unauth, PermissionDenied, Ok, NotFound, Ok];
    let create = [Unauth, Unauth, PermissionDenied, Ok, Ok, Ok];
    let open = [Ok; 6];
    let matrix = [
        (Rpc::Get, read),
        (Rpc::List, [Unauth, Unauth, Ok, Ok, Ok, Ok]),
        (Rpc::Wait, read),
        (Rpc::Watch, read),
        (Rpc::ListDeliveries, read),
        (Rpc::GetReport, read),
        (Rpc::ReadReport, read),
        (Rpc::Cancel, change),
        (Rpc::Delete, change),
        (Rpc::Sleep, create),
        (Rpc::ImportOrders, create),
        (Rpc::CreateReport, create),
        (Rpc::Health, open),
        (Rpc::Reflection, open),
        (Rpc::CreateBatch, create),
        (Rpc::CancelMatching, create),
        // The target succeeded: those who may reach it are told it cannot
        // be retried.
        (
            Rpc::RetryOperation,
            [
                Unauth,
                Unauth,
                PermissionDenied,
                FailedPrecondition,
                NotFound,
                FailedPrecondition,
            ],
        ),
    ];
    let mut wrong = Vec::new();
    for (rpc, expected) in matrix {
        for (who, want) in EVERYONE.into_iter().zip(expected) {
            let got = call(&world, &targets, rpc, who).await;
            if got != want {
                wrong.push(format!("{rpc:?} as {who:?}: got {got:?}, want {want:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn refusals_say_why_without_echoing_the_token() {
    let world = World::start(|_| {}).await;
    let secret = "lr_a-token-nobody-was-given";
    let mut ops = OperationsClient::new(world.server.authed(Some(secret)).await);
    let status = ops
        .list_operations(ListOperationsRequest::default())
        .await
        .unwrap_err();
    assert_status(&status, Code::Unauthenticated, "TOKEN_INVALID", None);
    assert!(!status.message().contains(secret));

    let status = world
        .sleep(Who::Reader, sleep(Duration::ZERO, 1))
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "ROLE_TOO_LOW", None);
    let info = status.get_error_details().error_info().unwrap().clone();
    assert_eq!(info.metadata["required_role"], "writer");
    assert_eq!(info.metadata["role"], "reader");

    // A malformed authorization header is a wrong token, not a missing one.
    let mut request = tonic::Request::new(ListOperationsRequest::default());
    request.metadata_mut().insert(
        "authorization",
        "Basic YWxhZGRpbjpvcGVuc2VzYW1l".parse().unwrap(),
    );
    let status = world
        .server
        .operations()
        .await
        .list_operations(request)
        .await
        .unwrap_err();
    assert_status(&status, Code::Unauthenticated, "TOKEN_INVALID", None);
}

#[tokio::test]
async fn list_shows_only_the_callers_tenant_and_admins_may_filter_by_tenant() {
    let world = World::start(|_| {}).await;
    let a1 = world.finished_sleep(Who::Writer).await;
    let a2 = world.finished_sleep(Who::Writer).await;
    let g1 = world.finished_sleep(Who::OtherTenant).await;

    let mut acme = world.list(Who::Writer, "").await;
    acme.sort();
    let mut expected = vec![a1.clone(), a2.clone()];
    expected.sort();
    assert_eq!(acme, expected);
    assert_eq!(world.list(Who::Reader, "").await.len(), 2);
    assert_eq!(world.list(Who::OtherTenant, "").await, vec![g1.clone()]);
    assert_eq!(world.list(Who::Admin, "").await.len(), 3);
    assert_eq!(
        world.list(Who::Admin, "tenant = \"globex\"").await,
        vec![g1.clone()]
    );
    let globex_op = world
        .ops(Who::Admin)
        .await
        .get_operation(GetOperationRequest { name: g1.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta(&globex_op).tenant, "globex");
    // A tenant filter cannot reach past the caller's own tenant.
    assert!(
        world
            .list(Who::OtherTenant, "tenant = acme")
            .await
            .is_empty()
    );

    // A page token is bound to the caller's tenant too.
    let page = world
        .ops(Who::Writer)
        .await
        .list_operations(ListOperationsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!page.next_page_token.is_empty());
    let status = world
        .ops(Who::OtherTenant)
        .await
        .list_operations(ListOperationsRequest {
            page_size: 1,
            page_token: page.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("page_token"),
    );
}

#[tokio::test]
async fn request_ids_are_scoped_per_tenant() {
    let world = World::start(|_| {}).await;
    let request = SleepRequest {
        request_id: "6f1c2b0e-8a7d-4c1e-9f3a-2b5d7e9c1a40".into(),
        ..sleep(Duration::ZERO, 1)
    };
    let acme = world.sleep(Who::Writer, request.clone()).await.unwrap();
    let globex = world
        .sleep(Who::OtherTenant, request.clone())
        .await
        .unwrap();
    assert_ne!(acme.name, globex.name, "tenants must not share request_ids");
    // Each tenant's retry still finds its own first operation.
    assert_eq!(
        world
            .sleep(Who::Writer, request.clone())
            .await
            .unwrap()
            .name,
        acme.name
    );
    assert_eq!(
        world.sleep(Who::OtherTenant, request).await.unwrap().name,
        globex.name
    );
}

#[tokio::test]
async fn orders_and_reports_are_apart_per_tenant() {
    let world = World::start(|_| {}).await;
    let header = "order_id,created_at,customer_id,status,amount_cents\n";
    let acme = world
        .import(
            Who::Writer,
            &format!("{header}o1,2024-06-01T00:00:00Z,c,placed,100\no2,2024-06-02T00:00:00Z,c,placed,200\n"),
        )
        .await
        .unwrap();
    world.wait_done(&acme.name).await;
    // Same order_id in another tenant: a different order, not a
    // replacement.
    let globex = world
        .import(
            Who::OtherTenant,
            &format!("{header}o1,2024-06-03T00:00:00Z,d,placed,7\n"),
        )
        .await
        .unwrap();
    world.wait_done(&globex.name).await;

    let acme_report = world.report(Who::Writer).await;
    assert_eq!(
        (acme_report.order_count, acme_report.total_amount_cents),
        (2, 300)
    );
    let globex_report = world.report(Who::OtherTenant).await;
    assert_eq!(
        (globex_report.order_count, globex_report.total_amount_cents),
        (1, 7)
    );

    // Nor can one tenant read the other's report file.
    let status = world
        .reports(Who::OtherTenant)
        .await
        .read_report(ReadReportRequest {
            name: acme_report.name.clone(),
        })
        .await
        .unwrap_err();
    assert_status(&status, Code::NotFound, "NOT_FOUND", None);
}

#[tokio::test]
async fn creates_are_rate_limited_per_tenant_with_retry_info() {
    let world = World::start(|c| {
        c.engine.quotas.creates_per_second = std::num::NonZeroU32::new(1);
        c.engine.quotas.create_burst = std::num::NonZeroU32::new(2);
    })
    .await;
    world
        .sleep(Who::Writer, sleep(Duration::ZERO, 1))
        .await
        .unwrap();
    world
        .sleep(Who::Writer, sleep(Duration::ZERO, 1))
        .await
        .unwrap();
    let status = world
        .sleep(Who::Writer, sleep(Duration::ZERO, 1))
        .await
        .unwrap_err();
    assert_status(&status, Code::ResourceExhausted, "RATE_LIMITED", None);
    let retry = status
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(1),
        "{retry:?}"
    );
    // Another tenant has its own bucket.
    world
        .sleep(Who::OtherTenant, sleep(Duration::ZERO, 1))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_tenant_may_not_fill_the_queue_or_open_unbounded_watches() {
    let world = World::start(|c| {
        one_sleep_at_a_time(c);
        c.engine.quotas.max_queued = Some(1);
        c.engine.quotas.max_watches = Some(1);
    })
    .await;
    let long = sleep(Duration::from_secs(3600), 1);
    let running = world.sleep(Who::Writer, long.clone()).await.unwrap();
    // Once the one worker holds it, one more may wait, and no third.
    let mut watcher = OperationWatcherClient::new(world.server.authed(world.writer.token()).await);
    let mut stream = watcher
        .watch_operation(WatchOperationRequest {
            name: running.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(PATIENCE, async {
        while let Some(op) = stream.message().await.unwrap() {
            if state(&op) == State::Running {
                return;
            }
        }
    })
    .await
    .expect("running in time");
    world.sleep(Who::Writer, long.clone()).await.unwrap();
    let status = world.sleep(Who::Writer, long.clone()).await.unwrap_err();
    assert_status(&status, Code::ResourceExhausted, "TENANT_QUEUE_FULL", None);
    world.sleep(Who::OtherTenant, long).await.unwrap();

    // The open stream above is acme's one watch.
    let mut second = OperationWatcherClient::new(world.server.authed(world.writer.token()).await);
    let status = second
        .watch_operation(WatchOperationRequest {
            name: running.name.clone(),
        })
        .await
        .unwrap_err();
    assert_status(&status, Code::ResourceExhausted, "TOO_MANY_WATCHES", None);
    // A long poll holds a subscription just the same.
    let status = world
        .ops(Who::Writer)
        .await
        .wait_operation(WaitOperationRequest {
            name: running.name.clone(),
            timeout: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
        })
        .await
        .unwrap_err();
    assert_status(&status, Code::ResourceExhausted, "TOO_MANY_WATCHES", None);
    // Closing it gives the place back.
    drop(stream);
    tokio::time::timeout(PATIENCE, async {
        loop {
            match second
                .watch_operation(WatchOperationRequest {
                    name: running.name.clone(),
                })
                .await
            {
                Ok(_) => return,
                Err(status) if status.code() == Code::ResourceExhausted => {
                    tokio::task::yield_now().await
                }
                Err(status) => panic!("{status:?}"),
            }
        }
    })
    .await
    .expect("the watch place came back");
}

#[tokio::test]
async fn a_tenant_may_store_only_so_many_orders() {
    let world = World::start(|c| c.max_orders_per_tenant = Some(3)).await;
    let header = "order_id,created_at,customer_id,status,amount_cents\n";
    let rows = |ids: &[&str]| {
        let mut csv = header.to_owned();
        for id in ids {
            csv.push_str(&format!("{id},2024-06-01T00:00:00Z,c,placed,1\n"));
        }
        csv
    };
    let import = |ids: &'static [&'static str], who: Who| {
        let world = &world;
        let csv = rows(ids);
        async move {
            let op = world.import(who, &csv).await.unwrap();
            world.wait_done(&op.name).await
        }
    };
    assert_eq!(
        state(&import(&["a", "b"], Who::Writer).await),
        State::Succeeded
    );
    // Two more would pass the limit: the import stops, keeping nothing of
    // the batch that would pass it.
    let crossed = import(&["c", "d"], Who::Writer).await;
    assert_eq!(
        op_error(&crossed).code,
        Code::ResourceExhausted as i32,
        "{crossed:?}"
    );
    assert_eq!(state(&import(&["c"], Who::Writer).await), State::Succeeded);
    // At the limit: new orders are refused, corrections of stored ones are
    // not (they add nothing).
    let full = import(&["e"], Who::Writer).await;
    assert_eq!(
        op_error(&full).code,
        Code::ResourceExhausted as i32,
        "{full:?}"
    );
    assert_eq!(
        state(&import(&["a", "b", "c"], Who::Writer).await),
        State::Succeeded
    );
    // Another tenant is not affected.
    assert_eq!(
        state(&import(&["a", "b", "c"], Who::OtherTenant).await),
        State::Succeeded
    );
}

#[tokio::test]
async fn a_connection_that_says_nothing_is_dropped() {
    let world = World::start(|c| c.handshake_timeout = Duration::from_millis(200)).await;
    // Silent, a few bytes of HTTP/2 or of an HTTP/1.1 method then silence,
    // and not HTTP at all (a TLS hello on the plain port). A whole HTTP/1.1
    // request is served: that is the HTTP/JSON face.
    for opening in [&b""[..], b"PRI * HT", b"GET", b"\x16\x03\x01\x02\x00 hello"] {
        let mut socket = tokio::net::TcpStream::connect(world.server.addr)
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut socket, opening)
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        // The server closes it without a word: the read ends (EOF, or a
        // reset) instead of waiting forever.
        let read = tokio::time::timeout(
            PATIENCE,
            tokio::io::AsyncReadExt::read(&mut socket, &mut buf),
        )
        .await
        .expect("the server closed the connection in time");
        assert!(matches!(read, Ok(0) | Err(_)), "{opening:?}: {read:?}");
    }
    // Real clients are not affected.
    assert_eq!(world.list(Who::Writer, "").await.len(), 0);
}

#[tokio::test]
async fn a_stalled_upload_is_abandoned_and_leaves_nothing_behind() {
    let world = World::start(|c| c.upload_idle_timeout = Duration::from_millis(200)).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(ImportOrdersRequest {
        csv_chunk: b"order_id,created_at,customer_id,status,amount_cents\n".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    // The stream stays open (tx lives) but nothing more comes.
    let status = tokio::time::timeout(
        PATIENCE,
        world
            .reports(Who::Writer)
            .await
            .import_orders(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .expect("the server gave up on the upload in time")
    .unwrap_err();
    assert_status(&status, Code::DeadlineExceeded, "UPLOAD_STALLED", None);
    drop(tx);
    let staged = std::fs::read_dir(world.server.data_dir.join("uploads"))
        .unwrap()
        .count();
    assert_eq!(staged, 0, "the abandoned upload left a file");
}
