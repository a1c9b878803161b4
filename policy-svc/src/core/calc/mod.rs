//! Incremental per-node calculation: from namespaces, endpoints and policies, every node's
//! [`ViewEntry`] map, kept up to date change by change. An endpoint change re-evaluates only that
//! endpoint against the policies and sets; a policy change only that policy against the
//! endpoints; the result is the entries that really changed, per node. Host endpoints are
//! evaluated as endpoints (`host_endpoints`); service accounts' labels are their endpoints'
//! (`service_accounts`). Entries every node holds alike (a policy, a set's header and members)
//! are built once and shared by every view that holds them.

mod host_endpoints;
mod service_accounts;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use brindle_fanout::Change;

use brindle_selector::Selector;

use super::compile::{CompiledPolicy, SetDefinition, compile};
use super::records::Record;
use super::staged::StagedPolicy;
use super::state::ClusterState;
use policy_api::host_endpoint::{HostEndpoint, endpoint_name, host_endpoint_name};
use policy_api::model::{
    Endpoint, EndpointKey, NAMESPACE_LABEL, Namespace, Pod, Policy, PolicyId, evaluation_order,
};
use policy_api::view::{EndpointView, HostEndpointView, MemberView, ViewEntry, keys};

/// One entry of a node's view, shared with every other view holding the same entry.
pub type SharedEntry = Arc<ViewEntry>;

/// A node's view with shared entries (what its fan-out holds).
pub type SharedView = BTreeMap<String, SharedEntry>;

/// Changes per node.
pub type NodeChanges = BTreeMap<String, Vec<Change<SharedEntry>>>;

/// How much of the views one change went through: every node and entry it set, whether or not
/// the entry ended up different.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangeWork {
    /// Nodes.
    pub nodes: usize,
    /// View entries.
    pub entries: usize,
}

/// Ids by the namespace their selector requires (`None`: it can match in any namespace), so an
/// endpoint is evaluated only against the selectors that can match it.
#[derive(Debug)]
struct NamespaceIndex<T>(BTreeMap<Option<String>, BTreeSet<T>>);

impl<T> Default for NamespaceIndex<T> {
    fn default() -> Self {
        Self(BTreeMap::new())
    }
}

impl<T: Ord + Clone> NamespaceIndex<T> {
    fn insert(&mut self, selector: &Selector, id: T) {
        let namespace = required_namespace(selector).map(str::to_owned);
        self.0.entry(namespace).or_default().insert(id);
    }

    fn remove(&mut self, selector: &Selector, id: &T) {
        let namespace = required_namespace(selector).map(str::to_owned);
        if let Some(ids) = self.0.get_mut(&namespace) {
            ids.remove(id);
            if ids.is_empty() {
                self.0.remove(&namespace);
            }
        }
    }

    /// The ids whose selectors can match an endpoint of any of `namespaces`.
    fn candidates(&self, namespaces: &[Option<&str>]) -> BTreeSet<T> {
        let mut ids: BTreeSet<T> = self.0.get(&None).cloned().unwrap_or_default();
        for namespace in namespaces.iter().flatten() {
            if let Some(more) = self.0.get(&Some((*namespace).to_owned())) {
                ids.extend(more.iter().cloned());
            }
        }
        ids
    }
}

/// A set's member entries, each with how many endpoints contribute it.
type MemberEntries = BTreeMap<String, (usize, SharedEntry)>;

/// An ipset every policy that uses it shares.
#[derive(Debug)]
struct SetState {
    definition: SetDefinition,
    /// Its header entry.
    header: SharedEntry,
    /// Members per endpoint that contributes any.
    members: BTreeMap<EndpointKey, Vec<String>>,
    /// Each member's entry.
    entries: MemberEntries,
    /// Policies using it.
    policies: usize,
    /// Nodes whose view holds it, with how many of their policies use it.
    nodes: BTreeMap<String, usize>,
}

