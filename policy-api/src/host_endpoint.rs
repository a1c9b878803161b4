//! Host endpoints: a node's own interfaces whose traffic to and from the node itself policies
//! govern (Calico's HostEndpoint), and how the calculation evaluates one — as an endpoint without
//! a namespace, keyed by its name, whose addresses are its expected IPs.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::model::{Endpoint, EndpointKey};

/// What a host endpoint's [`EndpointKey::interface`] starts with (no interface name has a `/`).
pub const HOST_ENDPOINT_KEY_PREFIX: &str = "hep/";

/// One of a node's interfaces, or all of them, as policies see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostEndpoint {
    /// Its name (cluster-wide).
    pub name: String,
    /// The node.
    pub node: String,
    /// The interface; `None`: every interface of the node (`interfaceName: "*"`).
    pub interface: Option<String>,
    /// The addresses traffic to and from it has: what rule selectors matching its labels match.
    pub expected_ips: Vec<IpAddr>,
    /// Labels policies select it by.
    pub labels: BTreeMap<String, String>,
    /// Annotations, kept as written (never matched).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl HostEndpoint {
    /// The key the calculation knows it by.
    pub fn endpoint_key(&self) -> EndpointKey {
        EndpointKey {
            node: self.node.clone(),
            interface: format!("{HOST_ENDPOINT_KEY_PREFIX}{}", self.name),
        }
    }

    /// The endpoint the calculation evaluates it as: no namespace (so only global policies
    /// select it), its name as the pod, its expected IPs as addresses.
    pub fn as_endpoint(&self) -> Endpoint {
        Endpoint {
            key: self.endpoint_key(),
            namespace: String::new(),
            pod: self.name.clone(),
            container_id: String::new(),
            ips: self.expected_ips.clone(),
            labels: self.labels.clone(),
            ports: Vec::new(),
        }
    }
}

/// How traces, views and flows name an endpoint: `namespace/pod`, or `hostendpoint/<name>`.
pub fn endpoint_name(endpoint: &Endpoint) -> String {
    match host_endpoint_name(&endpoint.key) {
        Some(name) => format!("hostendpoint/{name}"),
        None => format!("{}/{}", endpoint.namespace, endpoint.pod),
    }
}

/// The host endpoint's name, when `key` stands for one.
pub fn host_endpoint_name(key: &EndpointKey) -> Option<&str> {
    key.interface.strip_prefix(HOST_ENDPOINT_KEY_PREFIX)
}
