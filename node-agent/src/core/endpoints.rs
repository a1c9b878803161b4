//! The agent's view of policy-svc's endpoint registry: every attachment is registered as a
//! workload endpoint (its node, interface, addresses, labels and named ports) so policy can
//! select it, and removed with it. Labels and named ports come from the CNI request.

use std::collections::BTreeMap;

use policy_api::model::{Endpoint, EndpointKey, NamedPort, Protocol};
use serde_json::Value;

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

/// Pod labels from the network configuration's `args.cni.labels` (`[{key, value}]`, the CNI
/// convention) and named container ports from `args.brindle.ports` (`[{name, protocol, port}]`);
/// `Err` names what is malformed.
pub fn labels_and_ports(config: &Value) -> Result<(BTreeMap<String, String>, Vec<NamedPort>), String> {
    let mut labels = BTreeMap::new();
    if let Some(list) = config.pointer("/args/cni/labels") {
        let list = list
            .as_array()
            .ok_or("args.cni.labels must be a list of {key, value}")?;
        for (index, item) in list.iter().enumerate() {
            let (Some(key), Some(value)) = (
                item.get("key").and_then(Value::as_str),
                item.get("value").and_then(Value::as_str),
            ) else {
                return Err(format!(
                    "args.cni.labels[{index}] must be {{\"key\": string, \"value\": string}}"
                ));
            };
            labels.insert(key.to_owned(), value.to_owned());
        }
    }
    let mut ports = Vec::new();
    if let Some(list) = config.pointer("/args/brindle/ports") {
        let list = list
            .as_array()
            .ok_or("args.brindle.ports must be a list of {name, protocol, port}")?;
        for (index, item) in list.iter().enumerate() {
            let name = item.get("name").and_then(Value::as_str);
            let protocol: Option<Protocol> = item
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP")
                .parse()
                .ok();
            let port = item
                .get("port")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0);
            match (name, protocol, port) {
                (Some(name), Some(protocol), Some(port)) => ports.push(NamedPort {
                    name: name.to_owned(),
                    protocol,
                    port,
                }),
                _ => {
                    return Err(format!(
                        "args.brindle.ports[{index}] must be {{\"name\": string, \"protocol\": \"TCP\"|\"UDP\"|\"SCTP\", \"port\": 1-65535}}"
                    ));
                }
            }
        }
    }
    Ok((labels, ports))
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
