//! Incremental per-node calculation: from namespaces, endpoints and policies, what every
//! node's view holds, kept up to date change by change. An endpoint change re-evaluates only
//! that endpoint against the policies and sets that can match it (indexed by a label their
//! selectors require: `index`); a policy change only that policy against the endpoints; the
//! result is the entries each change set, per node. Views are not stored: a node's
//! view is derived from its endpoints, their policies and those policies' sets (`views`).
//! Entries every node holds alike (a policy, a set's header and members) are built once, with
//! their keys, and shared by every view and fan-out that holds them; a set's members go into a
//! view as one value, a new version of it per change (`sets`). Host endpoints are evaluated as
//! endpoints (`host_endpoints`); service accounts' labels are their endpoints'
//! (`service_accounts`).

mod host_endpoints;
mod index;
mod service_accounts;
mod sets;
mod views;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use brindle_fanout::{Change, Key};

use brindle_selector::Selector;

use super::compile::{CompiledPolicy, compile};
use super::records::Record;
use super::staged::StagedPolicy;
use super::state::ClusterState;
use index::{LabelIndex, required_namespace};
use policy_api::host_endpoint::{HostEndpoint, endpoint_name, host_endpoint_name};
use policy_api::model::{
    Endpoint, EndpointKey, NAMESPACE_LABEL, Namespace, Pod, Policy, PolicyId, evaluation_order,
};
use policy_api::shared::SharedViewEntry;
use policy_api::slot::ViewSlot;
use policy_api::view::{EndpointView, HostEndpointView, ViewEntry, keys};
use sets::SetState;

/// One entry of a node's view, shared with every other view holding the same entry.
pub type SharedEntry = Arc<SharedViewEntry>;

/// A policy's id as the calculation holds it: one allocation per policy, which every endpoint,
/// node and index naming the policy shares (an owned id is one or two strings).
type SharedPolicyId = Arc<PolicyId>;

/// Policy ids, in order, without repeats (a boxed slice: most endpoints have a few, and a set
/// would cost a B-tree node each).
type PolicyIds = Box<[SharedPolicyId]>;

/// Changes per node.
pub type NodeChanges = BTreeMap<String, Vec<Change<ViewSlot>>>;

/// How much of the views one change went through: every node and entry it set, whether or not
/// the entry ended up different.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangeWork {
    /// Nodes.
    pub nodes: usize,
    /// Values of the views' fan-outs: entries, and sets' members (one value per set).
    pub entries: usize,
}

/// The calculation's state.
#[derive(Debug, Default)]
pub struct Calculator {
    state: ClusterState,
    labels: BTreeMap<EndpointKey, BTreeMap<String, String>>,
    /// Endpoints by namespace: most selectors are limited to one, and are evaluated only there.
    by_namespace: BTreeMap<String, BTreeSet<EndpointKey>>,
    /// Compiled policies, shared so that a node taking one up need not copy it.
    compiled: BTreeMap<SharedPolicyId, Arc<CompiledPolicy>>,
    /// Each compiled policy's entry.
    policy_entries: BTreeMap<SharedPolicyId, SharedEntry>,
    /// Compiled policies by a label they require.
    policies_by_label: LabelIndex<SharedPolicyId>,
    /// Policies applying to each endpoint (either direction).
    endpoint_policies: BTreeMap<EndpointKey, PolicyIds>,
    /// Endpoints each policy applies to.
    policy_endpoints: BTreeMap<SharedPolicyId, BTreeSet<EndpointKey>>,
    /// Per node: policies its endpoints use, with how many endpoints use each.
    node_policies: BTreeMap<String, BTreeMap<SharedPolicyId, usize>>,
    sets: BTreeMap<String, SetState>,
    /// Sets whose members the change in progress changed.
    changed_sets: BTreeSet<String>,
    /// Sets by a label their members require.
    sets_by_label: LabelIndex<String>,
    /// Per node: the entries of its endpoints and host endpoints, by key.
    endpoint_entries: BTreeMap<String, BTreeMap<Key, SharedEntry>>,
    /// Host endpoints by name (each also an endpoint of the state, keyed by
    /// [`HostEndpoint::endpoint_key`]).
    host_endpoints: BTreeMap<String, HostEndpoint>,
    /// Entries set by the change in progress, with their value now (`None`: removed), per node.
    touched: BTreeMap<String, BTreeMap<Key, Option<ViewSlot>>>,
    /// What the last change went through.
    last_work: ChangeWork,
    /// Loading a full list: changes are not collected (nobody reads them) and endpoints' entries
    /// wait until every record is in (then each is computed once).
    loading: bool,
}

