//! The agent's side of policy-svc: registers its workload endpoints, reports its flows and follows its node's
//! policy view (`Sync`), rendering it into iptables chains and ipsets after every change
//! (coalesced, at most one apply per [`APPLY_INTERVAL`]), retrying a failed apply at the next
//! keepalive tick and re-reading the kernel when its [`ResyncClock`] is due to repair what changed
//! behind its back. Nothing is written before the first full view.

use std::time::Duration;

use brindle_proto::policy::v1 as pb;
use pb::policy_client::PolicyClient;
use policy_api::convert::{self, PolicyWire};
use policy_api::flow::{FlowRecord, flow_to_proto};
use policy_api::model::{Endpoint, EndpointKey, Pod};
use tonic::transport::Channel;

use crate::core::calls::{CallError, Service};
use crate::core::endpoints::EndpointRegistry;
use crate::core::flow_log::FlowSink;
use crate::core::pods::PodDirectory;
use crate::core::policy::programmer::PolicyProgrammer;
use crate::grpc::sync_client::{Outgoing, SyncMetrics, SyncService, follow};

/// Shortest time between two applies: changes arriving meanwhile are applied together.
pub const APPLY_INTERVAL: Duration = Duration::from_millis(20);

/// A policy-svc client.
#[derive(Clone)]
pub struct GrpcPolicy {
    client: PolicyClient<Channel>,
    /// For GetPod, whose calls last as long as the wait they ask for.
    waiting: PolicyClient<Channel>,
}

impl GrpcPolicy {
    /// A client of policy-svc at `endpoint` (with its TLS, if any); connects lazily.
    pub fn new(endpoint: brindle_grpc::Dialer) -> Self {
        let waiting = endpoint
            .clone()
            .timeout(MAX_POD_WAIT + Duration::from_secs(10))
            .connect_lazy();
        let channel = endpoint.timeout(Duration::from_secs(10)).connect_lazy();
        Self {
            client: PolicyClient::new(channel).max_decoding_message_size(brindle_grpc::MAX_RESPONSE_BYTES),
            waiting: PolicyClient::new(waiting),
        }
    }

    /// Follows `node`'s policy view into the kernel through `programmer` until the task is
    /// dropped.
    pub async fn follow(self, node: String, programmer: PolicyProgrammer, metrics: SyncMetrics) {
        follow(PolicySync(self.client), node, programmer, metrics).await;
    }
}

/// The longest wait for a pod policy-svc accepts.
pub const MAX_POD_WAIT: Duration = Duration::from_secs(60);

#[async_trait::async_trait]
impl PodDirectory for GrpcPolicy {
    async fn pod(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        wait: Duration,
    ) -> Result<Option<Pod>, CallError> {
        let request = pb::GetPodRequest {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
            wait_ms: u32::try_from(wait.min(MAX_POD_WAIT).as_millis()).unwrap_or(u32::MAX),
        };
        match self.waiting.clone().get_pod(request).await {
            Ok(pod) => convert::pod_from_proto("pod", pod.into_inner())
                .map(Some)
                .map_err(|e| CallError::refused(Service::Policy, e.to_string())),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(call_error(status)),
        }
    }
}

fn call_error(status: tonic::Status) -> CallError {
    super::call_error::call_error(Service::Policy, status)
}

#[async_trait::async_trait]
impl EndpointRegistry for GrpcPolicy {
    async fn register(&self, endpoint: &Endpoint) -> Result<(), CallError> {
        let request = pb::RegisterEndpointRequest {
            endpoint: Some(convert::endpoint_to_proto(endpoint, 0)),
        };
        self.client
            .clone()
            .register_endpoint(request)
            .await
            .map(drop)
            .map_err(call_error)
    }

    async fn remove(&self, key: &EndpointKey) -> Result<(), CallError> {
        let request = pb::DeleteEndpointRequest {
            node: key.node.clone(),
            interface: key.interface.clone(),
        };
        self.client
            .clone()
            .delete_endpoint(request)
            .await
            .map(drop)
            .map_err(call_error)
    }

    async fn interfaces(&self, node: &str) -> Result<Vec<String>, CallError> {
        let request = pb::ListEndpointsRequest {
            node: node.to_owned(),
        };
        let listed = self
            .client
            .clone()
            .list_endpoints(request)
            .await
            .map_err(call_error)?;
        Ok(listed
            .into_inner()
            .endpoints
            .into_iter()
            .map(|e| e.interface)
            .collect())
    }
}

#[async_trait::async_trait]
impl FlowSink for GrpcPolicy {
    async fn report(&self, node: &str, flows: Vec<FlowRecord>, unrecorded: u64) -> Result<(), CallError> {
        let request = pb::ReportFlowsRequest {
            node: node.to_owned(),
            flows: flows.iter().map(flow_to_proto).collect(),
            unrecorded_packets: unrecorded,
        };
        self.client
            .clone()
            .report_flows(request)
            .await
            .map(drop)
            .map_err(call_error)
    }
}

/// policy-svc's Sync stream.
struct PolicySync(PolicyClient<Channel>);

#[async_trait::async_trait]
impl SyncService for PolicySync {
    type Wire = PolicyWire;
    const NAME: &'static str = "policy-svc";
    const MIN_INTERVAL: Duration = APPLY_INTERVAL;

    async fn open(&self, outgoing: Outgoing) -> Result<tonic::Streaming<pb::SyncResponse>, tonic::Status> {
        let mut client = self.0.clone();
        client.sync(outgoing).await.map(tonic::Response::into_inner)
    }
}
