//! Tunnel devices: which ones the routing state needs (a pool with VXLAN or IP-in-IP), setting
//! them up (VXLAN: a tunnel address from IPAM under `vxlan-tunnel-addr-<node>`, the device on the
//! underlay link, MTU the underlay's minus 50), and the remote VXLAN tunnel endpoints (permanent
//! neighbour and forwarding entry per remote node) kept equal to the state.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use brindle_fanout::Key;
use ipam_api::handles::TunnelKind;
use route_api::{Encapsulation, RouteItem};

use crate::core::calls::CallError;
use crate::core::ipam::IpamApi;
use crate::core::reconcile::{SetWriter, reconcile_set};
use crate::dataplane::{DataplaneError, Mac, Netlink, Vtep, VxlanDevice};

/// Name of the VXLAN device.
pub const VXLAN_DEVICE: &str = "vxlan.brindle";
/// VXLAN network identifier (Calico's default).
pub const VXLAN_VNI: u32 = 4096;
/// VXLAN UDP port (IANA).
pub const VXLAN_PORT: u16 = 4789;
/// Bytes VXLAN adds to every packet (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// Name of the IP-in-IP device (the kernel's fallback tunnel).
pub const IPIP_DEVICE: &str = "tunl0";

pub use route_api::model::vtep_mac;

/// The first IPv4 address of `addresses` (VXLAN's underlay is IPv4).
fn first_ipv4(addresses: &[IpAddr]) -> Option<Ipv4Addr> {
    addresses.iter().find_map(|address| match address {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    })
}

/// The tunnel devices ready to carry routes (by name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tunnels {
    /// The VXLAN device, once it has its tunnel address.
    pub vxlan: Option<String>,
    /// The IP-in-IP device.
    pub ipip: Option<String>,
}

/// This node's VXLAN endpoint (registered with route-svc so other nodes can reach it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalVtep {
    /// The device's MAC.
    pub mac: Mac,
    /// The tunnel address.
    pub ip: Ipv4Addr,
    /// The IPv6 tunnel address, when IPv6 pools use VXLAN.
    pub ipv6: Option<Ipv6Addr>,
}

/// Why a tunnel device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// VXLAN needs an IPv4 underlay address for the node.
    #[error("VXLAN needs an IPv4 node address (--node-address)")]
    NoIpv4Address,
    /// No link holds the node's underlay address.
    #[error("no interface holds the node address {0}")]
    NoUplink(Ipv4Addr),
    /// ipam-svc handed out an address of the wrong family.
    #[error("the VXLAN tunnel address {0} from ipam-svc is of the wrong family")]
    WrongFamily(IpAddr),
    /// IPv6 pools use VXLAN but no IPv4 pool does: the device (IPv4 underlay) has no address.
    #[error(
        "IPv6 over VXLAN rides the IPv4 VXLAN device: give an IPv4 pool vxlanMode Always or CrossSubnet too"
    )]
    Ipv6WithoutIpv4Pool,
    /// ipam-svc did not hand out the tunnel address.
    #[error("allocating the VXLAN tunnel address (handle {handle}): {source}")]
    Ipam {
        /// The IPAM handle.
        handle: String,
        /// Why.
        #[source]
        source: CallError,
    },
    /// The kernel refused.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
}

/// What [`TunnelSetup::ensure`] achieved.
#[derive(Debug, Default)]
pub struct Prepared {
    /// Devices ready to carry routes.
    pub tunnels: Tunnels,
    /// Devices the state needs that are not ready: routes through them are left as they are.
    pub pending: Vec<String>,
    /// Why those could not be set up (retried on the next call).
    pub failures: Vec<TunnelError>,
    /// A device set up earlier had vanished and was made again (with it went its routes and
    /// endpoints: they must be read from the kernel afresh).
    pub recreated: bool,
}

/// Sets up the tunnel devices the routing state needs, once each.
pub struct TunnelSetup {
    node: String,
    underlay: Option<Ipv4Addr>,
    ipam: Arc<dyn IpamApi>,
    ipip_device: String,
    vxlan: Option<LocalVtep>,
    ipip_ready: bool,
}

/// Names of the pools of `items` of one family (IPv6 when `ipv6`) whose encapsulation `uses`
/// accepts.
fn pools_using(
    items: &BTreeMap<Key, RouteItem>,
    ipv6: bool,
    uses: impl Fn(Encapsulation) -> bool,
) -> Vec<String> {
    items
        .values()
        .filter_map(|item| match item {
            RouteItem::Pool(pool) if uses(pool.encapsulation) && pool.cidr.addr().is_ipv6() == ipv6 => {
                Some(pool.name.clone())
            }
            _ => None,
        })
        .collect()
}

