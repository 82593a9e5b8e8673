//! Shared test harness: a real longrun server on 127.0.0.1:0 in this
//! process, and real tonic clients talking to it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use longrun::pb::google::longrunning::operations_client::OperationsClient;
use longrun::pb::google::longrunning::{Operation, WaitOperationRequest, operation};
use longrun::pb::longrun::v1::diagnostics_client::DiagnosticsClient;
use longrun::pb::longrun::v1::operation_watcher_client::OperationWatcherClient;
use longrun::pb::longrun::v1::{OperationMetadata, SleepRequest, State};
use longrun::{Registry, Server, ServerConfig};
use prost::{Message, Name};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
use tonic_types::StatusExt;

/// The longest any test waits for an event before failing.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    /// Where `/metrics` is served.
    pub metrics_addr: SocketAddr,
    pub engine: longrun::Engine,
    /// The backend's stores, for tests that follow the change feed.
    pub stores: longrun::store::Stores,
    /// Reloads the auth file and certificates, as SIGHUP does.
    pub reloader: longrun::server::Reloader,
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), longrun::server::ServerError>>>,
}

/// Opens a server. sled lets go of its directory lock from its own threads,
/// a moment after the last handle in this process is dropped, and announces
/// nothing; a test that wrote a data directory itself may have to try again.
async fn open_retrying(config: ServerConfig, registry: Registry) -> Server {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match Server::open(config.clone(), registry.clone()).await {
            Ok(server) => return server,
            Err(e) if e.to_string().contains("lock") && tokio::time::Instant::now() < deadline => {
                tokio::task::yield_now().await
            }
            Err(e) => panic!("open server: {e}"),
        }
    }
}

/// Opens the sled store in `dir` once the process or handles that held it
/// are gone. sled lets go of its directory lock from its own threads, a
/// moment after the last handle is dropped (or the process has exited),
/// and announces nothing, so this tries again for up to 30 seconds.
pub async fn reopen_sled(dir: &Path) -> longrun::store::SledStore {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match longrun::store::SledStore::open(dir, longrun::store::SyncMode::Always) {
            Ok(store) => return store,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                tokio::task::yield_now().await
            }
            Err(e) => panic!("open sled: {e}"),
        }
    }
}

/// Runs one Sleep at a time, so that the next ones stay queued.
pub fn one_sleep_at_a_time(config: &mut ServerConfig) {
    config.engine.concurrency.insert("sleep".into(), 1);
}

/// A config for tests: small, fast, in `dir`.
pub fn config(dir: &Path) -> ServerConfig {
    let mut config = ServerConfig {
        data_dir: dir.to_path_buf(),
        ..ServerConfig::default()
    };
    config.engine.shutdown_grace = Duration::from_secs(5);
    config.engine.progress_interval = Duration::from_millis(20);
    config
}

