//! The labels a node is given — by an administrator, or by kube-sync from its Kubernetes Node —
//! stored apart from its registration (they outlive it) with the origin that owns them, copied
//! into the registration while it lives; and deleting a node (what kube-sync does when its
//! Kubernetes Node is deleted): its registration and its labels.

use std::collections::BTreeMap;

use brindle_datastore::{StoreError, Txn};
use ipam_api::keys;
use route_api::model::valid_node_name;

use super::registry::{Registry, RegistryError, check_labels, decode_node, invalid};

/// Attempts of a compare-and-swap write before giving up.
const CAS_ATTEMPTS: usize = 8;

/// The origin of labels kube-sync mirrors from Kubernetes Nodes.
pub const KUBERNETES: &str = "kubernetes";

/// A node's given labels and who owns them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeLabels {
    /// The labels.
    pub labels: BTreeMap<String, String>,
    /// `""` (an administrator) or [`KUBERNETES`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub origin: String,
}

/// A stored record: today's, or the plain label map written before origins existed.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Stored {
    Owned(NodeLabels),
    Plain(BTreeMap<String, String>),
}

/// Decodes the given labels of node `name`.
pub(super) fn decode_labels(name: &str, value: &[u8]) -> Result<NodeLabels, RegistryError> {
    let stored: Stored = serde_json::from_slice(value).map_err(|e| RegistryError::Corrupt {
        name: name.to_owned(),
        reason: format!("its labels: {e}"),
    })?;
    Ok(match stored {
        Stored::Owned(labels) => labels,
        Stored::Plain(labels) => NodeLabels {
            labels,
            origin: String::new(),
        },
    })
}

fn owner(origin: &str) -> &'static str {
    if origin == KUBERNETES {
        "Kubernetes (kube-sync)"
    } else {
        "an administrator"
    }
}

/// Checks an origin named in a request.
pub fn check_origin(origin: &str) -> Result<(), RegistryError> {
    match origin {
        "" | KUBERNETES => Ok(()),
        other => Err(invalid(
            "origin",
            format!("{other:?}: expected \"\" or \"kubernetes\""),
        )),
    }
}

impl Registry {
    /// The labels given to `name`, with their revision.
    async fn given(&self, name: &str) -> Result<Option<(NodeLabels, u64)>, RegistryError> {
        let Some(kv) = self.store.get(&keys::node_labels(name)).await? else {
            return Ok(None);
        };
        Ok(Some((decode_labels(name, &kv.value)?, kv.mod_revision)))
    }

    /// The labels given to `name`, if any.
    pub(super) async fn labels(&self, name: &str) -> Result<Option<BTreeMap<String, String>>, RegistryError> {
        Ok(self.given(name).await?.map(|(given, _)| given.labels))
    }

    /// Gives `name` its labels on behalf of `origin` (an administrator's empty labels remove
    /// them; kube-sync's are kept, empty, as its mark) and puts them into its registration when
    /// it is registered; labels another origin owns are not replaced; with `if_revision`, only
    /// if they are still at that revision (0: none given). Returns them.
    pub async fn set_labels(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        origin: &str,
        if_revision: Option<u64>,
    ) -> Result<BTreeMap<String, String>, RegistryError> {
        if !valid_node_name(name) {
            return Err(invalid("name", format!("{name:?} is not a DNS-1123 subdomain")));
        }
        check_origin(origin)?;
        check_labels("labels", &labels)?;
        let key = keys::node_labels(name);
        let given = NodeLabels {
            labels,
            origin: origin.to_owned(),
        };
        let mut written = false;
        for _ in 0..CAS_ATTEMPTS {
            let current = self.given(name).await?;
            if let Some((current, _)) = &current
                && current.origin != origin
            {
                return Err(RegistryError::OwnedElsewhere {
                    node: name.to_owned(),
                    owner: owner(&current.origin),
                });
            }
            let revision = current.as_ref().map_or(0, |(_, revision)| *revision);
            if let Some(read) = if_revision
                && read != revision
            {
                return Err(RegistryError::Changed {
                    node: name.to_owned(),
                    read,
                    now: revision,
                });
            }
            let txn = Txn::new().if_mod_revision(&key, revision);
            let txn = if given.labels.is_empty() && origin.is_empty() {
                txn.delete(&key)
            } else {
                txn.put(&key, serde_json::to_vec(&given).unwrap_or_default())
            };
            match self.store.txn(txn).await {
                Ok(_) => {
                    written = true;
                    break;
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        if !written {
            return Err(RegistryError::Contended(format!("the labels of node {name:?}")));
        }
        for _ in 0..CAS_ATTEMPTS {
            let Some(kv) = self.store.get(&keys::node(name)).await? else {
                break;
            };
            let mut node = decode_node(name, &kv.value)?;
            node.labels.clone_from(&given.labels);
            let value = serde_json::to_vec(&node).unwrap_or_default();
            let txn = Txn::new()
                .if_mod_revision(keys::node(name), kv.mod_revision)
                .put_with_lease(keys::node(name), value, node.lease);
            match self.store.txn(txn).await {
                Ok(_) | Err(StoreError::LeaseNotFound(_)) => break,
                Err(StoreError::Conflict { .. }) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Ok(given.labels)
    }

    /// Every node's given labels (only those of `origin` when given) and their revision, by name.
    pub async fn list_labels(
        &self,
        origin: Option<&str>,
    ) -> Result<BTreeMap<String, (NodeLabels, u64)>, RegistryError> {
        if let Some(origin) = origin {
            check_origin(origin)?;
        }
        let listed = self.store.list(&keys::node_labels("")).await?;
        let mut found = BTreeMap::new();
        for kv in listed.kvs {
            let name = kv.key.trim_start_matches(&keys::node_labels("")).to_owned();
            if let Some((given, revision)) = self.given(&name).await?
                && origin.is_none_or(|origin| given.origin == origin)
            {
                found.insert(name, (given, revision));
            }
        }
        Ok(found)
    }

    /// Deletes node `name`: its registration (its lease goes with it) and its given labels —
    /// with `origin`, only a node whose labels that origin owns (a node without given labels is
    /// then left alone). Deleting a node that is not there succeeds.
    pub async fn delete_node(&self, name: &str, origin: Option<&str>) -> Result<(), RegistryError> {
        if let Some(origin) = origin {
            check_origin(origin)?;
        }
        let given = self.given(name).await?;
        if given.is_none() && origin.is_some() {
            return Ok(());
        }
        if let Some((given, revision)) = given {
            if let Some(origin) = origin
                && given.origin != origin
            {
                return Err(RegistryError::OwnedElsewhere {
                    node: name.to_owned(),
                    owner: owner(&given.origin),
                });
            }
            let key = keys::node_labels(name);
            match self
                .store
                .txn(Txn::new().if_mod_revision(&key, revision).delete(&key))
                .await
            {
                Ok(_) => {}
                Err(StoreError::Conflict { .. }) => {
                    return Err(RegistryError::Contended(format!("the labels of node {name:?}")));
                }
                Err(error) => return Err(error.into()),
            }
        }
        match self.deregister(name).await {
            Ok(()) | Err(RegistryError::NotRegistered(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }
}
