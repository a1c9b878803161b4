//! Reads and writes of the stored objects: apply (all documents of a manifest in one
//! transaction), delete, get, list, and the endpoint calls the node agent and orchestrators make.
//! Read-modify-writes are compare-and-swap on the record's mod-revision, retried a bounded number
//! of times.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use brindle_datastore::{MAX_TXN_OPS, Store, StoreError, Txn};
use serde::Serialize;

use super::error::{PolicyError, invalid};
use super::kubernetes::{self, label_key};
use super::records::{
    OwnerMark, PREFIX, Record, Subject, decode, encode_endpoint, encode_owned, endpoint_key,
    endpoints_prefix, namespace_key, owner_mark, policy_key, stored_origin, subject,
};
use super::resource::{PolicyDocument, Resource, parse_documents};
use super::validate;
use ipam_api::handles::is_tunnel_handle;
use ipam_api::keys as ipam_keys;
use ipam_api::model::{Block, Handle, PoolSet, decode as ipam_decode};
use policy_api::model::{Endpoint, EndpointKey, Origin, PolicyId};
use policy_api::rule_text;

/// Attempts of a compare-and-swap write before giving up.
const CAS_ATTEMPTS: usize = 8;

/// An object's kind as the API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A namespace.
    Namespace,
    /// A brindle NetworkPolicy.
    NetworkPolicy,
    /// A brindle GlobalNetworkPolicy.
    GlobalNetworkPolicy,
    /// A Kubernetes NetworkPolicy.
    KubernetesNetworkPolicy,
}

impl Kind {
    /// The API's name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Namespace => "Namespace",
            Self::NetworkPolicy => "NetworkPolicy",
            Self::GlobalNetworkPolicy => "GlobalNetworkPolicy",
            Self::KubernetesNetworkPolicy => "KubernetesNetworkPolicy",
        }
    }

    /// Parses a kind name (case-insensitive).
    pub fn parse(field: &str, text: &str) -> Result<Self, PolicyError> {
        match text.to_ascii_lowercase().as_str() {
            "namespace" => Ok(Self::Namespace),
            "networkpolicy" => Ok(Self::NetworkPolicy),
            "globalnetworkpolicy" => Ok(Self::GlobalNetworkPolicy),
            "kubernetesnetworkpolicy" => Ok(Self::KubernetesNetworkPolicy),
            _ => Err(invalid(
                field,
                format!(
                    "{text:?}: expected Namespace, NetworkPolicy, GlobalNetworkPolicy or KubernetesNetworkPolicy"
                ),
            )),
        }
    }
}

/// A stored object as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Kind.
    pub kind: Kind,
    /// Namespace (empty for cluster-wide kinds).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// YAML in the form `apply` takes.
    pub manifest: String,
    /// Datastore mod-revision.
    pub revision: u64,
    /// Who owns it.
    pub origin: Origin,
}

/// The stored key of an object.
fn object_key(kind: Kind, namespace: &str, name: &str) -> String {
    let namespace = if namespace.is_empty() {
        kubernetes::DEFAULT_NAMESPACE
    } else {
        namespace
    };
    match kind {
        Kind::Namespace => namespace_key(name),
        Kind::NetworkPolicy => policy_key(&PolicyId::Namespaced {
            namespace: namespace.into(),
            name: name.into(),
        }),
        Kind::KubernetesNetworkPolicy => policy_key(&PolicyId::Kubernetes {
            namespace: namespace.into(),
            name: name.into(),
        }),
        Kind::GlobalNetworkPolicy => policy_key(&PolicyId::Global { name: name.into() }),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NamespaceManifest<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: NamespaceMeta<'a>,
}

#[derive(Serialize)]
struct NamespaceMeta<'a> {
    name: &'a str,
    labels: &'a BTreeMap<String, String>,
}

