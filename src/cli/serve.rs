//! `longrun serve`: flags (with environment fallbacks) to a ServerConfig.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use longrun::engine::LimitRequest;
use longrun::engine::{EngineConfig, KindSpec, TenantQuotas};
use longrun::model::LimitScope;
use longrun::server::ServerConfig;
use longrun::server::tls::TlsPaths;
use longrun::store::sled::SledConfig;
use longrun::store::{Backend, SyncMode};
use longrun::telemetry::{OtlpProtocol, TraceConfig};
use longrun::webhook::{Secret, WebhookConfig};

fn parse_otlp_protocol(text: &str) -> Result<OtlpProtocol, String> {
    match text {
        "grpc" => Ok(OtlpProtocol::Grpc),
        "http/protobuf" | "http" => Ok(OtlpProtocol::HttpProtobuf),
        other => Err(format!(
            "{other:?} is not an OTLP protocol; use grpc or http/protobuf"
        )),
    }
}

/// One `--concurrency` value: this node's slots for a kind, or a limit
/// kept in the store and enforced across the cluster.
#[derive(Debug, Clone)]
pub enum Concurrency {
    /// `KIND=N`: at most N of the kind at once on this node.
    Node(String, usize),
    /// `KIND:key=N`, `KIND:tenant=N` or `KIND:all=N`.
    Limit(LimitRequest),
}

/// Reads `KIND=N`, or `KIND:SCOPE=N` with a scope of key, tenant or all.
fn parse_concurrency(text: &str) -> Result<Concurrency, String> {
    let (target, n) = text.split_once('=').ok_or_else(|| {
        format!("{text:?} is not KIND=N or KIND:SCOPE=N, such as sleep=2000 or partner.sync:key=2")
    })?;
    let n: usize = n
        .trim()
        .parse()
        .map_err(|_| format!("{n:?} in {text:?} is not a number of operations"))?;
    if n == 0 {
        return Err(format!(
            "{text:?}: a limit must let at least one operation run"
        ));
    }
    Ok(match target.split_once(':') {
        None => Concurrency::Node(target.trim().to_owned(), n),
        Some((kind, scope)) => Concurrency::Limit(LimitRequest {
            kind: kind.trim().to_owned(),
            scope: Some(parse_scope(scope, text)?),
            concurrency: Some(i64::try_from(n).unwrap_or(i64::MAX)),
            rates: Vec::new(),
        }),
    })
}

fn parse_scope(word: &str, text: &str) -> Result<LimitScope, String> {
    LimitScope::parse(word)
        .ok_or_else(|| format!("{word:?} in {text:?} is not a scope; use key, tenant or all"))
}

/// Reads `KIND[:SCOPE]=RATE[;RATE...]`, such as `partner.sync=100/s;5000/h`
/// or `partner.sync:key=10/s:burst=20`; the scope is `all` unless given.
fn parse_rate(text: &str) -> Result<LimitRequest, String> {
    let (target, rates) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KIND[:SCOPE]=RATE, such as partner.sync=100/s"))?;
    let (kind, scope) = match target.split_once(':') {
        Some((kind, scope)) => (kind, parse_scope(scope, text)?),
        None => (target, LimitScope::Kind),
    };
    let parsed = longrun::model::flow::parse_rates(rates)?;
    if parsed.is_empty() {
        return Err(format!("{text:?} names no rate"));
    }
    Ok(LimitRequest {
        kind: kind.trim().to_owned(),
        scope: Some(scope),
        concurrency: None,
        rates: parsed.iter().map(ToString::to_string).collect(),
    })
}