/// The calculation's state.
#[derive(Debug, Default)]
pub struct Calculator {
    state: ClusterState,
    labels: BTreeMap<EndpointKey, BTreeMap<String, String>>,
    /// Endpoints by namespace: most selectors are limited to one, and are evaluated only there.
    by_namespace: BTreeMap<String, BTreeSet<EndpointKey>>,
    compiled: BTreeMap<PolicyId, CompiledPolicy>,
    /// Each compiled policy's entry.
    policy_entries: BTreeMap<PolicyId, SharedEntry>,
    /// Compiled policies by the namespace they are limited to.
    policies_by_namespace: NamespaceIndex<PolicyId>,
    /// Policies applying to each endpoint (either direction).
    endpoint_policies: BTreeMap<EndpointKey, BTreeSet<PolicyId>>,
    /// Endpoints each policy applies to.
    policy_endpoints: BTreeMap<PolicyId, BTreeSet<EndpointKey>>,
    /// Per node: policies its endpoints use, with how many endpoints use each.
    node_policies: BTreeMap<String, BTreeMap<PolicyId, usize>>,
    sets: BTreeMap<String, SetState>,
    /// Sets by the namespace their members are limited to.
    sets_by_namespace: NamespaceIndex<String>,
    views: BTreeMap<String, SharedView>,
    /// Host endpoints by name (each also an endpoint of the state, keyed by
    /// [`HostEndpoint::endpoint_key`]).
    host_endpoints: BTreeMap<String, HostEndpoint>,
    /// Entries touched by the change in progress, with their value before it.
    touched: BTreeMap<(String, String), Option<SharedEntry>>,
    /// What the last change went through.
    last_work: ChangeWork,
    /// Loading a full list: changes are not collected (nobody reads them).
    loading: bool,
}

impl Calculator {
    /// An empty calculation.
    pub fn new() -> Self {
        Self::default()
    }

    /// The calculation of a full list of records, loaded in the order that evaluates each
    /// selector once: namespaces, pods and service accounts before the endpoints they label,
    /// endpoints before the policies that select them; the changes are not collected.
    pub fn from_records(mut records: Vec<Record>) -> Self {
        records.sort_by_key(load_rank);
        let mut calc = Self {
            loading: true,
            ..Self::default()
        };
        for record in records {
            calc.put_record(record);
        }
        calc.loading = false;
        calc
    }

    /// The inputs.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// A node's view (empty when it has no endpoints).
    pub fn view(&self, node: &str) -> BTreeMap<String, ViewEntry> {
        self.views
            .get(node)
            .into_iter()
            .flatten()
            .map(|(key, entry)| (key.clone(), ViewEntry::clone(entry)))
            .collect()
    }

    /// A node's view, its entries shared with the calculation.
    pub fn shared_view(&self, node: &str) -> SharedView {
        self.views.get(node).cloned().unwrap_or_default()
    }

    /// What the last change went through (its nodes and entries, changed or not).
    pub fn last_change_work(&self) -> ChangeWork {
        self.last_work
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
        let old_namespace = previous
            .as_ref()
            .and_then(|l| l.get(NAMESPACE_LABEL))
            .map(String::as_str);
        let new_namespace = labels
            .as_ref()
            .and_then(|l| l.get(NAMESPACE_LABEL))
            .map(String::as_str);
        let applying: BTreeSet<PolicyId> = match &labels {
            Some(labels) => self
                .policies_by_namespace
                .candidates(&[new_namespace])
                .into_iter()
                .filter(|id| {
                    self.compiled
                        .get(id)
                        .is_some_and(|c| c.applies_to.matches(labels))
                })
                .collect(),
            None => BTreeSet::new(),
        };
        let set_ids = self.sets_by_namespace.candidates(&[old_namespace, new_namespace]);
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
        let old = self.compiled.remove(id);
        if let Some(old) = &old {
            self.policies_by_namespace.remove(&old.applies_to, id);
        }
        let new = self.state.policy(id).map(compile);
        let new_entry = new
            .as_ref()
            .map(|new| Arc::new(ViewEntry::Policy(new.view.clone())));
        // The new form's sets first, so sets both forms use keep their members.
        for set in new.iter().flat_map(|n| n.sets.values()) {
            self.acquire_set(set);
        }
        let old_endpoints = self.policy_endpoints.get(id).cloned().unwrap_or_default();
        // The nodes holding the policy: those of the endpoints it applies to.
        let holders: BTreeSet<String> = old_endpoints.iter().map(|key| key.node.clone()).collect();
        for node in &holders {
            if let Some(old) = &old {
                self.detach_policy(node, old);
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
                self.policies_by_namespace.insert(&new.applies_to, id.clone());
                self.compiled.insert(id.clone(), new);
                self.policy_entries.insert(id.clone(), entry);
            }
            _ => {
                self.policy_entries.remove(id);
            }
        }
        // Endpoints that gained or lost the policy, and every endpoint that has it (its order
        // may have changed), get their entries recomputed.
        for key in old_endpoints.union(&new_endpoints) {
            let mut policies = self.endpoint_policies.get(key).cloned().unwrap_or_default();
            if new_endpoints.contains(key) {
                policies.insert(id.clone());
            } else {
                policies.remove(id);
            }
            self.set_endpoint_policies(key, true, policies);
        }
    }

