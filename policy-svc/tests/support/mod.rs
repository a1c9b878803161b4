//! Shared by policy-svc's tests: the truth-table world in a [`Calculator`] and the from-scratch
//! reference view the incremental calculation must equal.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use brindle_fanout::{Batch, Change, Key};
use brindle_proto::policy::v1::PolicyDelta;
use brindle_sync::Outgoing;
use policy_api::convert::entry_from_proto;
use policy_api::model::{Direction, Endpoint, EndpointKey};
use policy_api::slot::{SlotWire, ViewSlot};
use policy_api::view::{MemberView, ViewEntry, keys};
use policy_svc::core::compile::{compile, policy_view_id};
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
    /// Every node's view as rebuilt from the changes alone, as its agent applies them.
    pub mirrors: BTreeMap<String, BTreeMap<Key, ViewEntry>>,
    /// Every node's view as its fan-out holds it.
    slots: BTreeMap<String, BTreeMap<Key, ViewSlot>>,
}

impl World {
    /// The world with no policies.
    pub fn new() -> Self {
        let mut world = Self {
            calc: Calculator::new(),
            mirrors: BTreeMap::new(),
            slots: BTreeMap::new(),
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

    /// Applies changes to the mirrors as they travel: each node's changes as one batch of its
    /// fan-out, sent as the wire's delta (a set's members as what changed since the version the
    /// node had) and applied as the node's agent applies it; the deltas sent, per node.
    pub fn absorb(&mut self, changes: NodeChanges) -> BTreeMap<String, PolicyDelta> {
        let mut sent = BTreeMap::new();
        for (node, changes) in changes {
            let slots = self.slots.entry(node.clone()).or_default();
            let mut batch = Batch {
                from: 0,
                to: 0,
                upserts: Vec::new(),
                removed: Vec::new(),
                replaced: Vec::new(),
            };
            for change in changes {
                let (key, replaced) = match change {
                    Change::Upsert(key, value) => {
                        batch.upserts.push((key.clone(), value.clone()));
                        (key.clone(), slots.insert(key, value))
                    }
                    Change::Remove(key) => {
                        batch.removed.push(key.clone());
                        (key.clone(), slots.remove(&key))
                    }
                };
                batch.replaced.extend(replaced.map(|value| (key, value)));
            }
            batch.replaced.sort_by(|a, b| a.0.cmp(&b.0));
            let delta = SlotWire::delta(&batch);
            let mirror = self.mirrors.entry(node.clone()).or_default();
            for key in &delta.removed_keys {
                mirror.remove(key.as_str());
            }
            for entry in delta.upserts.iter().cloned() {
                let (key, value) = entry_from_proto(entry).expect("a delta's entry converts");
                mirror.insert(key.into(), value);
            }
            sent.insert(node, delta);
        }
        self.mirrors.retain(|_, m| !m.is_empty());
        self.slots.retain(|_, s| !s.is_empty());
        sent
    }

    /// Panics unless every node's incremental view, its mirror and the reference agree.
    pub fn check_views(&self, context: &str) {
        let state = self.calc.state();
        let mut nodes: Vec<String> = state.endpoints().map(|e| e.key.node.clone()).collect();
        nodes.extend(self.mirrors.keys().cloned());
        nodes.sort();
        nodes.dedup();
        for node in nodes {
            let want = reference_view(state, &node);
            let got = self.calc.view(&node);
            assert_eq!(
                got, want,
                "{context}: incremental view of {node} differs from the reference"
            );
            let mirrored = self.mirrors.get(&node).cloned().unwrap_or_default();
            assert_eq!(
                mirrored, want,
                "{context}: the changes sent to {node} do not add up to its view"
            );
        }
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
