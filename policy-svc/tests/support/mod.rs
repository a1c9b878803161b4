//! Shared by policy-svc's tests: the truth-table world in a [`Calculator`], its changes sent
//! through each node's real fan-out, and the from-scratch reference view the incremental
//! calculation must equal.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use brindle_fanout::{FanoutConfig, Key, KeyInValue, Mirror, Subscription};
use brindle_proto::policy::v1::PolicyDelta;
use brindle_sync::{Outgoing, delta_from_proto};
use futures_util::FutureExt;
use policy_api::convert::PolicyWire;
use policy_api::model::{Direction, Endpoint, EndpointKey};
use policy_api::slot::{SlotWire, ViewSlot};
use policy_api::view::{MemberView, ViewEntry, keys};
use policy_svc::core::compile::{compile, policy_view_id};
use policy_svc::core::hub::NodeFanout;
use policy_svc::core::snapshot::encode_view;
use policy_svc::core::{Calculator, ClusterState, NodeChanges};
use policy_svc::truth_table::{NAMESPACES, PODS, named_ports, namespaces, pod_labels};

/// Node of a pod of the world: a on node-1, b on node-2, c on node-3.
pub fn node_of(pod: &str) -> String {
    let index = PODS.iter().position(|p| *p == pod).unwrap_or(0);
    format!("node-{}", index + 1)
}

/// Address of `ns/pod`: 10.0.<ns index + 1>.<pod index + 1>.
pub fn address(name: &str) -> Option<IpAddr> {
    let (ns, pod) = name.split_once('/')?;
    let n = NAMESPACES.iter().position(|x| *x == ns)?;
    let p = PODS.iter().position(|x| *x == pod)?;
    Some(IpAddr::V4(Ipv4Addr::new(10, 0, n as u8 + 1, p as u8 + 1)))
}

/// The endpoint of `ns/pod` with `labels`.
pub fn endpoint(ns: &str, pod: &str, labels: BTreeMap<String, String>) -> Endpoint {
    Endpoint {
        key: EndpointKey {
            node: node_of(pod),
            interface: format!("brd{ns}{pod}"),
        },
        namespace: ns.to_owned(),
        pod: pod.to_owned(),
        container_id: format!("c-{ns}-{pod}"),
        ips: address(&format!("{ns}/{pod}")).into_iter().collect(),
        labels,
        ports: named_ports(),
    }
}

/// A calculation holding the world, and the views its changes built.
pub struct World {
    /// The calculation.
    pub calc: Calculator,
    /// Every node's view as its agent rebuilt it from what its fan-out sent.
    mirrors: BTreeMap<String, Mirror<ViewEntry>>,
    /// Every node's fan-out and its subscriber.
    followers: BTreeMap<String, (NodeFanout, Subscription<ViewSlot, KeyInValue>)>,
    /// The revision of the last change.
    revision: u64,
    runtime: tokio::runtime::Runtime,
}

impl World {
    /// The world with no policies.
    pub fn new() -> Self {
        let mut world = Self {
            calc: Calculator::new(),
            mirrors: BTreeMap::new(),
            followers: BTreeMap::new(),
            revision: 1,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a runtime"),
        };
        for namespace in namespaces() {
            let changes = world.calc.put_namespace(namespace);
            world.absorb(changes);
        }
        for ns in NAMESPACES {
            for pod in PODS {
                let changes = world.calc.put_endpoint(endpoint(ns, pod, pod_labels(pod)));
                world.absorb(changes);
            }
        }
        world
    }

    /// Publishes one change's changes, at a revision of their own, to each node's fan-out (a
    /// node's first made then, empty); they are flushed, as one batch per node, by
    /// [`World::flush`].
    pub fn absorb(&mut self, changes: NodeChanges) {
        self.revision += 1;
        let before = self.revision - 1;
        for (node, list) in changes {
            let (fanout, _) = self.followers.entry(node).or_insert_with(|| {
                let _runtime = self.runtime.enter();
                let config = FanoutConfig {
                    deltas_from_replaced: true,
                    max_batch_entries: usize::MAX,
                    max_batch_delay: Duration::from_secs(3600),
                    ..FanoutConfig::default()
                };
                let fanout = NodeFanout::new(config, Arc::new(encode_view));
                fanout.reset(before, std::iter::empty::<ViewSlot>());
                let (subscription, _) = self
                    .runtime
                    .block_on(fanout.subscribe(before))
                    .expect("subscribed");
                (fanout, subscription)
            });
            fanout.publish(self.revision, list);
        }
    }

