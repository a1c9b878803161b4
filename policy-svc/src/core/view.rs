//! A node's policy view — what its agent renders into iptables and ipsets: for each local
//! endpoint the policies that apply (ordered), each such policy compiled to rules that refer to
//! ipsets instead of selectors, and those ipsets with their members. Also how a policy compiles.

use std::collections::BTreeMap;
use std::net::IpAddr;

use brindle_selector::Selector;

use super::model::{Action, Direction, Endpoint, EntityRule, Policy, PolicyId, PortMatch, Protocol};

/// Key prefixes of a view's entries.
pub mod keys {
    /// `endpoint/<interface>`.
    pub const ENDPOINT: &str = "endpoint/";
    /// `policy/<policy view id>`.
    pub const POLICY: &str = "policy/";
    /// `ipset/<set id>`.
    pub const IPSET: &str = "ipset/";
    /// `member/<set id>/<member>`.
    pub const MEMBER: &str = "member/";
}

/// One entry of a node's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewEntry {
    /// The policies of a local endpoint.
    Endpoint(EndpointView),
    /// A compiled policy.
    Policy(PolicyView),
    /// An ipset (its members are separate entries).
    IpSet(IpSetView),
    /// One member of an ipset.
    Member(MemberView),
}

/// Which policies apply to a local endpoint, in evaluation order (policy view ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointView {
    /// Host-side interface.
    pub interface: String,
    /// `namespace/pod`.
    pub name: String,
    /// Policies governing traffic to it.
    pub ingress: Vec<String>,
    /// Policies governing traffic from it.
    pub egress: Vec<String>,
}

/// A policy's rules with selectors replaced by ipset ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyView {
    /// Short stable id (for chain names): 16 hex digits of the policy id's SHA-1.
    pub id: String,
    /// The policy (`namespace/name`, `namespace/knp.name`, `global/name`).
    pub name: String,
    /// Ingress rules.
    pub ingress: Vec<CompiledRule>,
    /// Egress rules.
    pub egress: Vec<CompiledRule>,
}

/// A rule in terms the kernel can match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledRule {
    /// What a match does.
    pub action: Action,
    /// Protocol the packet must have.
    pub protocol: Option<Protocol>,
    /// Protocol the packet must not have.
    pub not_protocol: Option<Protocol>,
    /// Conditions on the sender.
    pub source: CompiledSide,
    /// Conditions on the receiver.
    pub destination: CompiledSide,
    /// Which policy rule this is: `<policy>/<direction>/<index>`.
    pub origin: String,
}

/// Conditions on one side of a packet. Everything set must hold; within `ports` and
/// `named_port_sets` any one match suffices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompiledSide {
    /// Address sets (hash:net) the address must be in, all of them.
    pub sets: Vec<String>,
    /// Address sets the address must not be in.
    pub not_sets: Vec<String>,
    /// Networks the address must be in, one of them.
    pub nets: Vec<String>,
    /// Networks the address must not be in.
    pub not_nets: Vec<String>,
    /// Port ranges (inclusive).
    pub ports: Vec<(u16, u16)>,
    /// Named-port sets (hash:ip,port) the address and port must be in, one of them.
    pub named_port_sets: Vec<String>,
    /// Port ranges the port must not be in.
    pub not_ports: Vec<(u16, u16)>,
    /// Named-port sets the address and port must not be in.
    pub not_named_port_sets: Vec<String>,
}

impl CompiledSide {
    /// Whether the side restricts the port.
    pub fn matches_ports(&self) -> bool {
        !self.ports.is_empty() || !self.named_port_sets.is_empty()
    }
}

/// What an ipset holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpSetKind {
    /// hash:net — addresses.
    Net,
    /// hash:ip,port — `address,protocol:port`.
    IpPort,
}

/// An ipset's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpSetView {
    /// Set id (the kernel set is `brd-<id>`).
    pub id: String,
    /// Type.
    pub kind: IpSetKind,
    /// What it stands for, for humans.
    pub source: String,
}

/// One member of an ipset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// Set id.
    pub set: String,
    /// `address` or `address,protocol:port`.
    pub member: String,
}

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
#[derive(Debug, Clone)]
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