fn is_vxlan(encapsulation: Encapsulation) -> bool {
    matches!(
        encapsulation,
        Encapsulation::Vxlan | Encapsulation::VxlanCrossSubnet
    )
}

impl TunnelSetup {
    /// Setup for node `node` whose underlay addresses are `addresses`; IP-in-IP uses the device
    /// `ipip_device` ([`IPIP_DEVICE`] outside tests).
    pub fn new(node: &str, addresses: &[IpAddr], ipam: Arc<dyn IpamApi>, ipip_device: &str) -> Self {
        Self {
            node: node.to_owned(),
            underlay: first_ipv4(addresses),
            ipam,
            ipip_device: ipip_device.to_owned(),
            vxlan: None,
            ipip_ready: false,
        }
    }

    /// This node's VXLAN endpoint, once set up.
    pub fn local_vtep(&self) -> Option<LocalVtep> {
        self.vxlan
    }

    /// Sets up the devices `items` needs that are not set up yet. A device stays once made
    /// (removing it would cut traffic while pools change).
    pub async fn ensure(&mut self, netlink: &dyn Netlink, items: &BTreeMap<Key, RouteItem>) -> Prepared {
        let mut prepared = Prepared::default();
        self.notice_vanished_devices(netlink, &mut prepared).await;
        let vxlan_pools = pools_using(items, false, is_vxlan);
        let vxlan_v6_pools = pools_using(items, true, is_vxlan);
        // Set up once, and again when IPv6 pools start using VXLAN (the IPv6 tunnel address).
        let wants_ipv6 = !vxlan_v6_pools.is_empty() && self.vxlan.is_some_and(|v| v.ipv6.is_none());
        if (!vxlan_pools.is_empty() || !vxlan_v6_pools.is_empty()) && (self.vxlan.is_none() || wants_ipv6) {
            match self.create_vxlan(netlink, &vxlan_pools, &vxlan_v6_pools).await {
                Ok(vtep) => self.vxlan = Some(vtep),
                Err(error) => {
                    prepared.pending.push(VXLAN_DEVICE.to_owned());
                    prepared.failures.push(error);
                }
            }
        }
        let ipip_pools = pools_using(items, false, |e| {
            matches!(e, Encapsulation::Ipip | Encapsulation::IpipCrossSubnet)
        });
        if !ipip_pools.is_empty() && !self.ipip_ready {
            match netlink.ensure_ipip(&self.ipip_device).await {
                Ok(()) => self.ipip_ready = true,
                Err(error) => {
                    prepared.pending.push(self.ipip_device.clone());
                    prepared.failures.push(error.into());
                }
            }
        }
        prepared.tunnels = Tunnels {
            vxlan: self.vxlan.map(|_| VXLAN_DEVICE.to_owned()),
            ipip: self.ipip_ready.then(|| self.ipip_device.clone()),
        };
        prepared
    }

    /// Forgets devices that were set up but are gone or changed (deleted by hand, say), so they
    /// are made again; `prepared.recreated` tells the caller that what went through them is gone.
    async fn notice_vanished_devices(&mut self, netlink: &dyn Netlink, prepared: &mut Prepared) {
        if let Some(vtep) = self.vxlan {
            match netlink.link(VXLAN_DEVICE).await {
                Ok(Some(link)) if link.mac == vtep.mac && link.up => {}
                Ok(_) => {
                    tracing::warn!("{VXLAN_DEVICE} is gone or changed; setting it up again");
                    self.vxlan = None;
                    prepared.recreated = true;
                }
                Err(error) => prepared.failures.push(error.into()),
            }
        }
        if self.ipip_ready && !matches!(netlink.link(&self.ipip_device).await, Ok(Some(_))) {
            tracing::warn!(
                device = self.ipip_device,
                "IP-in-IP device is gone; setting it up again"
            );
            self.ipip_ready = false;
            prepared.recreated = true;
        }
    }

    /// The tunnel address of handle `handle` from one of `pools`, checked to be of the family.
    async fn tunnel_address(
        &self,
        handle: String,
        pools: &[String],
        ipv6: bool,
    ) -> Result<IpAddr, TunnelError> {
        let lease = self
            .ipam
            .assign_tunnel_address(&handle, &self.node, pools, ipv6)
            .await
            .map_err(|source| TunnelError::Ipam { handle, source })?;
        if lease.ip.is_ipv6() == ipv6 {
            Ok(lease.ip)
        } else {
            Err(TunnelError::WrongFamily(lease.ip))
        }
    }

