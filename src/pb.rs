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

/// Every proto file of the API and its imports, encoded as a
/// google.protobuf.FileDescriptorSet.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/longrun_descriptor.bin"));
