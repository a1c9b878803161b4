//! brindle's policy documents — NetworkPolicy and GlobalNetworkPolicy in `brindle.io/v1`, the
//! same fields as Calico's `projectcalico.org/v3` — as written, validated into the model with
//! errors naming the field, and printed back from it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::{PolicyError, invalid};
use super::kubernetes::DEFAULT_NAMESPACE;
use super::resource::{API_VERSION, Metadata};
use super::validate;
use policy_api::model::{
    Action, EntityRule, GLOBAL_ID_NAMESPACE, IcmpMatch, KUBERNETES_NAME_PREFIX, Policy, PolicyId, PortMatch,
    Protocol, Rule,
};

/// A brindle policy document.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyDocument {
    /// `brindle.io/v1`.
    pub api_version: String,
    /// `NetworkPolicy` or `GlobalNetworkPolicy`.
    pub kind: String,
    /// Name (and namespace).
    pub metadata: Metadata,
    /// The policy.
    pub spec: PolicySpec,
}

/// `spec` of a brindle policy.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    /// Lower first; omitted: after every ordered policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// Endpoints it applies to (default `all()`).
    #[serde(default)]
    pub selector: String,
    /// GlobalNetworkPolicy only: namespaces whose endpoints it applies to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace_selector: String,
    /// Service accounts (by their labels) whose pods it applies to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account_selector: String,
    /// Calico's tier: brindle has one, `default`; any other is refused.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tier: String,
    /// `Ingress`, `Egress`; omitted: Ingress when there are ingress rules or no rules at all,
    /// Egress when there are egress rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<String>>,
    /// Ingress rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<RuleSpec>,
    /// Egress rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<RuleSpec>,
}

/// A rule as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSpec {
    /// Allow, Deny, Pass or Log.
    pub action: String,
    /// TCP, UDP, SCTP, ICMP, ICMPv6 or a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<PortOrName>,
    /// Protocol the packet must not have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_protocol: Option<PortOrName>,
    /// ICMP type (and code) the packet must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<IcmpSpec>,
    /// ICMP type (and code) the packet must not have.
    #[serde(default, rename = "notICMP", skip_serializing_if = "Option::is_none")]
    pub not_icmp: Option<IcmpSpec>,
    /// The rule's metadata (annotations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<RuleMetadata>,
    /// The sender.
    #[serde(default)]
    pub source: EntitySpec,
    /// The receiver.
    #[serde(default)]
    pub destination: EntitySpec,
}

/// An ICMP match as written.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpSpec {
    /// Type (0-254).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u32>,
    /// Code (0-255); needs a type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u32>,
}

/// A rule's metadata.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleMetadata {
    /// Annotations: kept with the rule, never matched.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Calico's `serviceAccounts` of a rule side.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccountsSpec {
    /// Service account names, any of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// A selector over service accounts' labels.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
}

/// A number or a string (ports: `80`, `"80:90"`, `"http"`; protocols: `6`, `"TCP"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortOrName {
    /// A number.
    Number(i64),
    /// Text.
    Text(String),
}

/// A rule side as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntitySpec {
    /// Endpoints.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    /// Endpoints excluded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub not_selector: String,
    /// Namespaces.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace_selector: String,
    /// Networks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<String>,
    /// Networks excluded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_nets: Vec<String>,
    /// Ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortOrName>,
    /// Ports excluded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<PortOrName>,
    /// Service accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<ServiceAccountsSpec>,
}

