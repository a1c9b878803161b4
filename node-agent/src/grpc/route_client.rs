//! The agent's side of route-svc: keeps this node registered (renewing its lease, registering
//! again when it expired or its VXLAN endpoint appeared) and follows the routing state (`Sync`),
//! programming tunnel devices, remote tunnel endpoints, remote routes and the natOutgoing chain
//! after every full state or change. Disconnected, it changes nothing in the
//! kernel; reconnected, it resumes from the revision it applied, so only real differences are
//! programmed.

use std::sync::Arc;
use std::time::Duration;

use brindle_datastore::Backoff;
use brindle_fanout::Mirror;
use brindle_grpc_server::sync::SnapshotAssembler;
use brindle_proto::common::v1 as common;
use brindle_proto::route::v1 as pb;
use futures_util::StreamExt;
use pb::routes_client::RoutesClient;
use route_svc::core::{Node, RouteItem};
use route_svc::grpc::convert;
use tokio::sync::{mpsc, watch};
use tonic::transport::{Channel, Endpoint};

use crate::core::ipam::IpamApi;
use crate::core::nat::NatReconciler;
use crate::core::routing::{RouteReconciler, desired_routes};
use crate::core::tunnels::{IPIP_DEVICE, TunnelSetup, VXLAN_DEVICE, VtepReconciler, desired_vteps};
use crate::dataplane::{Iptables, Netlink};

/// How long a registration lives without renewal.
const REGISTRATION_TTL_SECONDS: u32 = 30;
/// How often it is renewed.
const RENEW_EVERY: Duration = Duration::from_secs(10);
/// The agent's keepalive on the Sync stream.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(10);
/// Silence from route-svc after which the agent reconnects.
const SILENCE_LIMIT: Duration = Duration::from_secs(30);

/// Why one Sync call ended.
#[derive(Debug, thiserror::Error)]
enum SyncEnded {
    /// The call failed or ended.
    #[error("route-svc: {0}")]
    Status(#[from] tonic::Status),
    /// route-svc said nothing for too long.
    #[error("route-svc silent for {0:?}")]
    Silent(Duration),
    /// route-svc sent something the agent cannot use.
    #[error("route-svc sent an unusable message: {0}")]
    Unusable(String),
}

/// Registration and routing-state following for one node.
pub struct RouteFollower {
    client: RoutesClient<Channel>,
    registration: watch::Receiver<Node>,
    programmer: Programmer,
}

/// What the routing state is programmed into: tunnel devices, remote tunnel endpoints, remote
/// routes and the natOutgoing chain.
struct Programmer {
    netlink: Arc<dyn Netlink>,
    iptables: Arc<dyn Iptables>,
    tunnels: TunnelSetup,
    vteps: VtepReconciler,
    routes: RouteReconciler,
    nat: NatReconciler,
    /// This node's registration; the VXLAN endpoint is added once the device is ready.
    registration: watch::Sender<Node>,
}

impl RouteFollower {
    /// A follower of route-svc at `endpoint` (`http://host:port`) for `node`; tunnel addresses
    /// come from `ipam`.
    pub fn new(
        endpoint: &str,
        node: Node,
        netlink: Arc<dyn Netlink>,
        iptables: Arc<dyn Iptables>,
        ipam: Arc<dyn IpamApi>,
    ) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(endpoint.to_owned())?
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        let tunnels = TunnelSetup::new(&node.name, &node.addresses, ipam, IPIP_DEVICE);
        let (registration, registered) = watch::channel(node);
        Ok(Self {
            client: RoutesClient::new(channel).max_decoding_message_size(256 << 20),
            registration: registered,
            programmer: Programmer {
                netlink,
                iptables,
                tunnels,
                vteps: VtepReconciler::default(),
                routes: RouteReconciler::default(),
                nat: NatReconciler::default(),
                registration,
            },
        })
    }

