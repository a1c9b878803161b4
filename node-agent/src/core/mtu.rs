//! The pod MTU when the network configuration sets none (Calico's MTU auto-detection): the
//! smallest MTU of the node's uplinks minus the overhead of the encapsulation the cluster's pools
//! use — the same value the VXLAN device gets, so full-size pod packets fit the underlay.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brindle_fanout::Key;
use brindle_proto::CniError;
use brindle_proto::cni_codes::{DATAPLANE_FAILED, TRY_AGAIN_LATER};
use route_api::{Encapsulation, RouteItem};
use tokio::sync::watch;

use crate::core::tunnels::{IPIP_DEVICE, VXLAN_DEVICE, VXLAN_OVERHEAD};
use crate::core::wiring::HOST_PREFIX;
use crate::dataplane::{LinkState, Netlink};

/// Bytes IP-in-IP adds (outer IPv4 header).
pub const IPIP_OVERHEAD: u32 = 20;
/// The uplink MTU assumed when no uplink can be found (Ethernet's).
pub const ASSUMED_UPLINK_MTU: u32 = 1500;
/// How long an ADD waits for the routing state (which tells the encapsulation) after a start.
const ROUTING_STATE_WAIT: Duration = Duration::from_secs(10);
/// How long a detected MTU is used before the uplinks are read again (ADDs stay cheap; an uplink
/// MTU change reaches pods created after it).
const DETECTION_TTL: Duration = Duration::from_secs(10);

/// The last MTU detected, for which encapsulation, and when.
#[derive(Debug, Clone, Copy)]
struct Detected {
    mtu: u32,
    encapsulation: EncapsulationInUse,
    at: std::time::Instant,
}

/// Which encapsulations the cluster's pools use (any pool, any mode but `Never`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncapsulationInUse {
    /// Some pool uses VXLAN (always or across subnets).
    pub vxlan: bool,
    /// Some pool uses IP-in-IP (always or across subnets).
    pub ipip: bool,
}

impl EncapsulationInUse {
    /// The encapsulations the pools of the routing state `items` use.
    pub fn of(items: &BTreeMap<Key, RouteItem>) -> Self {
        let mut in_use = Self::default();
        for item in items.values() {
            if let RouteItem::Pool(pool) = item {
                match pool.encapsulation {
                    Encapsulation::Vxlan | Encapsulation::VxlanCrossSubnet => in_use.vxlan = true,
                    Encapsulation::Ipip | Encapsulation::IpipCrossSubnet => in_use.ipip = true,
                    Encapsulation::None => {}
                }
            }
        }
        in_use
    }

    /// The largest overhead in use and why: VXLAN 50 (brindle's VXLAN always rides the IPv4
    /// underlay, IPv6 pods included, so Calico's 70 for an IPv6 underlay never applies),
    /// IP-in-IP 20, none 0.
    pub fn overhead(self) -> (u32, &'static str) {
        if self.vxlan {
            (VXLAN_OVERHEAD, "VXLAN over IPv4")
        } else if self.ipip {
            (IPIP_OVERHEAD, "IP-in-IP")
        } else {
            (0, "no encapsulation")
        }
    }
}

/// Publishes the encapsulation in use as the routing state changes (route-svc's follower).
pub type EncapsulationSender = watch::Sender<Option<EncapsulationInUse>>;

/// Works out the pod MTU.
pub struct MtuDetector {
    netlink: Arc<dyn Netlink>,
    /// The node's underlay addresses (their links are the uplinks); empty: every link that is up
    /// and not brindle's own.
    node_addresses: Vec<IpAddr>,
    /// `None` until the routing state has arrived.
    encapsulation: watch::Receiver<Option<EncapsulationInUse>>,
    /// The last MTU detected (reused for [`DETECTION_TTL`]; each change is logged once).
    chosen: Mutex<Option<Detected>>,
}

impl MtuDetector {
    /// A node that routes no pools (no route-svc): no encapsulation.
    pub fn without_routing(netlink: Arc<dyn Netlink>, node_addresses: Vec<IpAddr>) -> Self {
        let (_, encapsulation) = watch::channel(Some(EncapsulationInUse::default()));
        Self::with(netlink, node_addresses, encapsulation)
    }

    /// A node following route-svc: the encapsulation comes through the returned sender.
    pub fn following_routes(
        netlink: Arc<dyn Netlink>,
        node_addresses: Vec<IpAddr>,
    ) -> (Self, EncapsulationSender) {
        let (sender, encapsulation) = watch::channel(None);
        (Self::with(netlink, node_addresses, encapsulation), sender)
    }

    fn with(
        netlink: Arc<dyn Netlink>,
        node_addresses: Vec<IpAddr>,
        encapsulation: watch::Receiver<Option<EncapsulationInUse>>,
    ) -> Self {
        Self {
            netlink,
            node_addresses,
            encapsulation,
            chosen: Mutex::new(None),
        }
    }

    /// The uplinks: the links holding the node's addresses, or every link that is up and not
    /// loopback or brindle's.
    async fn uplinks(&self) -> Result<Vec<LinkState>, CniError> {
        let failed = |error: crate::dataplane::DataplaneError| {
            CniError::new(DATAPLANE_FAILED, "reading the node's uplinks for the pod MTU")
                .with_details(error.to_string())
        };
        if self.node_addresses.is_empty() {
            let links = self.netlink.links().await.map_err(failed)?;
            return Ok(links
                .into_iter()
                .filter(|link| {
                    link.up
                        && link.name != "lo"
                        && link.name != VXLAN_DEVICE
                        && link.name != IPIP_DEVICE
                        && !link.name.starts_with(HOST_PREFIX)
                })
                .collect());
        }
        let mut uplinks = Vec::new();
        for address in &self.node_addresses {
            if let Some(link) = self.netlink.link_with_address(*address).await.map_err(failed)? {
                uplinks.push(link);
            }
        }
        Ok(uplinks)
    }

