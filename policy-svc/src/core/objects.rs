//! Reads and writes of the stored objects: apply (all documents of a manifest in one
//! transaction), delete, get, list (the endpoint calls are `endpoints`).
//! Read-modify-writes are compare-and-swap on the record's mod-revision, retried a bounded number
//! of times.

use std::collections::BTreeMap;
use std::sync::Arc;

use brindle_datastore::{MAX_TXN_OPS, Store, StoreError, Txn};
use serde::Serialize;

use super::error::{PolicyError, invalid};
use super::host_endpoints::HostEndpointDocument;
use super::kubernetes;
use super::policy_document::PolicyDocument;
use super::records::{
    PREFIX, Record, Subject, decode, encode_owned, host_endpoint_key, namespace_key, policy_key,
    service_account_key, staged_key, stored_origin, subject,
};
use super::resource::{ServiceAccountDocument, parse_documents};
use super::validate;
use policy_api::model::{Origin, PolicyId};

/// Attempts of a compare-and-swap write before giving up.
pub(super) const CAS_ATTEMPTS: usize = 8;

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
    /// A staged brindle (Calico) NetworkPolicy.
    StagedNetworkPolicy,
    /// A staged GlobalNetworkPolicy.
    StagedGlobalNetworkPolicy,
    /// A staged Kubernetes NetworkPolicy.
    StagedKubernetesNetworkPolicy,
    /// A host endpoint.
    HostEndpoint,
    /// A service account (its labels).
    ServiceAccount,
}

impl Kind {
    /// The API's name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Namespace => "Namespace",
            Self::NetworkPolicy => "NetworkPolicy",
            Self::GlobalNetworkPolicy => "GlobalNetworkPolicy",
            Self::KubernetesNetworkPolicy => "KubernetesNetworkPolicy",
            Self::StagedNetworkPolicy => "StagedNetworkPolicy",
            Self::StagedGlobalNetworkPolicy => "StagedGlobalNetworkPolicy",
            Self::StagedKubernetesNetworkPolicy => "StagedKubernetesNetworkPolicy",
            Self::HostEndpoint => "HostEndpoint",
            Self::ServiceAccount => "ServiceAccount",
        }
    }

    /// Parses a kind name (case-insensitive).
    pub fn parse(field: &str, text: &str) -> Result<Self, PolicyError> {
        match text.to_ascii_lowercase().as_str() {
            "namespace" => Ok(Self::Namespace),
            "networkpolicy" => Ok(Self::NetworkPolicy),
            "globalnetworkpolicy" => Ok(Self::GlobalNetworkPolicy),
            "kubernetesnetworkpolicy" => Ok(Self::KubernetesNetworkPolicy),
            "stagednetworkpolicy" => Ok(Self::StagedNetworkPolicy),
            "stagedglobalnetworkpolicy" => Ok(Self::StagedGlobalNetworkPolicy),
            "stagedkubernetesnetworkpolicy" => Ok(Self::StagedKubernetesNetworkPolicy),
            "hostendpoint" => Ok(Self::HostEndpoint),
            "serviceaccount" => Ok(Self::ServiceAccount),
            _ => Err(invalid(
                field,
                format!(
                    "{text:?}: expected Namespace, NetworkPolicy, GlobalNetworkPolicy, KubernetesNetworkPolicy, \
                     StagedNetworkPolicy, StagedGlobalNetworkPolicy, StagedKubernetesNetworkPolicy, HostEndpoint or ServiceAccount"
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
        Kind::StagedNetworkPolicy => staged_key(&PolicyId::Namespaced {
            namespace: namespace.into(),
            name: name.into(),
        }),
        Kind::StagedKubernetesNetworkPolicy => staged_key(&PolicyId::Kubernetes {
            namespace: namespace.into(),
            name: name.into(),
        }),
        Kind::StagedGlobalNetworkPolicy => staged_key(&PolicyId::Global { name: name.into() }),
        Kind::HostEndpoint => host_endpoint_key(name),
        Kind::ServiceAccount => service_account_key(namespace, name),
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
        Record::Staged(staged) => {
            let kind = Kind::parse("kind", staged.kind()).ok()?;
            let (namespace, name) = match &staged.policy.id {
                PolicyId::Global { name } => (String::new(), name.clone()),
                PolicyId::Namespaced { namespace, name } | PolicyId::Kubernetes { namespace, name } => {
                    (namespace.clone(), name.clone())
                }
            };
            Some(Object {
                kind,
                namespace,
                name,
                manifest: yaml(staged.manifest()),
                revision,
                origin,
            })
        }
        Record::HostEndpoint(host) => Some(Object {
            kind: Kind::HostEndpoint,
            namespace: String::new(),
            name: host.name.clone(),
            manifest: yaml(yaml_serde::to_string(&HostEndpointDocument::of(host))),
            revision,
            origin,
        }),
        Record::ServiceAccount(account) => Some(Object {
            kind: Kind::ServiceAccount,
            namespace: account.namespace.clone(),
            name: account.name.clone(),
            manifest: yaml(yaml_serde::to_string(&ServiceAccountDocument::of(account))),
            revision,
            origin,
        }),
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
            records.push(resource.into_record()?);
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
}

fn owner_name(origin: Origin) -> &'static str {
    match origin {
        Origin::Apply => "brindle apply",
        Origin::Kubernetes => "Kubernetes (kube-sync)",
    }
}

fn display_name(namespace: &str, name: &str, kind: Kind) -> String {
    match kind {
        Kind::Namespace
        | Kind::GlobalNetworkPolicy
        | Kind::StagedGlobalNetworkPolicy
        | Kind::HostEndpoint => name.to_owned(),
        _ if namespace.is_empty() => format!("{}/{name}", kubernetes::DEFAULT_NAMESPACE),
        _ => format!("{namespace}/{name}"),
    }
}
