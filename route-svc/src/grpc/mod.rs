//! `brindle.route.v1.Routes` over the core: thin conversions and status codes.

use std::sync::Arc;
use std::time::Duration;

use brindle_datastore::Store;
use brindle_fanout::{Fanout, FanoutConfig, WeakFanout};
use brindle_grpc_server::auth::Caller;
use brindle_grpc_server::sync::{ResponseStream, read_hello, register_fanout_metrics, serve_sync};
use brindle_metrics::Metrics;
use brindle_proto::common::v1 as common;
use brindle_proto::route::v1 as pb;
use brindle_proto::route::v1::routes_server::{Routes, RoutesServer};
use brindle_sync::unix_ms;
use tonic::{Request, Response, Status, Streaming};

use crate::core::{BgpError, BgpObjects, Registry, RegistryError, watcher};
use route_api::bgp;
use route_api::convert::{self, RouteWire};
use route_api::model::node_key;
use route_api::{Node, RouteItem};

/// Fully-qualified service name (health and reflection).
pub const SERVICE_NAME: &str = "brindle.route.v1.Routes";

/// The status for a registry error.
pub fn status(error: RegistryError) -> Status {
    let message = error.to_string();
    match error {
        RegistryError::Invalid { .. } => Status::invalid_argument(message),
        RegistryError::NotRegistered(_) => Status::not_found(message),
        RegistryError::Taken { .. } => Status::already_exists(message),
        RegistryError::Forbidden { .. } => Status::permission_denied(message),
        RegistryError::Corrupt { .. } => Status::data_loss(message),
        RegistryError::OwnedElsewhere { .. } => Status::failed_precondition(message),
        RegistryError::Contended(_) | RegistryError::Changed { .. } => Status::aborted(message),
        RegistryError::Store(error) => brindle_grpc_server::store_status(&error, message),
    }
}

/// What a BGP password reads as to callers other than administrators.
const REDACTED: &str = "(redacted)";

/// Most BGP sessions kept per node.
const MAX_SESSIONS: usize = 64;

/// The status for a BGP error.
fn bgp_status(error: BgpError) -> Status {
    let message = error.to_string();
    match error {
        BgpError::Corrupt(_) => Status::data_loss(message),
        BgpError::NoPeer(_) => Status::not_found(message),
        BgpError::Store(error) => brindle_grpc_server::store_status(&error, message),
    }
}

/// The Routes service: the registry, the BGP objects, and the routing state fan-out.
#[derive(Clone)]
pub struct RoutesService {
    registry: Registry,
    bgp: BgpObjects,
    /// Each node's BGP sessions as it last reported them (this replica's view, like acks).
    sessions: Arc<std::sync::Mutex<std::collections::BTreeMap<String, Vec<pb::BgpSession>>>>,
    fanout: Fanout<RouteItem>,
}

impl RoutesService {
    /// Starts following `store` into a fan-out (call inside a tokio runtime) and serves it.
    pub fn start(store: Arc<dyn Store>, config: FanoutConfig) -> Self {
        let fanout = Fanout::new(
            config,
            Arc::new(|state| brindle_sync::encode_state::<RouteWire>(state.iter()).into()),
        );
        tokio::spawn(watcher::follow(Arc::clone(&store), fanout.clone()));
        tokio::spawn(forget_strangers(fanout.downgrade()));
        Self {
            registry: Registry::new(Arc::clone(&store)),
            bgp: BgpObjects::new(store),
            sessions: Arc::default(),
            fanout,
        }
    }

    /// Exposes the fan-out (revision, subscribers, lag) and the registered nodes in `metrics`.
    pub fn with_metrics(self, metrics: &Metrics) -> Self {
        let fanout = self.fanout.clone();
        register_fanout_metrics(metrics, "route-svc", move || {
            (fanout.revision(), fanout.subscribers())
        });
        let nodes = metrics.gauges("route_nodes", "Nodes registered with route-svc");
        let fanout = self.fanout.clone();
        metrics.on_scrape(move || {
            let count = fanout
                .state()
                .values()
                .filter(|item| matches!(item, RouteItem::Node(_)))
                .count();
            nodes
                .get_or_create(&Vec::new())
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        });
        self
    }

