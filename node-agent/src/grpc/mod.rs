//! The agent's gRPC adapters: the CNI service it serves to the shim, its ipam-svc client, its
//! route-svc and policy-svc followers and the Sync stream loop they share, and the node's own
//! certificate (obtained with a join token, renewed before it expires).

mod call_error;
pub mod cni_service;
pub mod ipam_client;
pub mod node_certificate;
pub mod policy_client;
pub mod route_client;
pub mod sync_client;
