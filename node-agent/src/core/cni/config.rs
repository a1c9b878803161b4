//! The network configuration as ADD and CHECK use it, parsed once when a request arrives: the
//! interface MTU, which address families to assign, requested addresses, the pod's labels and
//! named ports, and the DNS settings the result carries. Every error names the key.

use std::collections::BTreeMap;
use std::net::IpAddr;

use brindle_proto::CniError;
use brindle_proto::cni_codes::INVALID_CONFIG;
use policy_api::model::{NamedPort, Protocol};
use serde_json::Value;

use crate::core::ipam::Families;

/// The MTU of a pod's veth when the configuration sets none.
pub const DEFAULT_MTU: u32 = 1500;

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
    /// Interface MTU (`mtu`, 576–65535).
    pub mtu: u32,
    /// Address families to assign (`ipam.assign_ipv4`, `ipam.assign_ipv6`).
    pub families: Families,
    /// Addresses asked for (`runtimeConfig.ips`, `args.cni.ips`, `CNI_ARGS` `IP=`).
    pub requested_ips: Vec<IpAddr>,
    /// Pod labels (`args.cni.labels`).
    pub labels: BTreeMap<String, String>,
    /// Named container ports (`args.brindle.ports`).
    pub ports: Vec<NamedPort>,
    /// DNS settings for the result (`dns`).
    pub dns: Option<Dns>,
}

fn invalid(message: impl Into<String>) -> CniError {
    CniError::new(INVALID_CONFIG, message)
}

impl NetworkConfig {
    /// Parses the configuration `config` (and the `CNI_ARGS` `args`).
    pub fn parse(config: &Value, args: &BTreeMap<String, String>) -> Result<Self, CniError> {
        let (labels, ports) = labels_and_ports(config).map_err(invalid)?;
        Ok(Self {
            mtu: mtu(config)?,
            families: families(config)?,
            requested_ips: requested_ips(config, args)?,
            labels,
            ports,
            dns: config.get("dns").map(dns),
        })
    }
}

fn mtu(config: &Value) -> Result<u32, CniError> {
    match config.get("mtu") {
        None => Ok(DEFAULT_MTU),
        Some(value) => value
            .as_u64()
            .and_then(|m| u32::try_from(m).ok())
            .filter(|m| (576..=65535).contains(m))
            .ok_or_else(|| invalid(format!("mtu {value} is not between 576 and 65535"))),
    }
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
                "ipam": {"assign_ipv6": "true"},
                "runtimeConfig": {"ips": ["10.0.0.8/24"]},
                "args": {"cni": {"labels": [{"key": "app", "value": "web"}]},
                         "brindle": {"ports": [{"name": "http", "port": 8080}]}},
                "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}
            }),
            &args,
        )
        .expect("valid");
        assert_eq!(config.mtu, 1450);
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
    fn errors_name_the_key() {
        for (config, key) in [
            (json!({"mtu": 100}), "mtu"),
            (json!({"ipam": {"assign_ipv4": 3}}), "ipam.assign_ipv4"),
            (json!({"ipam": {"assign_ipv4": false}}), "ipam.assign_ipv6"),
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
