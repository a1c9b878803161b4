//! Routes toward other nodes' pods: what the routing state asks for (a route per remote block via
//! its node, a host route per address borrowed by another node) and a reconciler that programs
//! only the differences and removes stale routes it owns — never anything else, and nothing until
//! it has seen a full state.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use route_svc::core::{Encapsulation, Node, RouteItem};

use crate::dataplane::{DataplaneError, Netlink, Route, RouteKind};

/// The remote routes the state `items` asks node `me` to have.
pub fn desired_routes(items: &BTreeMap<String, RouteItem>, me: &str) -> BTreeSet<RemoteRoute> {
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
    let route = |destination: IpNet, node: &str| -> Option<RemoteRoute> {
        let remote = nodes.get(node)?;
        let via = remote.address_like(destination.addr())?;
        match encapsulation_of(&destination) {
            Encapsulation::None => Some(RemoteRoute { destination, via }),
            // Tunnelled modes are programmed by the tunnel reconciler (not yet): no direct route,
            // which could only black-hole across subnets.
            _ => None,
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
    /// The node's underlay address.
    pub via: IpAddr,
}

impl RemoteRoute {
    fn kernel(&self) -> Route {
        Route {
            destination: self.destination,
            gateway: Some(self.via),
            device: None,
            scope_link: false,
            kind: RouteKind::Unicast,
        }
    }
}

/// Whether a kernel route carrying brindle's protocol is a remote route (host routes to local
/// pods have no gateway; blackholes are not unicast).
fn is_remote(route: &Route) -> bool {
    route.kind == RouteKind::Unicast && route.gateway.is_some()
}

/// Programs remote routes, remembering what it programmed.
#[derive(Debug, Default)]
pub struct RouteReconciler {
    programmed: Option<BTreeSet<RemoteRoute>>,
}

impl RouteReconciler {
    /// Makes the kernel's remote routes equal to `desired`. The first call (the first full state
    /// after start) also removes remote routes left from before that are no longer wanted; later
    /// calls touch only what changed. Returns how many routes are programmed.
    pub async fn apply(
        &mut self,
        netlink: &dyn Netlink,
        desired: &BTreeSet<RemoteRoute>,
    ) -> Result<usize, DataplaneError> {
        let programmed = match self.programmed.take() {
            Some(programmed) => programmed,
            None => Self::kernel_remote_routes(netlink, desired).await?,
        };
        let mut done = programmed.clone();
        let result = async {
            for stale in programmed.difference(desired) {
                netlink.delete_route(&stale.kernel()).await?;
                done.remove(stale);
            }
            for missing in desired.difference(&programmed) {
                netlink.replace_route(&missing.kernel()).await?;
                done.insert(missing.clone());
            }
            Ok(())
        }
        .await;
        self.programmed = Some(done);
        result.map(|()| desired.len())
    }

    /// What the kernel has now: remote routes with brindle's protocol, read as routes; the ones
    /// already matching `desired` exactly are kept as programmed.
    async fn kernel_remote_routes(
        netlink: &dyn Netlink,
        desired: &BTreeSet<RemoteRoute>,
    ) -> Result<BTreeSet<RemoteRoute>, DataplaneError> {
        let mut found = BTreeSet::new();
        for route in netlink.routes().await?.iter().filter(|r| is_remote(r)) {
            let Some(via) = route.gateway else { continue };
            let remote = RemoteRoute {
                destination: route.destination,
                via,
            };
            // A route that differs in anything but destination and gateway is re-programmed.
            if route == &remote.kernel() || !desired.contains(&remote) {
                found.insert(remote);
            } else {
                netlink.delete_route(route).await?;
            }
        }
        Ok(found)
    }

    /// How many remote routes are programmed (0 before the first full state).
    pub fn programmed(&self) -> usize {
        self.programmed.as_ref().map_or(0, BTreeSet::len)
    }
}

#[cfg(test)]
mod tests {
    use route_svc::core::PoolRoute;

    use super::*;
    use crate::dataplane::{Call, RecordingKernel};

    fn node(name: &str, address: &str) -> (String, RouteItem) {
        let node = Node {
            name: name.into(),
            addresses: vec![address.parse().expect("ip")],
            ipv4_subnet: None,
            ipv6_subnet: None,
            labels: BTreeMap::new(),
            vtep_mac: None,
            vtep_ipv4: None,
            vtep_ipv6: None,
            ipip_tunnel_ipv4: None,
            lease: 0,
        };
        (format!("node/{name}"), RouteItem::Node(node))
    }

    fn block(cidr: &str, node: &str) -> (String, RouteItem) {
        let cidr: IpNet = cidr.parse().expect("cidr");
        (
            format!("block/{cidr}"),
            RouteItem::Block {
                cidr,
                node: node.into(),
                pool: "p".into(),
            },
        )
    }

    fn pool(cidr: &str, encapsulation: Encapsulation) -> (String, RouteItem) {
        (
            format!("pool/{cidr}"),
            RouteItem::Pool(PoolRoute {
                name: cidr.into(),
                cidr: cidr.parse().expect("cidr"),
                encapsulation,
                nat_outgoing: false,
                disabled: false,
            }),
        )
    }

    fn remote(destination: &str, via: &str) -> RemoteRoute {
        RemoteRoute {
            destination: destination.parse().expect("net"),
            via: via.parse().expect("ip"),
        }
    }

    fn state() -> BTreeMap<String, RouteItem> {
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
                format!("borrowed/{borrowed_ip}"),
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
        let desired = desired_routes(&state(), "me");
        assert_eq!(
            desired,
            BTreeSet::from([
                remote("10.244.0.64/26", "192.168.1.2"),
                remote("10.244.0.128/26", "192.168.1.3"),
                remote("10.244.0.70/32", "192.168.1.3"),
            ]),
            "not my own block, not an unregistered node's, not a tunnelled pool's"
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
            kind: RouteKind::Unicast,
        };
        let blackhole = Route {
            destination: "10.244.0.0/26".parse().expect("net"),
            gateway: None,
            device: None,
            scope_link: false,
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
        let desired = desired_routes(&state(), "me");
        assert_eq!(reconciler.apply(&kernel, &desired).await.expect("apply"), 3);
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
        reconciler.apply(&kernel, &desired).await.expect("again");
        assert_eq!(kernel.calls().len(), before);

        // One block moves: exactly one delete and one add.
        let mut moved = state();
        moved.extend([block("10.244.0.128/26", "b")]);
        reconciler
            .apply(&kernel, &desired_routes(&moved, "me"))
            .await
            .expect("moved");
        assert_eq!(
            kernel.calls()[before..].to_vec(),
            vec![
                Call::DeleteRoute(remote("10.244.0.128/26", "192.168.1.3").kernel()),
                Call::ReplaceRoute(remote("10.244.0.128/26", "192.168.1.2").kernel()),
            ]
        );
    }

    #[tokio::test]
    async fn a_failed_apply_remembers_what_it_did_and_the_next_one_finishes() {
        let kernel = RecordingKernel::default();
        let mut reconciler = RouteReconciler::default();
        let desired = desired_routes(&state(), "me");
        kernel.fail_on("10.244.0.128");
        assert!(reconciler.apply(&kernel, &desired).await.is_err());
        reconciler.apply(&kernel, &desired).await.expect("retry");
        assert_eq!(kernel.current_routes().iter().filter(|r| is_remote(r)).count(), 3);
        assert_eq!(reconciler.programmed(), 3);
    }
}
