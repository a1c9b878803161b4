//! brindle's gRPC API (packages `brindle.<service>.v1`) and the encoded descriptor set for reflection.
#![allow(missing_docs, clippy::all)]

mod cni_error;
pub mod codec;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;

pub use cni_error::CniError;

/// A field of a received message that does not convert into brindle's model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    /// The field, e.g. `node.addresses`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl InvalidField {
    /// `field` is wrong because of `reason`.
    pub fn new(field: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self {
            field: field.into(),
            reason: reason.to_string(),
        }
    }
}

/// Encoded `FileDescriptorSet` of every brindle `.proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("brindle_descriptor");

/// Types shared by the streaming services.
pub mod common {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("brindle.common.v1");
    }
}

/// IP address management (ipam-svc).
pub mod ipam {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("brindle.ipam.v1");
    }
}

/// Node registry and routing state (route-svc).
pub mod route {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("brindle.route.v1");
    }
}

/// Network policy (policy-svc).
pub mod policy {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("brindle.policy.v1");
    }
}

/// The node agent's CNI endpoint.
pub mod agent {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("brindle.agent.v1");
    }
}

/// CNI error codes shared by the shim and the agent: the CNI spec's, then brindle's own (≥ 100).
pub mod cni_codes {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Invalid necessary environment variables.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODE_FAILURE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD.
    pub const NOT_AVAILABLE: u32 = 50;
    /// The interface already exists in the pod.
    pub const INTERFACE_EXISTS: u32 = 100;
    /// IPAM refused (pool exhausted, address taken or reserved).
    pub const IPAM_REFUSED: u32 = 101;
    /// A kernel operation failed.
    pub const DATAPLANE_FAILED: u32 = 102;
    /// CHECK of an attachment the agent does not know.
    pub const NOT_ATTACHED: u32 = 103;
    /// CHECK found something missing.
    pub const CHECK_FAILED: u32 = 104;
    /// The agent's attachment records could not be read or written.
    pub const STATE_FAILED: u32 = 105;
    /// The agent failed in an unexpected way.
    pub const AGENT_FAILURE: u32 = 106;
}
