//! The generated protobuf messages and gRPC stubs, in one module, plus the
//! encoded descriptor set used by reflection and by JSON output.

#![allow(clippy::all, missing_docs)]

/// Google's shared API types.
pub mod google {
    /// google.longrunning: Operation and the Operations service.
    pub mod longrunning {
        tonic::include_proto!("google.longrunning");
    }
    /// google.rpc: Status and the error details.
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
    /// google.api: annotations referenced by the protos.
    pub mod api {
        tonic::include_proto!("google.api");
    }
}

/// longrun's own API.
pub mod longrun {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("longrun.v1");
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

/// Every proto file of the API and its imports, encoded as a
/// google.protobuf.FileDescriptorSet.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/longrun_descriptor.bin"));
