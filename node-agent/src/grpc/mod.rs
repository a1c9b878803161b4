//! The agent's gRPC adapters: the CNI service it serves to the shim and its ipam-svc client.

pub mod cni_service;
pub mod ipam_client;