impl Calculator {
    /// An empty calculation.
    pub fn new() -> Self {
        Self::default()
    }

    /// The calculation of a full list of records, loaded in the order that evaluates each
    /// selector once: namespaces, pods and service accounts before the endpoints they label,
    /// policies before the endpoints they select (each endpoint then takes all its policies and
    /// set memberships at once, instead of once per policy); the changes are not collected.
    pub fn from_records(mut records: Vec<Record>) -> Self {
        records.sort_by_key(load_rank);
        let mut calc = Self {
            loading: true,
            ..Self::default()
        };
        for record in records {
            calc.put_record(record);
        }
        // Each endpoint's entry once, now that every policy applying to it is known.
        let endpoints: Vec<EndpointKey> = calc.endpoint_policies.keys().cloned().collect();
        for key in &endpoints {
            calc.refresh_endpoint_entry(key);
        }
        calc.version_loaded_sets();
        calc.loading = false;
        calc
    }

    /// The inputs.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// Sets a namespace (its labels change what namespace selectors match).
    pub fn put_namespace(&mut self, namespace: Namespace) -> NodeChanges {
        let name = namespace.name.clone();
        if self.state.put_namespace(namespace.clone()).as_ref() == Some(&namespace) {
            return NodeChanges::new();
        }
        self.relabel_namespace(&name)
    }

    /// Removes a namespace.
    pub fn remove_namespace(&mut self, name: &str) -> NodeChanges {
        if self.state.remove_namespace(name).is_none() {
            return NodeChanges::new();
        }
        self.relabel_namespace(name)
    }

    /// Sets a Kubernetes pod: its endpoints take its labels and named ports.
    pub fn put_pod(&mut self, pod: Pod) -> NodeChanges {
        let updated: Vec<Endpoint> = self
            .state
            .pod_endpoints(&pod.namespace, &pod.name)
            .map(|endpoint| with_pod(endpoint.clone(), &pod))
            .collect();
        self.state.put_pod(pod);
        let mut changes = NodeChanges::new();
        for endpoint in updated {
            for (node, list) in self.put_endpoint(endpoint) {
                changes.entry(node).or_default().extend(list);
            }
        }
        changes
    }

    /// Removes a Kubernetes pod; its endpoints (until their DEL) keep the labels it gave them.
    pub fn remove_pod(&mut self, namespace: &str, name: &str) -> NodeChanges {
        self.state.remove_pod(namespace, name);
        NodeChanges::new()
    }

    /// Sets an endpoint (with its pod's labels and named ports when kube-sync mirrors the pod).
    pub fn put_endpoint(&mut self, endpoint: Endpoint) -> NodeChanges {
        let endpoint = match self.state.pod(&endpoint.namespace, &endpoint.pod) {
            Some(pod) => with_pod(endpoint, pod),
            None => endpoint,
        };
        let key = endpoint.key.clone();
        if self.state.endpoint(&key) == Some(&endpoint) {
            return NodeChanges::new();
        }
        self.state.put_endpoint(endpoint);
        self.endpoint_changed(&key);
        self.commit()
    }

    /// Removes an endpoint.
    pub fn remove_endpoint(&mut self, key: &EndpointKey) -> NodeChanges {
        if self.state.remove_endpoint(key).is_none() {
            return NodeChanges::new();
        }
        self.endpoint_changed(key);
        self.commit()
    }

    /// Sets a policy.
    pub fn put_policy(&mut self, policy: Policy) -> NodeChanges {
        if self.state.policy(&policy.id) == Some(&policy) {
            return NodeChanges::new();
        }
        let id = policy.id.clone();
        self.state.put_policy(policy);
        self.policy_changed(&id);
        self.commit()
    }

    /// Stores what a datastore record holds.
    pub fn put_record(&mut self, record: Record) -> NodeChanges {
        match record {
            Record::Namespace(namespace) => self.put_namespace(namespace),
            Record::Endpoint(endpoint) => self.put_endpoint(endpoint),
            Record::Policy(policy, _) => self.put_policy(policy),
            Record::Pod(pod) => self.put_pod(pod),
            Record::Staged(staged) => self.put_staged(*staged),
            Record::HostEndpoint(host) => self.put_host_endpoint(&host),
            Record::ServiceAccount(account) => self.put_service_account(account),
        }
    }

