//! The routing state programmed into the kernel: tunnel devices, remote tunnel endpoints, remote
//! routes and the natOutgoing chain, each step regardless of the others' failures, with the
//! node's VXLAN endpoint handed back for its registration and the pools' encapsulation published
//! for the pod MTU.

use std::sync::Arc;
use std::time::Duration;

use brindle_fanout::Mirror;
use route_api::{Node, RouteItem};
use tokio::sync::watch;

use crate::core::bgp::BgpSpeaker;
use crate::core::follow::{ResyncClock, SyncTarget};
use crate::core::ipam::IpamApi;
use crate::core::mtu::{EncapsulationInUse, EncapsulationSender};
use crate::core::nat::NatReconciler;
use crate::core::routing::{RouteReconciler, desired_routes};
use crate::core::tunnels::{IPIP_DEVICE, TunnelSetup, VXLAN_DEVICE, VtepReconciler, desired_vteps};
use crate::dataplane::{Iptables, Netlink};

/// What the routing state is programmed into: tunnel devices, remote tunnel endpoints, remote
/// routes and the natOutgoing chain.
pub struct RouteProgrammer {
    /// This node.
    me: String,
    netlink: Arc<dyn Netlink>,
    iptables: Arc<dyn Iptables>,
    tunnels: TunnelSetup,
    vteps: VtepReconciler,
    routes: RouteReconciler,
    nat: NatReconciler,
    /// When the kernel is re-read next (routes, endpoints and the chain it repairs).
    resync: ResyncClock,
    /// This node's registration; the VXLAN endpoint is added once the device is ready.
    registration: watch::Sender<Node>,
    /// The encapsulation the pools use (the pod MTU depends on it).
    encapsulation: EncapsulationSender,
    /// The node's BGP daemon, when it runs one.
    bgp: Option<BgpSpeaker>,
}

impl RouteProgrammer {
    /// Programs for `node` through `netlink` and `iptables`, with tunnel addresses from `ipam`;
    /// re-reads the kernel every `resync_every`; sends the node's registration, with its VXLAN
    /// endpoint once the device is ready, on `registration`; the encapsulation the pools use on
    /// `encapsulation`.
    pub fn new(
        node: &Node,
        netlink: Arc<dyn Netlink>,
        iptables: Arc<dyn Iptables>,
        ipam: Arc<dyn IpamApi>,
        resync_every: Duration,
        registration: watch::Sender<Node>,
        encapsulation: EncapsulationSender,
    ) -> Self {
        Self {
            me: node.name.clone(),
            netlink,
            iptables,
            tunnels: TunnelSetup::new(&node.name, &node.addresses, ipam, IPIP_DEVICE),
            vteps: VtepReconciler::default(),
            routes: RouteReconciler::default(),
            nat: NatReconciler::default(),
            resync: ResyncClock::new(resync_every),
            registration,
            encapsulation,
            bgp: None,
        }
    }

    /// Also keeps the node's BGP daemon announcing what the state asks.
    #[must_use]
    pub fn with_bgp(mut self, bgp: Option<BgpSpeaker>) -> Self {
        self.bgp = bgp;
        self
    }
}

#[async_trait::async_trait]
impl SyncTarget<RouteItem> for RouteProgrammer {
    /// Programs what `mirror` asks for: tunnel devices, remote tunnel endpoints, remote routes
    /// and the natOutgoing chain, each step regardless of the others' failures. Succeeds once the
    /// kernel holds everything the ready devices can carry (a tunnel device that cannot be set up
    /// is logged and retried, and leaves its routes as they are). What failed is retried at the
    /// next keepalive tick; when the resync clock is due, a tick first forgets what was
    /// programmed, so the kernel is read again and anything removed behind its back comes back.
    async fn program(&mut self, mirror: &Mirror<RouteItem>, tick: bool) -> Option<u64> {
        let resync = tick && self.resync.due();
        if resync {
            self.vteps.resync();
            self.routes.resync();
            self.nat.resync();
        }
        let me = self.me.as_str();
        let state = mirror.state();
        let in_use = Some(EncapsulationInUse::of(state));
        self.encapsulation
            .send_if_modified(|known| std::mem::replace(known, in_use) != in_use);
        let netlink = self.netlink.as_ref();
        let prepared = self.tunnels.ensure(netlink, state).await;
        for failure in &prepared.failures {
            tracing::error!(error = %failure, "setting up a tunnel device; retrying");
        }
        if prepared.recreated {
            self.vteps = VtepReconciler::default();
            self.routes = RouteReconciler::default();
        }
        if let Some(vtep) = self.tunnels.local_vtep() {
            self.registration.send_if_modified(|node| {
                let changed = node.vtep_mac != Some(vtep.mac)
                    || node.vtep_ipv4 != Some(vtep.ip)
                    || node.vtep_ipv6 != vtep.ipv6;
                node.vtep_mac = Some(vtep.mac);
                node.vtep_ipv4 = Some(vtep.ip);
                node.vtep_ipv6 = vtep.ipv6;
                changed
            });
        }
        let tunnels = &prepared.tunnels;
        let mut failures = Vec::new();
        if tunnels.vxlan.is_some() {
            let vteps = desired_vteps(state, me, tunnels);
            failures.extend(self.vteps.apply(netlink, VXLAN_DEVICE, &vteps).await.err());
        }
        let routes = desired_routes(state, me, tunnels);
        let programmed = match self.routes.apply(netlink, &routes, &prepared.pending).await {
            Ok(programmed) => programmed,
            Err(error) => {
                failures.push(error);
                self.routes.programmed()
            }
        };
        // iptables-restore runs as a child process: off the async workers.
        let (nat, iptables) = (&mut self.nat, self.iptables.as_ref());
        failures.extend(tokio::task::block_in_place(|| nat.apply(iptables, state)).err());
        for error in &failures {
            tracing::error!(%error, "programming the routing state; retrying");
        }
        let mut announced = true;
        if let Some(bgp) = &mut self.bgp {
            if let Err(error) = bgp.program(state, resync).await {
                tracing::error!(%error, "configuring BGP; retrying");
                announced = false;
            }
            if tick {
                bgp.refresh_sessions().await;
            }
        }
        (failures.is_empty() && announced).then_some(programmed as u64)
    }
}
