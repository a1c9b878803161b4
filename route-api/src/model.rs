//! The routing state: registered nodes, blocks and the node each is affine to, borrowed
//! addresses, and pools with their encapsulation. Each item has a stable key in the fan-out.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

/// A node as its agent registered it (also the datastore record at `/brindle/v1/nodes/<name>`;
/// IPAM reads its `labels`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Node name.
    pub name: String,
    /// Underlay addresses; the first of a family is the one routes go via.
    pub addresses: Vec<IpAddr>,
    /// Underlay IPv4 subnet (decides CrossSubnet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_subnet: Option<Ipv4Net>,
    /// Underlay IPv6 subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_subnet: Option<Ipv6Net>,
    /// Labels (pool node selectors match them).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// VXLAN tunnel endpoint MAC, when VXLAN is in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<[u8; 6]>,
    /// VXLAN tunnel endpoint IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_ipv4: Option<Ipv4Addr>,
    /// VXLAN tunnel endpoint IPv6 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_ipv6: Option<Ipv6Addr>,
    /// IP-in-IP tunnel address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipip_tunnel_ipv4: Option<Ipv4Addr>,
    /// Its BGP identity, when its agent drives a BGP daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<NodeBgp>,
    /// Lease that keeps the registration alive (0: none).
    #[serde(default)]
    pub lease: u64,
}

/// A node's BGP identity (Calico's Node `spec.bgp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeBgp {
    /// Its router id.
    pub router_id: Ipv4Addr,
    /// Its own AS number; `None`: the cluster's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
}

/// The MAC of a node's VXLAN device: derived from the node's name, so it survives agent restarts
/// and device re-creation, and route-svc can tell a node claiming another's (unicast, locally
/// administered).
pub fn vtep_mac(node: &str) -> [u8; 6] {
    let digest = sha1_smol::Sha1::from(format!("brindle-vtep:{node}"))
        .digest()
        .bytes();
    let mut mac = [0; 6];
    mac.copy_from_slice(&digest[..6]);
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// Whether `name` is a DNS-1123 subdomain (what Kubernetes node names are).
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl Node {
    /// The node's first underlay address of the family of `ip`.
    pub fn address_like(&self, ip: IpAddr) -> Option<IpAddr> {
        self.addresses
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == ip.is_ipv4())
    }
}

/// How traffic to a pool's pods travels between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encapsulation {
    /// Routed directly via the node's underlay address.
    #[default]
    None,
    /// Always over VXLAN.
    Vxlan,
    /// VXLAN toward nodes in another subnet, direct inside the subnet.
    VxlanCrossSubnet,
    /// Always IP-in-IP.
    Ipip,
    /// IP-in-IP toward nodes in another subnet, direct inside the subnet.
    IpipCrossSubnet,
}

/// A pool's routing settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRoute {
    /// Pool name.
    pub name: String,
    /// Its network.
    pub cidr: IpNet,
    /// Encapsulation toward its pods.
    pub encapsulation: Encapsulation,
    /// Masquerade pod traffic leaving every pool.
    pub nat_outgoing: bool,
    /// No new allocations (routes to existing blocks stay).
    pub disabled: bool,
    /// Its blocks are not announced over BGP.
    pub disable_bgp_export: bool,
}

/// One item of routing state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteItem {
    /// A registered node.
    Node(Node),
    /// A block affine to `node`: every other node routes `cidr` to it.
    Block {
        /// The block.
        cidr: IpNet,
        /// Node it is affine to.
        node: String,
        /// Its pool.
        pool: String,
    },
    /// An address of another node's block allocated to `node`: routed as a host route to it.
    Borrowed {
        /// The address.
        ip: IpAddr,
        /// Node that holds it.
        node: String,
        /// Block it came from.
        block: IpNet,
    },
    /// A pool.
    Pool(PoolRoute),
    /// The cluster's BGP configuration.
    BgpConfiguration(crate::bgp::BgpConfiguration),
    /// A BGP peer.
    BgpPeer(crate::bgp::BgpPeer),
}

/// Key of a node item.
pub fn node_key(name: &str) -> String {
    format!("node/{name}")
}

/// Key of a block item.
pub fn block_key(cidr: &IpNet) -> String {
    format!("block/{cidr}")
}

/// Key of a borrowed-address item.
pub fn borrowed_key(ip: &IpAddr) -> String {
    format!("borrowed/{ip}")
}

/// Key of a pool item.
pub fn pool_key(name: &str) -> String {
    format!("pool/{name}")
}

/// Key of the BGP configuration item.
pub const BGP_CONFIGURATION_KEY: &str = "bgp/configuration";

/// Key of a BGP peer item.
pub fn bgp_peer_key(name: &str) -> String {
    format!("bgp-peer/{name}")
}
