//! Routes toward other nodes' pods: what the routing state asks for (a route per remote block via
//! its node — directly, or through the VXLAN or IP-in-IP device as the block's pool says — and a
//! host route per address borrowed by another node; none where a direct route's next hop is in
//! another subnet: that traffic follows the default gateway, which learns the blocks over BGP) and a reconciler that programs only the
//! differences and removes stale routes it owns — never anything else, and nothing until it has
//! seen a full state.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use brindle_fanout::Key;
use ipnet::IpNet;
use route_api::{Encapsulation, Node, RouteItem};

use crate::core::reconcile::{SetWriter, reconcile_set};
use crate::core::tunnels::Tunnels;
use crate::dataplane::{DataplaneError, Netlink, Route, RouteKind};

/// The remote routes the state `items` asks node `me` to have, given the tunnel devices ready.
/// A route that needs a device that is not ready (or a remote endpoint not registered yet) is
/// left out until it is.
pub fn desired_routes(
    items: &BTreeMap<Key, RouteItem>,
    me: &str,
    tunnels: &Tunnels,
) -> BTreeSet<RemoteRoute> {
    let nodes: BTreeMap<&str, &Node> = items
        .values()
        .filter_map(|item| match item {
            RouteItem::Node(node) => Some((node.name.as_str(), node)),
            _ => None,
        })
        .collect();
    let pools: Vec<_> = items
        .values()
        .filter_map(|item| match item {
            RouteItem::Pool(pool) => Some(pool),
            _ => None,
        })
        .collect();
    let encapsulation_of = |net: &IpNet| {
        pools
            .iter()
            .find(|pool| pool.cidr.contains(net))
            .map_or(Encapsulation::None, |pool| pool.encapsulation)
    };
    let my_subnet = nodes.get(me).and_then(|node| node.ipv4_subnet);
    // Without brindle's node-to-node mesh, unencapsulated traffic follows the default gateway.
    let mesh = items
        .values()
        .find_map(|item| match item {
            RouteItem::BgpConfiguration(configuration) => Some(configuration.node_to_node_mesh_enabled),
            _ => None,
        })
        .unwrap_or(true);
    // Unknown subnets count as different: a tunnel works across subnets, a direct route does not.
    let same_subnet =
        |via: IpAddr| matches!((my_subnet, via), (Some(subnet), IpAddr::V4(v4)) if subnet.contains(&v4));
    let route = |destination: IpNet, node: &str| -> Option<RemoteRoute> {
        let remote = nodes.get(node)?;
        let address = remote.address_like(destination.addr())?;
        let direct = || {
            Some(RemoteRoute {
                destination,
                via: address,
                device: None,
            })
        };
        let vxlan = || {
            let via = match destination {
                IpNet::V4(_) => IpAddr::V4(remote.vtep_ipv4?),
                IpNet::V6(_) => IpAddr::V6(remote.vtep_ipv6?),
            };
            Some(RemoteRoute {
                destination,
                via,
                device: Some(tunnels.vxlan.clone()?),
            })
        };
        let ipip = || {
            Some(RemoteRoute {
                destination,
                via: address,
                device: Some(tunnels.ipip.clone()?),
            })
        };
        match encapsulation_of(&destination) {
            Encapsulation::None if !mesh => None,
            // A next hop in another subnet is not on link: no route (the default gateway's BGP
            // routes carry that traffic). IPv6 and unknown subnets are not compared.
            Encapsulation::None
                if destination.addr().is_ipv4() && my_subnet.is_some() && !same_subnet(address) =>
            {
                None
            }
            Encapsulation::None => direct(),
            Encapsulation::Vxlan => vxlan(),
            // (CrossSubnet compares IPv4 subnets: IPv6 blocks of such pools always go over VXLAN.)
            Encapsulation::VxlanCrossSubnet if same_subnet(address) => direct(),
            Encapsulation::VxlanCrossSubnet => vxlan(),
            // IP-in-IP carries IPv4 only: no route, which a direct one across subnets would
            // black-hole.
            _ if destination.addr().is_ipv6() => None,
            Encapsulation::Ipip => ipip(),
            Encapsulation::IpipCrossSubnet if same_subnet(address) => direct(),
            Encapsulation::IpipCrossSubnet => ipip(),
        }
    };
    items
        .values()
        .filter_map(|item| match item {
            RouteItem::Block { cidr, node, .. } if node != me => route(*cidr, node),
            RouteItem::Borrowed { ip, node, .. } if node != me => route(IpNet::from(*ip), node),
            _ => None,
        })
        .collect()
}