    /// Stores a staged policy: it changes no view (staged policies are never enforced).
    pub fn put_staged(&mut self, staged: StagedPolicy) -> NodeChanges {
        self.state.put_staged(staged);
        NodeChanges::new()
    }

    /// Removes the staged policy standing for `id`; no view changes.
    pub fn remove_staged(&mut self, id: &PolicyId) -> NodeChanges {
        self.state.remove_staged(id);
        NodeChanges::new()
    }

    /// Removes a policy.
    pub fn remove_policy(&mut self, id: &PolicyId) -> NodeChanges {
        if self.state.remove_policy(id).is_none() {
            return NodeChanges::new();
        }
        self.policy_changed(id);
        self.commit()
    }

    /// The endpoints (with their selector labels) `selector` can match: those of one namespace
    /// when it requires one, else all.
    fn candidates(&self, selector: &Selector) -> Vec<(&EndpointKey, &BTreeMap<String, String>)> {
        match required_namespace(selector) {
            Some(namespace) => self
                .by_namespace
                .get(namespace)
                .into_iter()
                .flatten()
                .filter_map(|key| self.labels.get_key_value(key))
                .collect(),
            None => self.labels.iter().collect(),
        }
    }

    fn relabel_namespace(&mut self, name: &str) -> NodeChanges {
        let keys: Vec<EndpointKey> = self
            .by_namespace
            .get(name)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for key in keys {
            self.endpoint_changed(&key);
        }
        self.commit()
    }

    /// Re-evaluates one endpoint (added, changed or removed) against every policy and set.
    fn endpoint_changed(&mut self, key: &EndpointKey) {
        let endpoint = self.state.endpoint(key).cloned();
        let labels = endpoint.as_ref().map(|e| self.state.selector_labels(e));
        let previous = match &labels {
            Some(labels) => self.labels.insert(key.clone(), labels.clone()),
            None => self.labels.remove(key),
        };
        if let Some(namespace) = previous.as_ref().and_then(|l| l.get(NAMESPACE_LABEL))
            && let Some(keys) = self.by_namespace.get_mut(namespace)
        {
            keys.remove(key);
            if keys.is_empty() {
                self.by_namespace.remove(namespace);
            }
        }
        if let Some(endpoint) = &endpoint {
            self.by_namespace
                .entry(endpoint.namespace.clone())
                .or_default()
                .insert(key.clone());
        }
        let applying: BTreeSet<SharedPolicyId> = match &labels {
            Some(labels) => self
                .policies_by_label
                .candidates_of(labels)
                .filter(|id| {
                    self.compiled
                        .get(*id)
                        .is_some_and(|c| c.applies_to.matches(labels))
                })
                .cloned()
                .collect(),
            None => BTreeSet::new(),
        };
        let set_ids = self
            .sets_by_label
            .candidates(&[previous.as_ref(), labels.as_ref()]);
        self.set_endpoint_policies(key, endpoint.is_some(), applying);
        for id in set_ids {
            let members = match (&endpoint, &labels) {
                (Some(endpoint), Some(labels)) => self.sets[&id].definition.members(endpoint, labels),
                _ => Vec::new(),
            };
            self.set_members(&id, key, members);
        }
    }

