//! Assembles a serving longrun: store, engine, gRPC services behind the
//! authentication door, health and reflection, TLS, and the shutdown
//! sequence.
//!
//! - `listen`: accepting connections, each with a deadline to start;
//! - `metrics`: the Prometheus scrape endpoint, on its own listener;
//! - `dashboard`: the web dashboard's embedded page and assets;
//! - `probes`: readiness, for the gRPC health service and `/healthz`,
//!   `/readyz`;
//! - `tls`: rustls configuration for the port, reloadable.
//!
//! The caller owns the listener and the shutdown signal, so tests serve on
//! `127.0.0.1:0` and stop the server when they like. Every task the server
//! starts is tracked and waited for before `serve` returns.

pub mod dashboard;
pub mod listen;
pub mod metrics;
pub mod probes;
pub mod tls;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::{Routes, RoutesBuilder};
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tracing::{error, info, warn};

use crate::auth::{Authenticator, LoadError};
use crate::backfill::BackfillTask;
use crate::bulk::{BulkTask, CancelMatching, DeleteMatching, RetryMatching};
use crate::diagnostics::SleepTask;
use crate::engine::schedules::WeakEngine;
use crate::engine::{
    Engine, EngineConfig, EngineError, KindSpec, Owner, Registry, Task, TaskPolicy,
};
use crate::grpc::auth::AuthLayer;
use crate::grpc::metered::MeteredLayer;

use crate::grpc::{
    BatchesService, ConsoleService, DiagnosticsService, NotificationsService, OperationsService,
    QueuesService, ReportsService, SchedulesService, WatcherService, WorkersService,
};
use crate::pb;
use crate::pb::google::longrunning::operations_server::OperationsServer;
use crate::pb::longrun::v1::batches_server::BatchesServer;
use crate::pb::longrun::v1::bulk_server::BulkServer;
use crate::pb::longrun::v1::console_server::ConsoleServer;
use crate::pb::longrun::v1::diagnostics_server::DiagnosticsServer;
use crate::pb::longrun::v1::jobs_server::JobsServer;
use crate::pb::longrun::v1::notifications_server::NotificationsServer;
use crate::pb::longrun::v1::operation_watcher_server::OperationWatcherServer;
use crate::pb::longrun::v1::queues_server::QueuesServer;
use crate::pb::longrun::v1::report_service_server::ReportServiceServer;
use crate::pb::longrun::v1::schedules_server::SchedulesServer;
use crate::pb::longrun::v1::workers_server::WorkersServer;
use crate::reports::Reports;
use crate::store::postgres::{DEFAULT_POOL_SIZE, PgConfig, redacted};
use crate::store::sled::SledConfig;
use crate::store::{Backend, PgStore, SledStore, StoreError, Stores};
use crate::webhook::guard::CreateTimeGuard;
use crate::webhook::{Secret, WebhookConfig};
use tls::{TlsError, TlsFiles, TlsPaths};

