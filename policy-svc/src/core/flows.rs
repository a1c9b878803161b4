//! The flows nodes report, held with bounded memory: one record per node, 5-tuple and decision,
//! counts added as reports arrive, the least recently seen forgotten when the table is full; and
//! what a report is completed with here (the pods at either end, the staged verdict).

use std::collections::HashMap;

use policy_api::flow::{Decision, FlowKey, FlowRecord, StagedDecision, Verdict};

use super::state::ClusterState;
use super::trace::{Flow, trace_staged};

/// Flows held by default (a record is a few hundred bytes: ≈ 25 MiB).
pub const DEFAULT_FLOW_CAPACITY: usize = 100_000;

/// Which flows a reader wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowFilter {
    /// Only denied flows.
    pub denied: bool,
    /// Only flows with a pod of this namespace at either end.
    pub namespace: Option<String>,
}

impl FlowFilter {
    /// Whether `flow` passes.
    pub fn admits(&self, flow: &FlowRecord) -> bool {
        (!self.denied || flow.decision.verdict == Verdict::Deny)
            && self
                .namespace
                .as_deref()
                .is_none_or(|namespace| flow.touches_namespace(namespace))
    }
}

type FlowId = (String, FlowKey, Decision);

/// Flows by node, 5-tuple and decision, at most `capacity` of them; each with when it was last
/// reported here (a sequence number: nodes' clocks decide nothing of what is kept).
#[derive(Debug)]
pub struct FlowStore {
    capacity: usize,
    flows: HashMap<FlowId, (u64, FlowRecord)>,
    reports: u64,
    evicted: u64,
}

impl FlowStore {
    /// An empty store holding at most `capacity` flows (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            flows: HashMap::new(),
            reports: 0,
            evicted: 0,
        }
    }

    /// Adds a reported flow's counts to the record of the same flow (the pods and staged verdict
    /// are the report's, the newer), and returns the record.
    pub fn record(&mut self, flow: FlowRecord) -> FlowRecord {
        let id = (flow.node.clone(), flow.key, flow.decision.clone());
        self.reports += 1;
        let held = match self.flows.get_mut(&id) {
            Some((reported, held)) => {
                *reported = self.reports;
                held.counts.add(&flow.counts);
                held.source = flow.source;
                held.destination = flow.destination;
                held.staged = flow.staged;
                held.clone()
            }
            None => {
                self.flows.insert(id, (self.reports, flow.clone()));
                flow
            }
        };
        if self.flows.len() > self.capacity {
            self.evict();
        }
        held
    }

    /// Forgets the least recently reported eighth of the flows (so that evicting is rare: its
    /// cost, linear in the table, is spread over the reports that fill it again).
    fn evict(&mut self) {
        let excess = self.flows.len() - self.capacity;
        let count = excess.max(self.capacity / 8).min(self.flows.len());
        let mut ages: Vec<(u64, &FlowId)> = self
            .flows
            .iter()
            .map(|(id, (reported, _))| (*reported, id))
            .collect();
        ages.select_nth_unstable_by_key(count - 1, |(seen, _)| *seen);
        let oldest: Vec<FlowId> = ages[..count].iter().map(|(_, id)| (*id).clone()).collect();
        for id in oldest {
            self.flows.remove(&id);
        }
        self.evicted += count as u64;
    }

    /// The flows `filter` admits, least recently seen first.
    pub fn list(&self, filter: &FlowFilter) -> Vec<FlowRecord> {
        let mut flows: Vec<FlowRecord> = self
            .flows
            .values()
            .map(|(_, flow)| flow)
            .filter(|f| filter.admits(f))
            .cloned()
            .collect();
        flows.sort_by_key(|f| f.counts.last_seen_ms);
        flows
    }

    /// Flows held.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is held.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// The most flows held.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Flows forgotten to stay under the capacity.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

/// Completes a node's report of `flow` from the cluster's state: the pods at either end, and when
/// policies are staged, what they would decide (the first denying direction's step, or the
/// receiver's when every direction allows).
pub fn complete(state: &ClusterState, flow: &mut FlowRecord) {
    let pod = |ip| {
        state
            .endpoint_by_ip(ip)
            .map(policy_api::host_endpoint::endpoint_name)
    };
    flow.source = pod(flow.key.source_ip);
    flow.destination = pod(flow.key.destination_ip);
    flow.staged = state.has_staged().then(|| {
        let traced = trace_staged(
            state,
            &Flow {
                source_ip: flow.key.source_ip,
                destination_ip: flow.key.destination_ip,
                protocol: flow.key.protocol(),
                source_port: flow.key.source_port,
                destination_port: flow.key.destination_port,
                icmp: flow.key.icmp,
            },
        );
        let deciding = traced
            .steps
            .iter()
            .find(|s| s.verdict == Verdict::Deny)
            .or(traced.steps.last());
        StagedDecision {
            verdict: traced.verdict,
            policy: deciding.and_then(|s| s.policy.as_ref()).map(ToString::to_string),
            rule: deciding.and_then(|s| s.rule),
        }
    });
}

#[cfg(test)]
mod tests {
    use policy_api::flow::FlowCounts;
    use policy_api::model::Direction;

    use super::*;

    fn flow(port: u16, seen: i64, verdict: Verdict) -> FlowRecord {
        FlowRecord {
            node: "n1".into(),
            key: FlowKey {
                source_ip: "10.0.0.3".parse().expect("test input"),
                destination_ip: "10.0.0.2".parse().expect("test input"),
                protocol: 17,
                source_port: Some(5000),
                destination_port: Some(port),
                icmp: None,
            },
            decision: Decision {
                direction: Direction::Ingress,
                verdict,
                policy: Some("default/knp.deny".into()),
                rule: None,
            },
            counts: FlowCounts::packet(100, seen),
            source: Some("default/client".into()),
            destination: Some("other/web".into()),
            staged: None,
        }
    }

    #[test]
    fn reports_of_one_flow_add_up() {
        let mut store = FlowStore::new(10);
        store.record(flow(80, 1000, Verdict::Deny));
        let held = store.record(flow(80, 2000, Verdict::Deny));
        assert_eq!((held.counts.packets, held.counts.bytes), (2, 200));
        assert_eq!(
            (held.counts.first_seen_ms, held.counts.last_seen_ms),
            (1000, 2000)
        );
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn the_least_recently_seen_go_when_full() {
        let mut store = FlowStore::new(100);
        for port in 1..=1000u16 {
            store.record(flow(port, i64::from(port), Verdict::Deny));
            assert!(store.len() <= 100);
        }
        let kept: Vec<u16> = store
            .list(&FlowFilter::default())
            .iter()
            .filter_map(|f| f.key.destination_port)
            .collect();
        assert!(kept.contains(&1000) && !kept.contains(&1), "{kept:?}");
        assert_eq!(store.evicted() as usize + store.len(), 1000);
    }

    #[test]
    fn filters_pick_denied_flows_and_namespaces() {
        let mut store = FlowStore::new(10);
        store.record(flow(80, 1, Verdict::Deny));
        store.record(flow(81, 2, Verdict::Allow));
        let denied = FlowFilter {
            denied: true,
            namespace: None,
        };
        assert_eq!(store.list(&denied).len(), 1);
        let other = FlowFilter {
            denied: false,
            namespace: Some("other".into()),
        };
        assert_eq!(store.list(&other).len(), 2);
        let none = FlowFilter {
            denied: false,
            namespace: Some("kube-system".into()),
        };
        assert!(store.list(&none).is_empty());
    }
}
