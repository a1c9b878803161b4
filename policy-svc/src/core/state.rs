//! The cluster's policy inputs in memory — namespaces, endpoints, policies, the Kubernetes pods
//! whose labels their endpoints take and the service accounts whose labels they carry — as the
//! watcher keeps them, with the lookups
//! evaluation and calculation need.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use super::staged::{StagedAction, StagedPolicy};
use policy_api::model::{
    Direction, Endpoint, EndpointKey, Namespace, Pod, Policy, PolicyId, SERVICE_ACCOUNT_LABEL,
    evaluation_order,
};
use policy_api::service_account::ServiceAccount;

/// Namespaces, endpoints and policies.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    namespaces: BTreeMap<String, Namespace>,
    endpoints: BTreeMap<EndpointKey, Endpoint>,
    policies: BTreeMap<PolicyId, Policy>,
    by_ip: HashMap<IpAddr, EndpointKey>,
    /// Each pod's endpoints, in order (usually one: a set would cost a B-tree node each).
    by_pod: HashMap<(String, String), Vec<EndpointKey>>,
    pods: HashMap<(String, String), Pod>,
    /// Staged policies, by the enforced policy they stand for.
    staged: BTreeMap<PolicyId, StagedPolicy>,
    /// Service accounts' labels, by (namespace, name).
    service_accounts: HashMap<(String, String), ServiceAccount>,
}

impl ClusterState {
    /// Stores a service account; the one it replaced.
    pub fn put_service_account(&mut self, account: ServiceAccount) -> Option<ServiceAccount> {
        self.service_accounts
            .insert((account.namespace.clone(), account.name.clone()), account)
    }

    /// Removes a service account.
    pub fn remove_service_account(&mut self, namespace: &str, name: &str) -> Option<ServiceAccount> {
        self.service_accounts
            .remove(&(namespace.to_owned(), name.to_owned()))
    }

    /// The labels of the service account `endpoint` runs as, when known.
    fn account_labels(&self, endpoint: &Endpoint) -> Option<&BTreeMap<String, String>> {
        let name = endpoint.labels.get(SERVICE_ACCOUNT_LABEL)?;
        self.service_accounts
            .get(&(endpoint.namespace.clone(), name.clone()))
            .map(|account| &account.labels)
    }

    /// Stores a staged policy (replacing the one standing for the same policy).
    pub fn put_staged(&mut self, staged: StagedPolicy) {
        self.staged.insert(staged.policy.id.clone(), staged);
    }

    /// Removes the staged policy standing for `id`.
    pub fn remove_staged(&mut self, id: &PolicyId) -> Option<StagedPolicy> {
        self.staged.remove(id)
    }

    /// Whether any policy is staged.
    pub fn has_staged(&self) -> bool {
        !self.staged.is_empty()
    }

    /// Number of namespaces.
    pub fn namespace_count(&self) -> usize {
        self.namespaces.len()
    }

