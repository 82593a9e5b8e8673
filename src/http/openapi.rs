//! The OpenAPI 3.1 document of the HTTP/JSON face, generated from the same
//! bindings the face serves and from the messages' descriptors (the proto3
//! JSON mapping: 64-bit integers as strings, Timestamps as RFC 3339, enums
//! by name), so that it cannot drift from what is served.

use std::collections::BTreeMap;

use prost::Name;
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Value, json};

use super::binding::{Binding, Bindings, Shape};
use crate::pb::google::longrunning::Operation;

/// The document served at `/v1/openapi.json`.
pub fn document(bindings: &Bindings) -> Value {
    let mut schemas = BTreeMap::new();
    let mut paths = serde_json::Map::new();
    for binding in bindings.iter() {
        let (path, parameters) = binding.template.openapi_path();
        let entry = paths
            .entry(path)
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        entry[binding.method.as_str().to_ascii_lowercase()] =
            operation(binding, &parameters, &mut schemas);
    }
    schemas.insert("Error".into(), error_schema());
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "longrun",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Long-running operations over HTTP/JSON: the same operations, \
                states, errors, tenants and idempotency as the gRPC API. Creates answer \
                202 with a Location; poll it, honouring Retry-After, or follow \
                :result to a 303, or stream :watch as Server-Sent Events.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    })
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn json_content(schema: Value) -> Value {
    json!({"application/json": {"schema": schema}})
}

fn header(description: &str) -> Value {
    json!({"description": description, "schema": {"type": "string"}})
}

/// One bound method as an OpenAPI operation.
fn operation(
    binding: &Binding,
    path_parameters: &[String],
    schemas: &mut BTreeMap<String, Value>,
) -> Value {
    let input = binding.rpc.input();
    let output = binding.rpc.output();
    let mut parameters: Vec<Value> = path_parameters
        .iter()
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    let path_fields: Vec<&str> = binding.template.fields().collect();
    if binding.body != "*" {
        for field in input.fields() {
            let bound = path_fields.contains(&field.name()) || field.name() == binding.body;
            if bound || matches!(field.kind(), Kind::Message(_)) {
                continue;
            }
            parameters.push(json!({
                "name": field.name(),
                "in": "query",
                "required": false,
                "schema": field_schema(&field, schemas),
            }));
        }
    }
    let idempotent = input.get_field_by_name("request_id").is_some();
    if idempotent {
        parameters.push(json!({
            "name": "Idempotency-Key", "in": "header", "required": false,
            "description": "A UUID; the request_id. A repeat returns the same operation; \
                the same key with another body is 422.",
            "schema": {"type": "string", "format": "uuid"},
        }));
    }
    if binding.shape == Shape::Events {
        parameters.push(json!({
            "name": "Last-Event-ID", "in": "header", "required": false,
            "description": "The id of the last event received: resumes after it.",
            "schema": {"type": "string"},
        }));
    }
    let operation_ref = schema_ref(&output_or_operation(binding), schemas);
    let polled = json!({
        "Retry-After": header("Seconds to wait before polling again, while not done"),
    });
    let created = json!({
        "description": "Accepted: the operation, created",
        "headers": {
            "Location": header("The operation's URL"),
            "Retry-After": header("Seconds to wait before polling"),
        },
        "content": json_content(operation_ref.clone()),
    });
    let mut responses = serde_json::Map::new();
    match binding.shape {
        Shape::Unary if binding.creates() => {
            responses.insert("202".into(), created);
        }
        Shape::Upload => {
            responses.insert("202".into(), created);
        }
        Shape::Unary if output.full_name() == Operation::full_name() => {
            responses.insert(
                "200".into(),
                json!({"description": "The operation", "headers": polled,
                       "content": json_content(operation_ref)}),
            );
        }
        Shape::Unary => {
            let schema = schema_ref(&output, schemas);
            responses.insert(
                "200".into(),
                json!({"description": output.name(), "content": json_content(schema)}),
            );
        }
        Shape::Result => {
            responses.insert(
                "200".into(),
                json!({"description": "Succeeded: the response", "content": json_content(json!({"type": "object"}))}),
            );
            responses.insert(
                "202".into(),
                json!({"description": "Not done yet: the operation", "headers": polled,
                       "content": json_content(operation_ref)}),
            );
            responses.insert(
                "303".into(),
                json!({"description": "Succeeded: the result is at Location",
                       "headers": {"Location": header("The result's URL")}}),
            );
        }
        Shape::Download => {
            let file = json!({"schema": {"type": "string", "contentMediaType": "application/octet-stream"}});
            responses.insert(
                "200".into(),
                json!({"description": "The file, streamed",
                       "content": {"text/csv": file, "application/json": file,
                                   "application/pdf": file, "application/octet-stream": file}}),
            );
        }
        Shape::Events => {
            responses.insert(
                "200".into(),
                json!({"description": "Server-Sent Events: one per message (its JSON), \
                        with the operation's version as the id; an `error` event ends a \
                        failed stream",
                       "content": {"text/event-stream": {"schema": {"type": "string"}}}}),
            );
        }
    }
    let error = json!({"description": "Google's JSON error (AIP-193)", "content": json_content(reference("Error"))});
    for code in ["400", "401", "403", "404", "default"] {
        responses.insert(code.into(), error.clone());
    }
    let mut operation = json!({
        "operationId": operation_id(binding),
        "summary": format!("{} ({})", binding.rpc.name(), binding.rpc.parent_service().full_name()),
        "parameters": parameters,
        "responses": responses,
    });
    match (binding.shape, binding.body.as_str()) {
        (Shape::Upload, _) => {
            let raw = json!({"schema": {"type": "string"}});
            operation["requestBody"] = json!({
                "required": true,
                "content": {"text/csv": raw, "application/octet-stream": raw},
            });
        }
        (_, "*") => {
            operation["requestBody"] = json!({
                "required": false,
                "content": json_content(schema_ref(&input, schemas)),
            });
        }
        (_, "") => {}
        (_, field) => {
            if let Some(field) = input.get_field_by_name(field) {
                operation["requestBody"] = json!({
                    "required": true,
                    "content": json_content(field_schema(&field, schemas)),
                });
            }
        }
    }
    operation
}