/// Everything a server needs to know.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where state lives.
    pub data_dir: PathBuf,
    /// Which store backend.
    pub backend: Backend,
    /// The sled backend's settings: sync mode, cache, disk reserve.
    pub sled: SledConfig,
    /// The most connections to PostgreSQL, with that backend.
    pub pg_pool_size: u32,
    /// Concurrency, queue and shutdown settings.
    pub engine: EngineConfig,
    /// A link to a trace viewer for the dashboard, with `{trace_id}` in
    /// it.
    pub trace_url_template: Option<String>,
    /// Whether the Diagnostics service (and its Sleep kind) is on.
    pub diagnostics: bool,
    /// The policy Sleep operations run under.
    pub sleep_policy: TaskPolicy,
    /// The longest a WaitOperation call may block.
    pub max_wait: Duration,
    /// The largest request message accepted, in bytes.
    pub max_message_size: usize,
    /// The largest CSV upload accepted by ImportOrders, in bytes.
    pub max_upload_size: u64,
    /// How long an ImportOrders upload may send nothing before it is
    /// abandoned (DEADLINE_EXCEEDED).
    pub upload_idle_timeout: Duration,
    /// The most calls one connection may have in progress; beyond it, calls
    /// are shed at once with RESOURCE_EXHAUSTED rather than queued.
    pub max_calls_per_connection: usize,
    /// How webhooks are signed and sent.
    pub webhooks: WebhookConfig,
    /// The auth file. Without one, every caller is an anonymous admin, which
    /// is only allowed on a loopback address unless `insecure_no_auth`.
    pub auth_file: Option<PathBuf>,
    /// Serve without authentication on any address.
    pub insecure_no_auth: bool,
    /// Serve over TLS with these files.
    pub tls: Option<TlsPaths>,
    /// The most orders one tenant may store; None for no limit.
    pub max_orders_per_tenant: Option<u64>,
    /// How often an idle connection is pinged (HTTP/2 keepalive); one that
    /// does not answer within `keepalive_timeout` is closed.
    pub keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered.
    pub keepalive_timeout: Duration,
    /// How long a new connection has to finish its TLS handshake and send
    /// the HTTP/2 preface before it is dropped.
    pub handshake_timeout: Duration,
    /// How many connections the listener keeps, in all and per client
    /// address.
    pub connections: listen::ConnectionLimits,
    /// Origins that browsers may call the HTTP/JSON face from (CORS);
    /// none by default, which turns CORS off; `*` for any. A change asked
    /// from any other origin is refused.
    pub cors_origins: Vec<String>,
    /// Host names a server without authentication answers to, besides
    /// IP addresses and `localhost` (a defence against DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// The longest an HTTP request body (JSON) may take to arrive.
    pub request_body_timeout: Duration,
    /// Kinds served by outside workers, declared at start (workers may
    /// declare more).
    pub outside_kinds: Vec<KindSpec>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./longrun-data"),
            backend: Backend::Sled,
            sled: SledConfig::default(),
            pg_pool_size: DEFAULT_POOL_SIZE,
            engine: EngineConfig::default(),
            trace_url_template: None,
            diagnostics: true,
            sleep_policy: SleepTask.policy(),
            max_wait: Duration::from_secs(600),
            max_message_size: 4 * 1024 * 1024,
            max_upload_size: crate::reports::DEFAULT_MAX_UPLOAD,
            upload_idle_timeout: Duration::from_secs(60),
            max_calls_per_connection: 1024,
            webhooks: WebhookConfig {
                secrets: vec![Secret::generate()],
                allow_private: false,
                timeout: Duration::from_secs(15),
                schedule: crate::webhook::default_schedule(),
            },
            auth_file: None,
            insecure_no_auth: false,
            tls: None,
            max_orders_per_tenant: None,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            connections: listen::ConnectionLimits::default(),
            cors_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            request_body_timeout: Duration::from_secs(30),
            outside_kinds: Vec::new(),
        }
    }
}

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("could not open the store in {path}: {source}")]
    Store {
        path: String,
        #[source]
        source: StoreError,
    },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("gRPC transport failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("--cors-origin: {0}")]
    Cors(String),
    #[error("could not serve metrics: {0}")]
    Metrics(std::io::Error),
    #[error("reflection could not read the descriptors: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Auth(#[from] LoadError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(
        "refusing to serve without authentication on {address}, which is not a loopback address: \
         anyone who could reach it could read, cancel and delete every operation. \
         Pass --auth-file FILE, or --insecure-no-auth to accept that"
    )]
    InsecureNoAuth { address: String },
}

/// Re-reads the auth file and the TLS files of a running server (on
/// SIGHUP). A file that fails to load leaves the one in force unchanged.
#[derive(Clone, Debug)]
pub struct Reloader {
    auth: Arc<Authenticator>,
    tls: Option<Arc<TlsFiles>>,
}

impl Reloader {
    /// Reloads everything, logging what happened.
    pub fn reload(&self) {
        match self.auth.reload() {
            Ok(None) => {}
            Ok(Some(principals)) => info!(principals, "auth file reloaded"),
            Err(e) => error!("{e}; keeping the auth file in force"),
        }
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(()) => info!("TLS certificates reloaded"),
                Err(e) => error!("{e}; keeping the certificates in force"),
            }
        }
    }
}

/// A server that is open but not yet serving. Library users add their own
/// kinds to the registry before [`Server::open`] and their own gRPC services
/// with [`Server::routes`] before [`Server::serve`].
pub struct Server {
    engine: Engine,
    stores: Stores,
    reports: Reports,
    auth: Arc<Authenticator>,
    tls: Option<Arc<TlsFiles>>,
    config: ServerConfig,
    routes: RoutesBuilder,
    descriptors: Vec<&'static [u8]>,
    metrics_listener: Option<TcpListener>,
}

