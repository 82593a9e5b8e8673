//! Connecting to a server, and rendering gRPC errors for people.

use anyhow::Context;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt;

use crate::pb::google::longrunning::operations_client::OperationsClient;
use crate::pb::longrun::v1::diagnostics_client::DiagnosticsClient;
use crate::pb::longrun::v1::notifications_client::NotificationsClient;
use crate::pb::longrun::v1::operation_watcher_client::OperationWatcherClient;
use crate::pb::longrun::v1::report_service_client::ReportServiceClient;

use super::ClientArgs;

/// Clients of every service, sharing one connection.
pub struct Clients {
    pub operations: OperationsClient<Channel>,
    pub watcher: OperationWatcherClient<Channel>,
    pub diagnostics: DiagnosticsClient<Channel>,
    pub reports: ReportServiceClient<Channel>,
    pub notifications: NotificationsClient<Channel>,
}

/// Connects to `--server`. A bare host:port means plain-text HTTP/2.
pub async fn connect(args: &ClientArgs) -> anyhow::Result<Clients> {
    let address = if args.server.contains("://") {
        args.server.clone()
    } else {
        format!("http://{}", args.server)
    };
    let channel = Endpoint::from_shared(address.clone())
        .with_context(|| format!("{address:?} is not a valid server address"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("could not connect to {address}"))?;
    Ok(Clients {
        operations: OperationsClient::new(channel.clone()),
        watcher: OperationWatcherClient::new(channel.clone()),
        diagnostics: DiagnosticsClient::new(channel.clone()),
        reports: ReportServiceClient::new(channel.clone()),
        notifications: NotificationsClient::new(channel),
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
