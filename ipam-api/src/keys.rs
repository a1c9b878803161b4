//! Where IPAM keeps its records in the datastore (all under `/brindle/v1/`).

use ipnet::IpNet;

/// Every pool, in one record, so pool changes are a single compare-and-swap.
pub const POOLS: &str = "/brindle/v1/ipam/pools";
/// The cluster-wide IPAM settings.
pub const CONFIG: &str = "/brindle/v1/ipam/config";
/// Every reservation, in one record.
pub const RESERVATIONS: &str = "/brindle/v1/ipam/reservations";
/// Prefix of block records.
pub const BLOCKS: &str = "/brindle/v1/ipam/blocks/";
/// Prefix of block affinities: `<prefix><node>/<block>`.
pub const AFFINITIES: &str = "/brindle/v1/ipam/affinities/";
/// Prefix of handle records.
pub const HANDLES: &str = "/brindle/v1/ipam/handles/";
/// Prefix of the node registry (written by route-svc; IPAM reads labels and existence).
pub const NODES: &str = "/brindle/v1/nodes/";
/// Prefix of the labels administrators set on nodes (route-svc copies them into registrations).
pub const NODE_LABELS: &str = "/brindle/v1/node-labels/";

/// A block's name in keys: its CIDR with `/` replaced by `-`.
pub fn block_name(cidr: &IpNet) -> String {
    cidr.to_string().replace('/', "-")
}

/// Key of a block.
pub fn block(cidr: &IpNet) -> String {
    format!("{BLOCKS}{}", block_name(cidr))
}

/// Key of a node's affinity to a block.
pub fn affinity(node: &str, cidr: &IpNet) -> String {
    format!("{AFFINITIES}{node}/{}", block_name(cidr))
}

/// Prefix of every affinity of a node.
pub fn node_affinities(node: &str) -> String {
    format!("{AFFINITIES}{node}/")
}

/// Key of a handle.
pub fn handle(id: &str) -> String {
    format!("{HANDLES}{id}")
}

/// Key of a node's registration.
pub fn node(name: &str) -> String {
    format!("{NODES}{name}")
}

/// Key of the labels an administrator set on a node.
pub fn node_labels(name: &str) -> String {
    format!("{NODE_LABELS}{name}")
}