    /// Re-evaluates one policy (added, changed or removed) against every endpoint.
    fn policy_changed(&mut self, id: &PolicyId) {
        // The id every map shares: the one held already, else a new one.
        let id: SharedPolicyId = self
            .compiled
            .get_key_value(id)
            .map_or_else(|| Arc::new(id.clone()), |(held, _)| Arc::clone(held));
        let old = self.compiled.remove(&id);
        if let Some(old) = &old {
            self.policies_by_label.remove(&old.applies_to, &id);
        }
        let new = self.state.policy(&id).map(compile).map(Arc::new);
        let Some(key) = self
            .policy_entries
            .get(&id)
            .map(|entry| Key::clone(entry.key()))
            .or_else(|| new.as_deref().or(old.as_deref()).map(policy_key))
        else {
            return;
        };
        let new_entry: Option<SharedEntry> = new.as_ref().map(|new| {
            Arc::new(SharedViewEntry::new(
                Key::clone(&key),
                ViewEntry::Policy(new.view.clone()),
            ))
        });
        // The new form's sets first, so sets both forms use keep their members.
        for set in new.iter().flat_map(|n| n.sets.values()) {
            self.acquire_set(set);
        }
        let old_endpoints = self.policy_endpoints.get(&id).cloned().unwrap_or_default();
        // The nodes holding the policy: those of the endpoints it applies to.
        let holders: BTreeSet<String> = old_endpoints.iter().map(|key| key.node.clone()).collect();
        for node in &holders {
            if let Some(old) = &old {
                self.detach_policy(node, &key, old);
            }
            if let (Some(new), Some(entry)) = (&new, &new_entry) {
                self.attach_policy(node, new, entry);
            }
        }
        for set in old.iter().flat_map(|o| o.sets.keys()) {
            self.release_set(set);
        }
        let new_endpoints: BTreeSet<EndpointKey> = match &new {
            Some(new) => self
                .candidates(&new.applies_to)
                .into_iter()
                .filter(|(_, labels)| new.applies_to.matches(labels))
                .map(|(key, _)| key.clone())
                .collect(),
            None => BTreeSet::new(),
        };
        match (new, new_entry) {
            (Some(new), Some(entry)) => {
                self.policies_by_label.insert(&new.applies_to, Arc::clone(&id));
                self.compiled.insert(Arc::clone(&id), new);
                self.policy_entries.insert(Arc::clone(&id), entry);
            }
            _ => {
                self.policy_entries.remove(&id);
            }
        }
        // Endpoints that gained or lost the policy, and every endpoint that has it (its order
        // may have changed), get their entries recomputed.
        for key in old_endpoints.union(&new_endpoints) {
            let mut policies: BTreeSet<SharedPolicyId> = self
                .endpoint_policies
                .get(key)
                .map(|ids| ids.iter().cloned().collect())
                .unwrap_or_default();
            if new_endpoints.contains(key) {
                policies.insert(Arc::clone(&id));
            } else {
                policies.remove(&id);
            }
            self.set_endpoint_policies(key, true, policies);
        }
    }

    /// Sets the policies applying to an endpoint (`exists` false: it is gone) and records what
    /// changes for its node: the policies (and their sets) the node now needs or no longer
    /// needs, and the endpoint's entry (not while loading: computed once at the end).
    fn set_endpoint_policies(&mut self, key: &EndpointKey, exists: bool, applying: BTreeSet<SharedPolicyId>) {
        let node = key.node.as_str();
        let old: BTreeSet<SharedPolicyId> = self
            .endpoint_policies
            .remove(key)
            .map(|ids| ids.into_vec().into_iter().collect())
            .unwrap_or_default();
        for id in old.difference(&applying) {
            if let Some(endpoints) = self.policy_endpoints.get_mut(id) {
                endpoints.remove(key);
                if endpoints.is_empty() {
                    self.policy_endpoints.remove(id);
                }
            }
            self.unref_policy(node, id);
        }
        for id in applying.difference(&old) {
            self.policy_endpoints
                .entry(Arc::clone(id))
                .or_default()
                .insert(key.clone());
            self.ref_policy(node, id);
        }
        if exists {
            self.endpoint_policies
                .insert(key.clone(), applying.into_iter().collect());
        }
        if !self.loading || !exists {
            self.refresh_endpoint_entry(key);
        }
    }

    /// Recomputes an endpoint's entry in its node's view (gone with the endpoint).
    fn refresh_endpoint_entry(&mut self, key: &EndpointKey) {
        let node = &key.node;
        let host = host_endpoint_name(key);
        let entry_key = Key::from(match host {
            Some(name) => format!("{}{name}", keys::HOST_ENDPOINT),
            None => format!("{}{}", keys::ENDPOINT, key.interface),
        });
        let Some(applying) = self.endpoint_policies.get(key) else {
            if let Some(entries) = self.endpoint_entries.get_mut(node) {
                entries.remove(&entry_key);
                if entries.is_empty() {
                    self.endpoint_entries.remove(node);
                }
            }
            self.record_change(node, &entry_key, None);
            return;
        };
        let entry = self.endpoint_entry(key, applying);
        let entry = match host.and_then(|name| self.host_endpoints.get(name)) {
            Some(host) => ViewEntry::HostEndpoint(HostEndpointView {
                name: host.name.clone(),
                interface: host.interface.clone(),
                ingress: entry.ingress,
                egress: entry.egress,
            }),
            None => ViewEntry::Endpoint(entry),
        };
        let entries = self.endpoint_entries.entry(node.clone()).or_default();
        if entries.get(&entry_key).is_some_and(|before| ***before == entry) {
            return;
        }
        let entry = Arc::new(SharedViewEntry::new(Key::clone(&entry_key), entry));
        entries.insert(entry_key.clone(), Arc::clone(&entry));
        self.record_change(node, &entry_key, Some(ViewSlot::Entry(entry)));
    }

