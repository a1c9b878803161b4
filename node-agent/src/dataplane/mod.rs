//! Kernel access behind small traits: [`Netlink`] (links, addresses, routes, neighbours, in the
//! agent's namespace or a pod's), [`Iptables`], [`Ipsets`], [`Sysctl`] and [`Conntrack`].
//! [`RtNetlink`], [`IptablesCommands`], [`IpsetCommands`], [`ProcSysctl`] and
//! [`NetlinkConntrack`] talk to the kernel;
//! [`RecordingKernel`] is an in-memory kernel that records every call, for unit tests.

mod conntrack;
mod error;
mod ipset;
mod iptables;
mod netlink;
mod nflog;
mod recording;
mod sysctl;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnet::IpNet;

pub use conntrack::{Conntrack, NetlinkConntrack, TrackedConnection};
pub use error::DataplaneError;
pub use ipset::IpsetCommands;
pub use iptables::{IptablesBackend, IptablesCommands};
pub use netlink::RtNetlink;
pub use nflog::{LoggedPacket, NflogBatch, NflogSocket};
pub use recording::{Call, RecordingKernel};
pub use sysctl::ProcSysctl;

/// The route protocol number brindle's routes carry (`ip route … proto 80`), so they can be told
/// apart from everyone else's.
pub const ROUTE_PROTOCOL: u8 = 80;

/// Link group of host veths whose workload is gone, waiting for a bulk delete.
pub const RETIRED_GROUP: u32 = 0xb12d;
/// What a pod interface is renamed to when DEL retires it (`%d`: the kernel picks a free number).
pub const RETIRED_POD_NAME: &str = "brdretired%d";

/// A MAC address.
pub type Mac = [u8; 6];

/// What the kernel says about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// Hardware address.
    pub mac: Mac,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
}

/// Unicast or blackhole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// Forward.
    Unicast,
    /// Drop.
    Blackhole,
}

/// A route in the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination network.
    pub destination: IpNet,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Output device.
    pub device: Option<String>,
    /// Link scope (directly reachable on the device).
    pub scope_link: bool,
    /// The gateway is on the device's link even though no address says so (tunnel routes).
    pub onlink: bool,
    /// Unicast or blackhole.
    pub kind: RouteKind,
}

/// A VXLAN device as brindle wants it (`ip link add <name> type vxlan id <vni> local <local>
/// dev <parent> dstport <port> nolearning`, with `address/32` on it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanDevice {
    /// Interface name.
    pub name: String,
    /// VXLAN network identifier.
    pub vni: u32,
    /// UDP destination port.
    pub port: u16,
    /// Underlay source address.
    pub local: Ipv4Addr,
    /// Index of the underlay link the tunnel uses.
    pub parent: u32,
    /// The device's MAC (other nodes' neighbour entries point at it).
    pub mac: Mac,
    /// MTU (the underlay's minus the encapsulation overhead).
    pub mtu: u32,
    /// The tunnel address (a /32 on the device).
    pub address: Ipv4Addr,
    /// The IPv6 tunnel address (a /128 on the device), when IPv6 pools use VXLAN: IPv6 pod
    /// traffic rides the same IPv4 underlay.
    pub address_v6: Option<Ipv6Addr>,
}

/// Another node's VXLAN tunnel endpoint as programmed on the local VXLAN device: a permanent
/// neighbour (`ip` → `mac`) and a forwarding entry (`mac` → `underlay`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Vtep {
    /// The remote tunnel address (IPv4, or IPv6 for IPv6 pod traffic).
    pub ip: IpAddr,
    /// The remote device's MAC.
    pub mac: Mac,
    /// The remote node's underlay address, where the encapsulated packets go.
    pub underlay: Ipv4Addr,
}

/// The fake gateway a pod routes through: an on-link address answered by the host end of the veth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodGateway {
    /// Gateway address routed on-link (169.254.1.1).
    pub address: IpAddr,
    /// The gateway's MAC (the host side of the veth), installed as a permanent neighbour.
    pub mac: Mac,
}

/// What CHECK finds inside a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    /// The interface.
    pub link: LinkState,
    /// Its addresses.
    pub addresses: Vec<IpNet>,
    /// Every route of the pod (all its interfaces).
    pub routes: Vec<Route>,
}

