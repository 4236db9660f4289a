//! Compiles the gRPC contract with `protox` (pure Rust), so building needs no system `protoc`.
//! The encoded descriptor set is written next to the generated code for gRPC reflection,
//! and a second one with the rich error details for the HTTP API's JSON mapping.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/jobledger/v1/ledger.proto";
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile([proto], ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("jobledger_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    // The JSON mapping of the HTTP API (src/proto/reflect.rs) also needs the rich error
    // details (ErrorInfo, BadRequest, ...) that statuses carry in `google.protobuf.Any`s:
    // a second set with them, for that pool only (no code is generated from it).
    let with_details = protox::compile([proto, "google/rpc/error_details.proto"], ["proto"])?;
    std::fs::write(
        out_dir.join("jobledger_json_descriptor.bin"),
        prost::Message::encode_to_vec(&with_details),
    )?;
    // google.rpc.Status (a CreateJobs entry's error) is tonic-types' own type, so the
    // rich error details of tonic-types read and write it.
    tonic_prost_build::configure()
        .extern_path(".google.rpc.Status", "::tonic_types::Status")
        .compile_fds(descriptors)?;
    Ok(())
}
