//! Kubernetes pods as kube-sync mirrors them: stored in batches (one transaction each, unchanged
//! pods left as they are), deleted, listed. Their endpoints take their labels in the calculation.

use brindle_datastore::{MAX_TXN_OPS, StoreError, Txn};

use super::error::{PolicyError, invalid};
use super::kubernetes::label_key;
use super::objects::Objects;
use super::records::{Record, decode, encode, pod_key, pods_prefix};
use super::validate;
use policy_api::model::Pod;
use policy_api::rule_text;

/// Calico's IPAM annotations, the only ones a mirrored pod carries.
pub const IPAM_ANNOTATIONS: [&str; 3] = [
    "cni.projectcalico.org/ipv4pools",
    "cni.projectcalico.org/ipv6pools",
    "cni.projectcalico.org/ipAddrs",
];

/// Attempts of a compare-and-swap write before giving up.
const CAS_ATTEMPTS: usize = 8;

/// Checks a pod before it is stored; `field` names it in errors.
pub fn validate_pod(field: &str, pod: &Pod) -> Result<(), PolicyError> {
    validate::name(&format!("{field}.namespace"), &pod.namespace, false)?;
    if !rule_text::plain(&pod.name, 253, true) {
        return Err(invalid(
            format!("{field}.name"),
            format!(
                "{:?} is not a pod name (1-253 letters, digits, '.', '_' or '-')",
                pod.name
            ),
        ));
    }
    if pod.uid.is_empty() {
        return Err(invalid(format!("{field}.uid"), "required"));
    }
    if !pod.node.is_empty() {
        validate::name(&format!("{field}.node"), &pod.node, true)?;
    }
    for key in pod.labels.keys() {
        label_key(&format!("{field}.labels"), key)?;
    }
    for (index, port) in pod.ports.iter().enumerate() {
        validate::port_name(&format!("{field}.ports[{index}].name"), &port.name)?;
    }
    if let Some(key) = pod
        .ipam_annotations
        .keys()
        .find(|key| !IPAM_ANNOTATIONS.contains(&key.as_str()))
    {
        return Err(invalid(
            format!("{field}.ipam_annotations"),
            format!("{key:?} is not one of {}", IPAM_ANNOTATIONS.join(", ")),
        ));
    }
    Ok(())
}

impl Objects {
    /// Stores `pods` (created or replaced) in one transaction; pods stored exactly so already are
    /// left as they are. Returns the revision of the write (0 when nothing changed).
    pub async fn apply_pods(&self, pods: &[Pod]) -> Result<u64, PolicyError> {
        if pods.len() > MAX_TXN_OPS {
            return Err(invalid(
                "pods",
                format!("{} pods; at most {MAX_TXN_OPS} are applied together", pods.len()),
            ));
        }
        let mut keys = std::collections::BTreeSet::new();
        for (index, pod) in pods.iter().enumerate() {
            validate_pod(&format!("pods[{index}]"), pod)?;
            if !keys.insert(pod_key(&pod.namespace, &pod.name)) {
                return Err(invalid(
                    format!("pods[{index}]"),
                    format!("names the pod {}/{} twice", pod.namespace, pod.name),
                ));
            }
        }
        for _ in 0..CAS_ATTEMPTS {
            let mut txn = Txn::new();
            let mut changed = false;
            for pod in pods {
                let (key, value) = encode(&Record::Pod(pod.clone()));
                let current = self.store().get(&key).await?;
                if current.as_ref().is_some_and(|kv| kv.value == value) {
                    continue;
                }
                let pinned = current.map_or(0, |kv| kv.mod_revision);
                txn = txn.if_mod_revision(&key, pinned).put(key, value);
                changed = true;
            }
            if !changed {
                return Ok(0);
            }
            match self.store().txn(txn).await {
                Ok(revision) => return Ok(revision),
                Err(StoreError::Conflict { .. }) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(PolicyError::Contended("pods".into()))
    }

    /// Removes pods (namespace, name); removing one that is not there succeeds.
    pub async fn delete_pods(&self, pods: &[(String, String)]) -> Result<(), PolicyError> {
        if pods.len() > MAX_TXN_OPS {
            return Err(invalid(
                "pods",
                format!("{} pods; at most {MAX_TXN_OPS} are deleted together", pods.len()),
            ));
        }
        let txn = pods.iter().fold(Txn::new(), |txn, (namespace, name)| {
            txn.delete(pod_key(namespace, name))
        });
        self.store().txn(txn).await?;
        Ok(())
    }

    /// Every mirrored pod, with its revision.
    pub async fn list_pods(&self) -> Result<Vec<(Pod, u64)>, PolicyError> {
        let listed = self.store().list(pods_prefix()).await?;
        let mut pods = Vec::new();
        for kv in listed.kvs {
            if let Record::Pod(pod) = decode(&kv.key, &kv.value)? {
                pods.push((pod, kv.mod_revision));
            }
        }
        Ok(pods)
    }
}