    fn sessions_of(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, Vec<pb::BgpSession>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fan-out this service streams.
    pub fn fanout(&self) -> &Fanout<RouteItem> {
        &self.fanout
    }

    /// As a tonic service.
    pub fn into_server(self) -> RoutesServer<Self> {
        RoutesServer::new(self)
    }
}

/// How often the statuses of disconnected subscribers of unregistered nodes are forgotten.
const STRANGER_SWEEP: Duration = Duration::from_secs(10);

/// Forgets, every [`STRANGER_SWEEP`], what Sync sessions of nodes that are not registered left
/// behind once they ended (a registered node keeps its status while it is away); ends with the
/// fan-out.
async fn forget_strangers(fanout: WeakFanout<RouteItem>) {
    loop {
        tokio::time::sleep(STRANGER_SWEEP).await;
        let Some(fanout) = fanout.upgrade() else {
            return;
        };
        let registered: std::collections::BTreeSet<String> = fanout.with_state(|state| {
            state
                .values()
                .filter_map(|item| match item {
                    RouteItem::Node(node) => Some(node.name.clone()),
                    _ => None,
                })
                .collect()
        });
        fanout.forget_disconnected(|node| registered.contains(node));
    }
}

#[tonic::async_trait]
impl Routes for RoutesService {
    async fn register_node(
        &self,
        request: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::RegisterNodeResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let node = request
            .node
            .ok_or_else(|| Status::invalid_argument("node: required"))?;
        caller.require_node(&node.name, "register a node")?;
        let node =
            convert::node_from_proto(node, "node").map_err(|e| Status::invalid_argument(e.to_string()))?;
        let first_node = node_key("");
        let others: Vec<Node> = self.fanout.with_state(|state| {
            state
                .iter_from(&first_node)
                .map_while(|(_, item)| match item {
                    RouteItem::Node(node) => Some(node.clone()),
                    _ => None,
                })
                .collect()
        });
        self.registry
            .check_claims(&node, &others, matches!(caller, Caller::Node(_)))
            .await
            .map_err(status)?;
        let ttl = (request.ttl_seconds > 0).then(|| Duration::from_secs(request.ttl_seconds.into()));
        let (node, ttl) = self.registry.register(node, ttl).await.map_err(status)?;
        Ok(Response::new(pb::RegisterNodeResponse {
            node: Some(convert::node_to_proto(&node)),
            ttl_seconds: u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX),
        }))
    }