/// The name a client generator gives the operation.
pub fn operation_id(binding: &Binding) -> String {
    let base = format!(
        "{}.{}",
        binding.rpc.parent_service().name(),
        binding.rpc.name()
    );
    match binding.shape {
        Shape::Result => format!("{base}Result"),
        _ => base,
    }
}

/// The message an operation-shaped answer holds: the Operation.
fn output_or_operation(binding: &Binding) -> MessageDescriptor {
    let output = binding.rpc.output();
    if binding.shape == Shape::Result || binding.shape == Shape::Upload || binding.creates() {
        binding
            .rpc
            .parent_pool()
            .get_message_by_name(Operation::full_name().as_str())
            .unwrap_or(output)
    } else {
        output
    }
}

/// A reference to a message's schema, generating it (and the messages it
/// uses) on first sight; well-known types inline as their JSON form.
fn schema_ref(message: &MessageDescriptor, schemas: &mut BTreeMap<String, Value>) -> Value {
    if let Some(known) = well_known(message.full_name()) {
        return known;
    }
    let name = message.full_name().to_owned();
    if !schemas.contains_key(&name) {
        // A placeholder first, so that recursive messages terminate.
        schemas.insert(name.clone(), Value::Null);
        let mut properties = serde_json::Map::new();
        for field in message.fields() {
            properties.insert(field.json_name().to_owned(), field_schema(&field, schemas));
        }
        schemas.insert(
            name.clone(),
            json!({"type": "object", "properties": properties}),
        );
    }
    reference(&name)
}

fn field_schema(field: &FieldDescriptor, schemas: &mut BTreeMap<String, Value>) -> Value {
    if field.is_map()
        && let Kind::Message(entry) = field.kind()
    {
        let value = entry.map_entry_value_field();
        return json!({"type": "object", "additionalProperties": kind_schema(&value.kind(), schemas)});
    }
    let single = kind_schema(&field.kind(), schemas);
    if field.is_list() {
        json!({"type": "array", "items": single})
    } else {
        single
    }
}

fn kind_schema(kind: &Kind, schemas: &mut BTreeMap<String, Value>) -> Value {
    match kind {
        Kind::Double | Kind::Float => json!({"type": "number"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        Kind::Uint32 | Kind::Fixed32 => json!({"type": "integer", "format": "uint32"}),
        // The proto3 JSON mapping writes 64-bit integers as strings.
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({"type": "string", "format": "int64"}),
        Kind::Uint64 | Kind::Fixed64 => json!({"type": "string", "format": "uint64"}),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
        Kind::Enum(e) => {
            let names: Vec<String> = e.values().map(|v| v.name().to_owned()).collect();
            json!({"type": "string", "enum": names})
        }
        Kind::Message(m) => schema_ref(m, schemas),
    }
}

/// The JSON forms of the well-known types.
fn well_known(name: &str) -> Option<Value> {
    Some(match name {
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => {
            json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$", "examples": ["30s"]})
        }
        "google.protobuf.Any" => json!({
            "type": "object",
            "properties": {"@type": {"type": "string"}},
            "required": ["@type"],
            "additionalProperties": true,
        }),
        "google.protobuf.Empty" | "google.protobuf.Struct" => json!({"type": "object"}),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.FieldMask" => json!({"type": "string"}),
        _ => return None,
    })
}

/// Google's JSON error body.
fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "status"],
                "properties": {
                    "code": {"type": "integer", "description": "The HTTP status"},
                    "message": {"type": "string"},
                    "status": {"type": "string", "description": "The gRPC code's name"},
                    "details": {"type": "array", "items": well_known("google.protobuf.Any")},
                },
            },
        },
    })
}