    /// Sets the policies applying to an endpoint (`exists` false: it is gone) and updates its
    /// node's view: the endpoint entry, policies the node now needs or no longer needs.
    fn set_endpoint_policies(&mut self, key: &EndpointKey, exists: bool, applying: BTreeSet<PolicyId>) {
        let node = key.node.clone();
        let old = self.endpoint_policies.remove(key).unwrap_or_default();
        for id in old.difference(&applying) {
            if let Some(endpoints) = self.policy_endpoints.get_mut(id) {
                endpoints.remove(key);
                if endpoints.is_empty() {
                    self.policy_endpoints.remove(id);
                }
            }
            self.unref_policy(&node, id);
        }
        for id in applying.difference(&old) {
            self.policy_endpoints
                .entry(id.clone())
                .or_default()
                .insert(key.clone());
            self.ref_policy(&node, id);
        }
        let host = host_endpoint_name(key);
        let entry_key = match host {
            Some(name) => format!("{}{name}", keys::HOST_ENDPOINT),
            None => format!("{}{}", keys::ENDPOINT, key.interface),
        };
        if !exists {
            self.set_entry(&node, &entry_key, None);
            return;
        }
        let entry = self.endpoint_entry(key, &applying);
        self.endpoint_policies.insert(key.clone(), applying);
        let entry = match host.and_then(|name| self.host_endpoints.get(name)) {
            Some(host) => ViewEntry::HostEndpoint(HostEndpointView {
                name: host.name.clone(),
                interface: host.interface.clone(),
                ingress: entry.ingress,
                egress: entry.egress,
            }),
            None => ViewEntry::Endpoint(entry),
        };
        self.set_entry(&node, &entry_key, Some(Arc::new(entry)));
    }

    fn endpoint_entry(&self, key: &EndpointKey, applying: &BTreeSet<PolicyId>) -> EndpointView {
        let mut ordered: Vec<(&PolicyId, &CompiledPolicy)> = applying
            .iter()
            .filter_map(|id| self.compiled.get(id).map(|c| (id, c)))
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

    fn ref_policy(&mut self, node: &str, id: &PolicyId) {
        let count = self
            .node_policies
            .entry(node.to_owned())
            .or_default()
            .entry(id.clone())
            .or_default();
        *count += 1;
        if *count == 1
            && let Some(compiled) = self.compiled.get(id).cloned()
            && let Some(entry) = self.policy_entries.get(id).cloned()
        {
            self.attach_policy(node, &compiled, &entry);
        }
    }

    fn unref_policy(&mut self, node: &str, id: &PolicyId) {
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
            if let Some(compiled) = self.compiled.get(id).cloned() {
                self.detach_policy(node, &compiled);
            }
        }
    }

    /// Puts a compiled policy (its entry: `entry`) and its sets into a node's view.
    fn attach_policy(&mut self, node: &str, compiled: &CompiledPolicy, entry: &SharedEntry) {
        let key = format!("{}{}", keys::POLICY, compiled.view.id);
        self.set_entry(node, &key, Some(Arc::clone(entry)));
        for set in compiled.sets.keys() {
            self.node_uses_set(node, set, true);
        }
    }

