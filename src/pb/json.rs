//! Messages in the proto3 JSON mapping, whatever they hold.
//!
//! prost-reflect has the mapping, but it refuses a message holding an
//! `Any` whose type the descriptors do not know (one unknown response
//! would blank a whole page), and it writes each `Timestamp`, `Duration`
//! and `Any` by encoding it and decoding it again, which made writing an
//! Operation cost more than everything else an HTTP Get does. So messages
//! are written here, straight to bytes, by the same rules prost-reflect
//! follows (its default options: camelCase names, fields at their default
//! left out, 64-bit integers as strings, enums by name), with each `Any`
//! unpacked once (as `{"@type": ..., "value": "<base64>"}` when its type is
//! unknown). The rarer well-known types (wrappers, Struct, FieldMask, ...)
//! are still prost-reflect's; the tests hold the two to the same output.

use std::io::Write as _;

use base64::Engine as _;
use prost_reflect::{DynamicMessage, Kind, MapKey, ReflectMessage, Value};
use serde_json::Value as Json;

/// The full name of `google.protobuf.Any`.
const ANY: &str = "google.protobuf.Any";

/// How deep messages are written before an Any is left as its bytes: far
/// past any real message, and shallow enough that the JSON stays within
/// what common parsers take (serde_json's own limit is 128 levels).
const MAX_DEPTH: usize = 64;

/// The range of a Timestamp the mapping can write: years 1 to 9999.
const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;
/// The largest Duration the mapping can write: about 10,000 years.
const DURATION_SECONDS: u64 = 315_576_000_000;

/// `message` in the proto3 JSON mapping, written straight to its bytes
/// (no tree of values in between); never fails.
pub fn to_vec(message: &DynamicMessage) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    write(&mut out, message, 0);
    out
}

/// `message` in the proto3 JSON mapping as text; never fails.
pub fn to_string(message: &DynamicMessage) -> String {
    // Everything here writes UTF-8 only.
    String::from_utf8(to_vec(message)).unwrap_or_default()
}

/// `message` in the proto3 JSON mapping, as a tree of values; never fails.
pub fn message(message: &DynamicMessage) -> Json {
    serde_json::from_slice(&to_vec(message)).unwrap_or(Json::Null)
}

/// Appends `message`: an object of its set fields, or a well-known type's
/// own form.
fn write(out: &mut Vec<u8>, message: &DynamicMessage, depth: usize) {
    let depth = depth + 1;
    match message.descriptor().full_name() {
        ANY => return write_any(out, message, depth),
        "google.protobuf.Timestamp" => return write_time(out, message, true),
        "google.protobuf.Duration" => return write_time(out, message, false),
        name if name.starts_with("google.protobuf.") => return delegate(out, message),
        _ => {}
    }
    out.push(b'{');
    for (i, (field, value)) in message.fields().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, field.json_name());
        out.push(b':');
        write_value(out, value, &field.kind(), depth);
    }
    out.push(b'}');
}

/// Appends a field's value, of `kind` (for a list, its items' kind; for a
/// map, its entries').
fn write_value(out: &mut Vec<u8>, value: &Value, kind: &Kind, depth: usize) {
    match value {
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::I32(n) => number(out, n),
        Value::U32(n) => number(out, n),
        Value::I64(n) => quoted(out, n),
        Value::U64(n) => quoted(out, n),
        Value::F32(f) if f.is_finite() => number(out, f),
        Value::F64(f) if f.is_finite() => number(out, f),
        Value::F32(f) => not_finite(out, f64::from(*f)),
        Value::F64(f) => not_finite(out, *f),
        Value::String(text) => string(out, text),
        Value::Bytes(bytes) => write_base64(out, bytes),
        Value::EnumNumber(n) => match kind {
            Kind::Enum(e) if e.full_name() == "google.protobuf.NullValue" => {
                out.extend_from_slice(b"null");
            }
            Kind::Enum(e) => match e.get_value(*n) {
                Some(known) => string(out, known.name()),
                None => number(out, n),
            },
            _ => number(out, n),
        },
        Value::Message(m) => write(out, m, depth),
        Value::List(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item, kind, depth);
            }
            out.push(b']');
        }
        Value::Map(entries) => {
            let values = match kind {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                other => other.clone(),
            };
            out.push(b'{');
            for (i, (key, value)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(out, &map_key(key));
                out.push(b':');
                write_value(out, value, &values, depth);
            }
            out.push(b'}');
        }
    }
}

/// Appends `message` as prost-reflect writes it (only well-known types,
/// which hold no Any, come here).
fn delegate(out: &mut Vec<u8>, message: &DynamicMessage) {
    let start = out.len();
    if serde_json::to_writer(&mut *out, message).is_err() {
        out.truncate(start);
        out.extend_from_slice(b"null");
    }
}