impl TestServer {
    /// Starts a server on a fresh temporary directory.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server on a fresh temporary directory, after `tweak` has
    /// adjusted the config.
    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut cfg = config(temp.path());
        tweak(&mut cfg);
        let mut server = Self::start_config(cfg).await;
        server._temp = Some(temp);
        server
    }

    /// Starts a server that authenticates callers against `auth` (the text
    /// of an auth file, kept in the server's temporary directory), after
    /// `tweak` has adjusted the config.
    pub async fn start_with_auth(auth: &str, tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        Self::start_with(|c| {
            let path = c.data_dir.join("auth.toml");
            std::fs::write(&path, auth).expect("write the auth file");
            c.auth_file = Some(path);
            tweak(c);
        })
        .await
    }

    /// Starts a server with exactly this config and registry.
    pub async fn start_config(config: ServerConfig) -> Self {
        Self::start_registry(config, Registry::new()).await
    }

    /// Starts a server with extra kinds.
    pub async fn start_registry(config: ServerConfig, registry: Registry) -> Self {
        let tls = config.tls.is_some();
        let this = Self::start_unready_registry(config, registry).await;
        // A TLS server's tests connect (and wait) with their own clients.
        if !tls {
            this.wait_serving().await;
        }
        this
    }

    /// Starts a server and returns once it listens, without waiting until
    /// it reports SERVING (it may not, on a full disk).
    pub async fn start_unready(config: ServerConfig) -> Self {
        Self::start_unready_registry(config, Registry::new()).await
    }

    async fn start_unready_registry(config: ServerConfig, registry: Registry) -> Self {
        let data_dir = config.data_dir.clone();
        Self::serve(open_retrying(config, registry).await, data_dir).await
    }

    /// Starts a server on stores the test opened itself (a backend wrapped
    /// to inject faults, say), and waits until it is SERVING.
    pub async fn start_stores(
        config: ServerConfig,
        stores: longrun::store::Stores,
        registry: Registry,
    ) -> Self {
        let data_dir = config.data_dir.clone();
        let server = Server::open_on(config, stores, registry)
            .await
            .expect("open server");
        let this = Self::serve(server, data_dir).await;
        this.wait_serving().await;
        this
    }

    /// Serves an opened server on 127.0.0.1:0, with metrics beside it.
    async fn serve(mut server: Server, data_dir: PathBuf) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("TEST_LOG"))
            .with_test_writer()
            .try_init();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let metrics_addr = metrics.local_addr().expect("address");
        server.metrics_on(metrics);
        let engine = server.engine().clone();
        let stores = server.stores().clone();
        let reloader = server.reloader();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server.serve(listener, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            metrics_addr,
            engine,
            stores,
            reloader,
            data_dir,
            _temp: None,
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    /// Waits, through the health service, until recovery is done.
    pub async fn wait_serving(&self) {
        let mut health = HealthClient::new(self.channel().await);
        let mut stream = health
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health watch")
            .into_inner();
        tokio::time::timeout(PATIENCE, async {
            while let Some(item) = stream.next().await {
                if item.expect("health item").status == ServingStatus::Serving as i32 {
                    return;
                }
            }
            panic!("health stream ended before SERVING");
        })
        .await
        .expect("server became SERVING in time");
    }

    /// Keeps `dir` alive as long as the server.
    pub fn keep(&mut self, dir: tempfile::TempDir) {
        self._temp = Some(dir);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .expect("url")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn operations(&self) -> OperationsClient<Channel> {
        OperationsClient::new(self.channel().await)
    }

    pub async fn watcher(&self) -> OperationWatcherClient<Channel> {
        OperationWatcherClient::new(self.channel().await)
    }

    pub async fn diagnostics(&self) -> DiagnosticsClient<Channel> {
        DiagnosticsClient::new(self.channel().await)
    }

    /// Stops the server gracefully and waits until it has.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(PATIENCE, handle)
                .await
                .expect("server stopped in time")
                .expect("server task")
                .expect("server result");
        }
    }
}

/// A Sleep request.
pub fn sleep(duration: Duration, steps: i32) -> SleepRequest {
    SleepRequest {
        duration: Some(prost_types::Duration {
            seconds: duration.as_secs() as i64,
            nanos: duration.subsec_nanos() as i32,
        }),
        steps,
        ..Default::default()
    }
}

/// Starts a Sleep operation and returns it.
pub async fn start_sleep(server: &TestServer, request: SleepRequest) -> Operation {
    server
        .diagnostics()
        .await
        .sleep(request)
        .await
        .expect("sleep accepted")
        .into_inner()
}

/// The OperationMetadata of an operation.
pub fn meta(op: &Operation) -> OperationMetadata {
    let any = op.metadata.as_ref().expect("metadata set");
    assert_eq!(any.type_url, OperationMetadata::type_url());
    assert_eq!(
        any.type_url,
        "type.googleapis.com/longrun.v1.OperationMetadata"
    );
    OperationMetadata::decode(any.value.as_slice()).expect("metadata decodes")
}

