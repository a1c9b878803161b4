//! The network configuration as ADD and CHECK use it, parsed once when a request arrives: the
//! interface MTU, which address families to assign and from which pools, requested addresses,
//! the pod's labels and named ports, and the DNS settings the result carries. Every key is
//! honoured, accepted as one of Calico's that changes nothing here ([`ACCEPTED_CALICO_KEYS`]), or
//! refused; every error names the key.

use std::collections::BTreeMap;
use std::net::IpAddr;

use brindle_proto::CniError;
use brindle_proto::cni_codes::INVALID_CONFIG;
use policy_api::model::{NamedPort, Protocol};
use serde_json::Value;

use crate::core::ipam::{Families, PoolChoice};

/// Top-level keys brindle honours (`type`, `agentSocket`, `capabilities` and `prevResult` are
/// the shim's and the runtime's; `args` and `runtimeConfig` keys brindle does not know are
/// ignored, as the CNI conventions ask).
const HONOURED_KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "agentSocket",
    "capabilities",
    "prevResult",
    "mtu",
    "ipam",
    "dns",
    "args",
    "runtimeConfig",
    "nodename",
];
/// `ipam` keys brindle honours.
const HONOURED_IPAM_KEYS: &[&str] = &["type", "assign_ipv4", "assign_ipv6", "ipv4_pools", "ipv6_pools"];
/// `ipam.type`s that mean brindle's own IPAM (Calico's IPAM is what it implements).
const IPAM_TYPES: &[&str] = &["brindle", "brindle-ipam", "calico-ipam"];

/// Calico's keys that change nothing in brindle, with why: accepted, and logged once by the agent.
pub const ACCEPTED_CALICO_KEYS: &[(&str, &str)] = &[
    ("log_level", "the agent's --log-level decides"),
    ("log_file_path", "the agent logs to its standard error"),
    ("log_file_max_size", "the agent logs to its standard error"),
    ("log_file_max_age", "the agent logs to its standard error"),
    ("log_file_max_count", "the agent logs to its standard error"),
    (
        "datastore_type",
        "the agent reaches the datastore only through the services",
    ),
    (
        "etcd_endpoints",
        "the agent reaches the datastore only through the services",
    ),
    (
        "etcd_discovery_srv",
        "the agent reaches the datastore only through the services",
    ),
    (
        "etcd_key_file",
        "the agent reaches the datastore only through the services",
    ),
    (
        "etcd_cert_file",
        "the agent reaches the datastore only through the services",
    ),
    (
        "etcd_ca_cert_file",
        "the agent reaches the datastore only through the services",
    ),
    (
        "kubernetes",
        "pods are read from Kubernetes by kube-sync, not by the plugin",
    ),
    ("policy", "policy is always enforced by the node agent"),
    ("nodename_file", "the agent's --node-name decides"),
    ("nodename_file_optional", "the agent's --node-name decides"),
];

/// DNS settings handed back in the ADD result (the configuration's `dns`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    /// `dns.nameservers`.
    pub nameservers: Vec<String>,
    /// `dns.domain`.
    pub domain: String,
    /// `dns.search`.
    pub search: Vec<String>,
    /// `dns.options`.
    pub options: Vec<String>,
}

/// What ADD and CHECK take from the network configuration (and `CNI_ARGS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Interface MTU (`mtu`, 576–65535); `None`: detected by the agent.
    pub mtu: Option<u32>,
    /// Address families to assign (`ipam.assign_ipv4`, `ipam.assign_ipv6`).
    pub families: Families,
    /// Pools the addresses must come from (`ipam.ipv4_pools`, `ipam.ipv6_pools`: names or CIDRs).
    pub pools: PoolChoice,
    /// Calico keys present that change nothing here ([`ACCEPTED_CALICO_KEYS`]).
    pub ignored: Vec<&'static str>,
    /// Addresses asked for (`runtimeConfig.ips`, `args.cni.ips`, `CNI_ARGS` `IP=`).
    pub requested_ips: Vec<IpAddr>,
    /// Pod labels (`args.cni.labels`).
    pub labels: BTreeMap<String, String>,
    /// Named container ports (`args.brindle.ports`).
    pub ports: Vec<NamedPort>,
    /// DNS settings for the result (`dns`).
    pub dns: Option<Dns>,
    /// The node the configuration was written for (`nodename`): it must be the agent's.
    pub nodename: Option<String>,
}

fn invalid(message: impl Into<String>) -> CniError {
    CniError::new(INVALID_CONFIG, message)
}

impl NetworkConfig {
    /// Parses the configuration `config` (and the `CNI_ARGS` `args`).
    pub fn parse(config: &Value, args: &BTreeMap<String, String>) -> Result<Self, CniError> {
        let ignored = check_keys(config)?;
        let (labels, ports) = labels_and_ports(config).map_err(invalid)?;
        Ok(Self {
            mtu: mtu(config)?,
            families: families(config)?,
            pools: PoolChoice {
                ipv4: pools(config, "ipv4_pools")?,
                ipv6: pools(config, "ipv6_pools")?,
            },
            ignored,
            requested_ips: requested_ips(config, args)?,
            labels,
            ports,
            dns: config.get("dns").map(dns),
            nodename: nodename(config)?,
        })
    }

