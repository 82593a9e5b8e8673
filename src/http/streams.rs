//! Server streams as Server-Sent Events: one event per message, with the
//! version or cursor as its id so a reconnecting browser resumes, and a
//! heartbeat to keep proxies from closing an idle stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::StreamExt;
use prost::{Message, Name};
use prost_reflect::DescriptorPool;

use super::Rest;
use super::answers::{Answer, version};
use super::binding::Binding;
use crate::auth::Principal;
use crate::grpc::status::{error_json, http_status};
use crate::pb;
use crate::pb::google::longrunning::Operation;
use crate::pb::longrun::v1::{OperationChange, operation_change};

/// How often an idle event stream sends a comment, so that proxies and
/// clients see it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// A server stream as Server-Sent Events: one event per message, an
/// operation's with its version as the id (events at or below
/// `last_event` are skipped: the client has them), an `error` event if the
/// stream fails, and a heartbeat comment every [`HEARTBEAT`].
pub(super) async fn events(
    rest: &Rest,
    binding: &Binding,
    caller: &Arc<Principal>,
    message: Bytes,
    last_event: Option<i64>,
) -> Answer {
    let messages = rest
        .bridge
        .server_streaming(caller, binding.grpc_path(), message)
        .await?;
    let output = binding.rpc.output();
    let operations = output.full_name() == Operation::full_name();
    let changes = output.full_name() == OperationChange::full_name();
    let pool = rest.pool.clone();
    let events = messages.filter_map(move |item| {
        let event = match item {
            Ok(bytes) if changes => Some(change_event(&pool, &bytes)),
            Ok(bytes) => {
                let id = operations
                    .then(|| Operation::decode(bytes.as_ref()).ok())
                    .flatten()
                    .as_ref()
                    .and_then(version);
                if let (Some(id), Some(last)) = (id, last_event)
                    && id <= last
                {
                    None
                } else {
                    let json = pool
                        .get_message_by_name(output.full_name())
                        .and_then(|d| pb::json::to_string(&d, bytes.as_ref()))
                        .unwrap_or_else(|| "null".into());
                    let event = Event::default().data(json);
                    Some(match id {
                        Some(id) => event.id(id.to_string()),
                        None => event,
                    })
                }
            }
            Err(status) => {
                let http = http_status(status.code()).0;
                Some(
                    Event::default()
                        .event("error")
                        .data(error_json(&status, http).to_string()),
                )
            }
        };
        std::future::ready(event.map(Ok::<_, Infallible>))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat"))
        .into_response())
}

/// A change of a stream of all changes as an event: its cursor as the id,
/// its type as the event's name (none for an update: a plain message), the
/// operation as the data.
pub(super) fn change_event(pool: &DescriptorPool, bytes: &[u8]) -> Event {
    let Ok(change) = OperationChange::decode(bytes) else {
        return Event::default()
            .event("error")
            .data(r#"{"error": {"message": "an undecodable change"}}"#);
    };
    // An update is a plain message (what EventSource's onmessage hears);
    // the others are named.
    let r#type =
        operation_change::Type::try_from(change.r#type).unwrap_or(operation_change::Type::Updated);
    let data = change
        .operation
        .as_ref()
        .and_then(|op| {
            let descriptor = pool.get_message_by_name(Operation::full_name().as_str())?;
            pb::json::to_string(&descriptor, &op.encode_to_vec())
        })
        .unwrap_or_else(|| "{}".to_owned());
    let event = Event::default().id(change.cursor).data(data);
    match r#type {
        operation_change::Type::Updated | operation_change::Type::Unspecified => event,
        named => event.event(named.as_str_name().to_ascii_lowercase()),
    }
}
