//! route-svc: the node registry (agents register under a lease) and the routing state every
//! node agent follows (`Sync`: snapshot, then ordered deltas, resumable from a revision).

pub mod core;
pub mod grpc;
pub mod runtime;
