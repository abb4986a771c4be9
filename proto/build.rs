//! Compiles `proto/kyphoplan/v1/kyphoplan.proto` with protox (pure Rust, no protoc), generates the
//! messages and tonic stubs from the descriptor set, and writes the encoded descriptor set for
//! the reflection service.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/kyphoplan/v1/kyphoplan.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("kyphoplan_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    // Type names (`prost::Name`) let the codec name the message that failed to decode; the codec
    // answers an undecodable request with INVALID_ARGUMENT instead of tonic's INTERNAL.
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::ServiceCodec")
        .compile_fds_with_config(fds, config)?;
    Ok(())
}