    /// Takes a compiled policy and the sets only it used out of a node's view.
    fn detach_policy(&mut self, node: &str, compiled: &CompiledPolicy) {
        let key = format!("{}{}", keys::POLICY, compiled.view.id);
        self.set_entry(node, &key, None);
        for set in compiled.sets.keys() {
            self.node_uses_set(node, set, false);
        }
    }

    fn node_uses_set(&mut self, node: &str, id: &str, uses: bool) {
        let Some(set) = self.sets.get_mut(id) else {
            return;
        };
        let count = set.nodes.entry(node.to_owned()).or_default();
        let before = *count;
        if uses {
            *count += 1;
        } else {
            *count = count.saturating_sub(1);
        }
        let after = *count;
        if after == 0 {
            set.nodes.remove(node);
        }
        let entries: Vec<(String, Option<SharedEntry>)> = match (before, after) {
            (0, 1) => self
                .set_entries(id)
                .into_iter()
                .map(|(k, v)| (k, Some(v)))
                .collect(),
            (1, 0) => self.set_entries(id).into_iter().map(|(k, _)| (k, None)).collect(),
            _ => Vec::new(),
        };
        for (key, value) in entries {
            self.set_entry(node, &key, value);
        }
    }

    /// A set's header and member entries.
    fn set_entries(&self, id: &str) -> Vec<(String, SharedEntry)> {
        let Some(set) = self.sets.get(id) else {
            return Vec::new();
        };
        let mut entries = vec![(format!("{}{id}", keys::IPSET), Arc::clone(&set.header))];
        for (member, (_, entry)) in &set.entries {
            entries.push((member_key(id, member), Arc::clone(entry)));
        }
        entries
    }

    /// A policy starts using a set: create it (computing its members) if it is new.
    fn acquire_set(&mut self, definition: &SetDefinition) {
        let id = definition.id();
        if let Some(set) = self.sets.get_mut(&id) {
            set.policies += 1;
            return;
        }
        let mut members = BTreeMap::new();
        let mut entries = MemberEntries::new();
        for (key, labels) in self.candidates(definition.selector()) {
            if let Some(endpoint) = self.state.endpoint(key) {
                let contributed = definition.members(endpoint, labels);
                for member in &contributed {
                    count_member(&mut entries, &id, member);
                }
                if !contributed.is_empty() {
                    members.insert(key.clone(), contributed);
                }
            }
        }
        self.sets_by_namespace.insert(definition.selector(), id.clone());
        self.sets.insert(
            id,
            SetState {
                header: Arc::new(ViewEntry::IpSet(definition.view())),
                definition: definition.clone(),
                members,
                entries,
                policies: 1,
                nodes: BTreeMap::new(),
            },
        );
    }

    /// A policy stops using a set: drop it once no policy does.
    fn release_set(&mut self, id: &str) {
        if let Some(set) = self.sets.get_mut(id) {
            set.policies -= 1;
            if set.policies == 0 && set.nodes.is_empty() {
                let selector = set.definition.selector().clone();
                self.sets.remove(id);
                self.sets_by_namespace.remove(&selector, &id.to_owned());
            }
        }
    }

    /// Sets what one endpoint contributes to a set, updating every node that holds the set.
    fn set_members(&mut self, id: &str, key: &EndpointKey, members: Vec<String>) {
        let Some(set) = self.sets.get_mut(id) else {
            return;
        };
        let old = if members.is_empty() {
            set.members.remove(key).unwrap_or_default()
        } else {
            set.members
                .insert(key.clone(), members.clone())
                .unwrap_or_default()
        };
        if old == members {
            return;
        }
        // Counted in before the old ones are counted out, so a member the endpoint keeps keeps
        // its entry.
        let added: Vec<(String, SharedEntry)> = members
            .iter()
            .map(|member| (member_key(id, member), count_member(&mut set.entries, id, member)))
            .collect();
        let removed: Vec<String> = old
            .iter()
            .filter(|member| uncount_member(&mut set.entries, member))
            .map(|member| member_key(id, member))
            .collect();
        let nodes: Vec<String> = set.nodes.keys().cloned().collect();
        for node in nodes {
            for key in &removed {
                self.set_entry(&node, key, None);
            }
            for (key, entry) in &added {
                self.set_entry(&node, key, Some(Arc::clone(entry)));
            }
        }
    }

