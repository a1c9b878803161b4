//! route-svc's logic, free of gRPC: the routing model, how datastore records become routing
//! items, the node registry, the BGP objects, and the watcher that keeps the fan-out equal to the
//! datastore.

pub mod bgp;
pub mod derive;
pub mod node_labels;
pub mod registry;
pub mod watcher;

pub use bgp::{BgpError, BgpObjects};
pub use registry::{Registry, RegistryError};
