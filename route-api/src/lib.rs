//! route-api: what a client of route-svc, or another service, needs of the routing state — the
//! model (`model`: registered nodes, blocks, borrowed addresses, pools; node names and VTEP MACs;
//! `bgp`: the BGP configuration and peers)
//! and its messages (`convert`, with the `Sync` wire format of the routing state). No server, no
//! datastore.

pub mod bgp;
pub mod convert;
pub mod model;

pub use model::{Encapsulation, Node, PoolRoute, RouteItem};
