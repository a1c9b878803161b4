//! The agent's logic over the dataplane traits and an IPAM client, with no gRPC server and no
//! direct kernel access: wiring a workload's veth, durable attachment records, and the CNI
//! operations built from them.

pub mod attachments;
pub mod bgp;
pub mod calls;
pub mod cni;
pub mod endpoints;
pub mod flow_log;
pub mod follow;
pub mod ipam;
pub mod mtu;
pub mod nat;
pub mod pods;
pub mod policy;
pub mod reconcile;
pub mod route_programmer;
pub mod routing;
pub mod tunnels;
pub mod wiring;
