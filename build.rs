//! Compiles the protos in pure Rust: protox parses them (no system protoc),
//! tonic-prost-build generates messages and services, and the encoded
//! descriptor set is kept for gRPC reflection and for JSON output.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/google/longrunning/operations.proto",
    "proto/google/rpc/error_details.proto",
    "proto/longrun/v1/metadata.proto",
    "proto/longrun/v1/watch.proto",
    "proto/longrun/v1/diagnostics.proto",
    "proto/longrun/v1/reports.proto",
    "proto/longrun/v1/notification.proto",
    "proto/longrun/v1/run.proto",
    "proto/longrun/v1/workers.proto",
    "proto/longrun/v1/console.proto",
    "proto/longrun/v1/schedules.proto",
    "proto/longrun/v1/batches.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=examples/proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // Encoded by protox itself, which keeps the options' extensions (the
    // google.api.http bindings the HTTP/JSON face reads); prost's own
    // types would drop them.
    let encoded = protox::Compiler::new(["proto"])?
        .include_imports(true)
        .open_files(PROTOS)?
        .encode_file_descriptor_set();
    std::fs::write(out_dir.join("longrun_descriptor.bin"), &encoded)?;
    let fds = prost_types::FileDescriptorSet::decode(encoded.as_slice())?;

    let mut config = tonic_prost_build::Config::new();
    // Every message gets a prost::Name impl, so it can be packed into an Any
    // with the type.googleapis.com/<full name> URL.
    config.enable_type_names();
    config.type_name_domain(["."], "type.googleapis.com");
    // Maps encode in key order, so equal requests encode to equal bytes
    // (idempotency compares request digests).
    config.btree_map(["."]);
    tonic_prost_build::configure().compile_fds_with_config(fds, config)?;

    // The API of examples/custom_kind.rs, compiled apart from the library's
    // so that it never becomes part of longrun's own API. It reuses the
    // library's generated types for everything it imports.
    let example_dir = out_dir.join("examples");
    std::fs::create_dir_all(&example_dir)?;
    let encoded = protox::Compiler::new(["examples/proto", "proto"])?
        .include_imports(true)
        .open_files(["examples/proto/wordcount.proto"])?
        .encode_file_descriptor_set();
    std::fs::write(example_dir.join("wordcount_descriptor.bin"), &encoded)?;
    let fds = prost_types::FileDescriptorSet::decode(encoded.as_slice())?;
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    config.type_name_domain(["."], "type.googleapis.com");
    tonic_prost_build::configure()
        .out_dir(&example_dir)
        .extern_path(".google.longrunning", "::longrun::pb::google::longrunning")
        .extern_path(".google.rpc", "::longrun::pb::google::rpc")
        .extern_path(".google.api", "::longrun::pb::google::api")
        .compile_fds_with_config(fds, config)?;
    Ok(())
}