/// The limits the flags ask for: concurrency and rates of one kind and
/// scope are one limit.
fn limits(concurrency: &[Concurrency], rates: &[LimitRequest]) -> Vec<LimitRequest> {
    let mut out: Vec<LimitRequest> = Vec::new();
    let given = concurrency
        .iter()
        .filter_map(|c| match c {
            Concurrency::Limit(limit) => Some(limit),
            Concurrency::Node(..) => None,
        })
        .chain(rates);
    for limit in given {
        match out
            .iter_mut()
            .find(|l| l.kind == limit.kind && l.scope == limit.scope)
        {
            Some(same) => {
                same.concurrency = limit.concurrency.or(same.concurrency);
                same.rates.extend(limit.rates.iter().cloned());
            }
            None => out.push(limit.clone()),
        }
    }
    out
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
    /// The storage backend: sled (in --data-dir), or a PostgreSQL URL
    /// (postgres://user@host:port/db) that several nodes may share.
    #[arg(long, env = "LONGRUN_STORE", default_value = "sled")]
    pub store: Backend,
    /// The most connections this node opens to PostgreSQL.
    #[arg(long, env = "LONGRUN_PG_POOL", default_value_t = longrun::store::postgres::DEFAULT_POOL_SIZE)]
    pub pg_pool: u32,
    /// This node's name in a cluster: it holds the leases of the work the
    /// node runs. Unique per running node; by default a fresh one each start.
    #[arg(long, env = "LONGRUN_NODE_NAME")]
    pub node_name: Option<String>,
    /// On a shared store (PostgreSQL), how long a node's claim lasts unless
    /// renewed: when a node dies, its running work starts again elsewhere
    /// within this time.
    #[arg(long, env = "LONGRUN_LEASE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease: Duration,
    /// When writes reach the disk: always (fsync before acknowledging, shared
    /// by concurrent writers), batch (every 10ms) or never (left to sled).
    #[arg(long, env = "LONGRUN_SYNC", default_value = "always")]
    pub sync: SyncMode,
    /// sled's page cache in MiB. sled counts it loosely; the server's
    /// memory grows to several times this under write load.
    #[arg(long, env = "LONGRUN_CACHE_MIB", default_value_t = longrun::store::sled::DEFAULT_CACHE_BYTES / (1024 * 1024))]
    pub cache_mib: u64,
    /// Free disk space to keep, in MiB. Below it new operations are refused
    /// (UNAVAILABLE, STORAGE_FULL) and health turns NOT_SERVING; below a
    /// quarter of it no write is made. Reads always work. 0 turns it off.
    #[arg(long, env = "LONGRUN_MIN_FREE_DISK_MIB", default_value_t = longrun::store::sled::DEFAULT_MIN_FREE_BYTES / (1024 * 1024))]
    pub min_free_disk_mib: u64,
    /// How many operations of a kind run at once. KIND=N (the kind's full
    /// or short name: sleep, import, report) sets this node's slots; the
    /// others run as many as their kind declares. KIND:key=N, KIND:tenant=N
    /// and KIND:all=N set limits across the whole cluster: per concurrency
    /// key, per tenant, or for the whole kind. Repeat it, or separate
    /// values with commas.
    #[arg(long = "concurrency", env = "LONGRUN_CONCURRENCY", value_delimiter = ',', value_parser = parse_concurrency)]
    pub concurrency: Vec<Concurrency>,
    /// Rate limits across the whole cluster, as KIND[:SCOPE]=RATE: a token
    /// bucket of COUNT/UNIT (unit s, m, h or d) with an optional
    /// :burst=N, for the whole kind or per key or tenant. Stack several with
    /// `;` or by repeating the flag: partner.sync=100/s;5000/h.
    #[arg(long = "rate", env = "LONGRUN_RATE", value_parser = parse_rate)]
    pub rate: Vec<LimitRequest>,
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
    #[arg(long, env = "LONGRUN_MAX_UPLOAD_SIZE", default_value_t = longrun::reports::DEFAULT_MAX_UPLOAD)]
    pub max_upload_size: u64,
    /// How long an ImportOrders upload may send nothing before it is
    /// abandoned.
    #[arg(long, env = "LONGRUN_UPLOAD_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub upload_idle_timeout: Duration,
    /// The most calls one connection may have in progress; more are refused
    /// at once with RESOURCE_EXHAUSTED.
    #[arg(long, env = "LONGRUN_MAX_CALLS_PER_CONNECTION", default_value_t = 1024)]
    pub max_calls_per_connection: usize,
    /// A webhook signing secret (whsec_...). Give it twice during a
    /// rotation, the new one first: deliveries then carry both signatures.
    /// Without one, a secret is generated and kept in the data directory.
    #[arg(long, env = "LONGRUN_WEBHOOK_SECRET", value_delimiter = ',')]
    pub webhook_secret: Vec<Secret>,
    /// Read the webhook secret(s) from this file, one per line.
    #[arg(
        long,
        env = "LONGRUN_WEBHOOK_SECRET_FILE",
        conflicts_with = "webhook_secret"
    )]
    pub webhook_secret_file: Option<PathBuf>,
    /// Let callbacks reach loopback, private and link-local addresses (for
    /// tests and internal deployments).
    #[arg(long, env = "LONGRUN_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: bool,
    /// How long one webhook POST may take.
    #[arg(long, env = "LONGRUN_WEBHOOK_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub webhook_timeout: Duration,
    /// The delays before each webhook retry, comma separated.
    #[arg(long, env = "LONGRUN_WEBHOOK_RETRY_SCHEDULE", default_value = "5s,5m,30m,2h,5h,10h,10h",
          value_delimiter = ',', value_parser = humantime::parse_duration)]
    pub webhook_retry_schedule: Vec<Duration>,
    /// Turn off the Diagnostics service and its Sleep operations.
    #[arg(long, env = "LONGRUN_NO_DIAGNOSTICS")]
    pub no_diagnostics: bool,
    /// The principals allowed in (TOML; see README, Security). Re-read on
    /// SIGHUP. Without it the server is open, and only on loopback.
    #[arg(long, env = "LONGRUN_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,
    /// Serve without authentication on a non-loopback address: anyone who
    /// can reach the port can read, cancel and delete every operation.
    #[arg(long, env = "LONGRUN_INSECURE_NO_AUTH", conflicts_with = "auth_file")]
    pub insecure_no_auth: bool,
    /// Serve over TLS with this PEM certificate chain (re-read on SIGHUP).
    #[arg(long, env = "LONGRUN_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "LONGRUN_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Accept client certificates signed by this PEM CA (mTLS): a verified
    /// certificate's subject CN names a principal of the auth file.
    #[arg(long, env = "LONGRUN_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Creates per second each tenant may make (token bucket); beyond it,
    /// RESOURCE_EXHAUSTED with RetryInfo.
    #[arg(long, env = "LONGRUN_TENANT_CREATE_RATE")]
    pub tenant_create_rate: Option<NonZeroU32>,
    /// Creates a tenant may make in one burst [default: one second's worth].
    #[arg(
        long,
        env = "LONGRUN_TENANT_CREATE_BURST",
        requires = "tenant_create_rate"
    )]
    pub tenant_create_burst: Option<NonZeroU32>,
    /// Operations one tenant may have waiting for a worker.
    #[arg(long, env = "LONGRUN_TENANT_MAX_QUEUED")]
    pub tenant_max_queued: Option<usize>,
    /// WatchOperation streams and WaitOperation calls one tenant may have
    /// open at once.
    #[arg(long, env = "LONGRUN_TENANT_MAX_WATCHES", default_value_t = longrun::engine::quota::DEFAULT_MAX_WATCHES)]
    pub tenant_max_watches: usize,
    /// Orders one tenant may store.
    #[arg(long, env = "LONGRUN_TENANT_MAX_ORDERS")]
    pub tenant_max_orders: Option<u64>,
    /// Schedules one tenant may have.
    #[arg(long, env = "LONGRUN_MAX_SCHEDULES", default_value_t = longrun::engine::schedules::DEFAULT_MAX_SCHEDULES)]
    pub max_schedules: u64,
    /// How often idle connections are pinged; one that does not answer
    /// within 10 seconds is closed.
    #[arg(long, env = "LONGRUN_KEEPALIVE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub keepalive: Duration,
    /// How long a new connection has to finish its TLS handshake and send
    /// the HTTP/2 preface before it is dropped.
    #[arg(long, env = "LONGRUN_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// The most connections the server keeps open at once (waiting to
    /// start or established); beyond it a new one is closed, unless one
    /// still waiting to start can be shed for it.
    #[arg(long, env = "LONGRUN_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// The most connections one client address may keep open at once.
    #[arg(
        long,
        env = "LONGRUN_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 1_000
    )]
    pub max_connections_per_address: usize,
    /// Where Prometheus scrapes `/metrics`, or `off` [default:
    /// 127.0.0.1:9464, skipped with a warning when another process holds
    /// it; an address given here must be free].
    #[arg(long, env = "LONGRUN_METRICS_LISTEN", value_parser = parse_metrics_listen)]
    pub metrics_listen: Option<MetricsListen>,
    /// Export traces over OTLP to this collector (http://host:4317 for
    /// gRPC, http://host:4318 for HTTP/protobuf). Off by default. Spans
    /// are batched off the request path; when the collector is down they
    /// are dropped and counted (longrun_trace_spans_dropped_total).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// How to reach the collector: grpc or http/protobuf.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value = "grpc", value_parser = parse_otlp_protocol)]
    pub otlp_protocol: OtlpProtocol,
    /// The service.name of the exported spans.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "longrun")]
    pub otlp_service_name: String,
    /// The most finished spans waiting for export; more are dropped.
    #[arg(long, default_value_t = 8192)]
    pub otlp_queue: usize,
    /// Where the dashboard links an operation's trace, with {trace_id} in
    /// it, e.g. https://jaeger.example/trace/{trace_id}.
    #[arg(long, env = "LONGRUN_TRACE_URL_TEMPLATE")]
    pub trace_url_template: Option<String>,
    /// An origin browsers may call the HTTP/JSON face from, such as
    /// `https://app.example.com` (CORS), or `*` for any; repeat for more.
    /// None by default: CORS is off, and changes from pages of other
    /// origins are refused.
    #[arg(
        long = "cors-origin",
        env = "LONGRUN_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// A host name a server without --auth-file answers to over HTTP,
    /// besides IP addresses and localhost (so a web page cannot reach it
    /// by rebinding its own name); repeat for more.
    #[arg(
        long = "allowed-host",
        env = "LONGRUN_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,
    /// The longest an HTTP/JSON request body may take to arrive.
    #[arg(long, env = "LONGRUN_REQUEST_BODY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_body_timeout: Duration,
    /// A kind served by outside workers, declared at start:
    /// `NAME[:attempts=N][:timeout=DURATION][:concurrency=N][:lease=DURATION]`;
    /// repeat or comma-separate for several. Workers may declare more.
    #[arg(long = "outside-kind", env = "LONGRUN_OUTSIDE_KINDS", value_delimiter = ',', value_parser = parse_outside_kind)]
    pub outside_kinds: Vec<KindSpec>,
    /// The most Lease streams one worker principal may have open at once.
    #[arg(long, env = "LONGRUN_MAX_WORKER_STREAMS", default_value_t = longrun::engine::outside::DEFAULT_MAX_WORKER_STREAMS)]
    pub max_worker_streams: usize,
    /// The largest response (Complete) or error (Fail) a worker may store,
    /// in bytes.
    #[arg(long, env = "LONGRUN_MAX_RESULT_SIZE", default_value_t = longrun::engine::DEFAULT_MAX_RESULT_SIZE)]
    pub max_result_size: usize,
}

