//! Flow logs over gRPC: a node's reports checked, completed from the cluster's state and held;
//! read and followed by administrators.

use std::sync::{Arc, Mutex, PoisonError};

use brindle_grpc_server::auth::Caller;
use brindle_grpc_server::sync::ResponseStream;
use brindle_metrics::{Labels, Metrics};
use brindle_proto::policy::v1 as pb;
use policy_api::flow::{FlowRecord, flow_from_proto, flow_to_proto};
use tokio::sync::broadcast;
use tonic::Status;

use crate::core::flows::{FlowFilter, FlowStore, complete};
use crate::core::hub::PolicyHub;

/// The most flows one report may hold (an agent reports at most its table's capacity).
const MAX_REPORTED_FLOWS: usize = 100_000;
/// Flows completed under one hold of the calculation's lock.
const COMPLETE_AT_ONCE: usize = 256;
/// Flows a list returns when the request names no limit.
const DEFAULT_LIST_LIMIT: usize = 1000;
/// The most flows a list returns (a flow is about 150 bytes: under gRPC's 4 MiB).
const MAX_LIST_LIMIT: usize = 10_000;
/// Flow updates a follower may fall behind by before it skips some.
const WATCH_BACKLOG: usize = 4096;

/// The flows reported, and their followers.
#[derive(Clone)]
pub struct FlowLog {
    store: Arc<Mutex<FlowStore>>,
    updates: broadcast::Sender<FlowRecord>,
}

impl FlowLog {
    /// Holds at most `capacity` flows.
    pub fn new(capacity: usize) -> Self {
        Self {
            store: Arc::new(Mutex::new(FlowStore::new(capacity))),
            updates: broadcast::channel(WATCH_BACKLOG).0,
        }
    }

    fn store(&self) -> std::sync::MutexGuard<'_, FlowStore> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Exposes the flows held (`brindle_policy_flows`) and forgotten
    /// (`brindle_policy_flows_evicted`) in `metrics`.
    pub fn register_metrics(&self, metrics: &Metrics) {
        let held = metrics.gauges("policy_flows", "Flows held (at most the capacity)");
        let capacity = metrics.gauges("policy_flows_capacity", "The most flows held");
        let evicted = metrics.gauges(
            "policy_flows_evicted",
            "Flows forgotten to stay under the capacity since the start",
        );
        let log = self.clone();
        metrics.on_scrape(move || {
            let store = log.store();
            let gauge = |value: usize| i64::try_from(value).unwrap_or(i64::MAX);
            held.get_or_create(&Labels::new()).set(gauge(store.len()));
            capacity
                .get_or_create(&Labels::new())
                .set(gauge(store.capacity()));
            evicted
                .get_or_create(&Labels::new())
                .set(i64::try_from(store.evicted()).unwrap_or(i64::MAX));
        });
    }

    /// Takes a node's report: only its own flows, each checked, completed and added. Completing
    /// (pods, staged verdicts) runs off the async workers, holding the calculation's lock for
    /// [`COMPLETE_AT_ONCE`] flows at a time so that the views keep flowing meanwhile.
    pub async fn report(
        &self,
        hub: &PolicyHub,
        caller: &Caller,
        request: pb::ReportFlowsRequest,
    ) -> Result<pb::ReportFlowsResponse, Status> {
        caller.require_node(&request.node, "report flows")?;
        if request.flows.len() > MAX_REPORTED_FLOWS {
            return Err(Status::invalid_argument(format!(
                "flows: {} in one report (at most {MAX_REPORTED_FLOWS})",
                request.flows.len()
            )));
        }
        let mut flows = Vec::with_capacity(request.flows.len());
        for (index, flow) in request.flows.into_iter().enumerate() {
            let mut flow =
                flow_from_proto(flow).map_err(|e| Status::invalid_argument(format!("flows[{index}].{e}")))?;
            flow.node.clone_from(&request.node);
            flows.push(flow);
        }
        let hub = hub.clone();
        let flows = tokio::task::spawn_blocking(move || {
            for batch in flows.chunks_mut(COMPLETE_AT_ONCE) {
                hub.with_state(|state, _| {
                    for flow in batch {
                        complete(state, flow);
                    }
                });
            }
            flows
        })
        .await
        .map_err(|e| Status::internal(format!("completing flows: {e}")))?;
        let held: Vec<FlowRecord> = {
            let mut store = self.store();
            flows.into_iter().map(|flow| store.record(flow)).collect()
        };
        for flow in held {
            // No follower: nothing to tell.
            let _ = self.updates.send(flow);
        }
        if request.unrecorded_packets > 0 {
            tracing::warn!(
                node = %request.node,
                packets = request.unrecorded_packets,
                "a node's flow table was full: packets not attributed to a flow"
            );
        }
        Ok(pb::ReportFlowsResponse {})
    }

    /// The most recently seen of the flows held that `request` asks for.
    pub fn list(&self, request: &pb::ListFlowsRequest) -> Result<pb::ListFlowsResponse, Status> {
        let limit = match usize::try_from(request.limit) {
            Ok(0) => DEFAULT_LIST_LIMIT,
            Ok(limit) if limit <= MAX_LIST_LIMIT => limit,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "limit: {} is more than {MAX_LIST_LIMIT}",
                    request.limit
                )));
            }
        };
        let store = self.store();
        let flows = store.list(&filter(request));
        let recent = &flows[flows.len().saturating_sub(limit)..];
        Ok(pb::ListFlowsResponse {
            flows: recent.iter().map(flow_to_proto).collect(),
            matched: flows.len() as u64,
            evicted: store.evicted(),
        })
    }

    /// Flows as reports arrive, those `request` asks for.
    pub fn watch(&self, request: &pb::ListFlowsRequest) -> ResponseStream<pb::FlowRecord> {
        let filter = filter(request);
        let updates = self.updates.subscribe();
        Box::pin(futures_util::stream::unfold(updates, move |mut updates| {
            let filter = filter.clone();
            async move {
                loop {
                    match updates.recv().await {
                        Ok(flow) if filter.admits(&flow) => return Some((Ok(flow_to_proto(&flow)), updates)),
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(skipped)) => {
                            tracing::warn!(skipped, "a flow follower fell behind: updates skipped");
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        }))
    }
}

fn filter(request: &pb::ListFlowsRequest) -> FlowFilter {
    FlowFilter {
        denied: request.denied,
        namespace: Some(request.namespace.clone()).filter(|n| !n.is_empty()),
    }
}
