//! Kubernetes `networking.k8s.io/v1` NetworkPolicy: the manifest as Kubernetes defines it
//! (YAML or JSON), its validation with Kubernetes' field paths, and its exact translation into
//! a brindle [`Policy`] of Allow rules (one per peer and protocol).

use std::collections::BTreeMap;

use brindle_selector::{Selector, labels};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::error::{PolicyError, invalid};
use super::validate;
use policy_api::model::{
    Action, EntityRule, KUBERNETES_POLICY_ORDER, Policy, PolicyId, PortMatch, Protocol, Rule,
};

/// A NetworkPolicy object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicy {
    /// Must be `networking.k8s.io/v1`.
    pub api_version: String,
    /// Must be `NetworkPolicy`.
    pub kind: String,
    /// Name and namespace.
    pub metadata: ObjectMeta,
    /// The policy.
    pub spec: Spec,
}

/// The metadata brindle uses (other fields are accepted and ignored).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Namespace (`default` when omitted, as kubectl does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// `spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    /// Pods the policy applies to (empty: every pod of the namespace).
    pub pod_selector: LabelSelector,
    /// `Ingress`, `Egress`; omitted: Ingress, plus Egress when egress rules exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_types: Option<Vec<String>>,
    /// Ingress rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<IngressRule>>,
    /// Egress rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<EgressRule>>,
}

/// `spec.ingress[]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    /// Allowed sources (omitted or empty: everyone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<Peer>>,
    /// Allowed ports (omitted or empty: every port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<NetworkPolicyPort>>,
}

/// `spec.egress[]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    /// Allowed destinations (omitted or empty: everyone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<Peer>>,
    /// Allowed ports (omitted or empty: every port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<NetworkPolicyPort>>,
}

/// A peer: pods (by namespace and/or pod labels) or an IP block.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Peer {
    /// Pods (in the policy's namespace unless `namespace_selector` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

/// `ipBlock`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpBlock {
    /// The block.
    pub cidr: String,
    /// Parts of the block not included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<Vec<String>>,
}

/// A port by number or by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    /// A number.
    Int(i64),
    /// A name.
    String(String),
}

/// `ports[]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyPort {
    /// TCP (default), UDP or SCTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Port number or name; omitted: every port of the protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    /// Last port of a range starting at a numeric `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i64>,
}

/// A Kubernetes label selector.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels that must equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
    /// Set-based requirements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_expressions: Option<Vec<Requirement>>,
}

/// `matchExpressions[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Requirement {
    /// Label key.
    pub key: String,
    /// In, NotIn, Exists or DoesNotExist.
    pub operator: String,
    /// Values for In and NotIn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

/// Namespace of an object when neither the manifest nor the request names one.
pub const DEFAULT_NAMESPACE: &str = "default";

impl NetworkPolicy {
    /// Namespace (filled in by [`parse`]).
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }

    /// Validates the object and translates it into a brindle policy with exactly Kubernetes'
    /// semantics: Allow rules only, one per peer and protocol, at order 1000.
    pub fn to_policy(&self) -> Result<Policy, PolicyError> {
        if self.api_version != "networking.k8s.io/v1" {
            return Err(invalid(
                "apiVersion",
                format!("{:?}: expected networking.k8s.io/v1", self.api_version),
            ));
        }
        if self.kind != "NetworkPolicy" {
            return Err(invalid(
                "kind",
                format!("{:?}: expected NetworkPolicy", self.kind),
            ));
        }
        validate::name("metadata.name", &self.metadata.name, true)?;
        validate::name("metadata.namespace", self.namespace(), false)?;
        let spec = &self.spec;
        let selector = label_selector("spec.podSelector", &spec.pod_selector)?;
        let ingress_rules = spec.ingress.as_deref().unwrap_or_default();
        let egress_rules = spec.egress.as_deref().unwrap_or_default();
        let (ingress_enabled, egress_enabled) = match &spec.policy_types {
            None => (true, !egress_rules.is_empty()),
            Some(types) => validate::policy_types("spec.policyTypes", types)?,
        };
        let mut ingress = Vec::new();
        for (index, rule) in ingress_rules.iter().enumerate() {
            let field = format!("spec.ingress[{index}]");
            ingress.extend(rules(
                &field,
                "from",
                rule.from.as_deref(),
                rule.ports.as_deref(),
                true,
            )?);
        }
        let mut egress = Vec::new();
        for (index, rule) in egress_rules.iter().enumerate() {
            let field = format!("spec.egress[{index}]");
            egress.extend(rules(
                &field,
                "to",
                rule.to.as_deref(),
                rule.ports.as_deref(),
                false,
            )?);
        }
        Ok(Policy {
            id: PolicyId::Kubernetes {
                namespace: self.namespace().to_owned(),
                name: self.metadata.name.clone(),
            },
            order: Some(KUBERNETES_POLICY_ORDER),
            selector,
            namespace_selector: None,
            service_account_selector: None,
            ingress_enabled,
            egress_enabled,
            ingress,
            egress,
        })
    }
}