impl Server {
    /// Opens the store the configuration names, and the engine. The
    /// built-in kinds are added to `registry`.
    pub async fn open(config: ServerConfig, registry: Registry) -> Result<Self, ServerError> {
        let stores = match &config.backend {
            Backend::Sled => Stores::from_backend(
                SledStore::open_with(&config.data_dir, &config.sled).map_err(|source| {
                    ServerError::Store {
                        path: config.data_dir.display().to_string(),
                        source,
                    }
                })?,
            ),
            Backend::Postgres(url) => {
                let pg = PgConfig {
                    url: url.clone(),
                    pool_size: config.pg_pool_size,
                };
                Stores::from_backend(PgStore::open(&pg).await.map_err(|source| {
                    ServerError::Store {
                        path: redacted(url),
                        source,
                    }
                })?)
            }
        };
        Self::open_on(config, stores, registry).await
    }

    /// Opens the engine on stores the caller opened (a backend of its own,
    /// or one wrapped to watch or fault it); `config.backend` is not used.
    /// The built-in kinds are added to `registry`.
    pub async fn open_on(
        mut config: ServerConfig,
        stores: Stores,
        mut registry: Registry,
    ) -> Result<Self, ServerError> {
        let auth = Arc::new(match &config.auth_file {
            Some(path) => Authenticator::from_file(path)?,
            None => Authenticator::open(),
        });
        let tls = match &config.tls {
            Some(paths) => Some(Arc::new(TlsFiles::load(paths.clone())?)),
            None => None,
        };
        if !auth.is_enforcing() && config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()) {
            warn!(
                "client certificates are checked, but without an auth file they name no one: every caller is let in"
            );
        }
        if config.webhooks.secrets.is_empty() {
            // No secret given: the nodes of one store share one, kept in it.
            let secret = crate::webhook::shared_secret(stores.settled.as_ref())
                .await
                .map_err(|source| ServerError::Store {
                    path: "the webhook secret".into(),
                    source,
                })?;
            config.webhooks.secrets = vec![secret];
        }
        let reports = Reports::new(
            Arc::clone(&stores.orders),
            Arc::clone(&stores.files),
            config.max_upload_size,
            config.max_orders_per_tenant,
        );
        reports.register(&mut registry);
        // The server's own kinds that call back into the engine.
        let own = WeakEngine::new();
        registry.register(BackfillTask::new(own.clone()));
        registry.register(BulkTask::<CancelMatching>::new(own.clone()));
        registry.register(BulkTask::<DeleteMatching>::new(own.clone()));
        registry.register(BulkTask::<RetryMatching>::new(own.clone()));
        if config.diagnostics {
            registry.register_with(SleepTask, config.sleep_policy.clone());
        }
        let mut engine_config = config.engine.clone();
        engine_config.weights = Some(Arc::clone(&auth) as Arc<dyn crate::engine::TenantWeights>);
        engine_config.callback_guard = Some(Arc::new(CreateTimeGuard {
            allow_private: config.webhooks.allow_private,
        }));
        let engine = Engine::open(&stores, registry, engine_config).await?;
        own.set(&engine);
        for kind in &config.outside_kinds {
            engine.declare_kind(Owner::Everyone, kind.clone()).await?;
        }
        Ok(Self {
            engine,
            stores,
            reports,
            auth,
            tls,
            config,
            routes: RoutesBuilder::default(),
            descriptors: vec![
                pb::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
            ],
            metrics_listener: None,
        })
    }

    /// The engine, for services that create operations.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The backend's stores.
    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    /// A handle that reloads the auth file and certificates while the
    /// server runs.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            auth: Arc::clone(&self.auth),
            tls: self.tls.clone(),
        }
    }

    /// Extra gRPC services to serve beside longrun's own. They sit behind
    /// the same door: every method needs a writer unless it is one of
    /// longrun's read methods, and handlers find the caller with
    /// [`crate::grpc::auth::caller`].
    pub fn routes(&mut self) -> &mut RoutesBuilder {
        &mut self.routes
    }

    /// Serves the Prometheus metrics at `/metrics` on `listener` too.
    pub fn metrics_on(&mut self, listener: TcpListener) {
        self.metrics_listener = Some(listener);
    }

    /// Adds an encoded FileDescriptorSet to what reflection serves, so that
    /// grpcurl can call services added with [`Server::routes`], and whose
    /// `google.api.http` annotations the HTTP/JSON face serves.
    pub fn reflect(&mut self, descriptor_set: &'static [u8]) {
        self.descriptors.push(descriptor_set);
    }

    /// Serves on `listener` until `shutdown` completes, then stops: health
    /// turns NOT_SERVING, no new calls are accepted, running tasks are asked
    /// to stop within the grace period, and state is flushed.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServerError> {
        let local = listener.local_addr().ok();
        if !self.auth.is_enforcing()
            && !self.config.insecure_no_auth
            && !local.is_some_and(|a| a.ip().is_loopback())
        {
            return Err(ServerError::InsecureNoAuth {
                address: local.map_or_else(|| "an unknown address".into(), |a| a.to_string()),
            });
        }
        let Server {
            engine,
            stores,
            reports,
            auth,
            tls,
            config,
            mut routes,
            descriptors,
            metrics_listener,
        } = self;
        let (health, health_service) = tonic_health::server::health_reporter();
        let mut names = vec![
            "",
            <OperationsServer<OperationsService> as tonic::server::NamedService>::NAME,
            <OperationWatcherServer<WatcherService> as tonic::server::NamedService>::NAME,
            <ReportServiceServer<ReportsService> as tonic::server::NamedService>::NAME,
            <NotificationsServer<NotificationsService> as tonic::server::NamedService>::NAME,
            <JobsServer<WorkersService> as tonic::server::NamedService>::NAME,
            <WorkersServer<WorkersService> as tonic::server::NamedService>::NAME,
            <ConsoleServer<ConsoleService> as tonic::server::NamedService>::NAME,
            <QueuesServer<QueuesService> as tonic::server::NamedService>::NAME,
            <SchedulesServer<SchedulesService> as tonic::server::NamedService>::NAME,
            <BatchesServer<BatchesService> as tonic::server::NamedService>::NAME,
            <BulkServer<BatchesService> as tonic::server::NamedService>::NAME,
        ];
        let max = config.max_message_size;
        // Each service is shared by its gRPC route and the HTTP face's
        // direct calls of its unary methods.
        let mut direct = crate::grpc::direct::Direct::default();
        let operations = Arc::new(OperationsService::new(engine.clone(), config.max_wait));
        direct.operations(&operations);
        let reports = Arc::new(ReportsService::new(
            engine.clone(),
            reports,
            config.upload_idle_timeout,
        ));
        direct.reports(&reports);
        let notifications = Arc::new(NotificationsService::new(engine.clone()));
        direct.notifications(&notifications);
        let jobs = Arc::new(WorkersService::new(engine.clone()));
        direct.jobs(&jobs);
        let console = Arc::new(ConsoleService::new(
            engine.clone(),
            config.trace_url_template.clone().unwrap_or_default(),
        ));
        direct.console(&console);
        let queues = Arc::new(QueuesService::new(engine.clone()));
        direct.queues(&queues);
        let schedules = Arc::new(SchedulesService::new(engine.clone()));
        direct.schedules(&schedules);
        let batches = Arc::new(BatchesService::new(engine.clone()));
        direct.batches(&batches);
        routes
            .add_service(OperationsServer::from_arc(operations).max_decoding_message_size(max))
            .add_service(
                OperationWatcherServer::new(WatcherService::new(engine.clone()))
                    .max_decoding_message_size(max),
            )
            .add_service(ReportServiceServer::from_arc(reports).max_decoding_message_size(max))
            .add_service(
                NotificationsServer::from_arc(notifications).max_decoding_message_size(max),
            )
            .add_service(JobsServer::from_arc(jobs).max_decoding_message_size(max))
            .add_service(
                WorkersServer::new(WorkersService::new(engine.clone()))
                    .max_decoding_message_size(max),
            )
            .add_service(ConsoleServer::from_arc(console).max_decoding_message_size(max))
            .add_service(QueuesServer::from_arc(queues).max_decoding_message_size(max))
            .add_service(SchedulesServer::from_arc(schedules).max_decoding_message_size(max))
            .add_service(
                BatchesServer::from_arc(Arc::clone(&batches)).max_decoding_message_size(max),
            )
            .add_service(BulkServer::from_arc(batches).max_decoding_message_size(max));
        if config.diagnostics {
            names
                .push(<DiagnosticsServer<DiagnosticsService> as tonic::server::NamedService>::NAME);
            let diagnostics = Arc::new(DiagnosticsService::new(engine.clone()));
            direct.diagnostics(&diagnostics);
            routes.add_service(
                DiagnosticsServer::from_arc(diagnostics).max_decoding_message_size(max),
            );
        }
        let readiness = probes::Readiness::new(health, names);
        readiness.set(ServingStatus::NotServing).await;
        let reflection = || {
            descriptors.iter().fold(
                tonic_reflection::server::Builder::configure(),
                |builder, set| builder.register_encoded_file_descriptor_set(set),
            )
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;
        routes
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);

        // The HTTP/JSON face, on the same listener: it calls the gRPC
        // services in-process (their unary methods directly).
        let grpc = routes.routes().into_axum_router();
        let rest_config = crate::http::RestConfig {
            descriptors: descriptors.clone(),
            max_body: max,
            body_timeout: config.request_body_timeout,
            cors_origins: config.cors_origins.clone(),
            allowed_hosts: config.allowed_hosts.clone(),
        };
        let rest = crate::http::Rest::new(
            grpc.clone(),
            direct,
            Arc::clone(&auth),
            Arc::clone(engine.metrics()),
            &rest_config,
        )
        .map_err(ServerError::Cors)?;
        let faces = grpc
            .merge(crate::http::router(rest))
            .merge(dashboard::router())
            .merge(readiness.router())
            .fallback(crate::http::unknown_path);

        // Small gRPC frames must not wait for delayed ACKs (Nagle); TCP
        // keepalive finds peers that vanished without a word.
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(config.keepalive_interval));
        let stop = CancellationToken::new();
        let streams = u32::try_from(config.max_calls_per_connection).unwrap_or(u32::MAX);
        let router = tonic::transport::Server::builder()
            .concurrency_limit_per_connection(config.max_calls_per_connection)
            .max_concurrent_streams(streams)
            .http2_keepalive_interval(Some(config.keepalive_interval))
            .http2_keepalive_timeout(Some(config.keepalive_timeout))
            .load_shed(true)
            .layer(MeteredLayer::new(Arc::clone(engine.metrics())))
            .layer(tower::util::MapResponseLayer::new(
                crate::grpc::limits::explain_limit_errors,
            ))
            .layer(AuthLayer::new(Arc::clone(&auth)))
            .accept_http1(true)
            .add_routes(Routes::from(faces));
        let stopped = {
            let stop = stop.clone();
            async move { stop.cancelled().await }
        };
        let deadline = config.handshake_timeout;
        let tasks = TaskTracker::new();
        if let Some(listener) = metrics_listener {
            let address = listener.local_addr().map_err(ServerError::Metrics)?;
            tasks.spawn(metrics::serve(listener, engine.clone(), stop.clone()));
            info!("metrics on http://{address}/metrics");
        }
        let gate = listen::Gate::new(config.connections);
        let serving = match &tls {
            None => tasks.spawn(router.serve_with_incoming_shutdown(
                listen::plain(incoming, deadline, gate, tasks.clone(), stop.clone()),
                stopped,
            )),
            Some(tls) => tasks.spawn(router.serve_with_incoming_shutdown(
                listen::tls(
                    incoming,
                    Arc::clone(tls),
                    deadline,
                    gate,
                    tasks.clone(),
                    stop.clone(),
                ),
                stopped,
            )),
        };

        if let Err(e) = engine.start().await {
            stop.cancel();
            tasks.close();
            tasks.wait().await;
            return Err(e.into());
        }
        tasks.spawn(crate::webhook::deliver::run(
            Arc::clone(&stores.outbox),
            engine.clone(),
            stores.operations.subscribe(),
            Arc::new(config.webhooks.clone()),
            auth.clone(),
            engine.shutdown_token().clone(),
        ));
        // Health follows the store from here on: SERVING while it takes
        // writes, NOT_SERVING while its disk is full or out of reach.
        let watching = CancellationToken::new();
        let follower = tasks.spawn(
            readiness
                .clone()
                .follow_store(Arc::clone(&stores.operations), watching.clone()),
        );
        let store = match &config.backend {
            Backend::Sled => format!(
                "sled in {}",
                std::path::absolute(&config.data_dir)
                    .unwrap_or_else(|_| config.data_dir.clone())
                    .display()
            ),
            Backend::Postgres(url) => format!("PostgreSQL at {}", redacted(url)),
        };
        info!(
            store,
            pid = std::process::id(),
            "reload the auth file and certificates with kill -HUP {}",
            std::process::id()
        );
        match local {
            // A stable line that scripts and tests can wait for.
            Some(address) => {
                info!(tls = tls.is_some(), auth = auth.is_enforcing(), "security");
                let scheme = if tls.is_some() { "https" } else { "http" };
                info!("dashboard at {scheme}://{address}/");
                info!("listening on {address}")
            }
            None => info!("serving"),
        }

        shutdown.await;
        info!("shutting down");
        watching.cancel();
        let _ = follower.await;
        readiness.set(ServingStatus::NotServing).await;
        stop.cancel();
        tasks.close();
        let (served, (), ()) = tokio::join!(serving, engine.shutdown(), tasks.wait());
        info!("stopped");
        match served {
            Ok(result) => result.map_err(ServerError::from),
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }
}