    /// Flushes every node's fan-out and applies what each sends to the node's mirror, as its
    /// agent does: the wire's deltas (a set's members as what changed since the version the node
    /// had, over every change in the batch); the deltas, per node.
    pub fn flush(&mut self) -> BTreeMap<String, Vec<PolicyDelta>> {
        let mut sent = BTreeMap::new();
        for (node, (fanout, subscription)) in &mut self.followers {
            fanout.flush();
            // Flushed batches are there at once (a flush that changed nothing made none).
            while let Some(batches) = subscription.next().now_or_never() {
                for batch in batches.expect("batches") {
                    let delta = SlotWire::delta(&batch);
                    let mut skipped = Vec::new();
                    let received = delta_from_proto::<PolicyWire>(batch.to, delta.clone(), &mut skipped)
                        .expect("a delta's entries convert");
                    assert!(skipped.is_empty(), "entries of no known kind: {skipped:?}");
                    self.mirrors
                        .entry(node.clone())
                        .or_default()
                        .apply_batch(&received);
                    sent.entry(node.clone()).or_insert_with(Vec::new).push(delta);
                }
            }
        }
        self.mirrors.retain(|_, m| !m.state().is_empty());
        sent
    }

    /// Panics unless every node's incremental view is the reference.
    pub fn check_calculation(&self, context: &str) {
        let state = self.calc.state();
        for node in self.nodes() {
            assert_eq!(
                self.calc.view(&node),
                reference_view(state, &node),
                "{context}: incremental view of {node} differs from the reference"
            );
        }
    }

    /// Flushes, then panics unless every node's incremental view, its mirror and the reference
    /// agree.
    pub fn check_views(&mut self, context: &str) {
        self.flush();
        self.check_calculation(context);
        let state = self.calc.state();
        for node in self.nodes() {
            let mirrored = self.mirrors.get(&node).map(Mirror::state);
            assert_eq!(
                mirrored.cloned().unwrap_or_default(),
                reference_view(state, &node),
                "{context}: the changes sent to {node} do not add up to its view"
            );
        }
    }

    /// Nodes with endpoints or a mirror.
    fn nodes(&self) -> Vec<String> {
        let mut nodes: Vec<String> = self
            .calc
            .state()
            .endpoints()
            .map(|e| e.key.node.clone())
            .collect();
        nodes.extend(self.mirrors.keys().cloned());
        nodes.sort();
        nodes.dedup();
        nodes
    }
}

/// A node's view computed from scratch.
pub fn reference_view(state: &ClusterState, node: &str) -> BTreeMap<Key, ViewEntry> {
    let mut view = BTreeMap::new();
    let mut used = BTreeMap::new();
    for endpoint in state.endpoints().filter(|e| e.key.node == node) {
        let ids = |direction| -> Vec<String> {
            state
                .policies_for(endpoint, direction, false)
                .into_iter()
                .map(|p| policy_view_id(&p.id))
                .collect()
        };
        let ingress = ids(Direction::Ingress);
        let egress = ids(Direction::Egress);
        // Every policy that applies is in the view, whichever directions it governs.
        for policy in state.policies() {
            if policy.applies_to().matches(&state.selector_labels(endpoint)) {
                used.entry(policy.id.clone()).or_insert_with(|| policy.clone());
            }
        }
        view.insert(
            Key::from(format!("{}{}", keys::ENDPOINT, endpoint.key.interface)),
            ViewEntry::Endpoint(policy_api::view::EndpointView {
                interface: endpoint.key.interface.clone(),
                name: format!("{}/{}", endpoint.namespace, endpoint.pod),
                ingress,
                egress,
            }),
        );
    }
    for policy in used.values() {
        let compiled = compile(policy);
        view.insert(
            Key::from(format!("{}{}", keys::POLICY, compiled.view.id)),
            ViewEntry::Policy(compiled.view.clone()),
        );
        for (id, definition) in &compiled.sets {
            view.insert(
                Key::from(format!("{}{id}", keys::IPSET)),
                ViewEntry::IpSet(definition.view()),
            );
            for endpoint in state.endpoints() {
                for member in definition.members(endpoint, &state.selector_labels(endpoint)) {
                    view.insert(
                        Key::from(format!("{}{id}/{member}", keys::MEMBER)),
                        ViewEntry::Member(MemberView {
                            set: id.clone(),
                            member,
                        }),
                    );
                }
            }
        }
    }
    view
}
