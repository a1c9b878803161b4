//! `brindle.policy.v1.Policy` over the core: thin conversions and status codes.

pub mod convert;
mod flows;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use brindle_datastore::Store;
use brindle_fanout::FanoutConfig;
use brindle_grpc_server::auth::Caller;
use brindle_grpc_server::sync::{ResponseStream, read_hello, register_fanout_metrics, serve_sync};
use brindle_metrics::{Metrics, labels};
use brindle_proto::common::v1 as common;
use brindle_proto::policy::v1 as pb;
use brindle_proto::policy::v1::policy_server::{Policy, PolicyServer};
use brindle_sync::unix_ms;
use policy_api::convert as endpoints;
use policy_api::slot::SlotWire;
use tonic::{Request, Response, Status, Streaming};

use self::flows::FlowLog;

use crate::core::PolicyError;
use crate::core::flows::DEFAULT_FLOW_CAPACITY;
use crate::core::hub::{PolicyHub, drop_idle_fanouts, follow};
use crate::core::objects::{Kind, Objects};
use crate::core::state::ClusterState;
use crate::core::trace::{Flow, trace, trace_staged};
use policy_api::model::{EndpointKey, IcmpMatch, Origin, Protocol};

/// Fully-qualified service name (health and reflection).
pub const SERVICE_NAME: &str = "brindle.policy.v1.Policy";
/// The longest a GetPod call waits for its pod.
const MAX_POD_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
/// How often fan-outs of nodes nobody follows (and without endpoints) are dropped.
const IDLE_SWEEP: std::time::Duration = std::time::Duration::from_secs(10);

/// The status for a policy error.
pub fn status(error: PolicyError) -> Status {
    let message = error.to_string();
    match error {
        PolicyError::Invalid { .. } => Status::invalid_argument(message),
        PolicyError::NotFound { .. } => Status::not_found(message),
        PolicyError::Corrupt { .. } => Status::data_loss(message),
        PolicyError::Contended(_) => Status::aborted(message),
        PolicyError::Forbidden(_) => Status::permission_denied(message),
        PolicyError::OwnedElsewhere { .. } | PolicyError::NotEnforced { .. } => {
            Status::failed_precondition(message)
        }
        PolicyError::Store(error) => brindle_grpc_server::store_status(&error, message),
    }
}

fn invalid_field(error: brindle_proto::InvalidField) -> Status {
    Status::invalid_argument(error.to_string())
}

/// The Policy service: stored objects, the per-node views and the trace.
#[derive(Clone)]
pub struct PolicyService {
    objects: Objects,
    hub: PolicyHub,
    flows: FlowLog,
}

impl PolicyService {
    /// Starts following `store` into the calculation (call inside a tokio runtime) and serves it.
    pub fn start(store: Arc<dyn Store>, config: FanoutConfig) -> Self {
        let hub = PolicyHub::new(config);
        tokio::spawn(follow(Arc::clone(&store), hub.clone()));
        tokio::spawn(drop_idle_fanouts(&hub, IDLE_SWEEP));
        Self {
            objects: Objects::new(store),
            hub,
            flows: FlowLog::new(DEFAULT_FLOW_CAPACITY),
        }
    }