    async fn create_vxlan(
        &self,
        netlink: &dyn Netlink,
        pools: &[String],
        v6_pools: &[String],
    ) -> Result<LocalVtep, TunnelError> {
        if pools.is_empty() {
            return Err(TunnelError::Ipv6WithoutIpv4Pool);
        }
        let local = self.underlay.ok_or(TunnelError::NoIpv4Address)?;
        let uplink = netlink
            .link_with_address(IpAddr::V4(local))
            .await?
            .ok_or(TunnelError::NoUplink(local))?;
        let handle = TunnelKind::VxlanV4.handle(&self.node);
        let address = match self.tunnel_address(handle, pools, false).await? {
            IpAddr::V4(address) => address,
            other => return Err(TunnelError::WrongFamily(other)),
        };
        let address_v6 = if v6_pools.is_empty() {
            None
        } else {
            match self
                .tunnel_address(TunnelKind::VxlanV6.handle(&self.node), v6_pools, true)
                .await?
            {
                IpAddr::V6(v6) => Some(v6),
                other => return Err(TunnelError::WrongFamily(other)),
            }
        };
        let device = VxlanDevice {
            name: VXLAN_DEVICE.to_owned(),
            vni: VXLAN_VNI,
            port: VXLAN_PORT,
            local,
            parent: uplink.index,
            mac: vtep_mac(&self.node),
            mtu: uplink.mtu.saturating_sub(VXLAN_OVERHEAD),
            address,
            address_v6,
        };
        netlink.ensure_vxlan(&device).await?;
        tracing::info!(%address, ?address_v6, mtu = device.mtu, "VXLAN device {VXLAN_DEVICE} ready");
        Ok(LocalVtep {
            mac: device.mac,
            ip: address,
            ipv6: address_v6,
        })
    }
}

/// The remote tunnel endpoints the state asks node `me` to program: every other node that
/// registered a VXLAN endpoint, when the local VXLAN device is ready.
pub fn desired_vteps(items: &BTreeMap<Key, RouteItem>, me: &str, tunnels: &Tunnels) -> BTreeSet<Vtep> {
    if tunnels.vxlan.is_none() {
        return BTreeSet::new();
    }
    items
        .values()
        .filter_map(|item| match item {
            RouteItem::Node(node) if node.name != me => Some(node),
            _ => None,
        })
        .flat_map(|node| {
            let endpoint = |ip: IpAddr| {
                Some(Vtep {
                    ip,
                    mac: node.vtep_mac?,
                    underlay: first_ipv4(&node.addresses)?,
                })
            };
            let v4 = node.vtep_ipv4.and_then(|ip| endpoint(IpAddr::V4(ip)));
            let v6 = node.vtep_ipv6.and_then(|ip| endpoint(IpAddr::V6(ip)));
            v4.into_iter().chain(v6)
        })
        .collect()
}

/// Remote tunnel endpoints into a VXLAN device.
struct VtepWriter<'a> {
    netlink: &'a dyn Netlink,
    device: &'a str,
}

#[async_trait::async_trait]
impl SetWriter<Vtep> for VtepWriter<'_> {
    async fn add(&self, vtep: &Vtep) -> Result<(), DataplaneError> {
        self.netlink.replace_vtep(self.device, vtep).await
    }

    async fn remove(&self, vtep: &Vtep) -> Result<(), DataplaneError> {
        self.netlink.delete_vtep(self.device, vtep).await
    }
}

/// Programs remote tunnel endpoints on the VXLAN device, remembering what it programmed.
#[derive(Debug, Default)]
pub struct VtepReconciler {
    programmed: Option<BTreeSet<Vtep>>,
}

impl VtepReconciler {
    /// Forgets what it programmed: the next apply reads the device's entries again and repairs
    /// any difference.
    pub fn resync(&mut self) {
        self.programmed = None;
    }

    /// Makes the endpoints on `device` equal to `desired`: the first call reads what the device
    /// has (left from before a restart), later calls touch only what changed. New endpoints are
    /// added before stale ones go, and a stale one's entries are only removed while they are still
    /// its own (an endpoint that changed address or MAC is replaced, not lost).
    pub async fn apply(
        &mut self,
        netlink: &dyn Netlink,
        device: &str,
        desired: &BTreeSet<Vtep>,
    ) -> Result<(), DataplaneError> {
        let programmed = match self.programmed.take() {
            Some(programmed) => programmed,
            None => netlink.vteps(device).await?.into_iter().collect(),
        };
        let writer = VtepWriter { netlink, device };
        let (done, failure) = reconcile_set(programmed, desired, |_| false, &writer).await;
        self.programmed = Some(done);
        failure.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtep_macs_are_stable_unicast_and_locally_administered() {
        let mac = vtep_mac("node-1");
        assert_eq!(mac, vtep_mac("node-1"));
        assert_ne!(mac, vtep_mac("node-2"));
        assert_eq!(mac[0] & 0x01, 0, "unicast");
        assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
    }
}
