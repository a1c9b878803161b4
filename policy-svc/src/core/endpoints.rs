//! The endpoint calls node agents and orchestrators make on the stored objects: register (with
//! the addresses checked against IPAM), delete, relabel and list workload endpoints, and the
//! checks an endpoint passes before it is stored.

use std::collections::BTreeMap;
use std::net::IpAddr;

use brindle_datastore::{StoreError, Txn};

use super::error::{PolicyError, invalid};
use super::kubernetes::label_key;
use super::objects::{CAS_ATTEMPTS, Objects};
use super::records::{
    OwnerMark, Record, decode, encode_endpoint, endpoint_key, endpoints_prefix, owner_mark,
};
use super::validate;
use ipam_api::handles::is_tunnel_handle;
use ipam_api::keys as ipam_keys;
use ipam_api::model::{Block, Handle, PoolSet, decode as ipam_decode};
use policy_api::model::{Endpoint, EndpointKey};
use policy_api::rule_text;

impl Objects {
    /// Stores an endpoint (created or replaced); returns it as stored and its revision. Labels
    /// the pod's owner set ([`Objects::set_endpoint_labels`]) stay: a re-registration by the
    /// node never replaces them.
    pub async fn register_endpoint(&self, endpoint: &Endpoint) -> Result<(Endpoint, u64), PolicyError> {
        validate_endpoint(endpoint)?;
        let key = endpoint_key(&endpoint.key);
        for _ in 0..CAS_ATTEMPTS {
            let stored = self.store().get(&key).await?;
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
                .store()
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
        let pools: PoolSet = match self.store().get(ipam_keys::POOLS).await? {
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
                    match self.store().get(&key).await? {
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
        let Some(kv) = self.store().get(&key).await? else {
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
        self.store().txn(Txn::new().delete(endpoint_key(key))).await?;
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
            let listed = self.store().list(&endpoints_prefix(None)).await?;
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
            match self.store().txn(txn).await {
                Ok(_) => return Ok(updated),
                Err(StoreError::Conflict { .. }) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(PolicyError::Contended(format!("{namespace}/{pod}")))
    }

    /// Endpoints of `node` (all when `None`), with their revisions.
    pub async fn list_endpoints(&self, node: Option<&str>) -> Result<Vec<(Endpoint, u64)>, PolicyError> {
        let listed = self.store().list(&endpoints_prefix(node)).await?;
        let mut endpoints = Vec::new();
        for kv in listed.kvs {
            if let Record::Endpoint(endpoint) = decode(&kv.key, &kv.value)? {
                endpoints.push((endpoint, kv.mod_revision));
            }
        }
        Ok(endpoints)
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
