//! Transcoding: a request's path fields, query, JSON body (the proto3
//! JSON mapping) and headers (`Idempotency-Key`, `Last-Event-ID`) become
//! the bound gRPC method's request message.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use prost::Message;
use prost_reflect::DynamicMessage;

use super::answers::Refused;
use super::binding::Binding;
use crate::grpc::status::{body_too_slow, invalid_field};

/// Reads a JSON body of at most `limit` bytes, within `within`.
pub(super) async fn body_of(
    request: Request,
    limit: usize,
    within: Duration,
) -> Result<Bytes, Refused> {
    let read = axum::body::to_bytes(request.into_body(), limit);
    match tokio::time::timeout(within, read).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(e)) => Err(Refused::with(
            &invalid_field("body", format!("the body could not be read: {e}")),
            Some(StatusCode::PAYLOAD_TOO_LARGE),
        )),
        Err(_) => Err(Refused::with(
            &body_too_slow(within),
            Some(StatusCode::REQUEST_TIMEOUT),
        )),
    }
}

/// The bound method's request message, encoded: from the path's fields,
/// the query parameters, the JSON body and the Idempotency-Key.
pub(super) fn message(
    binding: &Binding,
    fields: &[(String, String)],
    query: Option<&str>,
    body: &[u8],
    key: Option<&str>,
) -> Result<Bytes, Refused> {
    let input = binding.rpc.input();
    let blank = body.iter().all(u8::is_ascii_whitespace);
    let mut object = serde_json::Map::new();
    match binding.body.as_str() {
        "" => {}
        "*" if blank => {}
        "*" => match serde_json::from_slice(body) {
            Ok(serde_json::Value::Object(map)) => object = map,
            Ok(_) => return Err(invalid_field("body", "the body must be a JSON object").into()),
            Err(e) => {
                return Err(invalid_field("body", format!("the body is not JSON: {e}")).into());
            }
        },
        field => {
            if !blank && let Some(descriptor) = input.get_field_by_name(field) {
                let value = serde_json::from_slice(body).map_err(|e| {
                    Refused::from(invalid_field("body", format!("the body is not JSON: {e}")))
                })?;
                object.insert(descriptor.json_name().to_owned(), value);
            }
        }
    }
    if object.is_empty()
        && query.is_none_or(str::is_empty)
        && let Some(encoded) = strings_alone(&input, fields, key)
    {
        return Ok(encoded);
    }
    if let Some(query) = query {
        let pairs: Vec<(String, String)> =
            axum::extract::Query::<Vec<(String, String)>>::try_from_uri(
                &format!("/?{query}").parse().unwrap_or_default(),
            )
            .map(|q| q.0)
            .map_err(|e| Refused::from(invalid_field("query", e.body_text())))?;
        for (name, value) in pairs {
            let Some(field) = input
                .get_field_by_name(&name)
                .or_else(|| input.get_field_by_json_name(&name))
                .filter(|_| binding.body != "*")
            else {
                return Err(invalid_field(
                    &name,
                    format!("{} takes no query parameter {name:?}", binding.rpc.name()),
                )
                .into());
            };
            let value = match (field.kind(), value.as_str()) {
                (prost_reflect::Kind::Bool, "true") => serde_json::Value::Bool(true),
                (prost_reflect::Kind::Bool, "false") => serde_json::Value::Bool(false),
                _ => serde_json::Value::String(value),
            };
            // Each parameter is checked alone, so that a bad one is named.
            let mut alone = serde_json::Map::new();
            let single = if field.is_list() {
                serde_json::Value::Array(vec![value.clone()])
            } else {
                value.clone()
            };
            alone.insert(field.json_name().to_owned(), single);
            if let Err(e) =
                DynamicMessage::deserialize(input.clone(), serde_json::Value::Object(alone))
            {
                return Err(invalid_field(&name, format!("{name}: {e}")).into());
            }
            let slot = object.entry(field.json_name().to_owned());
            if field.is_list() {
                let list = slot.or_insert_with(|| serde_json::Value::Array(Vec::new()));
                if let serde_json::Value::Array(items) = list {
                    items.push(value);
                }
            } else {
                *slot.or_insert(serde_json::Value::Null) = value;
            }
        }
    }
    for (field, value) in fields {
        let value = serde_json::Value::String(value.clone());
        match field.split_once('.') {
            None => {
                if let Some(descriptor) = input.get_field_by_name(field) {
                    object.insert(descriptor.json_name().to_owned(), value);
                }
            }
            // A field of a message field (`schedule.name`): set inside the
            // message the body gave, or a new one.
            Some((outer, _)) => {
                let (Some(outer), Some(inner)) = (
                    input.get_field_by_name(outer),
                    super::binding::path_field(&input, field),
                ) else {
                    continue;
                };
                let slot = object
                    .entry(outer.json_name().to_owned())
                    .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
                if let serde_json::Value::Object(message) = slot {
                    message.insert(inner.json_name().to_owned(), value);
                }
            }
        }
    }
    if let (Some(key), Some(field)) = (key, input.get_field_by_name("request_id")) {
        object.insert(
            field.json_name().to_owned(),
            serde_json::Value::String(key.to_owned()),
        );
    }
    let message =
        DynamicMessage::deserialize(input, serde_json::Value::Object(object)).map_err(|e| {
            Refused::from(invalid_field(
                "body",
                format!("not a valid {}: {e}", binding.rpc.input().name()),
            ))
        })?;
    Ok(message.encode_to_vec().into())
}

