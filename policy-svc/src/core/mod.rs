//! policy-svc's logic, free of gRPC and kernels: the policy model and its validation, Kubernetes
//! NetworkPolicy translation, the per-node calculation and the trace evaluator.

pub mod calc;
pub mod error;
pub mod hub;
pub mod kubernetes;
pub mod model;
pub mod objects;
pub mod records;
pub mod resource;
pub mod rule_text;
pub mod state;
pub mod trace;
pub mod validate;
pub mod view;

pub use calc::{Calculator, NodeChanges};
pub use error::PolicyError;
pub use state::ClusterState;
