//! Builders of the `k8s-openapi` objects tests put into the stand-in: metadata with labels,
//! Namespaces (with their immutable name label), Nodes, scheduled Pods and label selectors.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

/// `(key, value)` pairs as a label map.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Metadata of `namespace/name` (cluster objects: `None`) with `pairs` as labels.
pub fn meta(namespace: Option<&str>, name: &str, pairs: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        namespace: namespace.map(str::to_owned),
        name: Some(name.into()),
        labels: Some(labels(pairs)),
        ..ObjectMeta::default()
    }
}

/// A Namespace with `pairs` and the `kubernetes.io/metadata.name` label every Namespace carries.
pub fn namespace(name: &str, pairs: &[(&str, &str)]) -> Namespace {
    let mut pairs = pairs.to_vec();
    pairs.push(("kubernetes.io/metadata.name", name));
    Namespace {
        metadata: meta(None, name, &pairs),
        ..Namespace::default()
    }
}

/// A Node with `pairs` as labels.
pub fn node(name: &str, pairs: &[(&str, &str)]) -> Node {
    Node {
        metadata: meta(None, name, pairs),
        ..Node::default()
    }
}

/// A Pod scheduled on `node` with `pairs` as labels.
pub fn pod(namespace: &str, name: &str, node: &str, pairs: &[(&str, &str)]) -> Pod {
    Pod {
        metadata: meta(Some(namespace), name, pairs),
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

/// A selector matching `pairs`.
pub fn selector(pairs: &[(&str, &str)]) -> Option<LabelSelector> {
    Some(LabelSelector {
        match_labels: Some(labels(pairs)),
        ..LabelSelector::default()
    })
}