/// A route to pods on another node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RemoteRoute {
    /// A block or a single address.
    pub destination: IpNet,
    /// The next hop: the node's underlay address (direct, IP-in-IP) or its VXLAN tunnel address.
    pub via: IpAddr,
    /// The tunnel device (the route is `onlink` through it); `None` for a direct route.
    pub device: Option<String>,
}

impl RemoteRoute {
    fn kernel(&self) -> Route {
        Route {
            destination: self.destination,
            gateway: Some(self.via),
            device: self.device.clone(),
            scope_link: false,
            onlink: self.device.is_some(),
            kind: RouteKind::Unicast,
        }
    }

    /// The remote route a kernel route is (a direct route's output device is the kernel's
    /// choice, so only an `onlink` route's device counts).
    fn from_kernel(route: &Route) -> Option<Self> {
        Some(Self {
            destination: route.destination,
            via: route.gateway?,
            device: if route.onlink { route.device.clone() } else { None },
        })
    }
}

/// Whether a kernel route carrying brindle's protocol is a remote route (host routes to local
/// pods have no gateway; blackholes are not unicast).
fn is_remote(route: &Route) -> bool {
    route.kind == RouteKind::Unicast && route.gateway.is_some()
}

/// Remote routes into the kernel.
struct RouteWriter<'a>(&'a dyn Netlink);

#[async_trait::async_trait]
impl SetWriter<RemoteRoute> for RouteWriter<'_> {
    async fn add(&self, route: &RemoteRoute) -> Result<(), DataplaneError> {
        self.0.replace_route(&route.kernel()).await
    }

    async fn remove(&self, route: &RemoteRoute) -> Result<(), DataplaneError> {
        self.0.delete_route(&route.kernel()).await.map(drop)
    }
}

/// Programs remote routes, remembering what it programmed.
#[derive(Debug, Default)]
pub struct RouteReconciler {
    programmed: Option<BTreeSet<RemoteRoute>>,
}

impl RouteReconciler {
    /// Makes the kernel's remote routes equal to `desired`. The first call (the first full state
    /// after start) also removes remote routes left from before that are no longer wanted; later
    /// calls touch only what changed. Routes through a device in `pending` (a tunnel still being
    /// set up) are left as they are. Returns how many routes are programmed.
    pub async fn apply(
        &mut self,
        netlink: &dyn Netlink,
        desired: &BTreeSet<RemoteRoute>,
        pending: &[String],
    ) -> Result<usize, DataplaneError> {
        let programmed = match self.programmed.take() {
            Some(programmed) => programmed,
            None => Self::kernel_remote_routes(netlink).await?,
        };
        let through_pending =
            |route: &RemoteRoute| route.device.as_ref().is_some_and(|d| pending.contains(d));
        let (done, failure) =
            reconcile_set(programmed, desired, through_pending, &RouteWriter(netlink)).await;
        self.programmed = Some(done);
        failure.map_or(Ok(desired.len()), Err)
    }

    /// Forgets what it programmed: the next apply reads the kernel again and repairs any
    /// difference (a route deleted or changed behind its back).
    pub fn resync(&mut self) {
        self.programmed = None;
    }

    /// What the kernel has now: remote routes with brindle's protocol, read as routes.
    async fn kernel_remote_routes(netlink: &dyn Netlink) -> Result<BTreeSet<RemoteRoute>, DataplaneError> {
        Ok(netlink
            .routes()
            .await?
            .iter()
            .filter(|r| is_remote(r))
            .filter_map(RemoteRoute::from_kernel)
            .collect())
    }

    /// How many remote routes are programmed (0 before the first full state).
    pub fn programmed(&self) -> usize {
        self.programmed.as_ref().map_or(0, BTreeSet::len)
    }
}

#[cfg(test)]
mod tests {
    use route_api::PoolRoute;

    use super::*;
    use crate::dataplane::{Call, RecordingKernel};