    /// Exposes the per-node fan-outs (subscribers, lag) and the calculation's inputs in `metrics`.
    pub fn with_metrics(self, metrics: &Metrics) -> Self {
        let hub = self.hub.clone();
        register_fanout_metrics(metrics, "policy-svc", move || (hub.revision(), hub.subscribers()));
        self.flows.register_metrics(metrics);
        let inputs = metrics.gauges("policy_objects", "Policy inputs by kind");
        let hub = self.hub.clone();
        metrics.on_scrape(move || {
            let (endpoints, policies, namespaces) = hub.with_state(|state, _| {
                (
                    state.endpoints().count(),
                    state.policies().count(),
                    state.namespace_count(),
                )
            });
            for (kind, count) in [
                ("endpoint", endpoints),
                ("policy", policies),
                ("namespace", namespaces),
            ] {
                inputs
                    .get_or_create(&labels([("kind", kind)]))
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
        });
        self
    }

    /// The calculation and per-node fan-outs.
    pub fn hub(&self) -> &PolicyHub {
        &self.hub
    }

    /// As a tonic service.
    pub fn into_server(self) -> PolicyServer<Self> {
        PolicyServer::new(self)
    }
}

fn object_ref(object: Option<pb::ObjectRef>) -> Result<(Kind, pb::ObjectRef), Status> {
    let object = object.ok_or_else(|| Status::invalid_argument("object: required"))?;
    let kind = Kind::parse("object.kind", &object.kind).map_err(status)?;
    if object.name.is_empty() {
        return Err(Status::invalid_argument("object.name: required"));
    }
    Ok((kind, object))
}

/// The address a trace peer stands for: a pod's first address (IPv4 first) or an address.
fn peer_address(state: &ClusterState, field: &str, peer: Option<pb::TracePeer>) -> Result<IpAddr, Status> {
    match peer.and_then(|p| p.peer) {
        Some(pb::trace_peer::Peer::Ip(text)) => text
            .parse()
            .map_err(|_| Status::invalid_argument(format!("{field}.ip: {text:?} is not an address"))),
        Some(pb::trace_peer::Peer::Endpoint(pod)) => {
            let mut ips: Vec<IpAddr> = state
                .pod_endpoints(&pod.namespace, &pod.pod)
                .flat_map(|e| e.ips.clone())
                .collect();
            ips.sort_by_key(|ip| ip.is_ipv6());
            ips.first().copied().ok_or_else(|| {
                Status::not_found(format!(
                    "{field}.endpoint: pod {}/{} has no endpoint",
                    pod.namespace, pod.pod
                ))
            })
        }
        None => Err(Status::invalid_argument(format!(
            "{field}: an endpoint or an ip is required"
        ))),
    }
}

fn port(field: &str, value: u32) -> Result<Option<u16>, Status> {
    match value {
        0 => Ok(None),
        n => u16::try_from(n)
            .map(Some)
            .map_err(|_| Status::invalid_argument(format!("{field}: {n} is not a port (1-65535)"))),
    }
}

/// The ICMP type and code a traced packet has: only for ICMP and ICMPv6 (an echo request — 8 or
/// 128 — when the request names none), a code only with a type.
fn icmp_of(
    protocol: Protocol,
    icmp_type: Option<u32>,
    code: Option<u32>,
) -> Result<Option<IcmpMatch>, Status> {
    let echo_request = match protocol {
        Protocol::Icmp => 8,
        Protocol::Icmpv6 => 128,
        _ if icmp_type.is_some() || code.is_some() => {
            return Err(Status::invalid_argument(format!(
                "icmp_type: protocol {protocol} is not ICMP or ICMPv6"
            )));
        }
        _ => return Ok(None),
    };
    if icmp_type.is_none() && code.is_some() {
        return Err(Status::invalid_argument("icmp_code: needs icmp_type"));
    }
    IcmpMatch::new(icmp_type.unwrap_or(echo_request), code)
        .map(Some)
        .map_err(|(part, reason)| Status::invalid_argument(format!("icmp_{part}: {reason}")))
}

#[tonic::async_trait]
impl Policy for PolicyService {
    async fn apply(&self, request: Request<pb::ApplyRequest>) -> Result<Response<pb::ApplyResponse>, Status> {
        Caller::of(&request)?.require_admin("change policies")?;
        let request = request.into_inner();
        let origin =
            Origin::parse(&request.origin).map_err(|e| Status::invalid_argument(format!("origin: {e}")))?;
        let objects = self
            .objects
            .apply(&request.manifest, &request.namespace, origin)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ApplyResponse {
            objects: objects.into_iter().map(convert::object_to_proto).collect(),
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        Caller::of(&request)?.require_admin("change policies")?;
        let request = request.into_inner();
        let only_origin = match request.origin.as_str() {
            "" => None,
            text => Some(Origin::parse(text).map_err(|e| Status::invalid_argument(format!("origin: {e}")))?),
        };
        let (kind, object) = object_ref(request.object)?;
        self.objects
            .delete(kind, &object.namespace, &object.name, only_origin)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteResponse {}))
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::Object>, Status> {
        Caller::of(&request)?;
        let (kind, object) = object_ref(request.into_inner().object)?;
        let object = self
            .objects
            .get(kind, &object.namespace, &object.name)
            .await
            .map_err(status)?;
        Ok(Response::new(convert::object_to_proto(object)))
    }

