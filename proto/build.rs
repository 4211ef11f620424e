//! Compiles `fjord/v1/*.proto` with protox (pure Rust: no system `protoc`) and generates the tonic code.
//! The descriptor set is kept for gRPC reflection.

use std::path::PathBuf;

const PROTOS: [&str; 4] =
    ["fjord/v1/event_store.proto", "fjord/v1/cluster.proto", "fjord/v1/query.proto", "fjord/v1/raft.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("fjord_descriptor.bin"), protox::prost::Message::encode_to_vec(&descriptors))?;
    // Decode errors are INVALID_ARGUMENT, not prost's INTERNAL (src/codec.rs).
    tonic_prost_build::configure().codec_path("crate::codec::FjordCodec").compile_fds(descriptors)?;
    Ok(())
}
