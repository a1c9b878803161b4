//! The agent's view of policy-svc's endpoint registry: every attachment is registered as a
//! workload endpoint (its node, interface, addresses, labels and named ports) so policy can
//! select it, and removed with it. Labels and named ports come from the CNI request.

use policy_api::model::{Endpoint, EndpointKey};

use super::attachments::Attachment;
use super::calls::CallError;

/// Namespace of a pod started without `K8S_POD_NAMESPACE` (e.g. by `ctr run --cni`).
pub const DEFAULT_NAMESPACE: &str = "default";

/// The endpoint calls of CNI operations.
#[async_trait::async_trait]
pub trait EndpointRegistry: Send + Sync {
    /// Creates or replaces an endpoint.
    async fn register(&self, endpoint: &Endpoint) -> Result<(), CallError>;
    /// Removes an endpoint (succeeds when it is not there).
    async fn remove(&self, key: &EndpointKey) -> Result<(), CallError>;
    /// Interfaces of every endpoint registered for `node`.
    async fn interfaces(&self, node: &str) -> Result<Vec<String>, CallError>;
}

/// The endpoint of an attachment on `node`.
pub fn endpoint(node: &str, attachment: &Attachment) -> Endpoint {
    Endpoint {
        key: EndpointKey {
            node: node.to_owned(),
            interface: attachment.host_ifname.clone(),
        },
        namespace: if attachment.namespace.is_empty() {
            DEFAULT_NAMESPACE.to_owned()
        } else {
            attachment.namespace.clone()
        },
        pod: if attachment.pod.is_empty() {
            attachment.key.container_id.clone()
        } else {
            attachment.pod.clone()
        },
        container_id: attachment.key.container_id.clone(),
        ips: attachment.addresses.iter().map(|a| a.addr()).collect(),
        labels: attachment.labels.clone(),
        ports: attachment.ports.clone(),
    }
}
