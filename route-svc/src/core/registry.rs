//! The node registry: an agent registers its node (addresses, subnets, labels, tunnel endpoints)
//! under a lease it renews, so the entry of a node that died expires on its own.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use brindle_datastore::{Store, StoreError, Txn};
use brindle_selector::labels;
use ipam_api::handles::TunnelKind;
use ipam_api::keys;
use ipam_api::model::{Handle, PoolSet};

use route_api::model::{Node, valid_node_name, vtep_mac};

use super::node_labels::decode_labels;

/// Registration lifetime without renewal, when the agent does not ask for one.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// Shortest and longest lifetimes accepted.
const TTL_RANGE: std::ops::RangeInclusive<u64> = 5..=3600;
/// Attempts of a compare-and-swap write before giving up.
const CAS_ATTEMPTS: usize = 8;

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
    /// The registration claims what another node holds (an address, a tunnel endpoint).
    #[error("{field}: {value} is already {holder}'s")]
    Taken {
        /// The field, e.g. `node.vtep_mac`.
        field: &'static str,
        /// The value claimed.
        value: String,
        /// Who holds it: `node "n2"`, `pool "pods"`.
        holder: String,
    },
    /// A node asked for what only IPAM or an administrator decides (a tunnel address IPAM did not
    /// give it, another node's MAC, labels when nobody gave the node any).
    #[error("node {node:?} may not register {field} {value}: {reason}")]
    Forbidden {
        /// The node.
        node: String,
        /// The field, e.g. `node.labels`.
        field: &'static str,
        /// The value asked for.
        value: String,
        /// Who decides it instead.
        reason: String,
    },
    /// The node is not registered (never, or its registration expired).
    #[error("node {0:?} is not registered (or its registration expired): register it again")]
    NotRegistered(String),
    /// The node's labels belong to another origin (Kubernetes or an administrator), which alone
    /// changes them.
    #[error("the labels of node {node:?} are owned by {owner}; change them there")]
    OwnedElsewhere {
        /// The node.
        node: String,
        /// Who owns them.
        owner: &'static str,
    },
    /// A conditional write found the record changed since its writer read it.
    #[error(
        "the labels of node {node:?} changed since they were read (revision {read}, now {now}); read them again"
    )]
    Changed {
        /// The node.
        node: String,
        /// The revision the writer read.
        read: u64,
        /// The revision now.
        now: u64,
    },
    /// Other writers kept changing the record; given up after retries.
    #[error("{0} kept changing under concurrent writers; try again")]
    Contended(String),
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

pub(super) fn invalid(field: &'static str, reason: impl Into<String>) -> RegistryError {
    RegistryError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Refuses a label key or value Kubernetes would not accept, naming `field` and the label.
pub(super) fn check_labels(
    field: &'static str,
    labels: &BTreeMap<String, String>,
) -> Result<(), RegistryError> {
    match labels
        .iter()
        .find(|(key, value)| !labels::is_label_key(key) || !labels::is_label_value(value))
    {
        Some((key, value)) => Err(invalid(
            field,
            format!(
                "{key}={value} is not a Kubernetes label ([prefix/]name=value, each ≤ 63 of [A-Za-z0-9-_.])"
            ),
        )),
        None => Ok(()),
    }
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
    if let Some(address) = node.addresses.iter().find(|a| !is_unicast(**a)) {
        return Err(invalid(
            "node.addresses",
            format!("{address} is not a unicast address a node can be reached at"),
        ));
    }
    if let Some((field, address)) = claimed_addresses(node)
        .into_iter()
        .find(|(field, address)| *field != "node.addresses" && !is_unicast(*address))
    {
        return Err(invalid(
            field,
            format!("tunnel address {address} is not a unicast address"),
        ));
    }
    check_labels("node.labels", &node.labels)?;
    if let Some(mac) = node.vtep_mac
        && (mac[0] & 1 == 1 || mac == [0; 6])
    {
        return Err(invalid(
            "node.vtep_mac",
            "a VTEP MAC must be a unicast, non-zero address",
        ));
    }
    Ok(())
}

/// Whether `address` can name a host: not unspecified, loopback, multicast, broadcast or
/// link-local.
fn is_unicast(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_link_local())
        }
        IpAddr::V6(v6) => {
            !(v6.is_unspecified() || v6.is_loopback() || v6.is_multicast() || v6.is_unicast_link_local())
        }
    }
}

