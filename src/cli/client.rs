//! Connecting to a server (plain or TLS, with a token or a client
//! certificate), and rendering gRPC errors for people.

use anyhow::Context;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};
use tonic_types::StatusExt;

use longrun::pb::google::longrunning::operations_client::OperationsClient;
use longrun::pb::longrun::v1::batches_client::BatchesClient;
use longrun::pb::longrun::v1::bulk_client::BulkClient;
use longrun::pb::longrun::v1::console_client::ConsoleClient;
use longrun::pb::longrun::v1::diagnostics_client::DiagnosticsClient;
use longrun::pb::longrun::v1::jobs_client::JobsClient;
use longrun::pb::longrun::v1::notifications_client::NotificationsClient;
use longrun::pb::longrun::v1::operation_watcher_client::OperationWatcherClient;
use longrun::pb::longrun::v1::queues_client::QueuesClient;
use longrun::pb::longrun::v1::report_service_client::ReportServiceClient;
use longrun::pb::longrun::v1::schedules_client::SchedulesClient;
use longrun::pb::longrun::v1::workers_client::WorkersClient;

use super::ClientArgs;

/// Adds the bearer token, when there is one, to every call.
#[derive(Clone)]
pub struct Token(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Token {
    /// The `authorization` value for `token`, if any.
    pub fn new(token: Option<&str>) -> anyhow::Result<Self> {
        let value = match token {
            Some(token) => Some(
                format!("Bearer {}", token.trim())
                    .parse()
                    .context("the token holds characters a header cannot carry")?,
            ),
            None => None,
        };
        Ok(Self(value))
    }
}

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A connection that carries the caller's credentials.
pub type Connection = InterceptedService<Channel, Token>;

/// Clients of every service, sharing one connection.
pub struct Clients {
    pub operations: OperationsClient<Connection>,
    pub watcher: OperationWatcherClient<Connection>,
    pub diagnostics: DiagnosticsClient<Connection>,
    pub reports: ReportServiceClient<Connection>,
    pub notifications: NotificationsClient<Connection>,
    pub jobs: JobsClient<Connection>,
    pub workers: WorkersClient<Connection>,
    pub console: ConsoleClient<Connection>,
    pub queues: QueuesClient<Connection>,
    pub schedules: SchedulesClient<Connection>,
    pub batches: BatchesClient<Connection>,
    pub bulk: BulkClient<Connection>,
}

/// The TLS settings the flags ask for, if any.
fn tls_config(args: &ClientArgs) -> anyhow::Result<Option<ClientTlsConfig>> {
    let https = args.server.starts_with("https://");
    if !https && args.ca.is_none() && args.cert.is_none() {
        return Ok(None);
    }
    let mut tls = ClientTlsConfig::new();
    if let Some(ca) = &args.ca {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        tls = tls.ca_certificate(Certificate::from_pem(pem));
    }
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        let cert =
            std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?;
        let key = std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Ok(Some(tls))
}

/// Connects to `--server`. A bare host:port means plain-text HTTP/2, as
/// does http://; https://, --ca or --cert mean TLS.
pub async fn connect(args: &ClientArgs) -> anyhow::Result<Clients> {
    let tls = tls_config(args)?;
    let address = match args.server.split_once("://") {
        Some(("http", rest)) if tls.is_some() => format!("https://{rest}"),
        Some(_) => args.server.clone(),
        None if tls.is_some() => format!("https://{}", args.server),
        None => format!("http://{}", args.server),
    };
    let mut endpoint = Endpoint::from_shared(address.clone())
        .with_context(|| format!("{address:?} is not a valid server address"))?
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).context("TLS settings")?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("could not connect to {address}"))?;
    let connection = InterceptedService::new(channel, Token::new(args.token.as_deref())?);
    Ok(Clients {
        operations: OperationsClient::new(connection.clone()),
        watcher: OperationWatcherClient::new(connection.clone()),
        diagnostics: DiagnosticsClient::new(connection.clone()),
        reports: ReportServiceClient::new(connection.clone()),
        notifications: NotificationsClient::new(connection.clone()),
        jobs: JobsClient::new(connection.clone()),
        workers: WorkersClient::new(connection.clone()),
        console: ConsoleClient::new(connection.clone()),
        schedules: SchedulesClient::new(connection.clone()),
        batches: BatchesClient::new(connection.clone()),
        bulk: BulkClient::new(connection.clone()),
        queues: QueuesClient::new(connection),
    })
}

/// A gRPC error with its ErrorInfo reason and field violations spelled out.
pub fn describe(status: &Status) -> anyhow::Error {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let details = status.get_error_details();
    if let Some(info) = details.error_info() {
        text.push_str(&format!(" [{}]", info.reason));
    }
    if let Some(bad) = details.bad_request() {
        for v in &bad.field_violations {
            text.push_str(&format!("\n  {}: {}", v.field, v.description));
        }
    }
    if let Some(retry) = details.retry_info()
        && let Some(delay) = retry.retry_delay
    {
        text.push_str(&format!("\n  retry after {delay:?}"));
    }
    anyhow::anyhow!(text)
}