    async fn list(&self, request: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        Caller::of(&request)?;
        let request = request.into_inner();
        let kind = match request.kind.as_str() {
            "" => None,
            text => Some(Kind::parse("kind", text).map_err(status)?),
        };
        let only_origin = match request.origin.as_str() {
            "" => None,
            text => Some(Origin::parse(text).map_err(|e| Status::invalid_argument(format!("origin: {e}")))?),
        };
        let objects = self
            .objects
            .list(kind, &request.namespace, only_origin)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListResponse {
            objects: objects.into_iter().map(convert::object_to_proto).collect(),
        }))
    }

    async fn register_endpoint(
        &self,
        request: Request<pb::RegisterEndpointRequest>,
    ) -> Result<Response<pb::WorkloadEndpoint>, Status> {
        let caller = Caller::of(&request)?;
        let endpoint = request
            .into_inner()
            .endpoint
            .ok_or_else(|| Status::invalid_argument("endpoint: required"))?;
        let endpoint = endpoints::endpoint_from_proto(endpoint).map_err(invalid_field)?;
        caller.require_node(&endpoint.key.node, "register an endpoint")?;
        if let Caller::Node(_) = caller {
            self.objects
                .check_addresses_held(&endpoint)
                .await
                .map_err(status)?;
        }
        let (endpoint, revision) = self.objects.register_endpoint(&endpoint).await.map_err(status)?;
        Ok(Response::new(endpoints::endpoint_to_proto(&endpoint, revision)))
    }

    async fn delete_endpoint(
        &self,
        request: Request<pb::DeleteEndpointRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.require_node(&request.node, "delete an endpoint")?;
        if request.node.is_empty() || request.interface.is_empty() {
            return Err(Status::invalid_argument("node and interface: required"));
        }
        let key = EndpointKey {
            node: request.node,
            interface: request.interface,
        };
        self.objects.delete_endpoint(&key).await.map_err(status)?;
        Ok(Response::new(pb::DeleteResponse {}))
    }

    async fn set_endpoint_labels(
        &self,
        request: Request<pb::SetEndpointLabelsRequest>,
    ) -> Result<Response<pb::SetEndpointLabelsResponse>, Status> {
        Caller::of(&request)?.require_admin("set pod labels")?;
        let request = request.into_inner();
        let labels = request.labels.into_iter().collect();
        let endpoints = self
            .objects
            .set_endpoint_labels(&request.namespace, &request.pod, &labels)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::SetEndpointLabelsResponse {
            endpoints: endpoints
                .iter()
                .map(|e| endpoints::endpoint_to_proto(e, 0))
                .collect(),
        }))
    }

    async fn list_endpoints(
        &self,
        request: Request<pb::ListEndpointsRequest>,
    ) -> Result<Response<pb::ListEndpointsResponse>, Status> {
        Caller::of(&request)?;
        let node = request.into_inner().node;
        let endpoints = self
            .objects
            .list_endpoints((!node.is_empty()).then_some(node.as_str()))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListEndpointsResponse {
            endpoints: endpoints
                .iter()
                .map(|(e, revision)| endpoints::endpoint_to_proto(e, *revision))
                .collect(),
        }))
    }

    async fn apply_pods(
        &self,
        request: Request<pb::ApplyPodsRequest>,
    ) -> Result<Response<pb::ApplyPodsResponse>, Status> {
        Caller::of(&request)?.require_admin("mirror pods")?;
        let pods = request
            .into_inner()
            .pods
            .into_iter()
            .enumerate()
            .map(|(index, pod)| endpoints::pod_from_proto(&format!("pods[{index}]"), pod))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid_field)?;
        let revision = self.objects.apply_pods(&pods).await.map_err(status)?;
        Ok(Response::new(pb::ApplyPodsResponse { revision }))
    }

    async fn delete_pods(
        &self,
        request: Request<pb::DeletePodsRequest>,
    ) -> Result<Response<pb::DeletePodsResponse>, Status> {
        Caller::of(&request)?.require_admin("mirror pods")?;
        let pods: Vec<(String, String)> = request
            .into_inner()
            .pods
            .into_iter()
            .map(|pod| (pod.namespace, pod.name))
            .collect();
        self.objects.delete_pods(&pods).await.map_err(status)?;
        Ok(Response::new(pb::DeletePodsResponse {}))
    }

    async fn get_pod(&self, request: Request<pb::GetPodRequest>) -> Result<Response<pb::Pod>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        if request.namespace.is_empty() || request.name.is_empty() {
            return Err(Status::invalid_argument("namespace and name: required"));
        }
        let wait = std::time::Duration::from_millis(u64::from(request.wait_ms));
        if wait > MAX_POD_WAIT {
            return Err(Status::invalid_argument(format!(
                "wait_ms: at most {} ms",
                MAX_POD_WAIT.as_millis()
            )));
        }
        let deadline = tokio::time::Instant::now() + wait;
        let pod = self
            .hub
            .wait_for_pod(&request.namespace, &request.name, &request.uid, deadline)
            .await
            .ok_or_else(|| {
                Status::not_found(format!(
                    "pod {}/{}{} is not known from Kubernetes{}",
                    request.namespace,
                    request.name,
                    if request.uid.is_empty() {
                        String::new()
                    } else {
                        format!(" (uid {})", request.uid)
                    },
                    if wait.is_zero() {
                        String::new()
                    } else {
                        format!(" after waiting {} ms", wait.as_millis())
                    },
                ))
            })?;
        caller.require_node(&pod.node, "read another node's pod")?;
        Ok(Response::new(endpoints::pod_to_proto(&pod, self.hub.revision())))
    }

    async fn list_pods(
        &self,
        request: Request<pb::ListPodsRequest>,
    ) -> Result<Response<pb::ListPodsResponse>, Status> {
        Caller::of(&request)?.require_admin("list pods")?;
        let pods = self.objects.list_pods().await.map_err(status)?;
        Ok(Response::new(pb::ListPodsResponse {
            pods: pods
                .iter()
                .map(|(pod, revision)| endpoints::pod_to_proto(pod, *revision))
                .collect(),
        }))
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        Caller::of(&request)?;
        let (mut endpoints, revision) = self.hub.with_state(|state, revision| {
            let mut per_node = BTreeMap::<String, u64>::new();
            for endpoint in state.endpoints() {
                *per_node.entry(endpoint.key.node.clone()).or_default() += 1;
            }
            (per_node, revision)
        });
        let mut nodes: BTreeMap<String, pb::NodeStatus> = BTreeMap::new();
        for subscriber in self.hub.subscribers() {
            let status = pb::NodeStatus {
                node: subscriber.node.clone(),
                connected: subscriber.connected,
                acked_revision: subscriber.acked_revision,
                acked_unix_ms: subscriber.acked_at.map_or(0, unix_ms),
                programmed: subscriber.programmed,
                endpoints: endpoints.remove(&subscriber.node).unwrap_or(0),
                sent_revision: subscriber.sent_revision,
            };
            nodes.insert(subscriber.node, status);
        }
        for (node, count) in endpoints {
            nodes.insert(
                node.clone(),
                pb::NodeStatus {
                    node,
                    endpoints: count,
                    ..Default::default()
                },
            );
        }
        Ok(Response::new(pb::ListNodesResponse {
            nodes: nodes.into_values().collect(),
            revision,
        }))
    }

    type SyncStream = ResponseStream<pb::SyncResponse>;

    async fn sync(
        &self,
        request: Request<Streaming<common::SyncClientMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let caller = Caller::of(&request)?;
        let (node, incoming) = read_hello(request.into_inner()).await?;
        caller.require_node(&node, "follow the policy view")?;
        Ok(Response::new(serve_sync::<SlotWire, _, _>(
            self.hub.fanout(&node),
            incoming,
        )))
    }

    async fn trace(&self, request: Request<pb::TraceRequest>) -> Result<Response<pb::TraceResponse>, Status> {
        Caller::of(&request)?;
        let request = request.into_inner();
        let protocol: Protocol = request
            .protocol
            .parse()
            .map_err(|e: String| Status::invalid_argument(format!("protocol: {e}")))?;
        let destination_port = port("port", request.port)?;
        let source_port = port("source_port", request.source_port)?;
        if destination_port.is_none() && protocol.has_ports() {
            return Err(Status::invalid_argument(format!("port: required for {protocol}")));
        }
        let icmp = icmp_of(protocol, request.icmp_type, request.icmp_code)?;
        self.hub.with_state(|state, _| {
            let source_ip = peer_address(state, "source", request.source)?;
            let destination_ip = peer_address(state, "destination", request.destination)?;
            let flow = Flow {
                source_ip,
                destination_ip,
                protocol,
                source_port,
                destination_port,
                icmp,
            };
            let traced = trace(state, &flow);
            let staged = state.has_staged().then(|| trace_staged(state, &flow));
            Ok(Response::new(convert::trace_to_proto(
                &traced,
                staged.as_ref(),
                source_ip.to_string(),
                destination_ip.to_string(),
            )))
        })
    }

    async fn report_flows(
        &self,
        request: Request<pb::ReportFlowsRequest>,
    ) -> Result<Response<pb::ReportFlowsResponse>, Status> {
        let caller = Caller::of(&request)?;
        self.flows
            .report(&self.hub, &caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_flows(
        &self,
        request: Request<pb::ListFlowsRequest>,
    ) -> Result<Response<pb::ListFlowsResponse>, Status> {
        Caller::of(&request)?.require_admin("read flows")?;
        self.flows.list(request.get_ref()).map(Response::new)
    }

    type WatchFlowsStream = ResponseStream<pb::FlowRecord>;

    async fn watch_flows(
        &self,
        request: Request<pb::ListFlowsRequest>,
    ) -> Result<Response<Self::WatchFlowsStream>, Status> {
        Caller::of(&request)?.require_admin("read flows")?;
        Ok(Response::new(self.flows.watch(request.get_ref())))
    }
}