/// The state of an operation.
pub fn state(op: &Operation) -> State {
    State::try_from(meta(op).state).expect("known state")
}

/// Waits until the operation is done, with WaitOperation.
pub async fn wait_done(server: &TestServer, name: &str) -> Operation {
    wait_done_as(server, None, name).await
}

/// Waits until the operation is done, with WaitOperation, presenting
/// `token`.
pub async fn wait_done_as(server: &TestServer, token: Option<&str>, name: &str) -> Operation {
    let mut ops = OperationsClient::new(server.authed(token).await);
    tokio::time::timeout(PATIENCE, wait_done_on(&mut ops, name))
        .await
        .expect("operation finished in time")
}

/// Waits, with no time limit of its own, until the operation is done,
/// with WaitOperation on `ops`.
pub async fn wait_done_on(ops: &mut OperationsClient<Authed>, name: &str) -> Operation {
    loop {
        let op = ops
            .wait_operation(WaitOperationRequest {
                name: name.to_owned(),
                timeout: Some(prost_types::Duration {
                    seconds: 10,
                    nanos: 0,
                }),
            })
            .await
            .expect("wait")
            .into_inner();
        if op.done {
            return op;
        }
    }
}

/// Waits until the operation is gone from the store (deleted, or expired
/// by the retention sweeper), following the engine's own subscription.
pub async fn wait_gone(server: &TestServer, name: &str) {
    let id = longrun::engine::OperationId::parse_name(name).expect("an operation name");
    let mut sub = server
        .engine
        .subscribe(&longrun::model::Scope::All, id)
        .await
        .expect("subscribed");
    tokio::time::timeout(PATIENCE, async {
        while !matches!(sub.current(), longrun::engine::Snapshot::Gone) {
            sub.changed().await;
        }
    })
    .await
    .expect("the operation was gone in time");
}

/// Waits until the operation reaches `wanted` (or is done), by watching.
pub async fn wait_state(server: &TestServer, name: &str, wanted: State) -> Operation {
    let mut watcher = server.watcher().await;
    let mut stream = watcher
        .watch_operation(longrun::pb::longrun::v1::WatchOperationRequest {
            name: name.to_owned(),
        })
        .await
        .expect("watch")
        .into_inner();
    tokio::time::timeout(PATIENCE, async {
        while let Some(item) = stream.next().await {
            let op = item.expect("watch item");
            if state(&op) == wanted || op.done {
                return op;
            }
        }
        panic!("watch ended before {wanted:?}");
    })
    .await
    .expect("state reached in time")
}