/// Appends a number as JSON writes it.
fn number(out: &mut Vec<u8>, n: &impl serde::Serialize) {
    // Writing a number to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, n);
}

/// Appends a 64-bit integer as a string, as the mapping wants.
fn quoted(out: &mut Vec<u8>, n: &impl serde::Serialize) {
    out.push(b'"');
    number(out, n);
    out.push(b'"');
}

fn not_finite(out: &mut Vec<u8>, f: f64) {
    string(
        out,
        if f.is_nan() {
            "NaN"
        } else if f > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        },
    );
}

/// Appends `bytes` as a JSON string in standard base64 (which needs no
/// escaping).
fn write_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    out.extend_from_slice(
        base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .as_bytes(),
    );
    out.push(b'"');
}

/// Appends `text` as a JSON string.
fn string(out: &mut Vec<u8>, text: &str) {
    // Writing a str to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
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

/// Appends a Timestamp (RFC 3339, in UTC) or a Duration (`"1.5s"`), read
/// from its fields; `null` when out of the range the mapping allows.
fn write_time(out: &mut Vec<u8>, message: &DynamicMessage, timestamp: bool) {
    let seconds = message
        .get_field_by_number(1)
        .and_then(|v| v.as_i64())
        .unwrap_or_default();
    let nanos = message
        .get_field_by_number(2)
        .and_then(|v| v.as_i32())
        .unwrap_or_default();
    let written = if timestamp {
        TIMESTAMP_SECONDS.contains(&seconds)
            && write!(out, "\"{}\"", prost_types::Timestamp { seconds, nanos }).is_ok()
    } else {
        seconds.unsigned_abs() <= DURATION_SECONDS
            && nanos.unsigned_abs() < 1_000_000_000
            && write!(out, "\"{}\"", prost_types::Duration { seconds, nanos }).is_ok()
    };
    if !written {
        out.extend_from_slice(b"null");
    }
}

/// Appends an Any: its message's fields with `@type`, or `{"@type",
/// "value"}` for a type with a JSON form of its own (a Duration, say), or
/// for a type the descriptors do not know or one nested too deep (then the
/// value is the bytes, in base64).
fn write_any(out: &mut Vec<u8>, any: &DynamicMessage, depth: usize) {
    let type_url = any.get_field_by_number(1);
    let type_url = type_url
        .as_deref()
        .and_then(Value::as_str)
        .unwrap_or_default();
    let value = any.get_field_by_number(2);
    let bytes = value
        .as_deref()
        .and_then(Value::as_bytes)
        .map_or(&[][..], |b| b.as_ref());
    let name = type_url.rsplit('/').next().unwrap_or_default();
    // Each Any's value is decoded afresh, so the decoder's own nesting
    // limit does not bound a chain of Anys, each inside the one before
    // (a worker's error details, say): past `MAX_DEPTH` they stay bytes.
    let inner = any
        .descriptor()
        .parent_pool()
        .get_message_by_name(name)
        .filter(|_| depth <= MAX_DEPTH)
        .and_then(|descriptor| DynamicMessage::decode(descriptor, bytes).ok());
    out.extend_from_slice(b"{\"@type\":");
    string(out, type_url);
    let Some(inner) = inner else {
        out.extend_from_slice(b",\"value\":");
        write_base64(out, bytes);
        out.push(b'}');
        return;
    };
    if inner
        .descriptor()
        .full_name()
        .starts_with("google.protobuf.")
    {
        out.extend_from_slice(b",\"value\":");
        write(out, &inner, depth);
        out.push(b'}');
        return;
    }
    // The message's own fields follow `@type` in the same object.
    let start = out.len();
    write(out, &inner, depth);
    if out.len() - start <= 2 {
        // `{}`: nothing to add.
        out.truncate(start);
    } else {
        out[start] = b',';
        out.pop();
    }
    out.push(b'}');
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

    fn any<M: prost::Message + prost::Name>(m: &M) -> prost_types::Any {
        prost_types::Any {
            type_url: format!("type.googleapis.com/{}", M::full_name()),
            value: m.encode_to_vec(),
        }
    }

    #[test]
    fn known_anys_are_written_as_prost_reflect_writes_them() {
        use crate::pb::longrun::v1 as api;
        let metadata = api::OperationMetadata {
            kind: "longrun.v1.Diagnostics.Sleep".into(),
            progress_percent: 40,
            create_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5_000,
            }),
            attempt: 2,
            // An Any within an Any.
            request: Some(any(&api::SleepRequest {
                steps: 3,
                ..api::SleepRequest::default()
            })),
            ..api::OperationMetadata::default()
        };
        let response = api::ImportOrdersResponse {
            imported: 3,
            failed: 1,
            errors: vec![api::RowError {
                row: 7,
                column: "amount".into(),
                reason: crate::model::Reason::InvalidArgument.into(),
            }],
        };
        let duration = prost_types::Duration {
            seconds: 90,
            nanos: 0,
        };
        let ops = vec![
            Operation {
                name: "operations/a".into(),
                metadata: Some(any(&metadata)),
                done: true,
                result: Some(operation::Result::Response(any(&response))),
            },
            // An empty message, and a well-known type with its own form.
            Operation {
                name: "operations/b".into(),
                metadata: Some(any(&api::OperationMetadata::default())),
                result: Some(operation::Result::Response(any(&duration))),
                ..Operation::default()
            },
            Operation::default(),
        ];
        let page = ListOperationsResponse {
            operations: ops,
            next_page_token: "next".into(),
            ..ListOperationsResponse::default()
        };
        let ours = same_as_prost_reflect(&page);
        assert_eq!(ours["operations"][0]["metadata"]["progressPercent"], 40);
        assert_eq!(
            ours["operations"][1]["response"],
            serde_json::json!({"@type": "type.googleapis.com/google.protobuf.Duration", "value": "90s"})
        );
        same_as_prost_reflect(&metadata);
    }

    /// Ours against prost-reflect's, as values (objects have no order).
    fn same_as_prost_reflect<M: prost::Message + prost::Name>(m: &M) -> serde_json::Value {
        let written = dynamic(m);
        let ours: serde_json::Value = serde_json::from_slice(&to_vec(&written)).unwrap();
        assert_eq!(ours, serde_json::to_value(&written).unwrap());
        ours
    }

    #[test]
    fn every_kind_of_field_is_written_as_prost_reflect_writes_it() {
        use crate::pb::google::rpc;
        use crate::pb::longrun::v1 as api;
        // Doubles, finite or not, 64-bit integers, lists of messages.
        let limit = api::LimitUse {
            at_limit: -7,
            busiest: vec![api::SlotUse {
                key: "k\"ey\n".into(),
                running: 1 << 40,
            }],
            tokens: vec![0.5, 3.0, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, 1e300],
            ..api::LimitUse::default()
        };
        let ours = same_as_prost_reflect(&limit);
        assert_eq!(ours["atLimit"], "-7");
        // Bytes, in base64.
        same_as_prost_reflect(&api::ReadReportResponse {
            data: vec![0, 1, 2, 250, 251, 252],
        });
        // A map, an enum, and details of known types in a Status.
        let info = rpc::ErrorInfo {
            reason: crate::model::Reason::InvalidArgument.into(),
            domain: "longrun".into(),
            metadata: [
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), "2".to_owned()),
            ]
            .into(),
        };
        let status = rpc::Status {
            code: 3,
            message: "bad".into(),
            details: vec![
                any(&info),
                any(&prost_types::Duration {
                    seconds: -2,
                    nanos: -500_000_000,
                }),
            ],
        };
        let ours = same_as_prost_reflect(&status);
        assert_eq!(ours["details"][0]["metadata"]["b"], "2");
        assert_eq!(ours["details"][1]["value"], "-2.500s");
        same_as_prost_reflect(&api::OperationMetadata {
            state: api::State::Running as i32,
            end_time: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 123_000_000,
            }),
            last_attempt_error: Some(status),
            ..api::OperationMetadata::default()
        });
    }

    #[test]
    fn a_chain_of_anys_is_unpacked_only_so_deep() {
        use crate::pb::google::rpc::Status;
        // Each Status holds the one before as its only detail: a decoder
        // sees one level of bytes at a time, whatever the chain's length.
        let mut status = Status {
            code: 1,
            ..Status::default()
        };
        for _ in 0..300 {
            status = Status {
                code: 2,
                details: vec![any(&status)],
                ..Status::default()
            };
        }
        let written = to_string(&dynamic(&status));
        let unpacked = written.matches("\"code\":2").count();
        assert!(
            (MAX_DEPTH / 3..=MAX_DEPTH).contains(&unpacked),
            "{unpacked} levels unpacked"
        );
        // Still within what a JSON parser takes.
        assert!(message(&dynamic(&status)).is_object());
        // The rest is one Any left as its bytes, and the object closes.
        assert_eq!(written.matches("\"value\":\"").count(), 1);
        assert_eq!(written.matches('{').count(), written.matches('}').count());
        assert!(written.ends_with("}]}"));
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
