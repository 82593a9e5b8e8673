//! The generated protobuf messages and gRPC stubs, in one module, plus the
//! encoded descriptor set used by reflection and by JSON output, and
//! `convert`, which maps the model to these messages and back for every
//! face of the server (gRPC, webhooks, the CLI).

pub mod convert;
pub mod json;
pub mod schedule;

/// Google's shared API types.
#[allow(clippy::all, missing_docs)]
pub mod google {
    /// google.longrunning: Operation and the Operations service.
    pub mod longrunning {
        include!(concat!(env!("OUT_DIR"), "/google.longrunning.rs"));
    }
    /// google.rpc: Status and the error details.
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
    /// google.api: annotations referenced by the protos.
    pub mod api {
        include!(concat!(env!("OUT_DIR"), "/google.api.rs"));
    }
}

/// longrun's own API.
#[allow(clippy::all, missing_docs)]
pub mod longrun {
    /// Version 1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/longrun.v1.rs"));
    }
}

static POOL: std::sync::LazyLock<prost_reflect::DescriptorPool> = std::sync::LazyLock::new(|| {
    prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET)
        .expect("the build embeds a valid descriptor set")
});

/// A message in the proto3 JSON mapping, with Any values expanded through
/// the embedded descriptors (those of unknown types as base64; see
/// `json`).
pub fn to_json<M: prost::Message + prost::Name>(message: &M) -> serde_json::Value {
    let Some(descriptor) = POOL.get_message_by_name(&M::full_name()) else {
        return serde_json::Value::Null;
    };
    json::value(&descriptor, &message.encode_to_vec()).unwrap_or(serde_json::Value::Null)
}

/// Reads a message from its proto3 JSON mapping; the error says what is
/// wrong with the JSON.
pub fn from_json<M: prost::Message + prost::Name + Default>(json: &[u8]) -> Result<M, String> {
    let descriptor = POOL
        .get_message_by_name(&M::full_name())
        .ok_or_else(|| format!("{} is not a known message", M::full_name()))?;
    let mut reader = serde_json::Deserializer::from_slice(json);
    let dynamic = prost_reflect::DynamicMessage::deserialize(descriptor, &mut reader)
        .map_err(|e| e.to_string())?;
    reader.end().map_err(|e| e.to_string())?;
    dynamic.transcode_to::<M>().map_err(|e| e.to_string())
}

/// The descriptors of every message the server knows.
pub fn descriptor_pool() -> &'static prost_reflect::DescriptorPool {
    &POOL
}

/// A duration as the protobuf message.
pub fn duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

/// A protobuf Timestamp for a system time.
pub fn timestamp(time: std::time::SystemTime) -> prost_types::Timestamp {
    let (seconds, nanos) = match time.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i32),
        Err(e) => {
            let d = e.duration();
            let mut seconds = -(d.as_secs() as i64);
            let mut nanos = -(d.subsec_nanos() as i32);
            if nanos < 0 {
                seconds -= 1;
                nanos += 1_000_000_000;
            }
            (seconds, nanos)
        }
    };
    prost_types::Timestamp { seconds, nanos }
}

/// The system time of a protobuf Timestamp; None before 1970. Nanos out
/// of range are clamped into the second.
pub fn system_time(ts: &prost_types::Timestamp) -> Option<std::time::SystemTime> {
    let seconds = u64::try_from(ts.seconds).ok()?;
    let nanos = ts.nanos.clamp(0, 999_999_999) as u32;
    Some(std::time::UNIX_EPOCH + std::time::Duration::new(seconds, nanos))
}

/// Every proto file of the API and its imports, encoded as a
/// google.protobuf.FileDescriptorSet.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/longrun_descriptor.bin"));