/// `NAME[:attempts=N][:timeout=D][:concurrency=N][:lease=D]`.
fn parse_outside_kind(value: &str) -> Result<KindSpec, String> {
    let mut parts = value.split(':');
    let mut spec = KindSpec::new(parts.next().unwrap_or_default().trim());
    for part in parts {
        let (key, setting) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not KEY=VALUE"))?;
        let count = || {
            setting
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{key} must be a positive whole number, not {setting:?}"))
        };
        let duration = || humantime::parse_duration(setting).map_err(|e| format!("{key}: {e}"));
        match key {
            "attempts" => spec.max_attempts = count()?,
            "timeout" => spec.attempt_timeout = duration()?,
            "concurrency" => spec.concurrency = Some(count()? as usize),
            "lease" => spec.lease = duration()?,
            other => {
                return Err(format!(
                    "unknown setting {other:?}; expected attempts, timeout, concurrency or lease"
                ));
            }
        }
    }
    Ok(spec)
}

/// Where metrics are served unless `--metrics-listen` says otherwise.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";

/// Where metrics are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsListen {
    Off,
    On(SocketAddr),
}

fn parse_metrics_listen(value: &str) -> Result<MetricsListen, String> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(MetricsListen::Off);
    }
    value
        .parse()
        .map(MetricsListen::On)
        .map_err(|e| format!("{value:?} is neither an address (host:port) nor off: {e}"))
}

