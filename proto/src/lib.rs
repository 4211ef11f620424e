//! `fjord-proto`: the generated gRPC types and services of `proto/fjord/v1/`, the descriptor set, and the
//! wire conventions the protos cannot say: how a client presents its token ([`auth`]), and that an
//! undecodable message is `INVALID_ARGUMENT` ([`codec`]). Conversions to
//! domain types live with the code that uses them (`pb.rs`).

pub mod auth;
pub mod codec;

/// Version 1 of the public API.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod v1 {
    tonic::include_proto!("fjord.v1");

    /// Version 1 of the internal Raft transport.
    pub mod internal {
        tonic::include_proto!("fjord.v1.internal");
    }
}

/// The encoded descriptor set of every proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("fjord_descriptor");
