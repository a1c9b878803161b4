//! The agent's gRPC adapters: the CNI service it serves to the shim, its ipam-svc client, its
//! route-svc and policy-svc followers and the Sync stream loop they share.

mod call_error;
pub mod cni_service;
pub mod ipam_client;
pub mod policy_client;
pub mod route_client;
pub mod sync_client;
