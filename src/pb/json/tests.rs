//! The JSON writer against prost-reflect's and prost-types' own output,
//! and against the wire's rules for what a decoder keeps.

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
    let ours = json(m);
    assert_eq!(ours, serde_json::to_value(&written).unwrap());
    ours
}

fn descriptor_of<M: prost::Name>() -> MessageDescriptor {
    crate::pb::descriptor_pool()
        .get_message_by_name(&M::full_name())
        .unwrap()
}

/// Ours, as text.
fn text<M: prost::Message + prost::Name>(m: &M) -> String {
    String::from_utf8(from_bytes(&descriptor_of::<M>(), &m.encode_to_vec()).unwrap()).unwrap()
}

/// Ours, as values.
fn json<M: prost::Message + prost::Name>(m: &M) -> serde_json::Value {
    value(&descriptor_of::<M>(), &m.encode_to_vec()).unwrap()
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
    let written = text(&status);
    let unpacked = written.matches("\"code\":2").count();
    assert!(
        (MAX_DEPTH / 3..=MAX_DEPTH).contains(&unpacked),
        "{unpacked} levels unpacked"
    );
    // Still within what a JSON parser takes.
    assert!(json(&status).is_object());
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
    let page = json(&page);
    assert_eq!(page["nextPageToken"], "next");
    let ops = page["operations"].as_array().unwrap();
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

#[test]
fn timestamps_are_written_as_prost_types_writes_them() {
    let mut seconds: Vec<i64> = vec![
        *TIMESTAMP_SECONDS.start(),
        *TIMESTAMP_SECONDS.end(),
        -1,
        0,
        951_782_400,    // 2000-02-29
        4_107_542_400,  // 2100-03-01
        -2_208_988_800, // 1900-01-01
    ];
    // Every 15 days and a few hours, across 1600 to 2400.
    seconds.extend((-11_676_096_000i64..13_569_465_600).step_by(1_332_001));
    for seconds in seconds {
        for nanos in [0, 1, 5_000, 120_000_000, 999_999_999] {
            let mut ours = Vec::new();
            assert!(write_timestamp(&mut ours, seconds, nanos));
            let theirs = format!("\"{}\"", prost_types::Timestamp { seconds, nanos });
            assert_eq!(String::from_utf8(ours).unwrap(), theirs);
        }
    }
    assert!(!write_timestamp(&mut Vec::new(), 0, -1));
    assert!(!write_timestamp(&mut Vec::new(), 0, 1_000_000_000));
}

#[test]
fn the_wire_is_read_as_a_decoder_reads_it() {
    use crate::pb::google::rpc::{ErrorInfo, Status};
    use crate::pb::longrun::v1 as api;
    let operation = descriptor_of::<Operation>();
    let mut bytes = Operation {
        name: "operations/first".into(),
        result: Some(operation::Result::Response(any(&api::SleepResponse {
            steps: 1,
            ..api::SleepResponse::default()
        }))),
        ..Operation::default()
    }
    .encode_to_vec();
    // Appended: a later name (the last wins), an error (the oneof's
    // last member wins), a metadata Any given twice (merged), and
    // fields the descriptor does not know (skipped, a group too).
    bytes.extend(
        Operation {
            name: "operations/second".into(),
            metadata: Some(prost_types::Any {
                type_url: "type.googleapis.com/longrun.v1.OperationMetadata".into(),
                value: Vec::new(),
            }),
            result: Some(operation::Result::Error(Status {
                code: 5,
                ..Status::default()
            })),
            ..Operation::default()
        }
        .encode_to_vec(),
    );
    bytes.extend(
        Operation {
            metadata: Some(any(&api::OperationMetadata {
                attempt: 3,
                ..api::OperationMetadata::default()
            })),
            ..Operation::default()
        }
        .encode_to_vec(),
    );
    bytes.extend([0xf8, 0x06, 0x01]); // field 111, varint 1
    bytes.extend([0x83, 0x07, 0x08, 0x01, 0x84, 0x07]); // field 112, a group
    let ours: serde_json::Value =
        serde_json::from_slice(&from_bytes(&operation, &bytes).unwrap()).unwrap();
    let decoded = DynamicMessage::decode(operation.clone(), bytes.as_slice()).unwrap();
    assert_eq!(ours, serde_json::to_value(&decoded).unwrap());
    assert_eq!(ours["name"], "operations/second");
    assert_eq!(ours["error"]["code"], 5);
    assert_eq!(ours["metadata"]["attempt"], 3);
    assert!(ours.get("response").is_none());

    // A map given entry by entry, a key twice: the last value wins.
    let info = descriptor_of::<ErrorInfo>();
    let mut bytes = Vec::new();
    for (key, value) in [("a", "1"), ("b", "2"), ("a", "3")] {
        bytes.extend(
            ErrorInfo {
                metadata: [(key.to_owned(), value.to_owned())].into(),
                ..ErrorInfo::default()
            }
            .encode_to_vec(),
        );
    }
    let ours: serde_json::Value =
        serde_json::from_slice(&from_bytes(&info, &bytes).unwrap()).unwrap();
    assert_eq!(ours, serde_json::json!({"metadata": {"a": "3", "b": "2"}}));

    // Bytes that are not the message: nothing, at the top; base64 in
    // an Any.
    assert!(from_bytes(&operation, &[0x0a, 0x05, b'x']).is_none());
    assert!(
        from_bytes(&operation, &[0x0a, 0x01, 0xff]).is_none(),
        "not UTF-8"
    );
    let broken = Operation {
        name: "operations/x".into(),
        metadata: Some(prost_types::Any {
            type_url: "type.googleapis.com/longrun.v1.OperationMetadata".into(),
            value: vec![0x08],
        }),
        ..Operation::default()
    };
    let ours = json(&broken);
    assert_eq!(ours["name"], "operations/x");
    assert_eq!(ours["metadata"]["value"], "CA==");
}

#[test]
fn any_bytes_are_written_as_prost_reflect_reads_them_or_refused() {
    use crate::pb::longrun::v1 as api;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let descriptor = descriptor_of::<Operation>();
    let seed = Operation {
        name: "operations/a".into(),
        metadata: Some(any(&api::OperationMetadata {
            kind: "k".into(),
            progress_percent: 7,
            create_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 1,
            }),
            ..api::OperationMetadata::default()
        })),
        done: true,
        result: Some(operation::Result::Response(any(&api::SleepResponse {
            steps: 2,
            ..api::SleepResponse::default()
        }))),
    }
    .encode_to_vec();
    let mut rng = StdRng::seed_from_u64(30);
    let (mut compared, mut refused) = (0, 0);
    for round in 0..20_000 {
        // A valid message with a few bytes changed, cut short or grown;
        // or bytes at random.
        let mut bytes = seed.clone();
        if round % 4 == 3 {
            bytes = (0..rng.random_range(0..64)).map(|_| rng.random()).collect();
        } else {
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..bytes.len());
                bytes[at] = rng.random();
            }
            if round % 4 == 1 {
                bytes.truncate(rng.random_range(0..bytes.len()));
            }
            if round % 4 == 2 {
                bytes.extend((0..rng.random_range(1..8)).map(|_| rng.random::<u8>()));
            }
        }
        let ours = from_bytes(&descriptor, &bytes);
        let Ok(decoded) = DynamicMessage::decode(descriptor.clone(), bytes.as_slice()) else {
            // What prost-reflect cannot read, ours need not either; it
            // must only not panic.
            refused += usize::from(ours.is_none());
            continue;
        };
        let ours = ours.unwrap_or_else(|| panic!("refused what prost-reflect reads: {bytes:?}"));
        // prost-reflect refuses to write an Any it cannot unpack; ours
        // writes it as base64, so only the rest can be compared then.
        if let Ok(theirs) = serde_json::to_value(&decoded) {
            let ours: serde_json::Value = serde_json::from_slice(&ours).unwrap();
            assert_eq!(ours, theirs, "{bytes:?}");
            compared += 1;
        }
    }
    assert!(compared > 500, "{compared} compared");
    assert!(refused > 500, "{refused} refused");
}