/// The API's view of a stored record (endpoints and pods have their own calls).
fn object(record: &Record, revision: u64, origin: Origin) -> Option<Object> {
    let yaml = |value: Result<String, yaml_serde::Error>| value.unwrap_or_default();
    match record {
        Record::Namespace(namespace) => Some(Object {
            kind: Kind::Namespace,
            namespace: String::new(),
            name: namespace.name.clone(),
            manifest: yaml(yaml_serde::to_string(&NamespaceManifest {
                api_version: "v1",
                kind: "Namespace",
                metadata: NamespaceMeta {
                    name: &namespace.name,
                    labels: &namespace.labels,
                },
            })),
            revision,
            origin,
        }),
        Record::Policy(_, Some(k8s)) => Some(Object {
            kind: Kind::KubernetesNetworkPolicy,
            namespace: k8s.namespace().to_owned(),
            name: k8s.metadata.name.clone(),
            manifest: yaml(yaml_serde::to_string(k8s)),
            revision,
            origin,
        }),
        Record::Policy(policy, None) => {
            let (kind, namespace, name) = match &policy.id {
                PolicyId::Global { name } => (Kind::GlobalNetworkPolicy, String::new(), name.clone()),
                PolicyId::Namespaced { namespace, name } | PolicyId::Kubernetes { namespace, name } => {
                    (Kind::NetworkPolicy, namespace.clone(), name.clone())
                }
            };
            Some(Object {
                kind,
                namespace,
                name,
                manifest: yaml(yaml_serde::to_string(&PolicyDocument::from_policy(policy))),
                revision,
                origin,
            })
        }
        Record::Endpoint(_) | Record::Pod(_) => None,
    }
}

/// Stored objects over a datastore.
#[derive(Clone)]
pub struct Objects {
    store: Arc<dyn Store>,
}

