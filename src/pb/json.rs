//! Messages in the proto3 JSON mapping, whatever they hold.
//!
//! prost-reflect writes the mapping, but refuses a message that holds an
//! `Any` whose type the descriptors do not know: one unknown response
//! would blank a whole page. Here such an `Any` is written as
//! `{"@type": ..., "value": "<base64 of its bytes>"}` instead, and only the
//! part of a message that holds one is written field by field; the rest is
//! prost-reflect's.

use base64::Engine as _;
use prost_reflect::{DynamicMessage, Kind, MapKey, ReflectMessage, Value};
use serde_json::{Map, Value as Json};

/// The full name of `google.protobuf.Any`.
const ANY: &str = "google.protobuf.Any";

/// `message` in the proto3 JSON mapping, written straight to its bytes
/// (no tree of values in between); never fails.
pub fn to_vec(message: &DynamicMessage) -> Vec<u8> {
    if message.descriptor().full_name() != ANY
        && let Ok(bytes) = serde_json::to_vec(message)
    {
        return bytes;
    }
    serde_json::to_vec(&self::message(message)).unwrap_or_else(|_| b"null".to_vec())
}

/// `message` in the proto3 JSON mapping as text; never fails.
pub fn to_string(message: &DynamicMessage) -> String {
    // serde_json writes only UTF-8.
    String::from_utf8(to_vec(message)).unwrap_or_default()
}

/// `message` in the proto3 JSON mapping; never fails.
pub fn message(message: &DynamicMessage) -> Json {
    if message.descriptor().full_name() == ANY {
        return any(message);
    }
    if let Ok(json) = serde_json::to_value(message) {
        return json;
    }
    // Something below holds an Any of an unknown type: the fields that
    // hold messages are written one by one, the rest as usual.
    let mut shallow = message.clone();
    let mut nested = Vec::new();
    for field in message.descriptor().fields() {
        if holds_messages(&field.kind(), field.is_map()) && message.has_field(&field) {
            nested.push((field.clone(), message.get_field(&field).into_owned()));
            shallow.clear_field(&field);
        }
    }
    let mut object = match serde_json::to_value(&shallow) {
        Ok(Json::Object(object)) => object,
        _ => Map::new(),
    };
    for (field, value) in nested {
        object.insert(field.json_name().to_owned(), value_json(&value));
    }
    Json::Object(object)
}

/// Whether a field of `kind` holds messages (for a map: as its values).
fn holds_messages(kind: &Kind, is_map: bool) -> bool {
    match kind {
        Kind::Message(entry) if is_map => {
            matches!(entry.map_entry_value_field().kind(), Kind::Message(_))
        }
        Kind::Message(_) => true,
        _ => false,
    }
}

/// A message field's value: a message, or a list or map of them.
fn value_json(value: &Value) -> Json {
    match value {
        Value::Message(m) => message(m),
        Value::List(items) => Json::Array(items.iter().map(value_json).collect()),
        Value::Map(entries) => Json::Object(
            entries
                .iter()
                .map(|(key, value)| (map_key(key), value_json(value)))
                .collect(),
        ),
        // Only fields that hold messages come here.
        _ => Json::Null,
    }
}

fn map_key(key: &MapKey) -> String {
    match key {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

/// An Any: its message's fields with `@type`, or `{"@type", "value"}` for
/// a type with a JSON form of its own (a Duration, say), or for a type
/// the descriptors do not know (then the value is the bytes, in base64).
fn any(any: &DynamicMessage) -> Json {
    let type_url = any
        .get_field_by_name("type_url")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let bytes = any
        .get_field_by_name("value")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    let name = type_url.rsplit('/').next().unwrap_or_default();
    let inner = any
        .descriptor()
        .parent_pool()
        .get_message_by_name(name)
        .and_then(|descriptor| DynamicMessage::decode(descriptor, bytes.as_ref()).ok());
    let Some(inner) = inner else {
        let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
        return serde_json::json!({ "@type": type_url, "value": encoded });
    };
    let special = inner
        .descriptor()
        .full_name()
        .starts_with("google.protobuf.");
    match message(&inner) {
        Json::Object(fields) if !special => {
            let mut object = Map::with_capacity(fields.len() + 1);
            object.insert("@type".into(), Json::String(type_url));
            object.extend(fields);
            Json::Object(object)
        }
        other => serde_json::json!({ "@type": type_url, "value": other }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::google::longrunning::{ListOperationsResponse, Operation, operation};
    use prost::Message;

    fn dynamic<M: prost::Message + prost::Name>(m: &M) -> DynamicMessage {
        let descriptor = crate::pb::descriptor_pool()
            .get_message_by_name(&M::full_name())
            .unwrap();
        DynamicMessage::decode(descriptor, m.encode_to_vec().as_slice()).unwrap()
    }

    #[test]
    fn an_unknown_any_is_written_in_base64_and_blanks_nothing_else() {
        let unknown = prost_types::Any {
            type_url: "type.googleapis.com/acme.v1.Secret".into(),
            value: vec![1, 2, 3],
        };
        let known = prost_types::Any {
            type_url: "type.googleapis.com/google.protobuf.StringValue".into(),
            value: "hi".to_owned().encode_to_vec(),
        };
        let page = ListOperationsResponse {
            operations: vec![
                Operation {
                    name: "operations/a".into(),
                    done: true,
                    result: Some(operation::Result::Response(unknown)),
                    ..Operation::default()
                },
                Operation {
                    name: "operations/b".into(),
                    done: true,
                    result: Some(operation::Result::Response(known)),
                    ..Operation::default()
                },
            ],
            next_page_token: "next".into(),
            ..ListOperationsResponse::default()
        };
        let json = message(&dynamic(&page));
        assert_eq!(json["nextPageToken"], "next");
        let ops = json["operations"].as_array().unwrap();
        assert_eq!(ops[0]["name"], "operations/a");
        assert_eq!(
            ops[0]["response"],
            serde_json::json!({"@type": "type.googleapis.com/acme.v1.Secret", "value": "AQID"})
        );
        assert_eq!(
            ops[1]["response"],
            serde_json::json!({"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "hi"})
        );
    }
}