/// Ports of one protocol in a rule: `None` = every port of it.
type ProtocolPorts = BTreeMap<Protocol, Option<Vec<PortMatch>>>;

/// The brindle rules for one Kubernetes rule: every peer × every protocol its ports name.
fn rules(
    field: &str,
    peers_field: &str,
    peers: Option<&[Peer]>,
    ports: Option<&[NetworkPolicyPort]>,
    ingress: bool,
) -> Result<Vec<Rule>, PolicyError> {
    let ports = protocol_ports(&format!("{field}.ports"), ports.unwrap_or_default())?;
    let peers: Vec<EntityRule> = match peers {
        None | Some([]) => vec![EntityRule::default()],
        Some(peers) => peers
            .iter()
            .enumerate()
            .map(|(index, peer)| entity(&format!("{field}.{peers_field}[{index}]"), peer))
            .collect::<Result<_, _>>()?,
    };
    let mut rules = Vec::new();
    for peer in peers {
        let mut with_ports: Vec<(Option<Protocol>, Vec<PortMatch>)> = Vec::new();
        if ports.is_empty() {
            with_ports.push((None, Vec::new()));
        }
        for (protocol, matches) in &ports {
            with_ports.push((Some(*protocol), matches.clone().unwrap_or_default()));
        }
        for (protocol, port_matches) in with_ports {
            let (source, destination) = if ingress {
                (
                    peer.clone(),
                    EntityRule {
                        ports: port_matches,
                        ..EntityRule::default()
                    },
                )
            } else {
                (
                    EntityRule::default(),
                    EntityRule {
                        ports: port_matches,
                        ..peer.clone()
                    },
                )
            };
            rules.push(Rule {
                action: Action::Allow,
                protocol,
                not_protocol: None,
                icmp: None,
                not_icmp: None,
                source,
                destination,
                annotations: BTreeMap::new(),
            });
        }
    }
    Ok(rules)
}

/// Groups `ports[]` by protocol (TCP when omitted).
fn protocol_ports(field: &str, ports: &[NetworkPolicyPort]) -> Result<ProtocolPorts, PolicyError> {
    let mut grouped = ProtocolPorts::new();
    for (index, port) in ports.iter().enumerate() {
        let field = format!("{field}[{index}]");
        let protocol = match port.protocol.as_deref() {
            None => Protocol::Tcp,
            Some(text @ ("TCP" | "UDP" | "SCTP")) => text
                .parse()
                .map_err(|e: String| invalid(format!("{field}.protocol"), e))?,
            Some(other) => {
                return Err(invalid(
                    format!("{field}.protocol"),
                    format!("{other:?}: expected TCP, UDP or SCTP"),
                ));
            }
        };
        let matched = match (&port.port, port.end_port) {
            (None, Some(_)) => {
                return Err(invalid(format!("{field}.endPort"), "requires port to be set"));
            }
            (None, None) => None,
            (Some(IntOrString::String(name)), end) => {
                if end.is_some() {
                    return Err(invalid(
                        format!("{field}.endPort"),
                        "may not be used with a named port",
                    ));
                }
                validate::port_name(&format!("{field}.port"), name)?;
                Some(PortMatch::Named(name.clone()))
            }
            (Some(IntOrString::Int(first)), end) => {
                let first = port_number(&format!("{field}.port"), *first)?;
                let last = match end {
                    None => first,
                    Some(end) => {
                        let last = port_number(&format!("{field}.endPort"), end)?;
                        if last < first {
                            return Err(invalid(
                                format!("{field}.endPort"),
                                format!("{last} is below port {first}"),
                            ));
                        }
                        last
                    }
                };
                Some(PortMatch::Range { first, last })
            }
        };
        let entry = grouped.entry(protocol).or_insert_with(|| Some(Vec::new()));
        match (entry.as_mut(), matched) {
            (Some(list), Some(matched)) => list.push(matched),
            (_, None) => *entry = None,
            (None, Some(_)) => {}
        }
    }
    Ok(grouped)
}

fn port_number(field: &str, port: i64) -> Result<u16, PolicyError> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| invalid(field, format!("{port} is not a port number (1-65535)")))
}