impl ServeArgs {
    /// The webhook secrets: from the flags, the file, or the data
    /// directory (created there on first use); none on PostgreSQL, where the
    /// server takes the one its cluster keeps in the database.
    pub fn webhook_secrets(&self) -> std::io::Result<Vec<Secret>> {
        if !self.webhook_secret.is_empty() {
            return Ok(self.webhook_secret.clone());
        }
        if let Some(path) = &self.webhook_secret_file {
            return std::fs::read_to_string(path)?
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| {
                    l.parse().map_err(|e: String| {
                        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
                    })
                })
                .collect();
        }
        if matches!(self.store, Backend::Postgres(_)) {
            // The nodes of a cluster share the one kept in the database.
            return Ok(Vec::new());
        }
        Ok(vec![longrun::webhook::load_or_create_secret(
            &self.data_dir,
        )?])
    }

    /// The server configuration these flags describe; `secrets` come from
    /// [`ServeArgs::webhook_secrets`].
    pub fn config(&self, secrets: Vec<Secret>) -> ServerConfig {
        ServerConfig {
            data_dir: self.data_dir.clone(),
            backend: self.store.clone(),
            pg_pool_size: self.pg_pool.max(2),
            sled: SledConfig {
                sync: self.sync,
                cache_bytes: self.cache_mib.max(1) * 1024 * 1024,
                min_free_bytes: self.min_free_disk_mib * 1024 * 1024,
            },
            engine: EngineConfig {
                concurrency: self
                    .concurrency
                    .iter()
                    .filter_map(|c| match c {
                        Concurrency::Node(kind, n) => Some((kind.clone(), *n)),
                        Concurrency::Limit(_) => None,
                    })
                    .collect(),
                limits: limits(&self.concurrency, &self.rate),
                max_queued: self.max_queued,
                progress_interval: self.progress_interval,
                shutdown_grace: self.shutdown_grace,
                retention: self.retention,
                quotas: TenantQuotas {
                    creates_per_second: self.tenant_create_rate,
                    create_burst: self.tenant_create_burst,
                    max_queued: self.tenant_max_queued,
                    max_watches: Some(self.tenant_max_watches.max(1)),
                },
                lease: self.lease.max(Duration::from_millis(300)),
                max_worker_streams: self.max_worker_streams.max(1),
                max_result_size: self.max_result_size,
                max_schedules: self.max_schedules,
                ..match &self.node_name {
                    Some(node) => EngineConfig {
                        node: node.clone(),
                        ..EngineConfig::default()
                    },
                    None => EngineConfig::default(),
                }
            },
            diagnostics: !self.no_diagnostics,
            max_wait: self.max_wait,
            max_message_size: self.max_message_size,
            max_upload_size: self.max_upload_size,
            upload_idle_timeout: self.upload_idle_timeout.max(Duration::from_millis(100)),
            max_calls_per_connection: self.max_calls_per_connection.max(1),
            webhooks: WebhookConfig {
                secrets,
                allow_private: self.webhook_allow_private,
                timeout: self.webhook_timeout,
                schedule: self.webhook_retry_schedule.clone(),
            },
            auth_file: self.auth_file.clone(),
            insecure_no_auth: self.insecure_no_auth,
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsPaths {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.tls_client_ca.clone(),
                }),
                _ => None,
            },
            max_orders_per_tenant: self.tenant_max_orders,
            keepalive_interval: self.keepalive.max(Duration::from_secs(1)),
            handshake_timeout: self.handshake_timeout.max(Duration::from_millis(100)),
            connections: longrun::server::listen::ConnectionLimits {
                total: self.max_connections.max(1),
                per_address: self.max_connections_per_address.max(1),
            },
            cors_origins: self.cors_origins.clone(),
            allowed_hosts: self.allowed_hosts.clone(),
            request_body_timeout: self.request_body_timeout.max(Duration::from_secs(1)),
            outside_kinds: self.outside_kinds.clone(),
            trace_url_template: self.trace_url_template.clone(),
            ..ServerConfig::default()
        }
    }

    /// Where to export traces, when asked to. For HTTP a bare collector
    /// address gets the traces path, as OTEL_EXPORTER_OTLP_ENDPOINT means.
    pub fn traces(&self) -> Option<TraceConfig> {
        let endpoint = self
            .otlp_endpoint
            .clone()
            .filter(|e| !e.trim().is_empty())?;
        let endpoint = match self.otlp_protocol {
            OtlpProtocol::HttpProtobuf
                if !endpoint.trim_end_matches('/').ends_with("/v1/traces") =>
            {
                format!("{}/v1/traces", endpoint.trim_end_matches('/'))
            }
            _ => endpoint,
        };
        Some(TraceConfig {
            endpoint,
            protocol: self.otlp_protocol,
            service_name: self.otlp_service_name.clone(),
            queue: self.otlp_queue,
        })
    }
}