/// Links, addresses, routes and neighbours. Host-side calls act in the agent's own network
/// namespace; pod-side calls open a netlink socket inside the pod's namespace for that call.
#[async_trait::async_trait]
pub trait Netlink: Send + Sync {
    /// Creates a veth pair, the host end up, whose pod end is created directly inside `pod_netns`
    /// as `pod_name`.
    async fn create_veth(
        &self,
        host_name: &str,
        host_mac: Mac,
        pod_name: &str,
        pod_netns: &Path,
        mtu: u32,
    ) -> Result<(), DataplaneError>;
    /// A host link by name.
    async fn link(&self, name: &str) -> Result<Option<LinkState>, DataplaneError>;
    /// Every host link.
    async fn links(&self) -> Result<Vec<LinkState>, DataplaneError>;
    /// Deletes a host link (a veth takes its peer along); `false` when it did not exist.
    async fn delete_link(&self, name: &str) -> Result<bool, DataplaneError>;
    /// Takes a host link down and moves it to [`RETIRED_GROUP`] for a later bulk delete; `false`
    /// when it did not exist.
    async fn retire_link(&self, name: &str) -> Result<bool, DataplaneError>;
    /// Deletes every link in [`RETIRED_GROUP`] with one request (one kernel synchronisation for
    /// all of them, where one delete each costs tens of milliseconds).
    async fn delete_retired_links(&self) -> Result<(), DataplaneError>;
    /// Adds or replaces a host route carrying [`ROUTE_PROTOCOL`].
    async fn replace_route(&self, route: &Route) -> Result<(), DataplaneError>;
    /// Deletes a host route; `false` when it did not exist.
    async fn delete_route(&self, route: &Route) -> Result<bool, DataplaneError>;
    /// Host routes carrying [`ROUTE_PROTOCOL`].
    async fn routes(&self) -> Result<Vec<Route>, DataplaneError>;
    /// The host link holding `address` (the underlay interface); `None` when no link has it.
    async fn link_with_address(&self, address: IpAddr) -> Result<Option<LinkState>, DataplaneError>;
    /// Creates the VXLAN device, or brings an existing one to `device` (recreated when its VNI,
    /// port, local address or parent differ); up, with exactly its tunnel address.
    async fn ensure_vxlan(&self, device: &VxlanDevice) -> Result<(), DataplaneError>;
    /// Makes sure the IP-in-IP device `name` exists and is up (creating it needs the kernel's
    /// ipip support: [`DataplaneError::Unsupported`] without it).
    async fn ensure_ipip(&self, name: &str) -> Result<(), DataplaneError>;
    /// The remote tunnel endpoints programmed on `device` (permanent neighbours with their
    /// forwarding entries).
    async fn vteps(&self, device: &str) -> Result<Vec<Vtep>, DataplaneError>;
    /// Adds or replaces a remote tunnel endpoint on `device`.
    async fn replace_vtep(&self, device: &str, vtep: &Vtep) -> Result<(), DataplaneError>;
    /// Removes a remote tunnel endpoint from `device`: its neighbour entry while it still maps
    /// its address to its MAC, its forwarding entry while it still sends its MAC to its underlay
    /// address (entries taken over by another endpoint stay).
    async fn delete_vtep(&self, device: &str, vtep: &Vtep) -> Result<(), DataplaneError>;
    /// Prepares the pod end before its addresses are known: up, on-link gateway route and default
    /// route (unless the pod has them already through an earlier brindle interface), permanent
    /// neighbour for the gateway. Returns the pod interface.
    async fn prepare_pod(
        &self,
        netns: &Path,
        ifname: &str,
        gateway: &PodGateway,
    ) -> Result<LinkState, DataplaneError>;
    /// Adds `addresses` (`<ip>/32`, `<ip>/128`; IPv6 without duplicate address detection) to the
    /// prepared pod interface `pod`.
    async fn add_pod_addresses(
        &self,
        netns: &Path,
        pod: &LinkState,
        addresses: &[IpNet],
    ) -> Result<(), DataplaneError>;
    /// Takes the pod interface `ifname` down, removes its addresses and renames it to
    /// [`RETIRED_POD_NAME`] (the kernel numbers it), so the pod has neither the name nor the
    /// addresses any more; the veth itself goes with its host end. `false` when it, or the
    /// namespace, does not exist.
    async fn retire_pod_interface(&self, netns: &Path, ifname: &str) -> Result<bool, DataplaneError>;
    /// The pod interface, its addresses, and the pod's routes; `None` when it does not exist.
    async fn inspect_pod(&self, netns: &Path, ifname: &str) -> Result<Option<PodState>, DataplaneError>;
    /// A permanent neighbour on host link `device`: `ip` is at `mac` (a pod's IPv6 address, so the
    /// node never has to solicit it).
    async fn replace_neighbour(&self, device: &str, ip: IpAddr, mac: Mac) -> Result<(), DataplaneError>;
}

/// iptables of the agent's namespace, for chains brindle owns (`brd-*`).
pub trait Iptables: Send + Sync {
    /// Applies an `iptables-restore` payload for `table` without flushing other chains (the
    /// chains it declares are replaced whole).
    fn restore(&self, table: &str, payload: &str) -> Result<(), DataplaneError>;
    /// Makes sure chain `from` of `table` jumps to `to` (inserted first when missing).
    fn ensure_jump(&self, table: &str, from: &str, to: &str) -> Result<(), DataplaneError>;
    /// Makes sure chain `from` of `table` does not jump to `to`.
    fn remove_jump(&self, table: &str, from: &str, to: &str) -> Result<(), DataplaneError>;
    /// The table as `iptables-save` prints it.
    fn save(&self, table: &str) -> Result<String, DataplaneError>;
}

/// ipsets of the agent's namespace, for sets brindle owns (`brd-*`).
pub trait Ipsets: Send + Sync {
    /// Applies an `ipset restore` payload (create, flush, add, del, swap, destroy lines).
    fn restore(&self, payload: &str) -> Result<(), DataplaneError>;
    /// Every set as `ipset save` prints it.
    fn save(&self) -> Result<String, DataplaneError>;
}

/// Kernel parameters under `/proc/sys` of the agent's namespace.
pub trait Sysctl: Send + Sync {
    /// Writes `value` to `key`, a path under /proc/sys such as `net/ipv4/conf/brd1/proxy_arp`
    /// (slashes, so interface names with dots stay intact).
    fn set(&self, key: &str, value: &str) -> Result<(), DataplaneError>;
    /// Reads `key`.
    fn get(&self, key: &str) -> Result<String, DataplaneError>;
}