/// The error of a done operation.
pub fn op_error(op: &Operation) -> &longrun::pb::google::rpc::Status {
    match &op.result {
        Some(operation::Result::Error(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Checks that a status has the code, an ErrorInfo with the reason and
/// domain longrun, and (for `field`) a BadRequest violation.
pub fn assert_status(status: &tonic::Status, code: tonic::Code, reason: &str, field: Option<&str>) {
    assert_eq!(status.code(), code, "{status:?}");
    let details = status.get_error_details();
    let info = details.error_info().expect("ErrorInfo present");
    assert_eq!(info.reason, reason, "{status:?}");
    assert_eq!(info.domain, "longrun");
    if let Some(field) = field {
        let bad = details.bad_request().expect("BadRequest present");
        assert!(
            bad.field_violations.iter().any(|v| v.field == field),
            "no violation for {field}: {bad:?}"
        );
    }
}

/// Adds `authorization: Bearer <token>` to every call, when there is a
/// token.
#[derive(Clone)]
pub struct Bearer(pub Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            let value = format!("Bearer {token}").parse().expect("header value");
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// A channel that presents a token.
pub type Authed = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

impl TestServer {
    /// A connection that presents `token` (or nothing).
    pub async fn authed(&self, token: Option<&str>) -> Authed {
        tonic::service::interceptor::InterceptedService::new(
            self.channel().await,
            Bearer(token.map(str::to_owned)),
        )
    }
}

/// One principal of a test auth file: name, tenant, role, and its token
/// (None for a certificate-only principal).
pub struct Person {
    pub name: &'static str,
    pub tenant: &'static str,
    pub role: &'static str,
    pub token: Option<String>,
}

impl Person {
    /// A principal with a fresh token.
    pub fn new(name: &'static str, tenant: &'static str, role: &'static str) -> Self {
        Self {
            name,
            tenant,
            role,
            token: Some(longrun::auth::token::generate()),
        }
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }
}

/// The TOML of an auth file naming `people`, with extra text after.
pub fn auth_toml(people: &[&Person], extra: &str) -> String {
    let mut text = String::new();
    for p in people {
        text.push_str(&format!(
            "[[principal]]\nname = \"{}\"\ntenant = \"{}\"\nroles = [\"{}\"]\n",
            p.name, p.tenant, p.role
        ));
        if let Some(token) = &p.token {
            text.push_str(&format!(
                "token_sha256 = \"{}\"\n",
                longrun::auth::token::digest_hex(token)
            ));
        }
        text.push('\n');
    }
    text.push_str(extra);
    text
}

/// Starts the real `longrun` binary as `command` describes (logs on a
/// piped stderr), waits until it says where it listens, and returns the
/// child and its `http://` URL. The log is drained from then on, so the
/// server never blocks on a full pipe.
pub async fn spawn_listening(
    command: &mut tokio::process::Command,
) -> (tokio::process::Child, String) {
    let mut child = command
        .env("LONGRUN_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start longrun");
    let address = wait_for_line(
        child.stderr.take().unwrap(),
        Duration::from_secs(60),
        "longrun to say where it listens",
        |line| {
            line.split_once("listening on ")
                .map(|(_, address)| address.trim().to_owned())
        },
    )
    .await;
    (child, format!("http://{address}"))
}

/// Reads a child's `pipe` line by line until `found` accepts one, and
/// returns what it made of it; from then on the rest is drained, so that
/// the child never blocks on a full pipe. Panics when the pipe ends first
/// or `within` passes, naming `what` was awaited.
pub async fn wait_for_line<T>(
    pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    within: Duration,
    what: &str,
    mut found: impl FnMut(&str) -> Option<T>,
) -> T {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(pipe).lines();
    let result = tokio::time::timeout(within, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(result) = found(&line) {
                return result;
            }
        }
        panic!("the output ended before {what}");
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} within {within:?}"));
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    result
}

/// Starts the Python worker example (examples/python_worker, on the
/// Python client's Worker helper) with `python`, serving the server at
/// `address` with `args` and `envs` more, and waits until it serves.
pub async fn python_example(
    python: &str,
    address: &str,
    args: &[&str],
    envs: &[(&str, &str)],
) -> tokio::process::Child {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/python_worker/worker.py"
    );
    let mut child = tokio::process::Command::new(python)
        .args([script, "--server", address])
        .args(args)
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("python runs");
    wait_for_line(
        child.stdout.take().unwrap(),
        Duration::from_secs(120),
        "the Python worker's subscription",
        |line| line.starts_with("serving text.reverse").then_some(()),
    )
    .await;
    child
}

/// Starts the real binary's `serve` on `listen`, keeping its state in
/// `dir`, with a short shutdown grace and `flags` more; waits until it
/// serves and returns it and its `http://` URL.
pub async fn serve_binary(
    dir: &Path,
    listen: &str,
    flags: &[&str],
) -> (tokio::process::Child, String) {
    spawn_listening(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_longrun"))
            .args(["serve", "--listen", listen, "--shutdown-grace", "1s"])
            .arg("--data-dir")
            .arg(dir)
            .args(flags),
    )
    .await
}