impl Objects {
    /// Objects in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// The datastore.
    pub(super) fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// Validates every document of `manifest`, then stores them all in one transaction, owned by
    /// `origin`; an object another origin owns is not replaced. Objects stored exactly so already
    /// are left as they are. `namespace` fills in namespaced objects that name none.
    pub async fn apply(
        &self,
        manifest: &str,
        namespace: &str,
        origin: Origin,
    ) -> Result<Vec<Object>, PolicyError> {
        if !namespace.is_empty() {
            validate::name("namespace", namespace, false)?;
        }
        let resources = parse_documents(manifest, namespace)?;
        if resources.is_empty() {
            return Err(invalid("manifest", "holds no object"));
        }
        let mut records = Vec::new();
        for resource in resources {
            records.push(match resource {
                Resource::Namespace(namespace) => Record::Namespace(namespace),
                Resource::Policy(policy) => Record::Policy(policy, None),
                Resource::KubernetesPolicy(object) => {
                    Record::Policy(object.to_policy()?, Some(Box::new(object)))
                }
            });
        }
        if records.len() > MAX_TXN_OPS {
            return Err(invalid(
                "manifest",
                format!(
                    "holds {} objects; at most {MAX_TXN_OPS} are applied together",
                    records.len()
                ),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for record in &records {
            let (key, _) = encode_owned(record, origin);
            if !seen.insert(key.clone()) {
                return Err(invalid("manifest", format!("names the object {key:?} twice")));
            }
        }
        for _ in 0..CAS_ATTEMPTS {
            let mut txn = Txn::new();
            let mut revisions = Vec::new();
            for record in &records {
                let (key, value) = encode_owned(record, origin);
                let current = self.store.get(&key).await?;
                match &current {
                    Some(kv) if stored_origin(&kv.value) != origin => {
                        let object = object(record, 0, origin);
                        return Err(PolicyError::OwnedElsewhere {
                            object: object.map_or(key.clone(), |o| {
                                format!(
                                    "{} {}",
                                    o.kind.as_str(),
                                    display_name(&o.namespace, &o.name, o.kind)
                                )
                            }),
                            owner: owner_name(stored_origin(&kv.value)),
                        });
                    }
                    Some(kv) if kv.value == value => revisions.push(Some(kv.mod_revision)),
                    _ => {
                        let pinned = current.as_ref().map_or(0, |kv| kv.mod_revision);
                        txn = txn.if_mod_revision(&key, pinned).put(key, value);
                        revisions.push(None);
                    }
                }
            }
            let written = if revisions.iter().any(Option::is_none) {
                match self.store.txn(txn).await {
                    Ok(revision) => revision,
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(error) => return Err(error.into()),
                }
            } else {
                0
            };
            return Ok(records
                .iter()
                .zip(revisions)
                .filter_map(|(record, kept)| object(record, kept.unwrap_or(written), origin))
                .collect());
        }
        Err(PolicyError::Contended("manifest".into()))
    }

    /// Deletes an object (only one owned by `only_origin` when given); `NotFound` when there is
    /// none.
    pub async fn delete(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        only_origin: Option<Origin>,
    ) -> Result<(), PolicyError> {
        let key = object_key(kind, namespace, name);
        for _ in 0..CAS_ATTEMPTS {
            let Some(current) = self.store.get(&key).await? else {
                return Err(PolicyError::NotFound {
                    kind: kind.as_str(),
                    name: display_name(namespace, name, kind),
                });
            };
            if let Some(expected) = only_origin
                && stored_origin(&current.value) != expected
            {
                return Err(PolicyError::OwnedElsewhere {
                    object: format!("{} {}", kind.as_str(), display_name(namespace, name, kind)),
                    owner: owner_name(stored_origin(&current.value)),
                });
            }
            match self
                .store
                .txn(
                    Txn::new()
                        .if_mod_revision(&key, current.mod_revision)
                        .delete(&key),
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict { .. }) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(PolicyError::Contended(key))
    }

    /// One object.
    pub async fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Object, PolicyError> {
        let key = object_key(kind, namespace, name);
        let kv = self.store.get(&key).await?.ok_or_else(|| PolicyError::NotFound {
            kind: kind.as_str(),
            name: display_name(namespace, name, kind),
        })?;
        object(
            &decode(&kv.key, &kv.value)?,
            kv.mod_revision,
            stored_origin(&kv.value),
        )
        .ok_or_else(|| PolicyError::NotFound {
            kind: kind.as_str(),
            name: display_name(namespace, name, kind),
        })
    }

    /// Objects of `kind` (all kinds when `None`) in `namespace` (all when empty) owned by
    /// `only_origin` (all when `None`).
    pub async fn list(
        &self,
        kind: Option<Kind>,
        namespace: &str,
        only_origin: Option<Origin>,
    ) -> Result<Vec<Object>, PolicyError> {
        let listed = self.store.list(PREFIX).await?;
        let mut objects = Vec::new();
        for kv in listed.kvs {
            if matches!(
                subject(&kv.key),
                Some(Subject::Endpoint(_) | Subject::Pod(..)) | None
            ) {
                continue;
            }
            let owner = stored_origin(&kv.value);
            let Some(object) = object(&decode(&kv.key, &kv.value)?, kv.mod_revision, owner) else {
                continue;
            };
            if kind.is_none_or(|k| k == object.kind)
                && only_origin.is_none_or(|o| o == owner)
                && (namespace.is_empty() || object.namespace == namespace)
            {
                objects.push(object);
            }
        }
        objects.sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
        Ok(objects)
    }

    /// Stores an endpoint (created or replaced); returns it as stored and its revision. Labels
    /// the pod's owner set ([`Objects::set_endpoint_labels`]) stay: a re-registration by the
    /// node never replaces them.
    pub async fn register_endpoint(&self, endpoint: &Endpoint) -> Result<(Endpoint, u64), PolicyError> {
        validate_endpoint(endpoint)?;
        let key = endpoint_key(&endpoint.key);
        for _ in 0..CAS_ATTEMPTS {
            let stored = self.store.get(&key).await?;
            let mut endpoint = endpoint.clone();
            let mut mark = OwnerMark::default();
            let revision = match &stored {
                Some(kv) => {
                    mark = owner_mark(&kv.value);
                    if mark.labels_set_by_owner
                        && let Record::Endpoint(previous) = decode(&kv.key, &kv.value)?
                    {
                        endpoint.labels = previous.labels;
                    }
                    kv.mod_revision
                }
                None => 0,
            };
            let (key, value) = encode_endpoint(&endpoint, &mark);
            match self
                .store
                .txn(Txn::new().if_mod_revision(&key, revision).put(&key, value))
                .await
            {
                Ok(revision) => return Ok((endpoint, revision)),
                Err(StoreError::Conflict { .. }) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(PolicyError::Contended(key))
    }

    /// Checks that every address of `endpoint` is one IPAM holds for a pod of the endpoint's
    /// node (what a node registering its own pods may claim): another node's address, a node's
    /// tunnel address or an address IPAM never gave out is refused.
    pub async fn check_addresses_held(&self, endpoint: &Endpoint) -> Result<(), PolicyError> {
        let node = &endpoint.key.node;
        let pools: PoolSet = match self.store.get(ipam_keys::POOLS).await? {
            Some(kv) => ipam_decode(&kv.key, &kv.value).map_err(corrupt)?,
            None => PoolSet::default(),
        };
        for ip in &endpoint.ips {
            let holder = match pools.pools.iter().find(|p| p.cidr.contains(ip)) {
                Some(pool) => {
                    let cidr = ipnet::IpNet::new(*ip, pool.block_size)
                        .map_err(|e| invalid("endpoint.ips", e.to_string()))?
                        .trunc();
                    let key = ipam_keys::block(&cidr);
                    match self.store.get(&key).await? {
                        Some(kv) => {
                            let block: Block = ipam_decode(&key, &kv.value).map_err(corrupt)?;
                            block
                                .ordinal_of(*ip)
                                .and_then(|ordinal| block.allocations.get(&ordinal))
                                .cloned()
                        }
                        None => None,
                    }
                }
                None => None,
            };
            match holder {
                Some(allocation) if &allocation.node == node && !is_tunnel_handle(&allocation.handle_id) => {
                    self.check_same_pod(endpoint, *ip, &allocation.handle_id).await?;
                }
                Some(allocation) => {
                    return Err(PolicyError::Forbidden(format!(
                        "node {node} may not register {ip}: IPAM holds it for node {:?} under handle {:?}",
                        allocation.node, allocation.handle_id
                    )));
                }
                None => {
                    return Err(PolicyError::Forbidden(format!(
                        "node {node} may not register {ip}: IPAM has not assigned it to any pod"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Checks that the pod IPAM holds `ip` for (the handle's namespace, pod and container, where
    /// the node gave them when it allocated) is the endpoint's: an address of one of the node's
    /// pods is not registered under another pod's name.
    async fn check_same_pod(
        &self,
        endpoint: &Endpoint,
        ip: IpAddr,
        handle_id: &str,
    ) -> Result<(), PolicyError> {
        let key = ipam_keys::handle(handle_id);
        let Some(kv) = self.store.get(&key).await? else {
            return Ok(());
        };
        let handle: Handle = ipam_decode(&key, &kv.value).map_err(corrupt)?;
        let held = &handle.attributes;
        let differs = |field: &str, held: &str, claimed: &str| {
            (!held.is_empty() && held != claimed).then(|| {
            PolicyError::Forbidden(format!(
                "node {} may not register {ip} as {field} {claimed:?}: IPAM holds it for {field} {held:?} (handle {handle_id:?})",
                endpoint.key.node
            ))
        })
        };
        let mismatch = differs("container", &held.container_id, &endpoint.container_id)
            .or_else(|| differs("namespace", &held.namespace, &endpoint.namespace))
            .or_else(|| differs("pod", &held.pod, &endpoint.pod));
        mismatch.map_or(Ok(()), Err)
    }

    /// Removes an endpoint; removing one that is not there succeeds (DEL is idempotent).
    pub async fn delete_endpoint(&self, key: &EndpointKey) -> Result<(), PolicyError> {
        self.store.txn(Txn::new().delete(endpoint_key(key))).await?;
        Ok(())
    }

    /// Replaces the labels of every endpoint of a pod; `NotFound` when the pod has none.
    pub async fn set_endpoint_labels(
        &self,
        namespace: &str,
        pod: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<Endpoint>, PolicyError> {
        for key in labels.keys() {
            label_key("labels", key)?;
        }
        for _ in 0..CAS_ATTEMPTS {
            let listed = self.store.list(&endpoints_prefix(None)).await?;
            let mut txn = Txn::new();
            let mut updated = Vec::new();
            for kv in listed.kvs {
                let Record::Endpoint(mut endpoint) = decode(&kv.key, &kv.value)? else {
                    continue;
                };
                if endpoint.namespace != namespace || endpoint.pod != pod {
                    continue;
                }
                endpoint.labels = labels.clone();
                let (key, value) = encode_endpoint(
                    &endpoint,
                    &OwnerMark {
                        labels_set_by_owner: true,
                    },
                );
                txn = txn.if_mod_revision(&key, kv.mod_revision).put(key, value);
                updated.push(endpoint);
            }
            if updated.is_empty() {
                return Err(PolicyError::NotFound {
                    kind: "endpoint",
                    name: format!("{namespace}/{pod}"),
                });
            }
            match self.store.txn(txn).await {
                Ok(_) => return Ok(updated),
                Err(StoreError::Conflict { .. }) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(PolicyError::Contended(format!("{namespace}/{pod}")))
    }

    /// Endpoints of `node` (all when `None`), with their revisions.
    pub async fn list_endpoints(&self, node: Option<&str>) -> Result<Vec<(Endpoint, u64)>, PolicyError> {
        let listed = self.store.list(&endpoints_prefix(node)).await?;
        let mut endpoints = Vec::new();
        for kv in listed.kvs {
            if let Record::Endpoint(endpoint) = decode(&kv.key, &kv.value)? {
                endpoints.push((endpoint, kv.mod_revision));
            }
        }
        Ok(endpoints)
    }
}

fn owner_name(origin: Origin) -> &'static str {
    match origin {
        Origin::Apply => "brindle apply",
        Origin::Kubernetes => "Kubernetes (kube-sync)",
    }
}

fn display_name(namespace: &str, name: &str, kind: Kind) -> String {
    match kind {
        Kind::Namespace | Kind::GlobalNetworkPolicy => name.to_owned(),
        _ if namespace.is_empty() => format!("{}/{name}", kubernetes::DEFAULT_NAMESPACE),
        _ => format!("{namespace}/{name}"),
    }
}

fn corrupt(error: ipam_api::DecodeError) -> PolicyError {
    PolicyError::Corrupt {
        key: error.key,
        reason: error.reason,
    }
}

/// Checks an endpoint before it is stored: names that end up in the node's rule text hold only
/// letters, digits, `.`, `_` and `-` (no `+` wildcard, quote, `!`, space or line break).
pub fn validate_endpoint(endpoint: &Endpoint) -> Result<(), PolicyError> {
    validate::name("endpoint.node", &endpoint.key.node, true)?;
    let interface = &endpoint.key.interface;
    if !rule_text::is_interface_name(interface) {
        return Err(invalid(
            "endpoint.interface",
            format!("{interface:?} is not a workload interface name (1-15 letters, digits, '.', '_' or '-')"),
        ));
    }
    validate::name("endpoint.namespace", &endpoint.namespace, false)?;
    if !rule_text::plain(&endpoint.pod, 253, true) {
        return Err(invalid(
            "endpoint.pod",
            format!(
                "{:?} is not a pod name (1-253 letters, digits, '.', '_' or '-')",
                endpoint.pod
            ),
        ));
    }
    if !endpoint.container_id.is_empty() && !rule_text::plain(&endpoint.container_id, 253, true) {
        return Err(invalid(
            "endpoint.container_id",
            format!(
                "{:?} is not a container id (letters, digits, '.', '_' or '-')",
                endpoint.container_id
            ),
        ));
    }
    if endpoint.ips.is_empty() {
        return Err(invalid("endpoint.ips", "at least one address is required"));
    }
    if endpoint
        .ips
        .iter()
        .any(|ip| matches!(ip, IpAddr::V4(v4) if v4.is_unspecified()))
    {
        return Err(invalid("endpoint.ips", "0.0.0.0 is not a pod address"));
    }
    for key in endpoint.labels.keys() {
        label_key("endpoint.labels", key)?;
    }
    for (index, port) in endpoint.ports.iter().enumerate() {
        validate::port_name(&format!("endpoint.ports[{index}].name"), &port.name)?;
        if port.port == 0 {
            return Err(invalid(
                format!("endpoint.ports[{index}].port"),
                "must be 1-65535",
            ));
        }
    }
    Ok(())
}