    fn endpoint_entry(&self, key: &EndpointKey, applying: &[SharedPolicyId]) -> EndpointView {
        let mut ordered: Vec<(&PolicyId, &CompiledPolicy)> = applying
            .iter()
            .filter_map(|id| self.compiled.get(id).map(|c| (&**id, &**c)))
            .collect();
        ordered.sort_by(|a, b| evaluation_order((a.0, a.1.order), (b.0, b.1.order)));
        let name = self.state.endpoint(key).map(endpoint_name).unwrap_or_default();
        EndpointView {
            interface: key.interface.clone(),
            name,
            ingress: ordered
                .iter()
                .filter(|(_, c)| c.governs.0)
                .map(|(_, c)| c.view.id.clone())
                .collect(),
            egress: ordered
                .iter()
                .filter(|(_, c)| c.governs.1)
                .map(|(_, c)| c.view.id.clone())
                .collect(),
        }
    }

    fn ref_policy(&mut self, node: &str, id: &SharedPolicyId) {
        // Looked up first: the node's name is copied only for its first policy.
        let policies = match self.node_policies.get_mut(node) {
            Some(policies) => policies,
            None => self.node_policies.entry(node.to_owned()).or_default(),
        };
        let count = policies.entry(Arc::clone(id)).or_default();
        *count += 1;
        if *count == 1
            && let Some(compiled) = self.compiled.get(id).cloned()
            && let Some(entry) = self.policy_entries.get(id).cloned()
        {
            self.attach_policy(node, &compiled, &entry);
        }
    }

    fn unref_policy(&mut self, node: &str, id: &SharedPolicyId) {
        let Some(policies) = self.node_policies.get_mut(node) else {
            return;
        };
        let Some(count) = policies.get_mut(id) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            policies.remove(id);
            if policies.is_empty() {
                self.node_policies.remove(node);
            }
            if let (Some(compiled), Some(entry)) = (
                self.compiled.get(id).cloned(),
                self.policy_entries.get(id).cloned(),
            ) {
                self.detach_policy(node, entry.key(), &compiled);
            }
        }
    }

    /// Puts a compiled policy (its entry: `entry`) and its sets into a node's view.
    fn attach_policy(&mut self, node: &str, compiled: &CompiledPolicy, entry: &SharedEntry) {
        self.record_change(node, entry.key(), Some(ViewSlot::Entry(Arc::clone(entry))));
        for set in compiled.sets.keys() {
            self.node_uses_set(node, set, true);
        }
    }

    /// Takes a compiled policy (its entry's key: `key`) and the sets only it used out of a
    /// node's view.
    fn detach_policy(&mut self, node: &str, key: &Key, compiled: &CompiledPolicy) {
        self.record_change(node, key, None);
        for set in compiled.sets.keys() {
            self.node_uses_set(node, set, false);
        }
    }
}

/// Where a record goes in [`Calculator::from_records`]' order.
fn load_rank(record: &Record) -> u8 {
    match record {
        Record::Namespace(_) | Record::Pod(_) | Record::ServiceAccount(_) => 0,
        Record::Policy(..) | Record::Staged(_) => 1,
        Record::Endpoint(_) | Record::HostEndpoint(_) => 2,
    }
}

/// `endpoint` with the labels and named ports of its Kubernetes pod.
fn with_pod(mut endpoint: Endpoint, pod: &Pod) -> Endpoint {
    endpoint.labels = pod.endpoint_labels();
    endpoint.ports = pod.ports.clone();
    endpoint
}

/// The key of a policy's entry.
fn policy_key(compiled: &CompiledPolicy) -> Key {
    Key::from(format!("{}{}", keys::POLICY, compiled.view.id))
}
