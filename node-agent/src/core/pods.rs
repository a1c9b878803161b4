//! The Kubernetes pods kube-sync mirrors, as the agent reads them at ADD: while Kubernetes sync
//! is on, a pod's labels, named ports, requested addresses and pools come from its Pod object
//! (never from CNI args; Calico's IPAM annotations, the Pod's or its Namespace's), and an ADD for
//! a pod not known yet waits for it, bounded, then fails with CNI error 11 so the runtime
//! retries.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use brindle_proto::CniError;
use brindle_proto::cni_codes::{INVALID_CONFIG, TRY_AGAIN_LATER};
use policy_api::model::{NamedPort, Pod};

use super::calls::CallError;
use super::ipam::PoolChoice;

/// Calico's annotation asking for specific addresses (a JSON list).
pub const IP_ADDRS_ANNOTATION: &str = "cni.projectcalico.org/ipAddrs";
/// Calico's annotation choosing IPv4 pools (a JSON list of names or CIDRs).
pub const IPV4_POOLS_ANNOTATION: &str = "cni.projectcalico.org/ipv4pools";
/// Calico's annotation choosing IPv6 pools (a JSON list of names or CIDRs).
pub const IPV6_POOLS_ANNOTATION: &str = "cni.projectcalico.org/ipv6pools";

/// Where mirrored pods are read.
#[async_trait::async_trait]
pub trait PodDirectory: Send + Sync {
    /// The pod `namespace/name` (with `uid` unless empty), waiting up to `wait` for it to be
    /// known; `None` when it was not.
    async fn pod(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        wait: Duration,
    ) -> Result<Option<Pod>, CallError>;
}

/// What an ADD takes from the pod's Pod object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMetadata {
    /// The endpoint's labels (the pod's, and its service account's).
    pub labels: BTreeMap<String, String>,
    /// Named container ports.
    pub ports: Vec<NamedPort>,
    /// Addresses the pod asks for (`cni.projectcalico.org/ipAddrs`); empty: any.
    pub requested_ips: Vec<IpAddr>,
    /// Pools its addresses must come from (`…/ipv4pools`, `…/ipv6pools`); empty: any.
    pub pools: PoolChoice,
}

/// The mirrored pods and how long an ADD waits for its pod.
#[derive(Clone)]
pub struct KubernetesPods {
    directory: Arc<dyn PodDirectory>,
    wait: Duration,
}

impl KubernetesPods {
    /// Pods read from `directory`, an ADD waiting up to `wait` for its pod.
    pub fn new(directory: Arc<dyn PodDirectory>, wait: Duration) -> Self {
        Self { directory, wait }
    }

    /// What the pod `namespace/name` (`uid` from `K8S_POD_UID`, may be empty) gives its ADD.
    pub async fn metadata(&self, namespace: &str, name: &str, uid: &str) -> Result<PodMetadata, CniError> {
        let pod = self.directory.pod(namespace, name, uid, self.wait).await?;
        let Some(pod) = pod else {
            let which = if uid.is_empty() {
                String::new()
            } else {
                format!(" (uid {uid})")
            };
            return Err(CniError::new(
                TRY_AGAIN_LATER,
                format!(
                    "pod {namespace}/{name}{which} is not known from Kubernetes after waiting {} s",
                    self.wait.as_secs_f32()
                ),
            )
            .with_details("kube-sync has not mirrored the Pod object yet; the runtime retries the ADD"));
        };
        metadata(&pod)
    }
}

/// What `pod` gives an ADD; an annotation brindle cannot honour is an error naming it.
pub fn metadata(pod: &Pod) -> Result<PodMetadata, CniError> {
    let bad = |annotation: &str, why: String| {
        CniError::new(
            INVALID_CONFIG,
            format!(
                "annotation {annotation} of pod {}/{}: {why}",
                pod.namespace, pod.name
            ),
        )
    };
    let pools = |annotation: &str| -> Result<Vec<String>, CniError> {
        let Some(text) = pod.ipam_annotations.get(annotation) else {
            return Ok(Vec::new());
        };
        let listed: Vec<String> = serde_json::from_str(text).map_err(|e| {
            bad(
                annotation,
                format!("{text:?} is not a JSON list of pool names or CIDRs: {e}"),
            )
        })?;
        if listed.is_empty() || listed.iter().any(String::is_empty) {
            return Err(bad(
                annotation,
                format!("{text:?}: name at least one pool, by name or CIDR"),
            ));
        }
        Ok(listed)
    };
    let pools = PoolChoice {
        ipv4: pools(IPV4_POOLS_ANNOTATION)?,
        ipv6: pools(IPV6_POOLS_ANNOTATION)?,
    };
    let requested_ips = match pod.ipam_annotations.get(IP_ADDRS_ANNOTATION) {
        None => Vec::new(),
        Some(text) => {
            let listed: Vec<String> = serde_json::from_str(text).map_err(|e| {
                bad(
                    IP_ADDRS_ANNOTATION,
                    format!("{text:?} is not a JSON list of addresses: {e}"),
                )
            })?;
            let ips = listed
                .iter()
                .map(|ip| {
                    ip.parse::<IpAddr>()
                        .map_err(|_| bad(IP_ADDRS_ANNOTATION, format!("{ip:?} is not an address")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if ips.is_empty()
                || ips.iter().filter(|ip| ip.is_ipv4()).count() > 1
                || ips.iter().filter(|ip| ip.is_ipv6()).count() > 1
            {
                return Err(bad(
                    IP_ADDRS_ANNOTATION,
                    format!("{text:?}: at most one address per family, at least one"),
                ));
            }
            ips
        }
    };
    Ok(PodMetadata {
        labels: pod.endpoint_labels(),
        ports: pod.ports.clone(),
        requested_ips,
        pools,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotations: &[(&str, &str)]) -> Pod {
        Pod {
            namespace: "shop".into(),
            name: "web-1".into(),
            uid: "u1".into(),
            node: "node-1".into(),
            labels: [("app".to_owned(), "web".to_owned())].into(),
            service_account: "web".into(),
            ports: Vec::new(),
            ipam_annotations: annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn the_pods_labels_and_requested_addresses_are_taken_and_bad_annotations_are_named() {
        let taken = metadata(&pod(&[(IP_ADDRS_ANNOTATION, "[\"10.0.0.7\"]")])).expect("valid");
        assert_eq!(taken.labels["app"], "web");
        assert_eq!(taken.labels["projectcalico.org/serviceaccount"], "web");
        assert_eq!(taken.requested_ips, ["10.0.0.7".parse::<IpAddr>().expect("ip")]);
        for (annotation, value) in [
            (IP_ADDRS_ANNOTATION, "10.0.0.7"),
            (IP_ADDRS_ANNOTATION, "[\"ten\"]"),
            (IP_ADDRS_ANNOTATION, "[\"10.0.0.7\", \"10.0.0.8\"]"),
            (IPV4_POOLS_ANNOTATION, "pool-a"),
            (IPV6_POOLS_ANNOTATION, "[]"),
        ] {
            let error = metadata(&pod(&[(annotation, value)])).expect_err(value);
            assert_eq!(error.code, INVALID_CONFIG, "{error:?}");
            assert!(
                error.msg.contains(annotation) && error.msg.contains("shop/web-1"),
                "{error:?}"
            );
        }
    }
}