/// The request when only path fields and an `Idempotency-Key` make it (a
/// Get, a Delete, a create with an empty body) and each of them is a plain
/// string field of the request itself: encoded as the JSON mapping would
/// have it, without building the message. None when anything else is
/// asked for, which then goes the general way.
fn strings_alone(
    input: &prost_reflect::MessageDescriptor,
    fields: &[(String, String)],
    key: Option<&str>,
) -> Option<Bytes> {
    let plain = |name: &str| {
        input.get_field_by_name(name).filter(|f| {
            f.kind() == prost_reflect::Kind::String && !f.is_list() && !f.supports_presence()
        })
    };
    let mut set = Vec::with_capacity(fields.len() + 1);
    for (name, value) in fields {
        set.push((plain(name)?.number(), value.as_str()));
    }
    if let Some(key) = key {
        set.push((plain("request_id")?.number(), key));
    }
    // The last value of a field wins, as in the message; fields go out in
    // number order, as an encoded message has them.
    set.reverse();
    set.sort_by_key(|(number, _)| *number);
    set.dedup_by_key(|(number, _)| *number);
    let mut out = Vec::new();
    for (number, value) in set.into_iter().filter(|(_, v)| !v.is_empty()) {
        prost::encoding::encode_key(number, prost::encoding::WireType::LengthDelimited, &mut out);
        prost::encoding::encode_varint(value.len() as u64, &mut out);
        out.extend_from_slice(value.as_bytes());
    }
    Some(out.into())
}

/// The request_id an `Idempotency-Key` header names: a UUID, quoted as a
/// structured-field string or bare.
pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Refused> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let malformed = || {
        Refused::from(invalid_field(
            "Idempotency-Key",
            "Idempotency-Key must be a UUID, e.g. \"4b5e7a1c-0d3f-4e2a-9b8c-1f2e3d4c5b6a\"",
        ))
    };
    let text = value.to_str().map_err(|_| malformed())?.trim();
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    if uuid::Uuid::parse_str(text).is_err() {
        return Err(malformed());
    }
    Ok(Some(text.to_owned()))
}

/// The `Last-Event-ID` a reconnecting event stream sends.
pub(super) fn last_event_id(headers: &HeaderMap) -> Result<Option<i64>, Refused> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| {
            invalid_field(
                "Last-Event-ID",
                "Last-Event-ID must be the id of an event this stream sent",
            )
            .into()
        })
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use prost_reflect::DynamicMessage;

    use super::strings_alone;

    /// What the JSON mapping encodes for `object` as a message `name`.
    fn mapped(name: &str, object: serde_json::Value) -> Vec<u8> {
        let input = crate::pb::descriptor_pool()
            .get_message_by_name(name)
            .expect("a known message");
        DynamicMessage::deserialize(input, object)
            .expect("a valid request")
            .encode_to_vec()
    }

    fn alone(name: &str, fields: &[(&str, &str)], key: Option<&str>) -> Option<Vec<u8>> {
        let input = crate::pb::descriptor_pool()
            .get_message_by_name(name)
            .expect("a known message");
        let fields: Vec<(String, String)> = fields
            .iter()
            .map(|(f, v)| ((*f).to_owned(), (*v).to_owned()))
            .collect();
        strings_alone(&input, &fields, key).map(|b| b.to_vec())
    }

    #[test]
    fn path_fields_encode_as_the_mapping_does() {
        let get = "google.longrunning.GetOperationRequest";
        assert_eq!(
            alone(get, &[("name", "operations/abc")], None),
            Some(mapped(get, serde_json::json!({"name": "operations/abc"})))
        );
        // Several fields go out in number order (name is 4, filter 1).
        let list = "google.longrunning.ListOperationsRequest";
        assert_eq!(
            alone(list, &[("name", "operations"), ("filter", "done")], None),
            Some(mapped(
                list,
                serde_json::json!({"name": "operations", "filter": "done"})
            ))
        );
        // An Idempotency-Key is the request_id; an empty value is unset.
        let sleep = "longrun.v1.SleepRequest";
        let key = "4b5e7a1c-0d3f-4e2a-9b8c-1f2e3d4c5b6a";
        assert_eq!(
            alone(sleep, &[], Some(key)),
            Some(mapped(sleep, serde_json::json!({"requestId": key})))
        );
        assert_eq!(alone(get, &[("name", "")], None), Some(Vec::new()));
    }

    #[test]
    fn anything_but_plain_strings_goes_the_general_way() {
        // Not a field, a number, and a field of a field.
        let list = "google.longrunning.ListOperationsRequest";
        assert_eq!(alone(list, &[("nonesuch", "x")], None), None);
        assert_eq!(alone(list, &[("page_size", "5")], None), None);
        let update = "longrun.v1.UpdateScheduleRequest";
        assert_eq!(
            alone(update, &[("schedule.name", "schedules/x")], None),
            None
        );
    }
}
