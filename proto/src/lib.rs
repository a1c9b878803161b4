//! brindle's gRPC API (packages `brindle.<service>.v1`) and the encoded descriptor set for reflection.
#![allow(missing_docs, clippy::all)]

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