/// Every address a registration claims, with the field naming it.
fn claimed_addresses(node: &Node) -> Vec<(&'static str, IpAddr)> {
    let mut claimed: Vec<(&'static str, IpAddr)> =
        node.addresses.iter().map(|a| ("node.addresses", *a)).collect();
    claimed.extend(node.vtep_ipv4.map(|ip| ("node.vtep_ipv4", IpAddr::V4(ip))));
    claimed.extend(node.vtep_ipv6.map(|ip| ("node.vtep_ipv6", IpAddr::V6(ip))));
    claimed.extend(
        node.ipip_tunnel_ipv4
            .map(|ip| ("node.ipip_tunnel_ipv4", IpAddr::V4(ip))),
    );
    claimed
}

fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Registers, renews and removes nodes.
#[derive(Clone)]
pub struct Registry {
    pub(super) store: Arc<dyn Store>,
}

impl Registry {
    /// A registry over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Checks what a registration claims against the cluster: no underlay address inside an IP
    /// pool, and no address or VTEP MAC that one of `others` (the registered nodes, as route-svc's
    /// fan-out last saw them: a guard against misconfiguration, not a lock — two nodes claiming
    /// one address at the same moment can both pass) holds. When
    /// the node registers itself (`by_the_node`, its agent's identity), also that each tunnel
    /// address is the one IPAM holds for the node's tunnel handle of that kind, that its VTEP MAC
    /// is the one derived from its name, and that it claims no labels unless some were given
    /// ([`Registry::set_labels`]; those then replace the registration's).
    pub async fn check_claims(
        &self,
        node: &Node,
        others: &[Node],
        by_the_node: bool,
    ) -> Result<(), RegistryError> {
        validate(node)?;
        let pools: PoolSet = self.read(keys::POOLS).await?.unwrap_or_default();
        for address in &node.addresses {
            if let Some(pool) = pools.pools.iter().find(|p| p.cidr.contains(address)) {
                return Err(RegistryError::Taken {
                    field: "node.addresses",
                    value: address.to_string(),
                    holder: format!("IP pool {:?} ({})", pool.name, pool.cidr),
                });
            }
        }
        for other in others.iter().filter(|o| o.name != node.name) {
            for (field, address) in claimed_addresses(node) {
                if claimed_addresses(other).iter().any(|(_, a)| *a == address) {
                    return Err(RegistryError::Taken {
                        field,
                        value: address.to_string(),
                        holder: format!("node {:?}", other.name),
                    });
                }
            }
            if node.vtep_mac.is_some() && other.vtep_mac == node.vtep_mac {
                return Err(RegistryError::Taken {
                    field: "node.vtep_mac",
                    value: node.vtep_mac.as_ref().map(mac_text).unwrap_or_default(),
                    holder: format!("node {:?}", other.name),
                });
            }
        }
        if !by_the_node {
            return Ok(());
        }
        let forbidden = |field, value: String, reason: String| RegistryError::Forbidden {
            node: node.name.clone(),
            field,
            value,
            reason,
        };
        if let Some(mac) = node.vtep_mac
            && mac != vtep_mac(&node.name)
        {
            return Err(forbidden(
                "node.vtep_mac",
                mac_text(&mac),
                format!(
                    "a node's VTEP MAC is derived from its name ({})",
                    mac_text(&vtep_mac(&node.name))
                ),
            ));
        }
        let tunnels = [
            (
                "node.vtep_ipv4",
                TunnelKind::VxlanV4,
                node.vtep_ipv4.map(IpAddr::V4),
            ),
            (
                "node.vtep_ipv6",
                TunnelKind::VxlanV6,
                node.vtep_ipv6.map(IpAddr::V6),
            ),
            (
                "node.ipip_tunnel_ipv4",
                TunnelKind::Ipip,
                node.ipip_tunnel_ipv4.map(IpAddr::V4),
            ),
        ];
        for (field, kind, address) in tunnels {
            let Some(address) = address else { continue };
            let handle_id = kind.handle(&node.name);
            let handle: Option<Handle> = self.read(&keys::handle(&handle_id)).await?;
            let held = handle
                .is_some_and(|h| h.attributes.node == node.name && h.ips.iter().any(|ip| ip.ip == address));
            if !held {
                return Err(forbidden(
                    field,
                    address.to_string(),
                    format!("IPAM does not hold it for the node's handle {handle_id:?}"),
                ));
            }
        }
        // Labels given by an administrator or Kubernetes replace the registration's in
        // [`Registry::register`], so an agent's stale `--node-labels` do not lock it out; a node
        // nobody labelled may not label itself.
        if self.labels(&node.name).await?.is_none()
            && let Some((key, value)) = node.labels.iter().next()
        {
            return Err(forbidden(
                "node.labels",
                format!("{key}={value}"),
                "a node's labels are set by administrators (SetNodeLabels)".to_owned(),
            ));
        }
        Ok(())
    }

    pub(super) async fn read<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, RegistryError> {
        match self.store.get(key).await? {
            None => Ok(None),
            Some(kv) => serde_json::from_slice(&kv.value)
                .map(Some)
                .map_err(|e| RegistryError::Corrupt {
                    name: key.to_owned(),
                    reason: e.to_string(),
                }),
        }
    }

    /// Registers (or re-registers) `node` for `ttl` (default [`DEFAULT_TTL`]); returns the stored
    /// registration and its lifetime. Labels an administrator set replace the registration's.
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
        // The administrator's labels as read are compared, so a SetNodeLabels meanwhile makes the
        // write retry with its labels instead of being overwritten.
        let labels_key = keys::node_labels(&node.name);
        let mut attempts = 0;
        loop {
            let labels = self.store.get(&labels_key).await?;
            let revision = labels.as_ref().map_or(0, |kv| kv.mod_revision);
            if let Some(kv) = labels {
                let given = decode_labels(&node.name, &kv.value)?;
                if attempts == 0 && !node.labels.is_empty() && node.labels != given.labels {
                    tracing::warn!(
                        node = node.name,
                        registered = ?node.labels,
                        given = ?given.labels,
                        origin = given.origin,
                        "the node's labels were given by its origin; the registration's are not used"
                    );
                }
                node.labels = given.labels;
            }
            let value = serde_json::to_vec(&node).unwrap_or_default();
            let txn = Txn::new()
                .if_mod_revision(&labels_key, revision)
                .put_with_lease(&key, value, lease);
            match self.store.txn(txn).await {
                Ok(_) => break,
                Err(StoreError::Conflict { .. }) if attempts < CAS_ATTEMPTS => attempts += 1,
                Err(error) => return Err(error.into()),
            }
        }
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

    pub(super) async fn get(&self, name: &str) -> Result<Node, RegistryError> {
        let kv = self
            .store
            .get(&keys::node(name))
            .await?
            .ok_or_else(|| RegistryError::NotRegistered(name.to_owned()))?;
        decode_node(name, &kv.value)
    }
}

pub(super) fn decode_node(name: &str, bytes: &[u8]) -> Result<Node, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| RegistryError::Corrupt {
        name: name.to_owned(),
        reason: e.to_string(),
    })
}
