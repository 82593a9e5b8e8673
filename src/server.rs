//! Assembles a serving longrun: store, engine, gRPC services, health and
//! reflection, and the shutdown sequence.
//!
//! The caller owns the listener and the shutdown signal, so tests serve on
//! `127.0.0.1:0` and stop the server when they like.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::RoutesBuilder;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tracing::info;

use crate::diagnostics::SleepTask;
use crate::engine::{Engine, EngineConfig, EngineError, Registry, Task, TaskPolicy};
use crate::grpc::{
    DiagnosticsService, NotificationsService, OperationsService, ReportsService, WatcherService,
};
use crate::pb;
use crate::pb::google::longrunning::operations_server::OperationsServer;
use crate::pb::longrun::v1::diagnostics_server::DiagnosticsServer;
use crate::pb::longrun::v1::notifications_server::NotificationsServer;
use crate::pb::longrun::v1::operation_watcher_server::OperationWatcherServer;
use crate::pb::longrun::v1::report_service_server::ReportServiceServer;
use crate::reports::Reports;
use crate::store::{Backend, DynOrderStore, DynStore, SledStore, StoreError, SyncMode};
use crate::webhook::{Secret, WebhookConfig};

/// Everything a server needs to know.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where state lives.
    pub data_dir: PathBuf,
    /// Which store backend.
    pub backend: Backend,
    /// How hard the store works to keep acknowledged writes.
    pub sync: SyncMode,
    /// The store's page cache, in bytes.
    pub cache_bytes: u64,
    /// Workers, queue and shutdown settings.
    pub engine: EngineConfig,
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
    /// The most calls one connection may have in progress; beyond it, calls
    /// are shed at once with RESOURCE_EXHAUSTED rather than queued.
    pub max_calls_per_connection: usize,
    /// How webhooks are signed and sent.
    pub webhooks: WebhookConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./longrun-data"),
            backend: Backend::Sled,
            sync: SyncMode::Always,
            cache_bytes: crate::store::sled::DEFAULT_CACHE_BYTES,
            engine: EngineConfig::default(),
            diagnostics: true,
            sleep_policy: SleepTask.policy(),
            max_wait: Duration::from_secs(600),
            max_message_size: 4 * 1024 * 1024,
            max_upload_size: crate::reports::DEFAULT_MAX_UPLOAD,
            max_calls_per_connection: 1024,
            webhooks: WebhookConfig {
                secrets: vec![Secret::generate()],
                allow_private: false,
                timeout: Duration::from_secs(15),
                schedule: crate::webhook::default_schedule(),
            },
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
    #[error("reflection could not read the descriptors: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// A server that is open but not yet serving. Library users add their own
/// kinds to the registry before [`Server::open`] and their own gRPC services
/// with [`Server::routes`] before [`Server::serve`].
pub struct Server {
    engine: Engine,
    reports: Reports,
    config: ServerConfig,
    routes: RoutesBuilder,
    descriptors: Vec<&'static [u8]>,
}

impl Server {
    /// Opens the store and the engine. The built-in kinds are added to
    /// `registry`.
    pub async fn open(config: ServerConfig, mut registry: Registry) -> Result<Self, ServerError> {
        let (store, orders): (DynStore, DynOrderStore) = match config.backend {
            Backend::Sled => {
                let sled =
                    SledStore::open_with_cache(&config.data_dir, config.sync, config.cache_bytes)
                        .map_err(|source| ServerError::Store {
                        path: config.data_dir.display().to_string(),
                        source,
                    })?;
                let sled = Arc::new(sled);
                (sled.clone(), sled)
            }
        };
        let reports =
            Reports::open(&config.data_dir, orders, config.max_upload_size).map_err(|e| {
                ServerError::Store {
                    path: config.data_dir.display().to_string(),
                    source: StoreError::Backend(e.to_string()),
                }
            })?;
        reports.register(&mut registry);
        if config.diagnostics {
            registry.register_with(SleepTask, config.sleep_policy.clone());
        }
        let mut engine_config = config.engine.clone();
        engine_config.allow_private_callbacks |= config.webhooks.allow_private;
        let engine = Engine::open(store, registry, engine_config).await?;
        Ok(Self {
            engine,
            reports,
            config,
            routes: RoutesBuilder::default(),
            descriptors: vec![
                pb::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
            ],
        })
    }

    /// The engine, for services that create operations.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Extra gRPC services to serve beside longrun's own.
    pub fn routes(&mut self) -> &mut RoutesBuilder {
        &mut self.routes
    }

    /// Adds an encoded FileDescriptorSet to what reflection serves, so that
    /// grpcurl can call services added with [`Server::routes`].
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
        let Server {
            engine,
            reports,
            config,
            mut routes,
            descriptors,
        } = self;
        let (health, health_service) = tonic_health::server::health_reporter();
        let mut names = vec![
            "",
            <OperationsServer<OperationsService> as tonic::server::NamedService>::NAME,
            <OperationWatcherServer<WatcherService> as tonic::server::NamedService>::NAME,
            <ReportServiceServer<ReportsService> as tonic::server::NamedService>::NAME,
            <NotificationsServer<NotificationsService> as tonic::server::NamedService>::NAME,
        ];
        let max = config.max_message_size;
        routes
            .add_service(
                OperationsServer::new(OperationsService::new(engine.clone(), config.max_wait))
                    .max_decoding_message_size(max),
            )
            .add_service(
                OperationWatcherServer::new(WatcherService::new(engine.clone()))
                    .max_decoding_message_size(max),
            )
            .add_service(
                ReportServiceServer::new(ReportsService::new(engine.clone(), reports))
                    .max_decoding_message_size(max),
            )
            .add_service(
                NotificationsServer::new(NotificationsService::new(engine.clone()))
                    .max_decoding_message_size(max),
            );
        if config.diagnostics {
            names
                .push(<DiagnosticsServer<DiagnosticsService> as tonic::server::NamedService>::NAME);
            routes.add_service(
                DiagnosticsServer::new(DiagnosticsService::new(engine.clone()))
                    .max_decoding_message_size(max),
            );
        }
        for name in &names {
            health
                .set_service_status(*name, ServingStatus::NotServing)
                .await;
        }
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

        let local = listener.local_addr().ok();
        // Small gRPC frames must not wait for delayed ACKs (Nagle).
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let stop = CancellationToken::new();
        let serving = {
            let stop = stop.clone();
            tonic::transport::Server::builder()
                .concurrency_limit_per_connection(config.max_calls_per_connection)
                .load_shed(true)
                .layer(tower::util::MapResponseLayer::new(
                    crate::grpc::limits::explain_limit_errors,
                ))
                .add_routes(routes.routes())
                .serve_with_incoming_shutdown(incoming, async move { stop.cancelled().await })
        };
        let serving = tokio::spawn(serving);

        engine.start().await?;
        let deliverer = tokio::spawn(crate::webhook::deliver::run(
            engine.store().clone(),
            Arc::new(config.webhooks.clone()),
            engine.shutdown_token().clone(),
        ));
        for name in &names {
            health
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        match local {
            // A stable line that scripts and tests can wait for.
            Some(address) => info!("listening on {address}"),
            None => info!("serving"),
        }

        shutdown.await;
        info!("shutting down");
        for name in &names {
            health
                .set_service_status(*name, ServingStatus::NotServing)
                .await;
        }
        stop.cancel();
        let (served, (), _) = tokio::join!(serving, engine.shutdown(), deliverer);
        info!("stopped");
        match served {
            Ok(result) => result.map_err(ServerError::from),
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }
}