    /// A node at `address` in its /24, with a VXLAN endpoint `10.99.255.<last octet>`.
    fn node(name: &str, address: &str) -> (Key, RouteItem) {
        let address: std::net::Ipv4Addr = address.parse().expect("ip");
        let last = address.octets()[3];
        let node = Node {
            name: name.into(),
            addresses: vec![address.into()],
            ipv4_subnet: Some(ipnet::Ipv4Net::new(address, 24).expect("net").trunc()),
            ipv6_subnet: None,
            labels: BTreeMap::new(),
            vtep_mac: Some([2, 0, 0, 0, 0, last]),
            vtep_ipv4: Some(std::net::Ipv4Addr::new(10, 99, 255, last)),
            vtep_ipv6: None,
            ipip_tunnel_ipv4: None,
            bgp: None,
            lease: 0,
        };
        (format!("node/{name}").into(), RouteItem::Node(node))
    }

    fn block(cidr: &str, node: &str) -> (Key, RouteItem) {
        let cidr: IpNet = cidr.parse().expect("cidr");
        (
            format!("block/{cidr}").into(),
            RouteItem::Block {
                cidr,
                node: node.into(),
                pool: "p".into(),
            },
        )
    }

    fn pool(cidr: &str, encapsulation: Encapsulation) -> (Key, RouteItem) {
        (
            format!("pool/{cidr}").into(),
            RouteItem::Pool(PoolRoute {
                name: cidr.into(),
                cidr: cidr.parse().expect("cidr"),
                encapsulation,
                nat_outgoing: false,
                disabled: false,
                disable_bgp_export: false,
            }),
        )
    }

    fn remote(destination: &str, via: &str) -> RemoteRoute {
        RemoteRoute {
            destination: destination.parse().expect("net"),
            via: via.parse().expect("ip"),
            device: None,
        }
    }

    fn tunnelled(destination: &str, via: &str, device: &str) -> RemoteRoute {
        RemoteRoute {
            device: Some(device.into()),
            ..remote(destination, via)
        }
    }

    fn state() -> BTreeMap<Key, RouteItem> {
        let borrowed_ip: IpAddr = "10.244.0.70".parse().expect("ip");
        BTreeMap::from([
            node("me", "192.168.1.1"),
            node("b", "192.168.1.2"),
            node("c", "192.168.1.3"),
            pool("10.244.0.0/16", Encapsulation::None),
            pool("10.99.0.0/16", Encapsulation::Vxlan),
            block("10.244.0.0/26", "me"),
            block("10.244.0.64/26", "b"),
            block("10.244.0.128/26", "c"),
            block("10.244.0.192/26", "gone"),
            block("10.99.0.0/26", "b"),
            (
                format!("borrowed/{borrowed_ip}").into(),
                RouteItem::Borrowed {
                    ip: borrowed_ip,
                    node: "c".into(),
                    block: "10.244.0.64/26".parse().expect("net"),
                },
            ),
        ])
    }

    #[test]
    fn remote_blocks_and_borrowed_addresses_route_via_their_node() {
        let desired = desired_routes(&state(), "me", &Tunnels::default());
        assert_eq!(
            desired,
            BTreeSet::from([
                remote("10.244.0.64/26", "192.168.1.2"),
                remote("10.244.0.128/26", "192.168.1.3"),
                remote("10.244.0.70/32", "192.168.1.3"),
            ]),
            "not my own block, not an unregistered node's, not a tunnelled pool's without its device"
        );
    }

    /// Pools of every encapsulation, nodes b (same subnet as me) and d (another subnet).
    fn encapsulated_state() -> BTreeMap<Key, RouteItem> {
        BTreeMap::from([
            node("me", "192.168.1.1"),
            node("b", "192.168.1.2"),
            node("d", "192.168.2.4"),
            pool("10.1.0.0/16", Encapsulation::Vxlan),
            pool("10.2.0.0/16", Encapsulation::VxlanCrossSubnet),
            pool("10.3.0.0/16", Encapsulation::Ipip),
            pool("10.4.0.0/16", Encapsulation::IpipCrossSubnet),
            block("10.1.0.0/26", "b"),
            block("10.2.0.0/26", "b"),
            block("10.2.0.64/26", "d"),
            block("10.3.0.0/26", "b"),
            block("10.4.0.0/26", "b"),
            block("10.4.0.64/26", "d"),
        ])
    }