    /// Namespace by name.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name)
    }

    /// Endpoint by key.
    pub fn endpoint(&self, key: &EndpointKey) -> Option<&Endpoint> {
        self.endpoints.get(key)
    }

    /// Every endpoint.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.values()
    }

    /// Whether `node` has an endpoint.
    pub fn has_endpoints_on(&self, node: &str) -> bool {
        let first = EndpointKey {
            node: node.to_owned(),
            interface: String::new(),
        };
        self.endpoints
            .range(first..)
            .next()
            .is_some_and(|(key, _)| key.node == node)
    }

    /// The endpoint that owns `ip`.
    pub fn endpoint_by_ip(&self, ip: IpAddr) -> Option<&Endpoint> {
        self.by_ip.get(&ip).and_then(|key| self.endpoints.get(key))
    }

    /// The endpoints of a pod.
    pub fn pod_endpoints(&self, namespace: &str, pod: &str) -> impl Iterator<Item = &Endpoint> {
        self.by_pod
            .get(&(namespace.to_owned(), pod.to_owned()))
            .into_iter()
            .flatten()
            .filter_map(|key| self.endpoints.get(key))
    }

    /// A Kubernetes pod mirrored by kube-sync.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// Sets a Kubernetes pod; returns the previous one.
    pub fn put_pod(&mut self, pod: Pod) -> Option<Pod> {
        self.pods.insert((pod.namespace.clone(), pod.name.clone()), pod)
    }

    /// Removes a Kubernetes pod.
    pub fn remove_pod(&mut self, namespace: &str, name: &str) -> Option<Pod> {
        self.pods.remove(&(namespace.to_owned(), name.to_owned()))
    }

    /// Policy by id.
    pub fn policy(&self, id: &PolicyId) -> Option<&Policy> {
        self.policies.get(id)
    }

    /// Every policy.
    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.values()
    }

    /// The labels selectors see for `endpoint`.
    pub fn selector_labels(&self, endpoint: &Endpoint) -> BTreeMap<String, String> {
        endpoint.selector_labels(
            self.namespaces.get(&endpoint.namespace),
            self.account_labels(endpoint),
        )
    }

    /// The policies that apply to `endpoint` in `direction`, in evaluation order; with
    /// `with_staged`, as they would be with every staged policy enforced (a `Set` one in place of
    /// the policy of its name, a `Delete` one's policy gone).
    pub fn policies_for(&self, endpoint: &Endpoint, direction: Direction, with_staged: bool) -> Vec<&Policy> {
        let labels = self.selector_labels(endpoint);
        let enforced = self
            .policies
            .values()
            .filter(|p| !(with_staged && self.staged.contains_key(&p.id)));
        let staged = self
            .staged
            .values()
            .filter(|s| with_staged && s.action == StagedAction::Set)
            .map(|s| &s.policy);
        let mut applying: Vec<&Policy> = enforced
            .chain(staged)
            .filter(|p| p.governs(direction) && p.applies_to().matches(&labels))
            .collect();
        applying.sort_by(|a, b| evaluation_order((&a.id, a.order), (&b.id, b.order)));
        applying
    }

    /// Sets a namespace; returns the previous one.
    pub fn put_namespace(&mut self, namespace: Namespace) -> Option<Namespace> {
        self.namespaces.insert(namespace.name.clone(), namespace)
    }

    /// Removes a namespace.
    pub fn remove_namespace(&mut self, name: &str) -> Option<Namespace> {
        self.namespaces.remove(name)
    }

    /// Sets an endpoint; returns the previous one.
    pub fn put_endpoint(&mut self, endpoint: Endpoint) -> Option<Endpoint> {
        let previous = self.remove_endpoint(&endpoint.key);
        for ip in &endpoint.ips {
            self.by_ip.insert(*ip, endpoint.key.clone());
        }
        let keys = self
            .by_pod
            .entry((endpoint.namespace.clone(), endpoint.pod.clone()))
            .or_default();
        if let Err(at) = keys.binary_search(&endpoint.key) {
            keys.insert(at, endpoint.key.clone());
        }
        self.endpoints.insert(endpoint.key.clone(), endpoint);
        previous
    }

    /// Removes an endpoint.
    pub fn remove_endpoint(&mut self, key: &EndpointKey) -> Option<Endpoint> {
        let previous = self.endpoints.remove(key)?;
        for ip in &previous.ips {
            if self.by_ip.get(ip) == Some(key) {
                self.by_ip.remove(ip);
            }
        }
        let pod = (previous.namespace.clone(), previous.pod.clone());
        if let Some(keys) = self.by_pod.get_mut(&pod) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.by_pod.remove(&pod);
            }
        }
        Some(previous)
    }

    /// Sets a policy; returns the previous one.
    pub fn put_policy(&mut self, policy: Policy) -> Option<Policy> {
        self.policies.insert(policy.id.clone(), policy)
    }

    /// Removes a policy.
    pub fn remove_policy(&mut self, id: &PolicyId) -> Option<Policy> {
        self.policies.remove(id)
    }
}