/// One peer as a rule side.
fn entity(field: &str, peer: &Peer) -> Result<EntityRule, PolicyError> {
    let selects = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
    match (&peer.ip_block, selects) {
        (None, false) => Err(invalid(
            field,
            "must specify a peer (podSelector, namespaceSelector or ipBlock)",
        )),
        (Some(_), true) => Err(invalid(
            field,
            "ipBlock may not be combined with podSelector or namespaceSelector",
        )),
        (Some(block), false) => {
            let cidr = net(&format!("{field}.ipBlock.cidr"), &block.cidr)?;
            let mut except = Vec::new();
            for (index, text) in block.except.iter().flatten().enumerate() {
                let field = format!("{field}.ipBlock.except[{index}]");
                let excluded = net(&field, text)?;
                if !cidr.contains(&excluded) || excluded.prefix_len() <= cidr.prefix_len() {
                    return Err(invalid(
                        field,
                        format!("{excluded} must be strictly within cidr {cidr}"),
                    ));
                }
                except.push(excluded);
            }
            Ok(EntityRule {
                nets: vec![cidr],
                not_nets: except,
                ..EntityRule::default()
            })
        }
        (None, true) => {
            let selector = match &peer.pod_selector {
                Some(pods) => Some(label_selector(&format!("{field}.podSelector"), pods)?),
                None => None,
            };
            let namespace_selector = match &peer.namespace_selector {
                Some(namespaces) => Some(label_selector(&format!("{field}.namespaceSelector"), namespaces)?),
                None => None,
            };
            Ok(EntityRule {
                // A namespaceSelector alone means every pod of those namespaces.
                selector: selector.or(Some(Selector::All)),
                namespace_selector,
                ..EntityRule::default()
            })
        }
    }
}

fn net(field: &str, text: &str) -> Result<IpNet, PolicyError> {
    let parsed: IpNet = text
        .parse()
        .map_err(|_| invalid(field, format!("{text:?} is not a CIDR")))?;
    if parsed.trunc() != parsed {
        return Err(invalid(
            field,
            format!("{text:?} has host bits set; did you mean {}?", parsed.trunc()),
        ));
    }
    Ok(parsed)
}

/// A label key as Kubernetes allows it: `[prefix/]name`, name ≤ 63 alphanumerics, `-_.`.
pub(crate) fn label_key(field: &str, key: &str) -> Result<(), PolicyError> {
    if labels::is_label_key(key) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{key:?} is not a label key ([prefix/]name)"),
        ))
    }
}

/// A label value as Kubernetes allows it: empty, or ≤ 63 alphanumerics and `-_.`.
fn label_value(field: &str, value: &str) -> Result<(), PolicyError> {
    if labels::is_label_value(value) {
        Ok(())
    } else {
        Err(invalid(field, format!("{value:?} is not a label value")))
    }
}

/// A Kubernetes label selector as a brindle selector (empty = all()).
pub fn label_selector(field: &str, selector: &LabelSelector) -> Result<Selector, PolicyError> {
    let mut parts = Vec::new();
    for (key, value) in selector.match_labels.iter().flatten() {
        label_key(&format!("{field}.matchLabels"), key)?;
        label_value(&format!("{field}.matchLabels[{key}]"), value)?;
        parts.push(Selector::Equals(key.clone(), value.clone()));
    }
    for (index, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        let field = format!("{field}.matchExpressions[{index}]");
        label_key(&format!("{field}.key"), &requirement.key)?;
        let values = requirement.values.clone().unwrap_or_default();
        for (i, value) in values.iter().enumerate() {
            label_value(&format!("{field}.values[{i}]"), value)?;
        }
        let key = requirement.key.clone();
        let operator = requirement.operator.as_str();
        let needs_values = match operator {
            "In" | "NotIn" => true,
            "Exists" | "DoesNotExist" => false,
            other => {
                return Err(invalid(
                    format!("{field}.operator"),
                    format!("{other:?}: expected In, NotIn, Exists or DoesNotExist"),
                ));
            }
        };
        if needs_values == values.is_empty() {
            let must = if needs_values { "non-empty" } else { "empty" };
            return Err(invalid(
                format!("{field}.values"),
                format!("must be {must} for operator {operator}"),
            ));
        }
        parts.push(match operator {
            "In" => Selector::In(key, values),
            "NotIn" => Selector::NotIn(key, values),
            "Exists" => Selector::Has(key),
            _ => Selector::Not(Box::new(Selector::Has(key))),
        });
    }
    Ok(Selector::And(parts).canonical())
}
