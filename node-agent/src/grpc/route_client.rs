//! The agent's side of route-svc: keeps this node registered (renewing its lease, registering
//! again when it expired or its VXLAN endpoint appeared) and follows the routing state (`Sync`),
//! which [`RouteProgrammer`] programs after every full state or change. Disconnected, it changes nothing in the
//! kernel; reconnected, it resumes from the revision it applied, so only real differences are
//! programmed.

use std::sync::Arc;
use std::time::Duration;

use brindle_backoff::Backoff;
use brindle_proto::route::v1 as pb;
use pb::routes_client::RoutesClient;
use route_api::Node;
use route_api::convert::{self, RouteWire};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::core::bgp::BgpSession;
use crate::core::ipam::IpamApi;
use crate::core::mtu::EncapsulationSender;
use crate::core::route_programmer::RouteProgrammer;
use crate::dataplane::{Iptables, Netlink};
use crate::grpc::sync_client::{Outgoing, SyncMetrics, SyncService, follow};

/// How long a registration lives without renewal.
const REGISTRATION_TTL_SECONDS: u32 = 30;
/// How often it is renewed.
const RENEW_EVERY: Duration = Duration::from_secs(10);
/// Registration and routing-state following for one node.
pub struct RouteFollower {
    client: RoutesClient<Channel>,
    registration: watch::Receiver<Node>,
    programmer: RouteProgrammer,
    /// The BGP sessions reported with each renewal.
    sessions: Option<watch::Receiver<Vec<BgpSession>>>,
}

impl RouteFollower {
    /// A follower of route-svc at `endpoint` (with its TLS, if any) for `node`; tunnel addresses
    /// come from `ipam`; the kernel is re-read every `resync_every`; the encapsulation the pools
    /// use goes to `encapsulation`.
    pub fn new(
        endpoint: brindle_grpc::Dialer,
        node: Node,
        netlink: Arc<dyn Netlink>,
        iptables: Arc<dyn Iptables>,
        ipam: Arc<dyn IpamApi>,
        resync_every: Duration,
        encapsulation: EncapsulationSender,
    ) -> Self {
        let channel = endpoint.connect_lazy();
        let (registration, registered) = watch::channel(node.clone());
        Self {
            client: RoutesClient::new(channel).max_decoding_message_size(brindle_grpc::MAX_RESPONSE_BYTES),
            registration: registered,
            programmer: RouteProgrammer::new(
                &node,
                netlink,
                iptables,
                ipam,
                resync_every,
                registration,
                encapsulation,
            ),
            sessions: None,
        }
    }

    /// Also keeps the node's BGP daemon announcing what the routing state asks.
    #[must_use]
    pub fn with_bgp(mut self, bgp: Option<crate::core::bgp::BgpSpeaker>) -> Self {
        self.sessions = bgp.as_ref().map(crate::core::bgp::BgpSpeaker::sessions);
        self.programmer = self.programmer.with_bgp(bgp);
        self
    }

    /// Runs registration and sync until the task is dropped.
    pub async fn run(self, metrics: SyncMetrics) {
        let name = self.registration.borrow().name.clone();
        let registration = keep_registered(self.client.clone(), self.registration, self.sessions);
        tokio::join!(
            registration,
            follow(RouteSync(self.client), name, self.programmer, metrics)
        );
    }
}

fn session_to_proto(session: &BgpSession) -> pb::BgpSession {
    pb::BgpSession {
        peer: session.peer.clone(),
        address: session.address.clone(),
        as_number: session.as_number,
        state: session.bgp_state.clone(),
        since: session.since.clone(),
        routes_exported: session.routes_exported,
        last_error: session.last_error.clone(),
    }
}

/// route-svc's Sync stream.
struct RouteSync(RoutesClient<Channel>);

#[async_trait::async_trait]
impl SyncService for RouteSync {
    type Wire = RouteWire;
    const NAME: &'static str = "route-svc";
    const MIN_INTERVAL: Duration = Duration::ZERO;

    async fn open(&self, outgoing: Outgoing) -> Result<tonic::Streaming<pb::SyncResponse>, tonic::Status> {
        let mut client = self.0.clone();
        client.sync(outgoing).await.map(tonic::Response::into_inner)
    }
}

/// Registers the node, renews its lease, and registers again when the registration changed or
/// expired.
async fn keep_registered(
    mut client: RoutesClient<Channel>,
    mut registration: watch::Receiver<Node>,
    sessions: Option<watch::Receiver<Vec<BgpSession>>>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut registered = false;
    loop {
        let node = registration.borrow_and_update().clone();
        let result = if registered {
            client
                .renew_node(pb::RenewNodeRequest {
                    name: node.name.clone(),
                    bgp_sessions: sessions
                        .as_ref()
                        .map(|s| s.borrow().iter().map(session_to_proto).collect())
                        .unwrap_or_default(),
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
                .map(|response| {
                    let given = response.into_inner().node.map(|n| n.labels).unwrap_or_default();
                    let ours = node.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                    if !node.labels.is_empty() && given != ours {
                        tracing::warn!(
                            node = node.name,
                            ?given,
                            "the node's labels were given by an administrator or Kubernetes; \
                             --node-labels are not used"
                        );
                    }
                    tracing::info!(node = node.name, "registered with route-svc");
                })
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
