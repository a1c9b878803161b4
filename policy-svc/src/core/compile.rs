//! How a policy compiles for the views: its rules with selectors replaced by ipsets, the sets
//! they use (and what decides their members), and whom it applies to.

use std::collections::BTreeMap;
use std::net::IpAddr;

use brindle_selector::Selector;
use policy_api::model::{Direction, Endpoint, EntityRule, Policy, PolicyId, PortMatch, Protocol};
use policy_api::view::{CompiledRule, CompiledSide, IpSetKind, IpSetView, PolicyView};

/// What decides an ipset's members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetDefinition {
    /// Addresses of the endpoints a selector matches.
    Selector(Selector),
    /// Address and port of a named port of the endpoints a selector matches.
    NamedPort {
        /// Endpoints.
        selector: Selector,
        /// Protocol of the port.
        protocol: Protocol,
        /// Port name.
        name: String,
    },
}

/// 16 hex digits of the SHA-1 of `text`.
fn short_hash(text: &str) -> String {
    let digest = sha1_smol::Sha1::from(text).digest().to_string();
    digest[..16].to_owned()
}

impl SetDefinition {
    /// Stable id: `s<hash>` for selector sets, `n<hash>` for named-port sets.
    pub fn id(&self) -> String {
        match self {
            Self::Selector(selector) => format!("s{}", selector.id()),
            Self::NamedPort {
                selector,
                protocol,
                name,
            } => {
                format!(
                    "n{}",
                    short_hash(&format!("{} {protocol}:{name}", selector.canonical()))
                )
            }
        }
    }

    /// The selector of the endpoints whose addresses it holds.
    pub fn selector(&self) -> &Selector {
        match self {
            Self::Selector(selector) | Self::NamedPort { selector, .. } => selector,
        }
    }

    /// The set's header entry.
    pub fn view(&self) -> IpSetView {
        match self {
            Self::Selector(selector) => IpSetView {
                id: self.id(),
                kind: IpSetKind::Net,
                source: selector.to_string(),
            },
            Self::NamedPort {
                selector,
                protocol,
                name,
            } => IpSetView {
                id: self.id(),
                kind: IpSetKind::IpPort,
                source: format!("{selector} port {protocol}:{name}"),
            },
        }
    }

    /// The members `endpoint` (with selector labels `labels`) contributes.
    pub fn members(&self, endpoint: &Endpoint, labels: &BTreeMap<String, String>) -> Vec<String> {
        match self {
            Self::Selector(selector) if selector.matches(labels) => {
                endpoint.ips.iter().map(IpAddr::to_string).collect()
            }
            Self::NamedPort {
                selector,
                protocol,
                name,
            } if selector.matches(labels) => match endpoint.named_port(name, *protocol) {
                Some(port) => {
                    let protocol = protocol.to_string().to_ascii_lowercase();
                    endpoint
                        .ips
                        .iter()
                        .map(|ip| format!("{ip},{protocol}:{port}"))
                        .collect()
                }
                None => Vec::new(),
            },
            _ => Vec::new(),
        }
    }
}

/// A policy compiled once for every node: its view, the sets its rules use, whom it applies to.
#[derive(Debug)]
pub struct CompiledPolicy {
    /// The policy's order.
    pub order: Option<f64>,
    /// The selector of the endpoints it applies to.
    pub applies_to: Selector,
    /// Whether it governs ingress and egress.
    pub governs: (bool, bool),
    /// Its view entry.
    pub view: PolicyView,
    /// The sets its rules refer to, by id.
    pub sets: BTreeMap<String, SetDefinition>,
}

/// The policy view id of a policy.
pub fn policy_view_id(id: &PolicyId) -> String {
    short_hash(&id.to_string())
}

/// Compiles `policy`.
pub fn compile(policy: &Policy) -> CompiledPolicy {
    let applies_to = policy.applies_to();
    let mut sets = BTreeMap::new();
    let mut rules = |direction: Direction| -> Vec<CompiledRule> {
        policy
            .rules(direction)
            .iter()
            .enumerate()
            .map(|(index, rule)| {
                let mut side = |entity: &EntityRule, named_scope: Selector| {
                    compile_side(policy, entity, rule.protocol, named_scope, &mut sets)
                };
                let own = applies_to.clone();
                let (source_scope, destination_scope) = match direction {
                    Direction::Ingress => (Selector::All, own),
                    Direction::Egress => (own, Selector::All),
                };
                CompiledRule {
                    action: rule.action,
                    protocol: rule.protocol,
                    not_protocol: rule.not_protocol,
                    icmp: rule.icmp,
                    not_icmp: rule.not_icmp,
                    source: side(&rule.source, source_scope),
                    destination: side(&rule.destination, destination_scope),
                    origin: format!("{}/{direction}/{index}", policy.id),
                }
            })
            .collect()
    };
    let ingress = rules(Direction::Ingress);
    let egress = rules(Direction::Egress);
    CompiledPolicy {
        order: policy.order,
        governs: (policy.ingress_enabled, policy.egress_enabled),
        view: PolicyView {
            id: policy_view_id(&policy.id),
            name: policy.id.to_string(),
            ingress,
            egress,
        },
        applies_to,
        sets,
    }
}

/// Compiles one side; `named_scope` bounds a named-port set when the side selects no endpoints
/// (the policy's own endpoints on their own side, everyone on the remote side).
fn compile_side(
    policy: &Policy,
    entity: &EntityRule,
    protocol: Option<Protocol>,
    named_scope: Selector,
    sets: &mut BTreeMap<String, SetDefinition>,
) -> CompiledSide {
    let mut add = |definition: SetDefinition| {
        let id = definition.id();
        sets.insert(id.clone(), definition);
        id
    };
    let selector = policy.entity_selector(entity);
    let mut side = CompiledSide {
        nets: entity.nets.iter().map(ToString::to_string).collect(),
        not_nets: entity.not_nets.iter().map(ToString::to_string).collect(),
        ..CompiledSide::default()
    };
    if let Some(selector) = &selector {
        side.sets.push(add(SetDefinition::Selector(selector.clone())));
    }
    if let Some(not) = policy.entity_not_selector(entity) {
        side.not_sets.push(add(SetDefinition::Selector(not)));
    }
    let scope = selector.unwrap_or(named_scope);
    for (matches, ranges, named) in [
        (&entity.ports, &mut side.ports, &mut side.named_port_sets),
        (
            &entity.not_ports,
            &mut side.not_ports,
            &mut side.not_named_port_sets,
        ),
    ] {
        for port in matches {
            match port {
                PortMatch::Range { first, last } => ranges.push((*first, *last)),
                PortMatch::Named(name) => {
                    // Validation guarantees a protocol with ports wherever ports are used.
                    let protocol = protocol.unwrap_or(Protocol::Tcp);
                    named.push(add(SetDefinition::NamedPort {
                        selector: scope.clone(),
                        protocol,
                        name: name.clone(),
                    }));
                }
            }
        }
    }
    side
}
