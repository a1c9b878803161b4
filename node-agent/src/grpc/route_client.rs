//! The agent's side of route-svc: keeps this node registered (renewing its lease, registering
//! again when it expired or its VXLAN endpoint appeared) and follows the routing state (`Sync`),
//! programming tunnel devices, remote tunnel endpoints, remote routes and the natOutgoing chain
//! after every full state or change. Disconnected, it changes nothing in the
//! kernel; reconnected, it resumes from the revision it applied, so only real differences are
//! programmed.

use std::sync::Arc;
use std::time::Duration;

use brindle_backoff::Backoff;
use brindle_fanout::Mirror;
use brindle_proto::InvalidField;
use brindle_proto::route::v1 as pb;
use brindle_sync::SnapshotAssembler;
use pb::routes_client::RoutesClient;
use route_api::convert::{self, RouteWire};
use route_api::{Node, RouteItem};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use crate::core::ipam::IpamApi;
use crate::core::nat::NatReconciler;
use crate::core::routing::{RouteReconciler, desired_routes};
use crate::core::tunnels::{IPIP_DEVICE, TunnelSetup, VXLAN_DEVICE, VtepReconciler, desired_vteps};
use crate::dataplane::{Iptables, Netlink};
use crate::grpc::sync_client::{Outgoing, ResyncClock, SyncMetrics, SyncService, SyncTarget, follow};

/// How long a registration lives without renewal.
const REGISTRATION_TTL_SECONDS: u32 = 30;
/// How often it is renewed.
const RENEW_EVERY: Duration = Duration::from_secs(10);
/// Registration and routing-state following for one node.
pub struct RouteFollower {
    client: RoutesClient<Channel>,
    registration: watch::Receiver<Node>,
    programmer: Programmer,
}

/// What the routing state is programmed into: tunnel devices, remote tunnel endpoints, remote
/// routes and the natOutgoing chain.
struct Programmer {
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
}

impl RouteFollower {
    /// A follower of route-svc at `endpoint` (with its TLS, if any) for `node`; tunnel addresses
    /// come from `ipam`; the kernel is re-read every `resync_every`.
    pub fn new(
        endpoint: Endpoint,
        node: Node,
        netlink: Arc<dyn Netlink>,
        iptables: Arc<dyn Iptables>,
        ipam: Arc<dyn IpamApi>,
        resync_every: Duration,
    ) -> Self {
        let channel = endpoint.connect_lazy();
        let tunnels = TunnelSetup::new(&node.name, &node.addresses, ipam, IPIP_DEVICE);
        let me = node.name.clone();
        let (registration, registered) = watch::channel(node);
        Self {
            client: RoutesClient::new(channel).max_decoding_message_size(256 << 20),
            registration: registered,
            programmer: Programmer {
                me,
                netlink,
                iptables,
                tunnels,
                vteps: VtepReconciler::default(),
                routes: RouteReconciler::default(),
                nat: NatReconciler::default(),
                resync: ResyncClock::new(resync_every),
                registration,
            },
        }
    }

    /// Runs registration and sync until the task is dropped.
    pub async fn run(self, metrics: SyncMetrics) {
        let name = self.registration.borrow().name.clone();
        let registration = keep_registered(self.client.clone(), self.registration);
        tokio::join!(
            registration,
            follow(RouteSync(self.client), name, self.programmer, metrics)
        );
    }
}

/// route-svc's Sync stream.
struct RouteSync(RoutesClient<Channel>);

#[async_trait::async_trait]
impl SyncService for RouteSync {
    type Response = pb::SyncResponse;
    type Value = RouteItem;
    const NAME: &'static str = "route-svc";
    const MIN_INTERVAL: Duration = Duration::ZERO;

    async fn open(&self, outgoing: Outgoing) -> Result<tonic::Streaming<pb::SyncResponse>, tonic::Status> {
        let mut client = self.0.clone();
        client.sync(outgoing).await.map(tonic::Response::into_inner)
    }

    fn apply(
        mirror: &mut Mirror<RouteItem>,
        pieces: &mut SnapshotAssembler,
        response: pb::SyncResponse,
    ) -> Result<bool, InvalidField> {
        brindle_sync::apply_response::<RouteWire>(mirror, pieces, response)
    }
}

/// Registers the node, renews its lease, and registers again when the registration changed or
/// expired.
async fn keep_registered(mut client: RoutesClient<Channel>, mut registration: watch::Receiver<Node>) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut registered = false;
    loop {
        let node = registration.borrow_and_update().clone();
        let result = if registered {
            client
                .renew_node(pb::RenewNodeRequest {
                    name: node.name.clone(),
                })
                .await
                .map(|_| ())
        } else {
            client
                .register_node(pb::RegisterNodeRequest {
                    node: Some(convert::node_to_proto(&node)),
                    ttl_seconds: REGISTRATION_TTL_SECONDS,
                })
                .await
                .map(|_| tracing::info!(node = node.name, "registered with route-svc"))
        };
        match result {
            Ok(()) => {
                registered = true;
                backoff.reset();
                tokio::select! {
                    _ = tokio::time::sleep(RENEW_EVERY) => {}
                    Ok(()) = registration.changed() => registered = false,
                }
            }
            Err(status) => {
                if status.code() == tonic::Code::NotFound {
                    registered = false;
                }
                tracing::warn!(node = node.name, %status, "registration with route-svc; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

#[async_trait::async_trait]
impl SyncTarget<RouteItem> for Programmer {
    /// Programs what `mirror` asks for: tunnel devices, remote tunnel endpoints, remote routes
    /// and the natOutgoing chain, each step regardless of the others' failures. Succeeds once the
    /// kernel holds everything the ready devices can carry (a tunnel device that cannot be set up
    /// is logged and retried, and leaves its routes as they are). What failed is retried at the
    /// next keepalive tick; when the resync clock is due, a tick first forgets what was
    /// programmed, so the kernel is read again and anything removed behind its back comes back.
    async fn program(&mut self, mirror: &Mirror<RouteItem>, tick: bool) -> Option<u64> {
        if tick && self.resync.due() {
            self.vteps.resync();
            self.routes.resync();
            self.nat.resync();
        }
        let me = self.me.as_str();
        let state = mirror.state();
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
        failures.extend(self.nat.apply(self.iptables.as_ref(), state).err());
        for error in &failures {
            tracing::error!(%error, "programming the routing state; retrying");
        }
        failures.is_empty().then_some(programmed as u64)
    }
}
