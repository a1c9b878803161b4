//! The agent's gRPC adapters: the CNI service it serves to the shim, its ipam-svc client, and its
//! route-svc follower.

pub mod cni_service;
pub mod ipam_client;
pub mod route_client;