    /// Runs registration and sync until the task is dropped.
    pub async fn run(self) {
        let name = self.registration.borrow().name.clone();
        let registration = keep_registered(self.client.clone(), self.registration);
        let sync = follow(self.client, name, self.programmer);
        tokio::join!(registration, sync);
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

async fn follow(client: RoutesClient<Channel>, me: String, mut programmer: Programmer) {
    let mut mirror = Mirror::default();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let error = sync_once(client.clone(), &me, &mut programmer, &mut mirror, &mut backoff).await;
        tracing::warn!(%error, revision = mirror.revision(), "routing-state stream ended; routes stay as they are; reconnecting");
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

fn client_message(message: common::sync_client_message::Message) -> common::SyncClientMessage {
    common::SyncClientMessage {
        message: Some(message),
    }
}

async fn sync_once(
    mut client: RoutesClient<Channel>,
    me: &str,
    programmer: &mut Programmer,
    mirror: &mut Mirror<RouteItem>,
    backoff: &mut Backoff,
) -> SyncEnded {
    let (to_server, queued) = mpsc::channel(8);
    let hello = common::sync_client_message::Message::Hello(common::SyncHello {
        node: me.to_owned(),
        resume_revision: mirror.revision(),
    });
    if to_server.send(client_message(hello)).await.is_err() {
        return SyncEnded::Unusable("request stream closed".into());
    }
    let mut queued = queued;
    let outgoing = futures_util::stream::poll_fn(move |cx| queued.poll_recv(cx));
    let mut incoming = match client.sync(outgoing).await {
        Ok(response) => response.into_inner(),
        Err(status) => return status.into(),
    };
    let mut keepalive = tokio::time::interval(KEEPALIVE_EVERY);
    let mut pieces = SnapshotAssembler::default();
    loop {
        let message = tokio::select! {
            message = tokio::time::timeout(SILENCE_LIMIT, incoming.next()) => message,
            _ = keepalive.tick() => {
                let alive = common::sync_client_message::Message::Keepalive(common::Keepalive::default());
                let _ = to_server.try_send(client_message(alive));
                // Retries what failed and repairs tunnel devices removed behind the agent's
                // back; never before the first full state.
                if mirror.revision() > 0 {
                    programmer.program(mirror, me, &to_server).await;
                }
                continue;
            }
        };
        let message = match message {
            Err(_) => return SyncEnded::Silent(SILENCE_LIMIT),
            Ok(None) => return tonic::Status::unavailable("stream ended").into(),
            Ok(Some(Err(status))) => return status.into(),
            Ok(Some(Ok(message))) => message,
        };
        backoff.reset();
        let changed = match convert::apply_response(mirror, &mut pieces, message) {
            Ok(changed) => changed,
            Err(error) => return SyncEnded::Unusable(error.to_string()),
        };
        if changed {
            programmer.program(mirror, me, &to_server).await;
        }
    }
}

impl Programmer {
    /// Programs what `mirror` asks for: tunnel devices, remote tunnel endpoints, remote routes
    /// and the natOutgoing chain, each step regardless of the others' failures. Acknowledges the
    /// revision once the kernel holds everything the ready devices can carry (a tunnel device
    /// that cannot be set up is logged and retried, and leaves its routes as they are). What
    /// failed is retried at the next keepalive tick.
    async fn program(
        &mut self,
        mirror: &Mirror<RouteItem>,
        me: &str,
        to_server: &mpsc::Sender<common::SyncClientMessage>,
    ) {
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
                let changed = node.vtep_mac != Some(vtep.mac) || node.vtep_ipv4 != Some(vtep.ip);
                node.vtep_mac = Some(vtep.mac);
                node.vtep_ipv4 = Some(vtep.ip);
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
        if failures.is_empty() {
            let ack = common::sync_client_message::Message::Ack(common::SyncAck {
                revision: mirror.revision(),
                programmed: programmed as u64,
            });
            let _ = to_server.try_send(client_message(ack));
        }
    }
}