    #[test]
    fn unencapsulated_pools_get_no_route_whose_next_hop_is_in_another_subnet() {
        let mut state = encapsulated_state();
        let (key, unencapsulated) = pool("10.5.0.0/16", Encapsulation::None);
        state.insert(key, unencapsulated);
        state.extend([block("10.5.0.0/26", "b"), block("10.5.0.64/26", "d")]);
        let desired = desired_routes(&state, "me", &Tunnels::default());
        assert!(
            desired.contains(&remote("10.5.0.0/26", "192.168.1.2")),
            "{desired:?}"
        );
        assert!(
            !desired
                .iter()
                .any(|r| r.destination == "10.5.0.64/26".parse::<IpNet>().expect("net")),
            "{desired:?}"
        );
        // Without the node-to-node mesh, none at all; encapsulated pools keep theirs.
        let configuration = route_api::bgp::BgpConfiguration {
            node_to_node_mesh_enabled: false,
            ..route_api::bgp::BgpConfiguration::default()
        };
        state.insert(
            "bgp/configuration".into(),
            RouteItem::BgpConfiguration(configuration),
        );
        let tunnels = Tunnels {
            vxlan: Some("vxlan.brindle".into()),
            ipip: None,
        };
        let desired = desired_routes(&state, "me", &tunnels);
        let unencapsulated: IpNet = "10.5.0.0/16".parse().expect("net");
        assert!(
            !desired.iter().any(|r| unencapsulated.contains(&r.destination)),
            "{desired:?}"
        );
        assert!(
            desired.contains(&tunnelled("10.1.0.0/26", "10.99.255.2", "vxlan.brindle")),
            "{desired:?}"
        );
    }

    #[test]
    fn tunnelled_pools_route_onlink_through_their_device_and_cross_subnet_only_across_subnets() {
        let tunnels = Tunnels {
            vxlan: Some("vxlan.brindle".into()),
            ipip: Some("standin".into()),
        };
        assert_eq!(
            desired_routes(&encapsulated_state(), "me", &tunnels),
            BTreeSet::from([
                tunnelled("10.1.0.0/26", "10.99.255.2", "vxlan.brindle"),
                remote("10.2.0.0/26", "192.168.1.2"),
                tunnelled("10.2.0.64/26", "10.99.255.4", "vxlan.brindle"),
                tunnelled("10.3.0.0/26", "192.168.1.2", "standin"),
                remote("10.4.0.0/26", "192.168.1.2"),
                tunnelled("10.4.0.64/26", "192.168.2.4", "standin"),
            ])
        );
        // Without the devices, only the direct routes inside the subnet remain.
        assert_eq!(
            desired_routes(&encapsulated_state(), "me", &Tunnels::default()),
            BTreeSet::from([
                remote("10.2.0.0/26", "192.168.1.2"),
                remote("10.4.0.0/26", "192.168.1.2")
            ])
        );
    }

    #[tokio::test]
    async fn onlink_routes_read_back_from_the_kernel_are_not_reprogrammed() {
        let kernel = RecordingKernel::default();
        kernel.add_host_link("vxlan.brindle", 1450, &[]);
        let tunnels = Tunnels {
            vxlan: Some("vxlan.brindle".into()),
            ipip: None,
        };
        let desired = desired_routes(&encapsulated_state(), "me", &tunnels);
        RouteReconciler::default()
            .apply(&kernel, &desired, &[])
            .await
            .expect("first agent");
        let before = kernel.calls().len();
        let mut restarted = RouteReconciler::default();
        restarted
            .apply(&kernel, &desired, &[])
            .await
            .expect("restarted agent");
        assert_eq!(kernel.calls().len(), before, "a restarted agent changes nothing");
        assert_eq!(restarted.programmed(), 4);

        // Restarted while the VXLAN device cannot be set up yet (IPAM down): its routes stay.
        let without_vxlan = desired_routes(&encapsulated_state(), "me", &Tunnels::default());
        let mut waiting = RouteReconciler::default();
        waiting
            .apply(&kernel, &without_vxlan, &["vxlan.brindle".to_owned()])
            .await
            .expect("waiting for the device");
        assert_eq!(
            kernel.calls().len(),
            before,
            "no route through the pending device is removed"
        );
    }

