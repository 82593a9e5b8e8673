//! `longrun serve`: flags (with environment fallbacks) to a ServerConfig.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::engine::EngineConfig;
use crate::server::ServerConfig;
use crate::store::{Backend, SyncMode};

fn default_workers() -> usize {
    EngineConfig::default().workers
}

/// Arguments of `longrun serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The address to listen on.
    #[arg(long, env = "LONGRUN_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Where state is kept.
    #[arg(long, env = "LONGRUN_DATA_DIR", default_value = "./longrun-data")]
    pub data_dir: PathBuf,
    /// The storage backend.
    #[arg(long, env = "LONGRUN_STORE", default_value = "sled")]
    pub store: Backend,
    /// When writes reach the disk: always (fsync before acknowledging, shared
    /// by concurrent writers), batch (every 10ms) or never (left to sled).
    #[arg(long, env = "LONGRUN_SYNC", default_value = "always")]
    pub sync: SyncMode,
    /// How many operations run at once [default: number of CPUs].
    #[arg(long, env = "LONGRUN_WORKERS", default_value_t = default_workers())]
    pub workers: usize,
    /// How many operations may wait for a worker before creates are refused
    /// with RESOURCE_EXHAUSTED.
    #[arg(long, env = "LONGRUN_MAX_QUEUED", default_value_t = 100_000)]
    pub max_queued: usize,
    /// The longest a WaitOperation call may block.
    #[arg(long, env = "LONGRUN_MAX_WAIT", default_value = "10m", value_parser = humantime::parse_duration)]
    pub max_wait: Duration,
    /// The least time between two stored progress reports of one task.
    #[arg(long, env = "LONGRUN_PROGRESS_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub progress_interval: Duration,
    /// How long running tasks get to stop on shutdown before they are
    /// aborted (and run again after restart).
    #[arg(long, env = "LONGRUN_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// How long done operations are kept before they expire (with their
    /// request_ids and artifacts).
    #[arg(long, env = "LONGRUN_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// The largest request message accepted, in bytes.
    #[arg(long, env = "LONGRUN_MAX_MESSAGE_SIZE", default_value_t = 4 * 1024 * 1024)]
    pub max_message_size: usize,
    /// The largest CSV upload ImportOrders accepts, in bytes.
    #[arg(long, env = "LONGRUN_MAX_UPLOAD_SIZE", default_value_t = crate::reports::DEFAULT_MAX_UPLOAD)]
    pub max_upload_size: u64,
    /// The most calls one connection may have in progress; more are refused
    /// at once with RESOURCE_EXHAUSTED.
    #[arg(long, env = "LONGRUN_MAX_CALLS_PER_CONNECTION", default_value_t = 1024)]
    pub max_calls_per_connection: usize,
    /// Turn off the Diagnostics service and its Sleep operations.
    #[arg(long, env = "LONGRUN_NO_DIAGNOSTICS")]
    pub no_diagnostics: bool,
}

impl ServeArgs {
    /// The server configuration these flags describe.
    pub fn config(&self) -> ServerConfig {
        ServerConfig {
            data_dir: self.data_dir.clone(),
            backend: self.store,
            sync: self.sync,
            engine: EngineConfig {
                workers: self.workers.max(1),
                max_queued: self.max_queued,
                progress_interval: self.progress_interval,
                shutdown_grace: self.shutdown_grace,
                retention: self.retention,
            },
            diagnostics: !self.no_diagnostics,
            max_wait: self.max_wait,
            max_message_size: self.max_message_size,
            max_upload_size: self.max_upload_size,
            max_calls_per_connection: self.max_calls_per_connection.max(1),
            ..ServerConfig::default()
        }
    }
}