    async fn renew_node(
        &self,
        request: Request<pb::RenewNodeRequest>,
    ) -> Result<Response<pb::RenewNodeResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let name = request.name;
        caller.require_node(&name, "renew a node's registration")?;
        let ttl = self.registry.renew(&name).await.map_err(status)?;
        self.sessions_of().insert(
            name,
            request.bgp_sessions.into_iter().take(MAX_SESSIONS).collect(),
        );
        Ok(Response::new(pb::RenewNodeResponse {
            ttl_seconds: u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX),
        }))
    }

    async fn deregister_node(
        &self,
        request: Request<pb::DeregisterNodeRequest>,
    ) -> Result<Response<pb::DeregisterNodeResponse>, Status> {
        let caller = Caller::of(&request)?;
        let name = request.into_inner().name;
        caller.require_node(&name, "deregister a node")?;
        self.registry.deregister(&name).await.map_err(status)?;
        self.sessions_of().remove(&name);
        Ok(Response::new(pb::DeregisterNodeResponse {}))
    }

    async fn set_bgp_configuration(
        &self,
        request: Request<pb::BgpConfiguration>,
    ) -> Result<Response<pb::BgpConfiguration>, Status> {
        Caller::of(&request)?.require_admin("configure BGP")?;
        let configuration = bgp::configuration_from_proto(request.into_inner())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.bgp
            .set_configuration(&configuration)
            .await
            .map_err(bgp_status)?;
        Ok(Response::new(bgp::configuration_to_proto(&configuration)))
    }

    async fn get_bgp_configuration(
        &self,
        request: Request<pb::GetBgpConfigurationRequest>,
    ) -> Result<Response<pb::BgpConfiguration>, Status> {
        Caller::of(&request)?;
        let configuration = self.bgp.configuration().await.map_err(bgp_status)?;
        Ok(Response::new(bgp::configuration_to_proto(&configuration)))
    }

    async fn apply_bgp_peer(&self, request: Request<pb::BgpPeer>) -> Result<Response<pb::BgpPeer>, Status> {
        Caller::of(&request)?.require_admin("configure BGP peers")?;
        let peer = bgp::peer_from_proto(request.into_inner())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.bgp.apply_peer(&peer).await.map_err(bgp_status)?;
        Ok(Response::new(bgp::peer_to_proto(&peer)))
    }

    async fn list_bgp_peers(
        &self,
        request: Request<pb::ListBgpPeersRequest>,
    ) -> Result<Response<pb::ListBgpPeersResponse>, Status> {
        // Passwords for administrators only (nodes get their peers' through Sync).
        let admin = Caller::of(&request)?.require_admin("read BGP passwords").is_ok();
        let peers = self.bgp.peers().await.map_err(bgp_status)?;
        Ok(Response::new(pb::ListBgpPeersResponse {
            peers: peers
                .iter()
                .map(bgp::peer_to_proto)
                .map(|mut peer| {
                    if !admin && !peer.password.is_empty() {
                        peer.password = REDACTED.to_owned();
                    }
                    peer
                })
                .collect(),
        }))
    }

    async fn delete_bgp_peer(
        &self,
        request: Request<pb::DeleteBgpPeerRequest>,
    ) -> Result<Response<pb::DeleteBgpPeerResponse>, Status> {
        Caller::of(&request)?.require_admin("delete BGP peers")?;
        self.bgp
            .delete_peer(&request.into_inner().name)
            .await
            .map_err(bgp_status)?;
        Ok(Response::new(pb::DeleteBgpPeerResponse {}))
    }

    async fn set_node_labels(
        &self,
        request: Request<pb::SetNodeLabelsRequest>,
    ) -> Result<Response<pb::SetNodeLabelsResponse>, Status> {
        Caller::of(&request)?.require_admin("set node labels")?;
        let request = request.into_inner();
        let labels = self
            .registry
            .set_labels(
                &request.name,
                request.labels.into_iter().collect(),
                &request.origin,
                request.if_revision,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::SetNodeLabelsResponse {
            labels: labels.into_iter().collect(),
        }))
    }

    async fn list_node_labels(
        &self,
        request: Request<pb::ListNodeLabelsRequest>,
    ) -> Result<Response<pb::ListNodeLabelsResponse>, Status> {
        Caller::of(&request)?;
        let origin = request.into_inner().origin;
        let listed = self
            .registry
            .list_labels((!origin.is_empty()).then_some(origin.as_str()))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListNodeLabelsResponse {
            nodes: listed
                .into_iter()
                .map(|(name, (given, revision))| pb::NodeLabels {
                    name,
                    labels: given.labels.into_iter().collect(),
                    origin: given.origin,
                    revision,
                })
                .collect(),
        }))
    }

    async fn delete_node(
        &self,
        request: Request<pb::DeleteNodeRequest>,
    ) -> Result<Response<pb::DeleteNodeResponse>, Status> {
        Caller::of(&request)?.require_admin("delete a node")?;
        let request = request.into_inner();
        self.registry
            .delete_node(
                &request.name,
                (!request.origin.is_empty()).then_some(request.origin.as_str()),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteNodeResponse {}))
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        Caller::of(&request)?;
        let revision = self.fanout.revision();
        let subscribers = self.fanout.subscribers();
        let mut sessions = self.sessions_of();
        let nodes = self
            .fanout
            .state()
            .into_values()
            .filter_map(|item| match item {
                RouteItem::Node(node) => Some(node),
                _ => None,
            })
            .map(|node| {
                let subscriber = subscribers.iter().find(|s| s.node == node.name);
                let bgp_sessions = sessions.get(&node.name).cloned().unwrap_or_default();
                pb::NodeStatus {
                    node: Some(convert::node_to_proto(&node)),
                    acked_revision: subscriber.map_or(0, |s| s.acked_revision),
                    acked_unix_ms: subscriber.and_then(|s| s.acked_at).map_or(0, unix_ms),
                    programmed_routes: subscriber.map_or(0, |s| s.programmed),
                    connected: subscriber.is_some_and(|s| s.connected),
                    sent_revision: subscriber.map_or(0, |s| s.sent_revision),
                    bgp_sessions,
                }
            })
            .collect::<Vec<_>>();
        // Nodes no longer registered leave nothing behind.
        sessions.retain(|name, _| {
            nodes
                .iter()
                .any(|n| n.node.as_ref().is_some_and(|n| n.name == *name))
        });
        Ok(Response::new(pb::ListNodesResponse { nodes, revision }))
    }

    type SyncStream = ResponseStream<pb::SyncResponse>;

    async fn sync(
        &self,
        request: Request<Streaming<common::SyncClientMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let caller = Caller::of(&request)?;
        let (node, incoming) = read_hello(request.into_inner()).await?;
        caller.require_node(&node, "follow the routing state")?;
        Ok(Response::new(serve_sync::<RouteWire, _, _>(
            self.fanout.clone(),
            incoming,
        )))
    }
}
