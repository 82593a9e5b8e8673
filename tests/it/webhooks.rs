//! Webhooks end to end: a real HTTP receiver on 127.0.0.1 that checks every
//! signature, scripted to fail in the ways receivers do.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::common::*;
use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, StatusCode};
use longrun::engine::OperationId;
use longrun::pb::longrun::v1::delivery::DeliveryState;
use longrun::pb::longrun::v1::notifications_client::NotificationsClient;
use longrun::pb::longrun::v1::{
    Delivery, ListDeliveriesRequest, NotificationConfig, SleepRequest, State,
};
use longrun::store::Change;
use longrun::webhook::{Secret, VerifyError, verify};
use tokio::sync::mpsc;
use tonic::Code;

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
    json: serde_json::Value,
}

struct Receiver {
    url: String,
    posts: mpsc::UnboundedReceiver<Received>,
    script: Arc<Mutex<VecDeque<u16>>>,
    _server: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Shared {
    secret: Secret,
    script: Arc<Mutex<VecDeque<u16>>>,
    tx: mpsc::UnboundedSender<Received>,
}

async fn receive(
    AxumState(shared): AxumState<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let received = Received {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        json: serde_json::from_slice(&body).expect("JSON body"),
        body: body.to_vec(),
    };
    // Every delivery must verify with the server's secret.
    verify(
        std::slice::from_ref(&shared.secret),
        &received.id,
        &received.timestamp,
        &received.signature,
        &received.body,
        SystemTime::now(),
        Duration::from_secs(300),
    )
    .expect("a valid signature");
    let status = shared.script.lock().unwrap().pop_front().unwrap_or(200);
    let _ = shared.tx.send(received);
    StatusCode::from_u16(status).unwrap()
}

async fn receiver(secret: &Secret, script: &[u16]) -> Receiver {
    let (tx, posts) = mpsc::unbounded_channel();
    let script = Arc::new(Mutex::new(script.iter().copied().collect()));
    let shared = Shared {
        secret: secret.clone(),
        script: Arc::clone(&script),
        tx,
    };
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Receiver {
        url,
        posts,
        script,
        _server: server,
    }
}

impl Receiver {
    async fn next(&mut self) -> Received {
        tokio::time::timeout(PATIENCE, self.posts.recv())
            .await
            .expect("a delivery in time")
            .expect("receiver open")
    }
}

fn webhook_config(c: &mut longrun::ServerConfig, secret: &Secret, schedule: &[u64]) {
    c.webhooks.secrets = vec![secret.clone()];
    c.webhooks.allow_private = true;
    c.webhooks.schedule = schedule
        .iter()
        .map(|ms| Duration::from_millis(*ms))
        .collect();
}

fn notify(url: &str, events: &[State]) -> SleepRequest {
    SleepRequest {
        notification: Some(NotificationConfig {
            callback_url: url.to_owned(),
            events: events.iter().map(|s| *s as i32).collect(),
        }),
        ..sleep(Duration::ZERO, 1)
    }
}

/// Waits until the operation's deliveries satisfy `done`.
async fn deliveries_when(
    server: &TestServer,
    name: &str,
    done: impl Fn(&[Delivery]) -> bool,
) -> Vec<Delivery> {
    let id = OperationId::parse_name(name).unwrap();
    let mut feed = server.stores.operations.subscribe();
    let mut client = NotificationsClient::new(server.channel().await);
    tokio::time::timeout(PATIENCE, async {
        loop {
            let list = client
                .list_deliveries(ListDeliveriesRequest { name: name.into() })
                .await
                .unwrap()
                .into_inner()
                .deliveries;
            if done(&list) {
                return list;
            }
            // Wait for the next recorded attempt of this operation.
            loop {
                match feed.recv().await {
                    Ok(Change::Delivery(op)) if op == id => break,
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
        }
    })
    .await
    .expect("deliveries reached the expected state")
}

fn state_of(d: &Delivery) -> DeliveryState {
    DeliveryState::try_from(d.state).unwrap()
}

#[tokio::test]
async fn a_finished_operation_is_posted_signed_in_proto_json() {
    let secret = Secret::generate();
    let mut hook = receiver(&secret, &[]).await;
    let server = TestServer::start_with(|c| webhook_config(c, &secret, &[10, 10])).await;
    let op = start_sleep(&server, notify(&hook.url, &[])).await;
    let got = hook.next().await;
    assert!(got.id.starts_with("msg_"));
    assert_eq!(got.json["type"], "operation.succeeded");
    assert!(got.json["timestamp"].as_str().unwrap().ends_with('Z'));
    let data = &got.json["data"];
    assert_eq!(data["name"], op.name);
    assert_eq!(data["done"], true);
    assert_eq!(data["metadata"]["state"], "SUCCEEDED");
    assert_eq!(
        data["response"]["@type"],
        "type.googleapis.com/longrun.v1.SleepResponse"
    );

    let list = deliveries_when(&server, &op.name, |d| {
        d.len() == 1 && state_of(&d[0]) == DeliveryState::Delivered
    })
    .await;
    assert_eq!(list[0].attempts, 1);
    assert_eq!(list[0].last_status_code, 200);
    assert_eq!(list[0].id, got.id);
    server.stop().await;
}

#[tokio::test]
async fn failures_are_retried_with_the_same_id_until_success() {
    let secret = Secret::generate();
    let mut hook = receiver(&secret, &[500, 503, 200]).await;
    let server = TestServer::start_with(|c| webhook_config(c, &secret, &[10, 20, 30])).await;
    let op = start_sleep(&server, notify(&hook.url, &[])).await;
    let ids: Vec<String> = [hook.next().await, hook.next().await, hook.next().await]
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    let list = deliveries_when(&server, &op.name, |d| {
        d.len() == 1 && state_of(&d[0]) == DeliveryState::Delivered
    })
    .await;
    assert_eq!(list[0].attempts, 3);
    server.stop().await;
}

#[tokio::test]
async fn a_delivery_gives_up_after_the_last_attempt_and_says_why() {
    let secret = Secret::generate();
    let mut hook = receiver(&secret, &[500, 500, 500, 500]).await;
    let server = TestServer::start_with(|c| webhook_config(c, &secret, &[10, 10])).await;
    let op = start_sleep(&server, notify(&hook.url, &[])).await;
    for _ in 0..3 {
        hook.next().await;
    }
    let list = deliveries_when(&server, &op.name, |d| {
        d.len() == 1 && state_of(&d[0]) == DeliveryState::Failed
    })
    .await;
    assert_eq!(list[0].attempts, 3);
    assert_eq!(list[0].last_status_code, 500);
    assert!(list[0].last_error.contains("500"), "{:?}", list[0]);
    assert!(list[0].next_attempt_time.is_none());
    // No fourth attempt was made.
    assert_eq!(hook.script.lock().unwrap().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn gone_disables_the_callback() {
    let secret = Secret::generate();
    let mut hook = receiver(&secret, &[410]).await;
    let server = TestServer::start_with(|c| webhook_config(c, &secret, &[10, 10])).await;
    let op = start_sleep(&server, notify(&hook.url, &[])).await;
    hook.next().await;
    let list = deliveries_when(&server, &op.name, |d| {
        d.len() == 1 && state_of(&d[0]) == DeliveryState::Disabled
    })
    .await;
    assert_eq!(list[0].attempts, 1);
    assert_eq!(list[0].last_status_code, 410);
    server.stop().await;
}

#[tokio::test]
async fn every_state_change_can_be_asked_for() {
    let secret = Secret::generate();
    let mut hook = receiver(&secret, &[]).await;
    let server = TestServer::start_with(|c| webhook_config(c, &secret, &[10])).await;
    let request = notify(
        &hook.url,
        &[State::Queued, State::Running, State::Succeeded],
    );
    let op = start_sleep(&server, request).await;
    let mut types = Vec::new();
    for _ in 0..3 {
        types.push(hook.next().await.json["type"].as_str().unwrap().to_owned());
    }
    types.sort();
    assert_eq!(
        types,
        [
            "operation.queued",
            "operation.running",
            "operation.succeeded"
        ]
    );
    deliveries_when(&server, &op.name, |d| {
        d.len() == 3 && d.iter().all(|x| state_of(x) == DeliveryState::Delivered)
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn a_pending_delivery_survives_a_restart() {
    let secret = Secret::generate();
    let mut hook = receiver(&secret, &[500]).await;
    let temp = tempfile::tempdir().unwrap();
    let mut cfg = config(temp.path());
    webhook_config(&mut cfg, &secret, &[1500]);
    let server = TestServer::start_config(cfg.clone()).await;
    let op = start_sleep(&server, notify(&hook.url, &[])).await;
    let first = hook.next().await;
    // The retry is more than a second away; stop before it.
    deliveries_when(&server, &op.name, |d| {
        d.first().is_some_and(|x| x.attempts == 1)
    })
    .await;
    server.stop().await;

    let server = TestServer::start_config(cfg).await;
    let second = hook.next().await;
    assert_eq!(second.id, first.id);
    let list = deliveries_when(&server, &op.name, |d| {
        d.len() == 1 && state_of(&d[0]) == DeliveryState::Delivered
    })
    .await;
    assert_eq!(list[0].attempts, 2);
    server.stop().await;
}

#[tokio::test]
async fn callbacks_into_private_networks_are_refused() {
    let server = TestServer::start().await;
    let mut diag = server.diagnostics().await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.0.0.7/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest",
        // IPv6 ranges that carry a private IPv4 address, and reserved ones.
        "http://[64:ff9b::7f00:1]/hook",
        "http://[2002:a00:1::1]/hook",
        "http://[::7f00:1]/hook",
        "http://[fec0::1]/hook",
        "http://198.18.0.1/hook",
        "http://240.0.0.1/hook",
        "ftp://example.com/hook",
        "not a url",
        "",
    ] {
        let err = diag.sleep(notify(url, &[])).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{url}: {err:?}");
        assert_status(
            &err,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            Some("notification.callback_url"),
        );
        // A name's private address is never told back.
        if url.contains("localhost") {
            assert!(!err.message().contains("127.0.0.1"), "{}", err.message());
            assert!(!err.message().contains("::1"), "{}", err.message());
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn a_tampered_body_fails_verification() {
    let secret = Secret::generate();
    let mut hook = receiver(&secret, &[]).await;
    let server = TestServer::start_with(|c| webhook_config(c, &secret, &[10])).await;
    start_sleep(&server, notify(&hook.url, &[])).await;
    let got = hook.next().await;
    let now = SystemTime::now();
    let tolerance = Duration::from_secs(300);
    assert_eq!(
        verify(
            std::slice::from_ref(&secret),
            &got.id,
            &got.timestamp,
            &got.signature,
            &got.body,
            now,
            tolerance
        ),
        Ok(())
    );
    let mut tampered = got.body.clone();
    let at = tampered.iter().position(|b| *b == b't').unwrap();
    tampered[at] = b'T';
    assert_eq!(
        verify(
            std::slice::from_ref(&secret),
            &got.id,
            &got.timestamp,
            &got.signature,
            &tampered,
            now,
            tolerance
        ),
        Err(VerifyError::NoMatch)
    );

    // The CLI agrees.
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    let bad = dir.path().join("bad.json");
    std::fs::write(&good, &got.body).unwrap();
    std::fs::write(&bad, &tampered).unwrap();
    for (file, code) in [(&good, 0), (&bad, 1)] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_longrun"))
            .args(["webhook", "verify", "--secret", &secret.to_string()])
            .args([
                "--id",
                &got.id,
                "--timestamp",
                &got.timestamp,
                "--signature",
                &got.signature,
            ])
            .arg("--body")
            .arg(file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{out:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_tenant_with_its_own_secret_gets_deliveries_signed_with_it() {
    let server_secret = Secret::generate();
    let acme_secret = Secret::generate();
    let acme = Person::new("alice", "acme", "writer");
    let globex = Person::new("gary", "globex", "writer");
    let auth = auth_toml(
        &[&acme, &globex],
        &format!("[tenant.acme]\nwebhook_secrets = [\"{acme_secret}\"]\n"),
    );
    let server =
        TestServer::start_with_auth(&auth, |c| webhook_config(c, &server_secret, &[10])).await;
    // globex has no secret of its own in the auth file: its deliveries are
    // signed with one derived for it from the server's.
    let globex_secret = longrun::webhook::tenant_secrets(
        std::slice::from_ref(&server_secret),
        &longrun::model::Tenant::named("globex").unwrap(),
    )
    .remove(0);
    let mut acme_hooks = receiver(&acme_secret, &[]).await;
    let mut globex_hooks = receiver(&globex_secret, &[]).await;

    let sleep_as = |person: &Person, url: &str| {
        let token = person.token().map(str::to_owned);
        let request = notify(url, &[]);
        let server = &server;
        async move {
            longrun::pb::longrun::v1::diagnostics_client::DiagnosticsClient::new(
                server.authed(token.as_deref()).await,
            )
            .sleep(request)
            .await
            .unwrap()
        }
    };
    sleep_as(&acme, &acme_hooks.url).await;
    sleep_as(&globex, &globex_hooks.url).await;

    // Each receiver checks its own secret; acme's delivery must not verify
    // with the server's.
    let post = acme_hooks.next().await;
    let with_server_secret = verify(
        std::slice::from_ref(&server_secret),
        &post.id,
        &post.timestamp,
        &post.signature,
        &post.body,
        SystemTime::now(),
        Duration::from_secs(300),
    );
    assert!(
        matches!(with_server_secret, Err(VerifyError::NoMatch)),
        "{with_server_secret:?}"
    );
    // Nor does globex's: no tenant can sign as another, or as the server.
    let post = globex_hooks.next().await;
    for other in [&server_secret, &acme_secret] {
        let verified = verify(
            std::slice::from_ref(other),
            &post.id,
            &post.timestamp,
            &post.signature,
            &post.body,
            SystemTime::now(),
            Duration::from_secs(300),
        );
        assert!(
            matches!(verified, Err(VerifyError::NoMatch)),
            "{verified:?}"
        );
    }
    server.stop().await;

    // The operator hands a tenant its secret: `longrun webhook secret
    // --tenant` derives the same one from the server's.
    let dir = tempfile::tempdir().unwrap();
    let run = |tenant: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_longrun"));
        command
            .args(["webhook", "secret", "--data-dir"])
            .arg(dir.path());
        if let Some(tenant) = tenant {
            command.args(["--tenant", tenant]);
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let server_secret: Secret = run(None).parse().unwrap();
    let printed: Secret = run(Some("globex")).parse().unwrap();
    let derived = longrun::webhook::tenant_secrets(
        &[server_secret],
        &longrun::model::Tenant::named("globex").unwrap(),
    );
    assert_eq!(printed, derived[0]);
}

#[tokio::test]
async fn one_tenants_hanging_callbacks_do_not_delay_anothers_webhooks() {
    hanging_callbacks_of_one_tenant(None).await;
}

#[tokio::test]
async fn on_postgresql_one_tenants_hanging_callbacks_do_not_delay_anothers_webhooks() {
    let Some(db) = crate::pg::TestDb::create().await else {
        return;
    };
    hanging_callbacks_of_one_tenant(Some(&db.url)).await;
}

async fn hanging_callbacks_of_one_tenant(postgres: Option<&str>) {
    let secret = Secret::generate();
    let acme = Person::new("alice", "acme", "writer");
    let globex = Person::new("gary", "globex", "writer");
    let server = TestServer::start_with_auth(&auth_toml(&[&acme, &globex], ""), |c| {
        webhook_config(c, &secret, &[60_000]);
        c.webhooks.timeout = Duration::from_secs(60);
        if let Some(url) = postgres {
            c.backend = longrun::store::Backend::Postgres(url.to_owned());
        }
    })
    .await;
    // acme's receiver takes every POST and never answers.
    let (hung_tx, mut hung) = mpsc::unbounded_channel::<()>();
    let app = axum::Router::new().route(
        "/hang",
        axum::routing::post(move || {
            let _ = hung_tx.send(());
            std::future::pending::<StatusCode>()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang = format!("http://{}/hang", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let globex_secret = longrun::webhook::tenant_secrets(
        std::slice::from_ref(&secret),
        &longrun::model::Tenant::named("globex").unwrap(),
    )
    .remove(0);
    let mut globex_hooks = receiver(&globex_secret, &[]).await;

    let mut acme_diag = longrun::pb::longrun::v1::diagnostics_client::DiagnosticsClient::new(
        server.authed(acme.token()).await,
    );
    for _ in 0..100 {
        acme_diag.sleep(notify(&hang, &[])).await.unwrap();
    }
    // acme's callbacks hold their share of the deliverer...
    for _ in 0..10 {
        tokio::time::timeout(PATIENCE, hung.recv()).await.unwrap();
    }
    // ...and globex's delivery goes out at once, not after theirs time out.
    let sent = tokio::time::Instant::now();
    longrun::pb::longrun::v1::diagnostics_client::DiagnosticsClient::new(
        server.authed(globex.token()).await,
    )
    .sleep(notify(&globex_hooks.url, &[]))
    .await
    .unwrap();
    let post = tokio::time::timeout(Duration::from_secs(20), globex_hooks.posts.recv())
        .await
        .expect("globex's delivery was not held behind acme's hanging ones")
        .unwrap();
    assert_eq!(post.json["type"], "operation.succeeded");
    eprintln!(
        "globex's delivery arrived {:?} after its create",
        sent.elapsed()
    );
    // acme never had more than its share in flight.
    let mut more = 10;
    while hung.try_recv().is_ok() {
        more += 1;
    }
    assert!(more <= 16, "{more} of acme's deliveries in flight at once");
    drop(globex_hooks);
    tokio::time::timeout(Duration::from_secs(30), server.stop())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_proxy_in_the_environment_is_not_used_for_webhooks() {
    use tokio::io::AsyncReadExt;
    // A "proxy" that would see (and resolve) every delivery sent through it.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = proxy.accept().await {
            let mut head = vec![0u8; 1024];
            let n = stream.read(&mut head).await.unwrap_or(0);
            let _ = seen_tx.send(String::from_utf8_lossy(&head[..n]).into_owned());
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_longrun"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--metrics-listen", "off", "--webhook-timeout", "1s"])
        .args(["--webhook-retry-schedule", "100ms,100ms"])
        .env("HTTP_PROXY", &proxy_url)
        .env("HTTPS_PROXY", &proxy_url)
        .env("ALL_PROXY", &proxy_url)
        .env_remove("NO_PROXY")
        .env("LONGRUN_LOG", "info,longrun::webhook=debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, mut lines) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut reader = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            let _ = lines_tx.send(line);
        }
    });
    let address = tokio::time::timeout(PATIENCE, async {
        loop {
            let line = lines.recv().await.expect("the server's log");
            if let Some((_, address)) = line.split_once("listening on ") {
                return address.trim().to_owned();
            }
        }
    })
    .await
    .unwrap();
    // A public address (the guard lets it through at create time).
    let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    longrun::pb::longrun::v1::diagnostics_client::DiagnosticsClient::new(channel)
        .sleep(notify("http://93.184.216.34/hook", &[]))
        .await
        .unwrap();
    // Wait for the first attempt to be recorded (it fails: nothing answers
    // there), then check that the proxy saw nothing.
    tokio::time::timeout(PATIENCE, async {
        loop {
            let line = lines.recv().await.expect("the server's log");
            if line.contains("delivery attempt recorded") {
                return;
            }
        }
    })
    .await
    .expect("a delivery attempt");
    assert!(
        seen.try_recv().is_err(),
        "the delivery went through the proxy"
    );
    child.start_kill().unwrap();
    let _ = child.wait().await;
}
