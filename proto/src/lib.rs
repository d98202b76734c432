//! The gRPC contracts: goemotions.v1 (ours) and the Open Inference Protocol (`inference`, KServe
//! v2): generated messages, clients and servers.
#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

pub mod v1 {
    tonic::include_proto!("goemotions.v1");

    /// Encoded file descriptor set of goemotions.v1 and inference, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("goemotions_descriptor");
}

/// The Open Inference Protocol (KServe v2) over gRPC.
pub mod inference {
    tonic::include_proto!("inference");
}
