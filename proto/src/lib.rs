//! The gRPC contracts: goemotions.v1 (ours) and the Open Inference Protocol (`inference`, KServe
//! v2): generated messages, clients and servers.
#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

pub mod v1 {
    tonic::include_proto!("goemotions.v1");

    impl Grouping {
        /// The short name callers and manifests use: "ekman", "sentiment" ("" for unspecified).
        pub fn short_name(self) -> &'static str {
            match self {
                Grouping::Ekman => "ekman",
                Grouping::Sentiment => "sentiment",
                Grouping::Unspecified => "",
            }
        }

        /// The grouping a short name names.
        pub fn from_short_name(name: &str) -> Option<Self> {
            match name {
                "ekman" => Some(Grouping::Ekman),
                "sentiment" => Some(Grouping::Sentiment),
                _ => None,
            }
        }
    }

    /// Encoded file descriptor set of goemotions.v1 and inference, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("goemotions_descriptor");
}

/// The Open Inference Protocol (KServe v2) over gRPC.
pub mod inference {
    tonic::include_proto!("inference");
}
