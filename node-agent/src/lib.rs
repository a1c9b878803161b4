//! node-agent: the per-node agent — CNI endpoint on a unix socket for the brindle-cni shim,
//! attachment records, and the kernel dataplane (veths, addresses, routes, sysctls) behind traits.

pub mod core;
pub mod dataplane;
pub mod grpc;
pub mod runtime;
