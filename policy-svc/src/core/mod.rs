//! policy-svc's logic, free of gRPC and kernels: the policy model and its validation, Kubernetes
//! NetworkPolicy translation, the per-node calculation, the trace evaluator and the flow logs nodes report.

pub mod calc;
pub mod compile;
pub mod endpoints;
pub mod error;
pub mod flows;
pub mod host_endpoints;
pub mod hub;
pub mod kubernetes;
pub mod objects;
pub mod pods;
pub mod policy_document;
pub mod records;
pub mod resource;
pub mod snapshot;
pub mod staged;
pub mod state;
pub mod trace;
pub mod validate;

pub use calc::{Calculator, NodeChanges, SharedEntry};
pub use error::PolicyError;
pub use state::ClusterState;
