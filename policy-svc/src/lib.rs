//! policy-svc: namespaces, workload endpoints, brindle and Kubernetes network policies, the
//! per-node policy view every agent renders (`Sync`) and the policy trace.

pub mod core;
pub mod grpc;
pub mod runtime;
#[cfg(feature = "truth-table")]
pub mod truth_table;