    /// The pod MTU: the smallest uplink MTU minus the encapsulation overhead. Waits (bounded)
    /// for the routing state after a start; then fails with CNI error 11, so the runtime retries.
    pub async fn pod_mtu(&self) -> Result<u32, CniError> {
        let mut encapsulation = self.encapsulation.clone();
        let known = tokio::time::timeout(ROUTING_STATE_WAIT, encapsulation.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(|waited| waited.ok().and_then(|guard| *guard));
        let in_use = match known {
            Some(in_use) => in_use,
            None => {
                return Err(CniError::new(
                    TRY_AGAIN_LATER,
                    "the pod MTU is not known yet: route-svc has not sent the pools (and their encapsulation); set mtu in the network configuration, or retry",
                ));
            }
        };
        let cached = *self.chosen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(detected) = cached
            && detected.encapsulation == in_use
            && detected.at.elapsed() < DETECTION_TTL
        {
            return Ok(detected.mtu);
        }
        let uplinks = self.uplinks().await?;
        let (overhead, encapsulation) = in_use.overhead();
        let (uplink_mtu, uplink) = match uplinks.iter().min_by_key(|link| link.mtu) {
            Some(link) => (link.mtu, link.name.as_str()),
            None => (ASSUMED_UPLINK_MTU, "none found: Ethernet's assumed"),
        };
        let mtu = uplink_mtu.saturating_sub(overhead);
        let mut chosen = self.chosen.lock().unwrap_or_else(|p| p.into_inner());
        if chosen.is_none_or(|before| before.mtu != mtu) {
            tracing::info!(
                mtu,
                uplink,
                uplink_mtu,
                overhead,
                encapsulation,
                "pod MTU (no mtu in the network configuration): the smallest uplink MTU minus the encapsulation's overhead"
            );
        }
        *chosen = Some(Detected {
            mtu,
            encapsulation: in_use,
            at: std::time::Instant::now(),
        });
        Ok(mtu)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::dataplane::RecordingKernel;

    fn pool(name: &str, encapsulation: Encapsulation) -> (Key, RouteItem) {
        let item = RouteItem::Pool(route_api::model::PoolRoute {
            name: name.to_owned(),
            cidr: "10.0.0.0/16".parse().expect("cidr"),
            encapsulation,
            nat_outgoing: false,
            disabled: false,
            disable_bgp_export: false,
        });
        (name.into(), item)
    }

    #[test]
    fn the_largest_overhead_in_use_wins() {
        let items: BTreeMap<_, _> = [
            pool("a", Encapsulation::None),
            pool("b", Encapsulation::IpipCrossSubnet),
        ]
        .into();
        assert_eq!(EncapsulationInUse::of(&items).overhead(), (20, "IP-in-IP"));
        let items: BTreeMap<_, _> = [
            pool("b", Encapsulation::Ipip),
            pool("c", Encapsulation::VxlanCrossSubnet),
        ]
        .into();
        assert_eq!(EncapsulationInUse::of(&items).overhead().0, 50);
        assert_eq!(EncapsulationInUse::default().overhead().0, 0);
    }

    #[tokio::test]
    async fn the_smallest_uplink_minus_the_overhead_once_the_pools_are_known() {
        let kernel = Arc::new(RecordingKernel::default());
        let (a, b) = (
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
        );
        kernel.add_host_link("eth0", 1500, &[a]);
        kernel.add_host_link("eth1", 1400, &[b]);
        kernel.add_host_link("eth2", 1000, &[]);
        let (detector, sender) = MtuDetector::following_routes(kernel.clone(), vec![a, b]);
        let items: BTreeMap<_, _> = [pool("v", Encapsulation::Vxlan)].into();
        sender.send_replace(Some(EncapsulationInUse::of(&items)));
        assert_eq!(detector.pod_mtu().await.expect("known"), 1350);
        sender.send_replace(Some(EncapsulationInUse::default()));
        assert_eq!(detector.pod_mtu().await.expect("known"), 1400);
    }

    #[tokio::test]
    async fn without_an_uplink_ethernet_is_assumed_and_the_overhead_still_counts() {
        let kernel = Arc::new(RecordingKernel::default());
        let gone = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9));
        let (detector, sender) = MtuDetector::following_routes(kernel, vec![gone]);
        let items: BTreeMap<_, _> = [pool("v", Encapsulation::Vxlan)].into();
        sender.send_replace(Some(EncapsulationInUse::of(&items)));
        assert_eq!(detector.pod_mtu().await.expect("known"), 1450);
    }

    #[tokio::test]
    async fn an_unknown_encapsulation_is_a_retry_later() {
        let kernel = Arc::new(RecordingKernel::default());
        // The follower gone before the routing state arrived: no waiting.
        let (detector, sender) = MtuDetector::following_routes(kernel, Vec::new());
        drop(sender);
        let error = detector.pod_mtu().await.expect_err("unknown");
        assert_eq!(error.code, TRY_AGAIN_LATER);
        assert!(error.msg.contains("mtu"), "{error}");
    }
}
