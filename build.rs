//! Compiles the gRPC contract with `protox` (pure Rust), so building needs no system `protoc`.
//! The encoded descriptor set is written next to the generated code for gRPC reflection.

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
    // google.rpc.Status (a CreateJobs entry's error) is tonic-types' own type, so the
    // rich error details of tonic-types read and write it.
    tonic_prost_build::configure()
        .extern_path(".google.rpc.Status", "::tonic_types::Status")
        .compile_fds(descriptors)?;
    Ok(())
}
