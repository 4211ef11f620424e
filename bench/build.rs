//! Compiles the subset of etcd's v3 API the bench drives (`proto/etcdserverpb/kv.proto`) with protox, as
//! `fjord-proto` does for Fjord's own: no system `protoc`, client code only.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTO: &str = "proto/etcdserverpb/kv.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let descriptors = protox::compile([PROTO], ["proto"])?;
    tonic_prost_build::configure().build_server(false).compile_fds(descriptors)?;
    Ok(())
}