    #[tokio::test]
    async fn the_first_full_state_sweeps_stale_remote_routes_only_then_changes_are_incremental() {
        let kernel = RecordingKernel::default();
        let stale = remote("10.244.9.0/26", "192.168.1.9");
        let kept = remote("10.244.0.64/26", "192.168.1.2");
        let host_route = Route {
            destination: "10.244.0.5/32".parse().expect("net"),
            gateway: None,
            device: None,
            scope_link: true,
            onlink: false,
            kind: RouteKind::Unicast,
        };
        let blackhole = Route {
            destination: "10.244.0.0/26".parse().expect("net"),
            gateway: None,
            device: None,
            scope_link: false,
            onlink: false,
            kind: RouteKind::Blackhole,
        };
        for route in [
            stale.kernel(),
            kept.kernel(),
            host_route.clone(),
            blackhole.clone(),
        ] {
            kernel.replace_route(&route).await.expect("seed");
        }
        let seeded = kernel.calls().len();
        let mut reconciler = RouteReconciler::default();
        let desired = desired_routes(&state(), "me", &Tunnels::default());
        assert_eq!(reconciler.apply(&kernel, &desired, &[]).await.expect("apply"), 3);
        let calls = kernel.calls()[seeded..].to_vec();
        assert!(calls.contains(&Call::DeleteRoute(stale.kernel())));
        assert!(
            !calls.contains(&Call::ReplaceRoute(kept.kernel())),
            "an existing route is not re-added"
        );
        let routes = kernel.current_routes();
        assert!(
            routes.contains(&host_route) && routes.contains(&blackhole),
            "not ours to sweep"
        );

        // The same state again (a reconnect): no kernel call at all.
        let before = kernel.calls().len();
        reconciler.apply(&kernel, &desired, &[]).await.expect("again");
        assert_eq!(kernel.calls().len(), before);

        // One block moves: exactly one delete and one add.
        let mut moved = state();
        moved.extend([block("10.244.0.128/26", "b")]);
        reconciler
            .apply(&kernel, &desired_routes(&moved, "me", &Tunnels::default()), &[])
            .await
            .expect("moved");
        assert_eq!(
            kernel.calls()[before..].to_vec(),
            vec![
                Call::ReplaceRoute(remote("10.244.0.128/26", "192.168.1.2").kernel()),
                Call::DeleteRoute(remote("10.244.0.128/26", "192.168.1.3").kernel()),
            ],
            "the new route first: the block is never without one"
        );
    }

    #[tokio::test]
    async fn a_resync_repairs_a_remote_route_removed_behind_its_back() {
        let kernel = RecordingKernel::default();
        let mut reconciler = RouteReconciler::default();
        let desired = desired_routes(&state(), "me", &Tunnels::default());
        reconciler.apply(&kernel, &desired, &[]).await.expect("apply");
        let removed = desired.iter().next().expect("a route").kernel();
        kernel.delete_route(&removed).await.expect("removed by hand");
        reconciler.apply(&kernel, &desired, &[]).await.expect("again");
        assert!(
            !kernel.current_routes().contains(&removed),
            "between re-reads only changes are applied"
        );
        reconciler.resync();
        reconciler
            .apply(&kernel, &desired, &[])
            .await
            .expect("after the re-read");
        assert!(kernel.current_routes().contains(&removed), "repaired");
    }

    #[tokio::test]
    async fn a_failed_apply_remembers_what_it_did_and_the_next_one_finishes() {
        let kernel = RecordingKernel::default();
        let mut reconciler = RouteReconciler::default();
        let desired = desired_routes(&state(), "me", &Tunnels::default());
        kernel.fail_on("10.244.0.128");
        assert!(reconciler.apply(&kernel, &desired, &[]).await.is_err());
        reconciler.apply(&kernel, &desired, &[]).await.expect("retry");
        assert_eq!(kernel.current_routes().iter().filter(|r| is_remote(r)).count(), 3);
        assert_eq!(reconciler.programmed(), 3);
    }
}