    /// Refuses a configuration written for another node than `node` (the agent's `--node-name`).
    pub fn check_node(&self, node: &str) -> Result<(), CniError> {
        match &self.nodename {
            Some(nodename) if nodename != node => Err(invalid(format!(
                "nodename {nodename:?} in the network configuration is not this node: its agent runs as --node-name {node:?}"
            ))),
            _ => Ok(()),
        }
    }
}

fn nodename(config: &Value) -> Result<Option<String>, CniError> {
    match config.get("nodename") {
        None => Ok(None),
        Some(Value::String(name)) if !name.is_empty() => Ok(Some(name.clone())),
        Some(other) => Err(invalid(format!("nodename must be a node's name, not {other}"))),
    }
}

/// Refuses keys brindle does not implement; returns the accepted Calico keys present.
fn check_keys(config: &Value) -> Result<Vec<&'static str>, CniError> {
    let Some(object) = config.as_object() else {
        return Err(invalid("the network configuration must be a JSON object"));
    };
    let mut ignored = Vec::new();
    for key in object.keys() {
        if HONOURED_KEYS.contains(&key.as_str()) {
            continue;
        }
        match ACCEPTED_CALICO_KEYS.iter().find(|(known, _)| known == key) {
            Some((known, _)) => ignored.push(*known),
            None => {
                return Err(invalid(format!(
                    "configuration key {key:?} is not implemented by brindle and would change what the network does; remove it (see README, configuration keys)"
                )));
            }
        }
    }
    ignored.sort_unstable();
    let Some(ipam) = object.get("ipam") else {
        return Ok(ignored);
    };
    let ipam = ipam
        .as_object()
        .ok_or_else(|| invalid("ipam must be an object"))?;
    if let Some(key) = ipam.keys().find(|k| !HONOURED_IPAM_KEYS.contains(&k.as_str())) {
        return Err(invalid(format!(
            "configuration key \"ipam.{key}\" is not implemented by brindle's IPAM; remove it (see README, configuration keys)"
        )));
    }
    if let Some(kind) = ipam.get("type")
        && !kind.as_str().is_some_and(|k| IPAM_TYPES.contains(&k))
    {
        return Err(invalid(format!(
            "ipam.type {kind} is not brindle's IPAM: brindle-cni allocates through its agent and delegates to no IPAM plugin (use one of {}, or leave it out)",
            IPAM_TYPES.join(", ")
        )));
    }
    Ok(ignored)
}

fn mtu(config: &Value) -> Result<Option<u32>, CniError> {
    config
        .get("mtu")
        .map(|value| {
            value
                .as_u64()
                .and_then(|m| u32::try_from(m).ok())
                .filter(|m| (576..=65535).contains(m))
                .ok_or_else(|| invalid(format!("mtu {value} is not between 576 and 65535")))
        })
        .transpose()
}

/// `ipam.<key>`: a list of pool names or CIDRs (Calico's `ipv4_pools` / `ipv6_pools`).
fn pools(config: &Value, key: &str) -> Result<Vec<String>, CniError> {
    let Some(list) = config.pointer(&format!("/ipam/{key}")) else {
        return Ok(Vec::new());
    };
    let expected = || {
        invalid(format!(
            "ipam.{key} must be a list of pool names or CIDRs, got {list}"
        ))
    };
    list.as_array()
        .ok_or_else(expected)?
        .iter()
        .map(|pool| {
            pool.as_str()
                .filter(|p| !p.trim().is_empty())
                .map(|p| p.trim().to_owned())
                .ok_or_else(expected)
        })
        .collect()
}

/// The families the configuration asks for: `ipam.assign_ipv4` (default true) and
/// `ipam.assign_ipv6` (default false), booleans or "true"/"false" as Calico writes them.
fn families(config: &Value) -> Result<Families, CniError> {
    let flag = |name: &str, default: bool| match config.pointer(&format!("/ipam/{name}")) {
        None => Ok(default),
        Some(Value::Bool(value)) => Ok(*value),
        Some(Value::String(text)) if text == "true" || text == "false" => Ok(text == "true"),
        Some(other) => Err(invalid(format!("ipam.{name} is {other}: expected true or false"))),
    };
    let families = Families {
        ipv4: flag("assign_ipv4", true)?,
        ipv6: flag("assign_ipv6", false)?,
    };
    if !families.ipv4 && !families.ipv6 {
        return Err(invalid(
            "ipam.assign_ipv4 and ipam.assign_ipv6 are both false: the pod would get no address",
        ));
    }
    Ok(families)
}

