//! Tunnel devices: which ones the routing state needs (a pool with VXLAN or IP-in-IP), setting
//! them up (VXLAN: a tunnel address from IPAM under `vxlan-tunnel-addr-<node>`, the device on the
//! underlay link, MTU the underlay's minus 50), and the remote VXLAN tunnel endpoints (permanent
//! neighbour and forwarding entry per remote node) kept equal to the state.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use route_svc::core::{Encapsulation, RouteItem};

use crate::core::ipam::{IpamApi, IpamCallError};
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

/// IPAM handle of a node's VXLAN tunnel address.
pub fn vxlan_tunnel_handle(node: &str) -> String {
    format!("vxlan-tunnel-addr-{node}")
}

/// The MAC of a node's VXLAN device: derived from its name, so it survives agent restarts and
/// device re-creation (unicast, locally administered).
pub fn vtep_mac(node: &str) -> Mac {
    let digest = sha1_smol::Sha1::from(format!("brindle-vtep:{node}"))
        .digest()
        .bytes();
    let mut mac = [0; 6];
    mac.copy_from_slice(&digest[..6]);
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

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
    #[error("the VXLAN tunnel address {0} from ipam-svc is not IPv4")]
    NotIpv4(IpAddr),
    /// ipam-svc did not hand out the tunnel address.
    #[error("allocating the VXLAN tunnel address (handle {handle}): {source}")]
    Ipam {
        /// The IPAM handle.
        handle: String,
        /// Why.
        #[source]
        source: IpamCallError,
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

/// Names of the pools of `items` whose encapsulation `uses` accepts.
fn pools_using(items: &BTreeMap<String, RouteItem>, uses: impl Fn(Encapsulation) -> bool) -> Vec<String> {
    items
        .values()
        .filter_map(|item| match item {
            RouteItem::Pool(pool) if uses(pool.encapsulation) && pool.cidr.addr().is_ipv4() => {
                Some(pool.name.clone())
            }
            _ => None,
        })
        .collect()
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
    pub async fn ensure(&mut self, netlink: &dyn Netlink, items: &BTreeMap<String, RouteItem>) -> Prepared {
        let mut prepared = Prepared::default();
        self.notice_vanished_devices(netlink, &mut prepared).await;
        let vxlan_pools = pools_using(items, |e| {
            matches!(e, Encapsulation::Vxlan | Encapsulation::VxlanCrossSubnet)
        });
        if !vxlan_pools.is_empty() && self.vxlan.is_none() {
            match self.create_vxlan(netlink, &vxlan_pools).await {
                Ok(vtep) => self.vxlan = Some(vtep),
                Err(error) => {
                    prepared.pending.push(VXLAN_DEVICE.to_owned());
                    prepared.failures.push(error);
                }
            }
        }
        let ipip_pools = pools_using(items, |e| {
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

    async fn create_vxlan(&self, netlink: &dyn Netlink, pools: &[String]) -> Result<LocalVtep, TunnelError> {
        let local = self.underlay.ok_or(TunnelError::NoIpv4Address)?;
        let uplink = netlink
            .link_with_address(IpAddr::V4(local))
            .await?
            .ok_or(TunnelError::NoUplink(local))?;
        let handle = vxlan_tunnel_handle(&self.node);
        let lease = self
            .ipam
            .assign_tunnel_address(&handle, &self.node, pools)
            .await
            .map_err(|source| TunnelError::Ipam {
                handle: handle.clone(),
                source,
            })?;
        let IpAddr::V4(address) = lease.ip else {
            return Err(TunnelError::NotIpv4(lease.ip));
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
        };
        netlink.ensure_vxlan(&device).await?;
        tracing::info!(%address, mtu = device.mtu, "VXLAN device {VXLAN_DEVICE} ready");
        Ok(LocalVtep {
            mac: device.mac,
            ip: address,
        })
    }
}

/// The remote tunnel endpoints the state asks node `me` to program: every other node that
/// registered a VXLAN endpoint, when the local VXLAN device is ready.
pub fn desired_vteps(items: &BTreeMap<String, RouteItem>, me: &str, tunnels: &Tunnels) -> BTreeSet<Vtep> {
    if tunnels.vxlan.is_none() {
        return BTreeSet::new();
    }
    items
        .values()
        .filter_map(|item| match item {
            RouteItem::Node(node) if node.name != me => Some(Vtep {
                ip: node.vtep_ipv4?,
                mac: node.vtep_mac?,
                underlay: first_ipv4(&node.addresses)?,
            }),
            _ => None,
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