    /// Sets one entry of a node's view (a view left empty goes), remembering its value before
    /// the change in progress.
    fn set_entry(&mut self, node: &str, key: &str, value: Option<SharedEntry>) {
        let before = match (value, self.views.get_mut(node)) {
            (Some(value), Some(view)) => view.insert(key.to_owned(), value),
            (Some(value), None) => {
                self.views
                    .insert(node.to_owned(), BTreeMap::from([(key.to_owned(), value)]));
                None
            }
            (None, Some(view)) => {
                let before = view.remove(key);
                if view.is_empty() {
                    self.views.remove(node);
                }
                before
            }
            (None, None) => None,
        };
        if !self.loading {
            self.touched
                .entry((node.to_owned(), key.to_owned()))
                .or_insert(before);
        }
    }

    /// The entries that differ from before the change in progress, per node.
    fn commit(&mut self) -> NodeChanges {
        let touched = std::mem::take(&mut self.touched);
        self.last_work = ChangeWork {
            nodes: touched
                .keys()
                .map(|(node, _)| node)
                .collect::<BTreeSet<_>>()
                .len(),
            entries: touched.len(),
        };
        let mut changes = NodeChanges::new();
        for ((node, key), before) in touched {
            let now = self.views.get(&node).and_then(|v| v.get(&key));
            if now == before.as_ref() {
                continue;
            }
            let change = match now {
                Some(value) => Change::Upsert(key, Arc::clone(value)),
                None => Change::Remove(key),
            };
            changes.entry(node).or_default().push(change);
        }
        changes
    }
}

/// Where a record goes in [`Calculator::from_records`]' order.
fn load_rank(record: &Record) -> u8 {
    match record {
        Record::Namespace(_) | Record::Pod(_) | Record::ServiceAccount(_) => 0,
        Record::Endpoint(_) | Record::HostEndpoint(_) => 1,
        Record::Policy(..) | Record::Staged(_) => 2,
    }
}

/// The namespace `selector` requires (`brindle.io/namespace == 'x'`, alone or in a top-level `&&`).
fn required_namespace(selector: &Selector) -> Option<&str> {
    fn namespace(part: &Selector) -> Option<&str> {
        match part {
            Selector::Equals(key, value) if key == NAMESPACE_LABEL => Some(value.as_str()),
            _ => None,
        }
    }
    match selector {
        Selector::And(parts) => parts.iter().find_map(namespace),
        other => namespace(other),
    }
}

/// `endpoint` with the labels and named ports of its Kubernetes pod.
fn with_pod(mut endpoint: Endpoint, pod: &Pod) -> Endpoint {
    endpoint.labels = pod.endpoint_labels();
    endpoint.ports = pod.ports.clone();
    endpoint
}

fn member_key(set: &str, member: &str) -> String {
    format!("{}{set}/{member}", keys::MEMBER)
}

/// Counts one more endpoint contributing `member` to set `set`; the member's entry.
fn count_member(entries: &mut MemberEntries, set: &str, member: &str) -> SharedEntry {
    let (count, entry) = entries
        .entry(member.to_owned())
        .or_insert_with(|| (0, member_entry(set, member)));
    *count += 1;
    Arc::clone(entry)
}

/// Counts one endpoint fewer contributing `member`; whether no endpoint contributes it any more.
fn uncount_member(entries: &mut MemberEntries, member: &str) -> bool {
    let Some((count, _)) = entries.get_mut(member) else {
        return false;
    };
    *count -= 1;
    if *count > 0 {
        return false;
    }
    entries.remove(member);
    true
}

fn member_entry(set: &str, member: &str) -> SharedEntry {
    Arc::new(ViewEntry::Member(MemberView {
        set: set.to_owned(),
        member: member.to_owned(),
    }))
}
