//! Files over HTTP: downloads stream a server stream's bytes with their
//! type, length and checksum from the resource's record; uploads stream
//! the body into a client stream as it arrives.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::IntoResponse;
use futures_util::{StreamExt, stream};
use prost::Message;
use prost_reflect::{DynamicMessage, ReflectMessage, Value};
use tonic::Status;

use super::Rest;
use super::answers::{Answer, Refused, answered};
use super::binding::{Binding, Found, Shape};
use super::bridge::TraceHeaders;
use crate::auth::Principal;
use crate::grpc::status::{garbled, invalid_field, no_route};

/// The media type of a file format named by an enum value.
pub(super) fn media_type(format: &str) -> &'static str {
    match format {
        "CSV" => "text/csv; charset=utf-8",
        "JSON" => "application/json",
        "PDF" => "application/pdf",
        _ => "application/octet-stream",
    }
}

/// A download: the stream's bytes as the body. Its type, length and
/// checksum come from the resource's record, the GET of the same path
/// without the verb, when there is one (a report's file has its report).
pub(super) async fn download(
    rest: &Rest,
    binding: &Binding,
    caller: &Arc<Principal>,
    fields: &[(String, String)],
    message: Bytes,
) -> Answer {
    let mut headers = HeaderMap::new();
    let resource = fields.first().map(|(_, v)| format!("/v1/{v}"));
    if let Some(Found::Route(record, _)) = resource
        .as_deref()
        .map(|r| rest.bindings.find(&Method::GET, r))
        && record.shape == Shape::Unary
    {
        let bytes = rest
            .bridge
            .unary(
                caller,
                record.grpc_path(),
                message.clone(),
                &TraceHeaders::default(),
            )
            .await?;
        if let Ok(record) = DynamicMessage::decode(record.rpc.output(), bytes.as_ref()) {
            describe_file(&record, &mut headers);
        }
    }
    let output = binding.rpc.output();
    let chunks = rest
        .bridge
        .server_streaming(caller, binding.grpc_path(), message)
        .await?;
    let body = Body::from_stream(chunks.map(move |chunk| {
        let chunk = chunk?;
        let message = DynamicMessage::decode(output.clone(), chunk.as_ref())
            .map_err(|e| garbled(format!("an undecodable chunk: {e}")))?;
        Ok::<_, Status>(
            message
                .fields()
                .find_map(|(_, v)| v.as_bytes().cloned())
                .unwrap_or_default(),
        )
    }));
    let mut response = (StatusCode::OK, body).into_response();
    if !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
    response.headers_mut().extend(headers);
    Ok(response)
}

/// Headers for a file from its record: `format` gives the type,
/// `size_bytes` the length, `sha256` the ETag.
pub(super) fn describe_file(record: &DynamicMessage, headers: &mut HeaderMap) {
    let descriptor = record.descriptor();
    if let Some(field) = descriptor.get_field_by_name("format")
        && let prost_reflect::Kind::Enum(kind) = field.kind()
        && let Some(number) = record.get_field(&field).as_enum_number()
        && let Some(value) = kind.get_value(number)
    {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(media_type(value.name())),
        );
        let extension = value.name().to_ascii_lowercase();
        let stem = record
            .get_field_by_name("name")
            .and_then(|n| n.as_str().map(|s| s.replace('/', "-")))
            .unwrap_or_else(|| "file".into());
        if let Ok(value) =
            HeaderValue::from_str(&format!("attachment; filename=\"{stem}.{extension}\""))
        {
            headers.insert(header::CONTENT_DISPOSITION, value);
        }
    }
    if let Some(Value::I64(size)) = record
        .get_field_by_name("size_bytes")
        .map(std::borrow::Cow::into_owned)
    {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    if let Some(sha) = record
        .get_field_by_name("sha256")
        .and_then(|v| v.as_str().map(str::to_owned))
        .filter(|s| !s.is_empty())
        && let Ok(value) = HeaderValue::from_str(&format!("\"{sha}\""))
    {
        headers.insert(header::ETAG, value);
    }
}

/// An upload: `first` (the request's fields) and then one message per
/// piece of the body, as it arrives, into the bound client stream. A body
/// that breaks off fails the call, so a cut-off upload is never taken for
/// a whole one.
pub(super) async fn upload(
    rest: &Rest,
    binding: &Binding,
    caller: &Arc<Principal>,
    first: Bytes,
    request: Request,
) -> Answer {
    let input = binding.rpc.input();
    let Some(field) = input.get_field_by_name(&binding.body) else {
        return Err(no_route("the upload's body field is gone").into());
    };
    let (broke, broken) = tokio::sync::oneshot::channel::<String>();
    let trace = TraceHeaders::of(request.headers());
    let pieces = request.into_body().into_data_stream();
    let messages = stream::unfold((pieces, Some(broke)), move |(mut pieces, mut broke)| {
        let input = input.clone();
        let field = field.clone();
        async move {
            match pieces.next().await {
                Some(Ok(piece)) => {
                    let mut message = DynamicMessage::new(input);
                    message.set_field(&field, Value::Bytes(piece));
                    Some((Bytes::from(message.encode_to_vec()), (pieces, broke)))
                }
                Some(Err(e)) => {
                    if let Some(broke) = broke.take() {
                        let _ = broke.send(e.to_string());
                    }
                    // Never ends: the call is dropped instead.
                    std::future::pending().await
                }
                None => None,
            }
        }
    });
    let messages = stream::once(std::future::ready(first)).chain(messages);
    let path = binding.grpc_path();
    let call = rest.bridge.client_streaming(caller, path, messages, &trace);
    tokio::select! {
        answer = call => answered(rest, binding, answer),
        Ok(error) = broken => Err(Refused::with(
            &invalid_field("body", format!("the upload broke off: {error}")),
            None,
        )),
    }
}
