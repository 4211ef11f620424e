//! `fjord-proto`: the generated gRPC types and services of `proto/fjord/v1/`. Nothing but generated code
//! and the descriptor set; conversions to domain types live with the code that uses them (`pb.rs`).

#![allow(missing_docs, unreachable_pub, clippy::all)]

/// Version 1 of the public API.
pub mod v1 {
    tonic::include_proto!("fjord.v1");

    /// Version 1 of the internal Raft transport.
    pub mod internal {
        tonic::include_proto!("fjord.v1.internal");
    }
}

/// The encoded descriptor set of every proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("fjord_descriptor");
