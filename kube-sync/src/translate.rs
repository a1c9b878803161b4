//! Kubernetes objects as brindle's services take them: a Namespace or NetworkPolicy as the
//! manifest policy-svc applies (only the fields brindle reads), a Pod as policy-svc's `Pod`.
//! Pure functions, no I/O.

use std::collections::BTreeMap;

use brindle_proto::policy::v1 as pb;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;

/// Calico's IPAM annotations a pod's ADD reads (the Pod's own, else its Namespace's).
pub const IPAM_ANNOTATIONS: [&str; 3] = [
    "cni.projectcalico.org/ipv4pools",
    "cni.projectcalico.org/ipv6pools",
    "cni.projectcalico.org/ipAddrs",
];

/// A namespaced object's key (`namespace`, `name`); cluster objects have an empty namespace.
pub type ObjectKey = (String, String);

/// The key of an object.
pub fn key_of(metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectKey {
    (
        metadata.namespace.clone().unwrap_or_default(),
        metadata.name.clone().unwrap_or_default(),
    )
}

/// A Namespace as policy-svc's manifest: its name and labels.
pub fn namespace_manifest(namespace: &Namespace) -> String {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": namespace.metadata.name,
            "labels": namespace.metadata.labels.clone().unwrap_or_default(),
        },
    })
    .to_string()
}

/// A ServiceAccount as policy-svc's manifest: its namespace, name and labels (what policies see).
pub fn service_account_manifest(account: &ServiceAccount) -> String {
    json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": account.metadata.name,
            "namespace": account.metadata.namespace,
            "labels": account.metadata.labels.clone().unwrap_or_default(),
        },
    })
    .to_string()
}

/// A NetworkPolicy as policy-svc's manifest: its name, namespace and spec as written.
pub fn policy_manifest(policy: &NetworkPolicy) -> String {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": policy.metadata.name,
            "namespace": policy.metadata.namespace,
        },
        "spec": policy.spec,
    })
    .to_string()
}

/// The IPAM annotations of an object's metadata.
pub fn ipam_annotations(
    metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> BTreeMap<String, String> {
    metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(key, _)| IPAM_ANNOTATIONS.contains(&key.as_str()))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

/// A Pod as policy-svc's `Pod`; `None` for a host-network pod (it has no endpoint of its own).
/// `namespace_annotations` are its Namespace's IPAM annotations, used where the Pod has none
/// of the same name.
pub fn pod(pod: &Pod, namespace_annotations: &BTreeMap<String, String>) -> Option<pb::Pod> {
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return None;
    }
    let ports = spec
        .into_iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|port| {
            Some(pb::NamedPort {
                name: port.name.clone()?,
                protocol: port.protocol.clone().unwrap_or_else(|| "TCP".into()),
                port: u32::try_from(port.container_port).ok()?,
            })
        })
        .collect();
    let mut annotations = namespace_annotations.clone();
    annotations.extend(ipam_annotations(&pod.metadata));
    Some(pb::Pod {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        labels: pod
            .metadata
            .labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        ports,
        ipam_annotations: annotations.into_iter().collect(),
        revision: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn meta(namespace: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            uid: Some("u1".into()),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn a_pod_keeps_its_labels_named_ports_and_service_account_and_its_own_annotations_win() {
        let mut metadata = meta("shop", "web-1");
        metadata.labels = Some([("app".to_owned(), "web".to_owned())].into());
        metadata.annotations = Some(
            [
                (
                    "cni.projectcalico.org/ipv4pools".to_owned(),
                    "[\"pod-pool\"]".to_owned(),
                ),
                ("unrelated".to_owned(), "x".to_owned()),
            ]
            .into(),
        );
        let object = Pod {
            metadata,
            spec: Some(PodSpec {
                node_name: Some("node-1".into()),
                service_account_name: Some("web-sa".into()),
                containers: vec![Container {
                    name: "web".into(),
                    ports: Some(vec![
                        ContainerPort {
                            name: Some("http".into()),
                            container_port: 8080,
                            ..ContainerPort::default()
                        },
                        ContainerPort {
                            container_port: 9000,
                            ..ContainerPort::default()
                        },
                    ]),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            ..Pod::default()
        };
        let namespace_annotations = [
            (
                "cni.projectcalico.org/ipv4pools".to_owned(),
                "[\"ns-pool\"]".to_owned(),
            ),
            (
                "cni.projectcalico.org/ipv6pools".to_owned(),
                "[\"ns-v6\"]".to_owned(),
            ),
        ]
        .into();
        let pod = pod(&object, &namespace_annotations).expect("not host-network");
        assert_eq!(
            (pod.namespace.as_str(), pod.name.as_str(), pod.node.as_str()),
            ("shop", "web-1", "node-1")
        );
        assert_eq!(pod.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(pod.service_account, "web-sa");
        assert_eq!(pod.ports.len(), 1, "only named ports: {:?}", pod.ports);
        assert_eq!(
            (
                pod.ports[0].name.as_str(),
                pod.ports[0].protocol.as_str(),
                pod.ports[0].port
            ),
            ("http", "TCP", 8080)
        );
        assert_eq!(
            pod.ipam_annotations
                .get("cni.projectcalico.org/ipv4pools")
                .map(String::as_str),
            Some("[\"pod-pool\"]"),
            "the pod's annotation wins"
        );
        assert_eq!(
            pod.ipam_annotations
                .get("cni.projectcalico.org/ipv6pools")
                .map(String::as_str),
            Some("[\"ns-v6\"]"),
            "the namespace's fills in"
        );
        assert!(!pod.ipam_annotations.contains_key("unrelated"));
    }

    #[test]
    fn a_host_network_pod_is_not_mirrored() {
        let object = Pod {
            metadata: meta("kube-system", "proxy"),
            spec: Some(PodSpec {
                host_network: Some(true),
                ..PodSpec::default()
            }),
            ..Pod::default()
        };
        assert!(pod(&object, &BTreeMap::new()).is_none());
    }

    #[test]
    fn a_policy_manifest_keeps_only_what_brindle_reads() {
        let mut policy: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "managedFields": [{"manager": "kubectl"}]},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]},
        }))
        .expect("a NetworkPolicy");
        policy.metadata.resource_version = Some("42".into());
        let manifest: serde_json::Value = serde_json::from_str(&policy_manifest(&policy)).expect("json");
        assert_eq!(
            manifest,
            json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]},
            })
        );
    }
}
