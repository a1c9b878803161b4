//! ipam-svc: Calico-grade IP address management over brindle's datastore — pools, per-node blocks
//! with affinity, idempotent handles, reservations, release with cooldown, show, check and GC.
//!
//! `core` holds the logic (no gRPC), `grpc` adapts it to `brindle.ipam.v1`, `runtime` wires flags.

pub mod core;
pub mod grpc;
pub mod runtime;