impl PolicyDocument {
    /// Validates the document into a policy.
    pub fn to_policy(&self) -> Result<Policy, PolicyError> {
        let global = match self.kind.as_str() {
            "NetworkPolicy" => false,
            "GlobalNetworkPolicy" => true,
            other => {
                return Err(invalid(
                    "kind",
                    format!("{other:?}: expected NetworkPolicy or GlobalNetworkPolicy"),
                ));
            }
        };
        validate::name("metadata.name", &self.metadata.name, true)?;
        if let Some(rest) = self.metadata.name.strip_prefix(KUBERNETES_NAME_PREFIX) {
            return Err(invalid(
                "metadata.name",
                format!(
                    "{:?}: the prefix {KUBERNETES_NAME_PREFIX:?} is reserved for Kubernetes \
                     NetworkPolicies (this {} would share its id with the Kubernetes \
                     NetworkPolicy {rest:?}, and one's rules would replace the other's)",
                    self.metadata.name, self.kind
                ),
            ));
        }
        let id = if global {
            if self.metadata.namespace.is_some() {
                return Err(invalid(
                    "metadata.namespace",
                    "a GlobalNetworkPolicy has no namespace",
                ));
            }
            PolicyId::Global {
                name: self.metadata.name.clone(),
            }
        } else {
            let namespace = self
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
            validate::name("metadata.namespace", &namespace, false)?;
            if namespace == GLOBAL_ID_NAMESPACE {
                return Err(invalid(
                    "metadata.namespace",
                    format!(
                        "{namespace:?}: a brindle NetworkPolicy there would share its id \
                         ({GLOBAL_ID_NAMESPACE}/{}) with the GlobalNetworkPolicy of that name, and \
                         one's rules would replace the other's; use a GlobalNetworkPolicy, or a \
                         Kubernetes NetworkPolicy in that namespace",
                        self.metadata.name
                    ),
                ));
            }
            if !self.spec.namespace_selector.is_empty() {
                return Err(invalid(
                    "spec.namespaceSelector",
                    "only a GlobalNetworkPolicy has one; a NetworkPolicy applies in its own namespace",
                ));
            }
            PolicyId::Namespaced {
                namespace,
                name: self.metadata.name.clone(),
            }
        };
        let spec = &self.spec;
        if !matches!(spec.tier.as_str(), "" | "default") {
            return Err(invalid(
                "spec.tier",
                format!("{:?}: brindle has one tier, \"default\"", spec.tier),
            ));
        }
        if let Some(order) = spec.order
            && !order.is_finite()
        {
            return Err(invalid("spec.order", "must be a finite number"));
        }
        let ingress = rules("spec.ingress", &spec.ingress)?;
        let egress = rules("spec.egress", &spec.egress)?;
        let (ingress_enabled, egress_enabled) = match &spec.types {
            None => (!ingress.is_empty() || egress.is_empty(), !egress.is_empty()),
            Some(types) => validate::policy_types("spec.types", types)?,
        };
        Ok(Policy {
            id,
            order: spec.order,
            selector: validate::selector("spec.selector", &spec.selector)?,
            namespace_selector: optional_selector("spec.namespaceSelector", &spec.namespace_selector)?,
            service_account_selector: optional_selector(
                "spec.serviceAccountSelector",
                &spec.service_account_selector,
            )?,
            ingress_enabled,
            egress_enabled,
            ingress,
            egress,
        })
    }
}

impl PolicyDocument {
    /// The document that reads back as `policy` (for `get -o yaml`).
    pub fn from_policy(policy: &Policy) -> Self {
        let (kind, namespace, name) = match &policy.id {
            PolicyId::Global { name } => ("GlobalNetworkPolicy", None, name.clone()),
            PolicyId::Namespaced { namespace, name } | PolicyId::Kubernetes { namespace, name } => {
                ("NetworkPolicy", Some(namespace.clone()), name.clone())
            }
        };
        let mut types = Vec::new();
        if policy.ingress_enabled {
            types.push("Ingress".to_owned());
        }
        if policy.egress_enabled {
            types.push("Egress".to_owned());
        }
        Self {
            api_version: API_VERSION.to_owned(),
            kind: kind.to_owned(),
            metadata: Metadata {
                name,
                namespace,
                labels: BTreeMap::new(),
            },
            spec: PolicySpec {
                order: policy.order,
                selector: policy.selector.to_string(),
                namespace_selector: policy
                    .namespace_selector
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                types: Some(types),
                service_account_selector: policy
                    .service_account_selector
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                tier: String::new(),
                ingress: policy.ingress.iter().map(RuleSpec::from_rule).collect(),
                egress: policy.egress.iter().map(RuleSpec::from_rule).collect(),
            },
        }
    }
}

