//! The node registry: an agent registers its node (addresses, subnets, labels, tunnel endpoints)
//! under a lease it renews, so the entry of a node that died expires on its own.

use std::sync::Arc;
use std::time::Duration;

use brindle_datastore::{Store, StoreError, Txn};
use ipam_svc::core::keys;

use super::model::Node;

/// Registration lifetime without renewal, when the agent does not ask for one.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// Shortest and longest lifetimes accepted.
const TTL_RANGE: std::ops::RangeInclusive<u64> = 5..=3600;

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A field of the request is invalid.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field, e.g. `node.addresses`.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The node is not registered (never, or its registration expired).
    #[error("node {0:?} is not registered (or its registration expired): register it again")]
    NotRegistered(String),
    /// A stored registration does not decode.
    #[error("the registration of node {name:?} is corrupt: {reason}")]
    Corrupt {
        /// The node.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The datastore failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> RegistryError {
    RegistryError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Whether `name` is a DNS-1123 subdomain (what Kubernetes node names are).
fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Checks a registration request.
pub fn validate(node: &Node) -> Result<(), RegistryError> {
    if !valid_node_name(&node.name) {
        return Err(invalid(
            "node.name",
            format!(
                "{:?} is not a DNS-1123 subdomain (lowercase letters, digits, '-', '.')",
                node.name
            ),
        ));
    }
    if node.addresses.is_empty() {
        return Err(invalid(
            "node.addresses",
            "at least one underlay address is required",
        ));
    }
    if let Some(subnet) = node.ipv4_subnet
        && !node
            .addresses
            .iter()
            .any(|a| matches!(a, std::net::IpAddr::V4(v4) if subnet.contains(v4)))
    {
        return Err(invalid(
            "node.ipv4_subnet",
            format!("{subnet} contains none of the node's addresses"),
        ));
    }
    if let Some(subnet) = node.ipv6_subnet
        && !node
            .addresses
            .iter()
            .any(|a| matches!(a, std::net::IpAddr::V6(v6) if subnet.contains(v6)))
    {
        return Err(invalid(
            "node.ipv6_subnet",
            format!("{subnet} contains none of the node's addresses"),
        ));
    }
    if (node.vtep_ipv4.is_some() || node.vtep_ipv6.is_some()) && node.vtep_mac.is_none() {
        return Err(invalid("node.vtep_mac", "a VTEP address needs its MAC"));
    }
    Ok(())
}

/// Registers, renews and removes nodes.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
}

impl Registry {
    /// A registry over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Registers (or re-registers) `node` for `ttl` (default [`DEFAULT_TTL`]); returns the stored
    /// registration and its lifetime.
    pub async fn register(
        &self,
        mut node: Node,
        ttl: Option<Duration>,
    ) -> Result<(Node, Duration), RegistryError> {
        validate(&node)?;
        let ttl = ttl.unwrap_or(DEFAULT_TTL);
        if !TTL_RANGE.contains(&ttl.as_secs()) {
            return Err(invalid(
                "ttl_seconds",
                format!(
                    "{} s is outside {}..={} s",
                    ttl.as_secs(),
                    TTL_RANGE.start(),
                    TTL_RANGE.end()
                ),
            ));
        }
        let key = keys::node(&node.name);
        let previous = self
            .store
            .get(&key)
            .await?
            .and_then(|kv| serde_json::from_slice::<Node>(&kv.value).ok());
        let lease = self.store.grant_lease(ttl).await?;
        node.lease = lease;
        let value = serde_json::to_vec(&node).unwrap_or_default();
        self.store
            .txn(Txn::new().put_with_lease(&key, value, lease))
            .await?;
        // The key now lives on the new lease; the old one only held it.
        if let Some(previous) = previous
            && previous.lease != 0
            && previous.lease != lease
        {
            match self.store.revoke_lease(previous.lease).await {
                Ok(()) | Err(StoreError::LeaseNotFound(_)) => {}
                Err(error) => {
                    tracing::warn!(node = node.name, %error, "revoking the previous registration's lease")
                }
            }
        }
        Ok((node, ttl))
    }

    /// Keeps `name`'s registration alive; returns its lifetime.
    pub async fn renew(&self, name: &str) -> Result<Duration, RegistryError> {
        let node = self.get(name).await?;
        match self.store.keep_alive(node.lease).await {
            Ok(ttl) => Ok(ttl),
            Err(StoreError::LeaseNotFound(_)) => Err(RegistryError::NotRegistered(name.to_owned())),
            Err(error) => Err(error.into()),
        }
    }

    /// Removes `name`'s registration.
    pub async fn deregister(&self, name: &str) -> Result<(), RegistryError> {
        let node = self.get(name).await?;
        self.store.txn(Txn::new().delete(keys::node(name))).await?;
        match self.store.revoke_lease(node.lease).await {
            Ok(()) | Err(StoreError::LeaseNotFound(_)) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    async fn get(&self, name: &str) -> Result<Node, RegistryError> {
        let kv = self
            .store
            .get(&keys::node(name))
            .await?
            .ok_or_else(|| RegistryError::NotRegistered(name.to_owned()))?;
        serde_json::from_slice(&kv.value).map_err(|e| RegistryError::Corrupt {
            name: name.to_owned(),
            reason: e.to_string(),
        })
    }
}
