//! HostEndpoint documents (`brindle.io/v1` or Calico's `projectcalico.org/v3`, the same fields):
//! a node's interface, or all of them (`interfaceName: "*"`), with labels global policies select
//! it by and the addresses rule selectors matching it stand for. Fields brindle does not
//! implement are refused by name.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::error::{PolicyError, invalid};
use super::validate;
use policy_api::host_endpoint::HostEndpoint;
use policy_api::rule_text::is_interface_name;

/// What every pod's host-side interface is named after.
const WORKLOAD_INTERFACE_PREFIX: &str = "brd";

/// `metadata` of a HostEndpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    #[serde(default)]
    name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

/// `spec` of a HostEndpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interface_name: Option<String>,
    #[serde(default, rename = "expectedIPs", skip_serializing_if = "Vec::is_empty")]
    expected_ips: Vec<String>,
    /// Calico's profiles: refused (brindle has no profiles).
    #[serde(default, skip_serializing)]
    profiles: Option<yaml_serde::Value>,
    /// Calico's named ports: refused.
    #[serde(default, skip_serializing)]
    ports: Option<yaml_serde::Value>,
}

/// A HostEndpoint as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostEndpointDocument {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: Spec,
}

impl HostEndpointDocument {
    /// Parses a HostEndpoint document; the error names the field.
    pub fn parse(value: yaml_serde::Value) -> Result<HostEndpoint, PolicyError> {
        let document: Self =
            yaml_serde::from_value(value).map_err(|e| invalid("HostEndpoint", e.to_string()))?;
        document.to_host_endpoint()
    }

    fn to_host_endpoint(&self) -> Result<HostEndpoint, PolicyError> {
        validate::name("metadata.name", &self.metadata.name, true)?;
        let spec = &self.spec;
        if spec.profiles.is_some() {
            return Err(invalid(
                "spec.profiles",
                "brindle has no profiles: select the host endpoint by its labels in a GlobalNetworkPolicy",
            ));
        }
        if spec.ports.is_some() {
            return Err(invalid(
                "spec.ports",
                "named ports of host endpoints are not supported: use port numbers in rules",
            ));
        }
        validate::name("spec.node", &spec.node, true)?;
        let interface = match spec.interface_name.as_deref() {
            Some("*") => None,
            Some(name) if name == "lo" || name.starts_with(WORKLOAD_INTERFACE_PREFIX) => {
                return Err(invalid(
                    "spec.interfaceName",
                    format!(
                        "{name:?}: loopback and pods' interfaces ({WORKLOAD_INTERFACE_PREFIX}…) are never a host endpoint's \
                         (pods' traffic to the node: the agent's --default-endpoint-to-host-action)"
                    ),
                ));
            }
            Some(name) if is_interface_name(name) => Some(name.to_owned()),
            Some(name) => {
                return Err(invalid(
                    "spec.interfaceName",
                    format!("{name:?} is not an interface name or \"*\""),
                ));
            }
            None => {
                return Err(invalid(
                    "spec.interfaceName",
                    "required: an interface name or \"*\" (brindle does not look the interface up by expectedIPs)",
                ));
            }
        };
        let expected_ips = spec
            .expected_ips
            .iter()
            .enumerate()
            .map(|(index, text)| {
                text.parse::<IpAddr>().map_err(|_| {
                    invalid(
                        format!("spec.expectedIPs[{index}]"),
                        format!("{text:?} is not an address"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HostEndpoint {
            name: self.metadata.name.clone(),
            node: spec.node.clone(),
            interface,
            expected_ips,
            labels: self.metadata.labels.clone(),
            annotations: self.metadata.annotations.clone(),
        })
    }

    /// The document of a host endpoint (what `get -o yaml` prints and `apply` takes back).
    pub fn of(host: &HostEndpoint) -> Self {
        Self {
            api_version: super::resource::API_VERSION.into(),
            kind: "HostEndpoint".into(),
            metadata: Metadata {
                name: host.name.clone(),
                labels: host.labels.clone(),
                annotations: host.annotations.clone(),
            },
            spec: Spec {
                node: host.node.clone(),
                interface_name: Some(host.interface.clone().unwrap_or_else(|| "*".into())),
                expected_ips: host.expected_ips.iter().map(ToString::to_string).collect(),
                profiles: None,
                ports: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HostEndpoint, PolicyError> {
        HostEndpointDocument::parse(yaml_serde::from_str(text).expect("YAML"))
    }

    #[test]
    fn calico_host_endpoints_parse_as_written() {
        let host = parse(
            "apiVersion: projectcalico.org/v3\nkind: HostEndpoint\n\
             metadata: {name: node1-eth0, labels: {role: k8s-worker}}\n\
             spec: {node: node1, interfaceName: eth0, expectedIPs: [192.168.0.1]}\n",
        )
        .expect("valid");
        assert_eq!(host.interface.as_deref(), Some("eth0"));
        assert_eq!(
            host.expected_ips,
            vec!["192.168.0.1".parse::<IpAddr>().expect("ip")]
        );
        let all = parse(
            "apiVersion: projectcalico.org/v3\nkind: HostEndpoint\nmetadata: {name: node1-all}\n\
             spec: {node: node1, interfaceName: '*'}\n",
        )
        .expect("valid");
        assert_eq!(all.interface, None);
        let written = yaml_serde::to_value(HostEndpointDocument::of(&host)).expect("document");
        assert_eq!(HostEndpointDocument::parse(written).expect("round trip"), host);
    }

    #[test]
    fn what_brindle_cannot_do_is_named() {
        let base =
            "apiVersion: projectcalico.org/v3\nkind: HostEndpoint\nmetadata: {name: h}\nspec: {node: n1";
        for (spec, field) in [
            (", interfaceName: eth0, profiles: [p]}", "spec.profiles"),
            (
                ", interfaceName: eth0, ports: [{name: http, port: 80, protocol: TCP}]}",
                "spec.ports",
            ),
            ("}", "spec.interfaceName"),
            (", interfaceName: 'eth0 -j ACCEPT'}", "spec.interfaceName"),
            (
                ", interfaceName: eth0, expectedIPs: [nope]}",
                "spec.expectedIPs[0]",
            ),
            (", interfaceName: eth0, bogus: 1}", "bogus"),
            (", interfaceName: lo}", "spec.interfaceName"),
            (", interfaceName: brd12ab}", "spec.interfaceName"),
        ] {
            let error = parse(&format!("{base}{spec}\n")).expect_err(field).to_string();
            assert!(error.contains(field), "{field}: {error}");
        }
    }
}