impl RuleSpec {
    fn from_rule(rule: &Rule) -> Self {
        let protocol = |p: Option<Protocol>| p.map(|p| PortOrName::Text(p.to_string()));
        Self {
            action: rule.action.to_string(),
            protocol: protocol(rule.protocol),
            not_protocol: protocol(rule.not_protocol),
            icmp: rule.icmp.map(IcmpSpec::from_match),
            not_icmp: rule.not_icmp.map(IcmpSpec::from_match),
            metadata: (!rule.annotations.is_empty()).then(|| RuleMetadata {
                annotations: rule.annotations.clone(),
            }),
            source: EntitySpec::from_entity(&rule.source),
            destination: EntitySpec::from_entity(&rule.destination),
        }
    }
}

impl EntitySpec {
    fn from_entity(entity: &EntityRule) -> Self {
        let text =
            |s: &Option<brindle_selector::Selector>| s.as_ref().map(ToString::to_string).unwrap_or_default();
        let ports = |ports: &[PortMatch]| {
            ports
                .iter()
                .map(|p| match p {
                    PortMatch::Range { first, last } if first == last => {
                        PortOrName::Number(i64::from(*first))
                    }
                    PortMatch::Range { first, last } => PortOrName::Text(format!("{first}:{last}")),
                    PortMatch::Named(name) => PortOrName::Text(name.clone()),
                })
                .collect()
        };
        Self {
            selector: text(&entity.selector),
            not_selector: text(&entity.not_selector),
            namespace_selector: text(&entity.namespace_selector),
            nets: entity.nets.iter().map(ToString::to_string).collect(),
            not_nets: entity.not_nets.iter().map(ToString::to_string).collect(),
            ports: ports(&entity.ports),
            not_ports: ports(&entity.not_ports),
            service_accounts: (!entity.service_accounts.is_empty()
                || entity.service_account_selector.is_some())
            .then(|| ServiceAccountsSpec {
                names: entity.service_accounts.clone(),
                selector: text(&entity.service_account_selector),
            }),
        }
    }
}

impl IcmpSpec {
    fn from_match(icmp: IcmpMatch) -> Self {
        Self {
            icmp_type: Some(u32::from(icmp.icmp_type)),
            code: icmp.code.map(u32::from),
        }
    }

    fn to_match(self, field: &str) -> Result<IcmpMatch, PolicyError> {
        let Some(icmp_type) = self.icmp_type else {
            return Err(invalid(format!("{field}.type"), "required (a code needs a type)"));
        };
        IcmpMatch::new(icmp_type, self.code)
            .map_err(|(part, reason)| invalid(format!("{field}.{part}"), reason))
    }
}

fn optional_selector(field: &str, text: &str) -> Result<Option<brindle_selector::Selector>, PolicyError> {
    if text.trim().is_empty() {
        Ok(None)
    } else {
        validate::selector(field, text).map(Some)
    }
}

fn rules(field: &str, specs: &[RuleSpec]) -> Result<Vec<Rule>, PolicyError> {
    let mut rules = Vec::new();
    for (index, spec) in specs.iter().enumerate() {
        let field = format!("{field}[{index}]");
        let action = match spec.action.as_str() {
            "Allow" => Action::Allow,
            "Deny" => Action::Deny,
            "Pass" => Action::Pass,
            "Log" => Action::Log,
            other => {
                return Err(invalid(
                    format!("{field}.action"),
                    format!("{other:?}: expected Allow, Deny, Pass or Log"),
                ));
            }
        };
        rules.push(Rule {
            action,
            protocol: protocol(&format!("{field}.protocol"), spec.protocol.as_ref())?,
            not_protocol: protocol(&format!("{field}.notProtocol"), spec.not_protocol.as_ref())?,
            icmp: spec
                .icmp
                .map(|i| i.to_match(&format!("{field}.icmp")))
                .transpose()?,
            not_icmp: spec
                .not_icmp
                .map(|i| i.to_match(&format!("{field}.notICMP")))
                .transpose()?,
            source: entity(&format!("{field}.source"), &spec.source)?,
            destination: entity(&format!("{field}.destination"), &spec.destination)?,
            annotations: spec
                .metadata
                .as_ref()
                .map(|m| m.annotations.clone())
                .unwrap_or_default(),
        });
    }
    validate::rules(field, &rules)?;
    Ok(rules)
}