fn requested_ips(config: &Value, args: &BTreeMap<String, String>) -> Result<Vec<IpAddr>, CniError> {
    let mut texts: Vec<String> = Vec::new();
    for pointer in ["/runtimeConfig/ips", "/args/cni/ips"] {
        if let Some(list) = config.pointer(pointer).and_then(Value::as_array) {
            texts.extend(list.iter().filter_map(Value::as_str).map(str::to_owned));
        }
    }
    if let Some(ips) = args.get("IP") {
        texts.extend(ips.split(',').map(str::to_owned));
    }
    texts
        .iter()
        .map(|text| {
            let address = text.split('/').next().unwrap_or_default().trim();
            address
                .parse()
                .map_err(|_| invalid(format!("requested IP {text:?} is not an IP address")))
        })
        .collect()
}

/// Pod labels from `args.cni.labels` (`[{key, value}]`, the CNI convention) and named container
/// ports from `args.brindle.ports` (`[{name, protocol, port}]`); `Err` names what is malformed.
fn labels_and_ports(config: &Value) -> Result<(BTreeMap<String, String>, Vec<NamedPort>), String> {
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

fn dns(dns: &Value) -> Dns {
    let list = |key: &str| -> Vec<String> {
        dns.get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    Dns {
        nameservers: list("nameservers"),
        domain: dns
            .get("domain")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        search: list("search"),
        options: list("options"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_key_is_read_once_into_its_type() {
        let args: BTreeMap<String, String> = [("IP".to_owned(), "10.0.0.9".to_owned())].into();
        let config = NetworkConfig::parse(
            &json!({
                "mtu": 1450,
                "ipam": {"type": "calico-ipam", "assign_ipv6": "true",
                         "ipv4_pools": ["blue", "10.1.0.0/16"], "ipv6_pools": ["fd00::/64"]},
                "log_level": "info",
                "datastore_type": "kubernetes",
                "runtimeConfig": {"ips": ["10.0.0.8/24"]},
                "args": {"cni": {"labels": [{"key": "app", "value": "web"}]},
                         "brindle": {"ports": [{"name": "http", "port": 8080}]}},
                "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}
            }),
            &args,
        )
        .expect("valid");
        assert_eq!(config.mtu, Some(1450));
        assert_eq!(config.pools.ipv4, ["blue", "10.1.0.0/16"]);
        assert_eq!(config.pools.ipv6, ["fd00::/64"]);
        assert_eq!(config.ignored, ["datastore_type", "log_level"]);
        assert_eq!(
            config.families,
            Families {
                ipv4: true,
                ipv6: true
            }
        );
        assert_eq!(config.requested_ips.len(), 2);
        assert_eq!(config.labels["app"], "web");
        assert_eq!(config.ports[0].protocol, Protocol::Tcp);
        assert_eq!(config.dns.expect("dns").nameservers, ["10.96.0.10"]);
    }

    #[test]
    fn a_configuration_for_another_node_is_refused() {
        let config = NetworkConfig::parse(&json!({"nodename": "n1"}), &BTreeMap::new()).expect("valid");
        assert!(config.check_node("n1").is_ok());
        let error = config.check_node("n2").expect_err("another node");
        assert_eq!(error.code, INVALID_CONFIG);
        assert!(
            error.msg.contains("nodename \"n1\"") && error.msg.contains("\"n2\""),
            "{error}"
        );
        let error = NetworkConfig::parse(&json!({"nodename": 7}), &BTreeMap::new()).expect_err("a number");
        assert!(error.msg.contains("nodename"), "{error}");
    }

    #[test]
    fn errors_name_the_key() {
        for (config, key) in [
            (json!({"mtu": 100}), "mtu"),
            (json!({"ipam": {"assign_ipv4": 3}}), "ipam.assign_ipv4"),
            (json!({"ipam": {"assign_ipv4": false}}), "ipam.assign_ipv6"),
            (json!({"ipam": {"ipv4_pools": "blue"}}), "ipam.ipv4_pools"),
            (json!({"ipam": {"ipv6_pools": [""]}}), "ipam.ipv6_pools"),
            (json!({"ipam": {"subnet": "usePodCidr"}}), "ipam.subnet"),
            (json!({"ipam": {"type": "host-local"}}), "ipam.type"),
            (
                json!({"feature_control": {"floating_ips": true}}),
                "feature_control",
            ),
            (json!({"container_settings": {}}), "container_settings"),
            (json!({"runtimeConfig": {"ips": ["nope"]}}), "requested IP"),
            (
                json!({"args": {"cni": {"labels": [{"key": 1}]}}}),
                "args.cni.labels[0]",
            ),
            (
                json!({"args": {"brindle": {"ports": [{"name": "x"}]}}}),
                "args.brindle.ports[0]",
            ),
        ] {
            let error = NetworkConfig::parse(&config, &BTreeMap::new()).expect_err(key);
            assert_eq!(error.code, INVALID_CONFIG);
            assert!(error.msg.contains(key), "{key}: {error}");
        }
    }
}