fn protocol(field: &str, value: Option<&PortOrName>) -> Result<Option<Protocol>, PolicyError> {
    value
        .map(|value| {
            let text = match value {
                PortOrName::Number(n) => n.to_string(),
                PortOrName::Text(text) => text.clone(),
            };
            text.parse().map_err(|e: String| invalid(field, e))
        })
        .transpose()
}

fn entity(field: &str, spec: &EntitySpec) -> Result<EntityRule, PolicyError> {
    let nets = |name: &str, nets: &[String]| {
        nets.iter()
            .enumerate()
            .map(|(i, text)| {
                let parsed: ipnet::IpNet = text
                    .parse()
                    .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        invalid(
                            format!("{field}.{name}[{i}]"),
                            format!("{text:?} is not a CIDR or address"),
                        )
                    })?;
                Ok(parsed.trunc())
            })
            .collect::<Result<Vec<_>, PolicyError>>()
    };
    let ports = |name: &str, ports: &[PortOrName]| {
        ports
            .iter()
            .enumerate()
            .map(|(i, port)| port_match(&format!("{field}.{name}[{i}]"), port))
            .collect::<Result<Vec<_>, PolicyError>>()
    };
    Ok(EntityRule {
        selector: optional_selector(&format!("{field}.selector"), &spec.selector)?,
        not_selector: optional_selector(&format!("{field}.notSelector"), &spec.not_selector)?,
        namespace_selector: optional_selector(
            &format!("{field}.namespaceSelector"),
            &spec.namespace_selector,
        )?,
        nets: nets("nets", &spec.nets)?,
        not_nets: nets("notNets", &spec.not_nets)?,
        ports: ports("ports", &spec.ports)?,
        not_ports: ports("notPorts", &spec.not_ports)?,
        service_accounts: service_accounts(
            &format!("{field}.serviceAccounts"),
            spec.service_accounts.as_ref(),
        )?,
        service_account_selector: match &spec.service_accounts {
            Some(accounts) => {
                optional_selector(&format!("{field}.serviceAccounts.selector"), &accounts.selector)?
            }
            None => None,
        },
    })
}

/// The service account names of a side (each a DNS-1123 subdomain).
fn service_accounts(field: &str, spec: Option<&ServiceAccountsSpec>) -> Result<Vec<String>, PolicyError> {
    let Some(spec) = spec else { return Ok(Vec::new()) };
    if spec.names.is_empty() && spec.selector.trim().is_empty() {
        return Err(invalid(
            format!("{field}.names"),
            "name at least one service account, or select them (selector)",
        ));
    }
    for (index, name) in spec.names.iter().enumerate() {
        validate::name(&format!("{field}.names[{index}]"), name, true)?;
    }
    Ok(spec.names.clone())
}

/// `80`, `"80"`, `"80:90"` or a port name.
fn port_match(field: &str, port: &PortOrName) -> Result<PortMatch, PolicyError> {
    let number = |text: &str| -> Result<u16, PolicyError> {
        text.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| invalid(field, format!("{text:?} is not a port number (1-65535)")))
    };
    match port {
        PortOrName::Number(n) => number(&n.to_string()).map(|p| PortMatch::Range { first: p, last: p }),
        PortOrName::Text(text) => match text.split_once(':') {
            Some((first, last)) => Ok(PortMatch::Range {
                first: number(first)?,
                last: number(last)?,
            }),
            None if text.chars().all(|c| c.is_ascii_digit()) => {
                number(text).map(|p| PortMatch::Range { first: p, last: p })
            }
            None => {
                validate::port_name(field, text)?;
                Ok(PortMatch::Named(text.clone()))
            }
        },
    }
}
