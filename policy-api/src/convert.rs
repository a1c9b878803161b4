//! Between the policy model and `brindle.policy.v1` messages, both ways: view entries (with the
//! `Sync` wire format of a node's view; every entry decoded is checked by [`rule_text`]) and
//! workload endpoints (policy-svc encodes views, the node agent decodes them and encodes its
//! endpoints).

use brindle_proto::InvalidField;
use brindle_proto::policy::v1 as pb;

use crate::model::{Action, Endpoint, EndpointKey, IcmpMatch, NamedPort, Pod, Protocol};
use crate::rule_text;
use crate::view::{
    CompiledRule, CompiledSide, EndpointView, HostEndpointView, IpSetKind, IpSetView, MemberView, PolicyView,
    ViewEntry,
};

fn invalid(field: impl Into<String>, reason: impl std::fmt::Display) -> InvalidField {
    InvalidField::new(field, reason)
}

fn action_to_proto(action: Action) -> pb::Action {
    match action {
        Action::Allow => pb::Action::Allow,
        Action::Deny => pb::Action::Deny,
        Action::Pass => pb::Action::Pass,
        Action::Log => pb::Action::Log,
    }
}

fn action_from_proto(field: &str, value: i32) -> Result<Action, InvalidField> {
    match pb::Action::try_from(value) {
        Ok(pb::Action::Allow) => Ok(Action::Allow),
        Ok(pb::Action::Deny) => Ok(Action::Deny),
        Ok(pb::Action::Pass) => Ok(Action::Pass),
        Ok(pb::Action::Log) => Ok(Action::Log),
        _ => Err(invalid(field, format!("{value} is not an action"))),
    }
}

fn protocol_from_number(field: &str, number: u32) -> Result<Option<Protocol>, InvalidField> {
    match u8::try_from(number) {
        Ok(0) => Ok(None),
        Ok(n) => Ok(Some(Protocol::from_number(n))),
        Err(_) => Err(invalid(field, format!("{number} is not a protocol number"))),
    }
}

fn ranges_to_proto(ranges: &[(u16, u16)]) -> Vec<pb::PortRange> {
    ranges
        .iter()
        .map(|(first, last)| pb::PortRange {
            first: u32::from(*first),
            last: u32::from(*last),
        })
        .collect()
}

fn ranges_from_proto(field: &str, ranges: Vec<pb::PortRange>) -> Result<Vec<(u16, u16)>, InvalidField> {
    ranges
        .into_iter()
        .map(|r| match (u16::try_from(r.first), u16::try_from(r.last)) {
            (Ok(first), Ok(last)) if first <= last => Ok((first, last)),
            _ => Err(invalid(
                field,
                format!("{}:{} is not a port range", r.first, r.last),
            )),
        })
        .collect()
}

fn side_to_proto(side: &CompiledSide) -> pb::CompiledSide {
    pb::CompiledSide {
        sets: side.sets.clone(),
        not_sets: side.not_sets.clone(),
        nets: side.nets.clone(),
        not_nets: side.not_nets.clone(),
        ports: ranges_to_proto(&side.ports),
        named_port_sets: side.named_port_sets.clone(),
        not_ports: ranges_to_proto(&side.not_ports),
        not_named_port_sets: side.not_named_port_sets.clone(),
    }
}

fn side_from_proto(field: &str, side: Option<pb::CompiledSide>) -> Result<CompiledSide, InvalidField> {
    let side = side.unwrap_or_default();
    Ok(CompiledSide {
        sets: side.sets,
        not_sets: side.not_sets,
        nets: side.nets,
        not_nets: side.not_nets,
        ports: ranges_from_proto(&format!("{field}.ports"), side.ports)?,
        named_port_sets: side.named_port_sets,
        not_ports: ranges_from_proto(&format!("{field}.not_ports"), side.not_ports)?,
        not_named_port_sets: side.not_named_port_sets,
    })
}

fn rule_to_proto(rule: &CompiledRule) -> pb::CompiledRule {
    pb::CompiledRule {
        action: action_to_proto(rule.action).into(),
        protocol: rule.protocol.map_or(0, |p| u32::from(p.number())),
        not_protocol: rule.not_protocol.map_or(0, |p| u32::from(p.number())),
        source: Some(side_to_proto(&rule.source)),
        destination: Some(side_to_proto(&rule.destination)),
        origin: rule.origin.clone(),
        icmp: rule.icmp.map(icmp_to_proto),
        not_icmp: rule.not_icmp.map(icmp_to_proto),
    }
}

fn icmp_to_proto(icmp: IcmpMatch) -> pb::IcmpMatch {
    pb::IcmpMatch {
        r#type: u32::from(icmp.icmp_type),
        code: icmp.code.map(u32::from),
    }
}

fn icmp_from_proto(field: &str, icmp: Option<pb::IcmpMatch>) -> Result<Option<IcmpMatch>, InvalidField> {
    let Some(icmp) = icmp else { return Ok(None) };
    IcmpMatch::new(icmp.r#type, icmp.code)
        .map(Some)
        .map_err(|(part, reason)| InvalidField::new(format!("{field}.{part}"), reason))
}

fn rule_from_proto(field: &str, rule: pb::CompiledRule) -> Result<CompiledRule, InvalidField> {
    Ok(CompiledRule {
        action: action_from_proto(&format!("{field}.action"), rule.action)?,
        protocol: protocol_from_number(&format!("{field}.protocol"), rule.protocol)?,
        not_protocol: protocol_from_number(&format!("{field}.not_protocol"), rule.not_protocol)?,
        source: side_from_proto(&format!("{field}.source"), rule.source)?,
        destination: side_from_proto(&format!("{field}.destination"), rule.destination)?,
        origin: rule.origin,
        icmp: icmp_from_proto(&format!("{field}.icmp"), rule.icmp)?,
        not_icmp: icmp_from_proto(&format!("{field}.not_icmp"), rule.not_icmp)?,
    })
}

/// A view entry as a message.
pub fn entry_to_proto(key: &str, entry: &ViewEntry) -> pb::PolicyEntry {
    use pb::policy_entry::Value;
    let value = match entry {
        ViewEntry::Endpoint(e) => Value::Endpoint(pb::EndpointPolicies {
            interface: e.interface.clone(),
            name: e.name.clone(),
            ingress: e.ingress.clone(),
            egress: e.egress.clone(),
        }),
        ViewEntry::Policy(p) => Value::Policy(pb::CompiledPolicy {
            id: p.id.clone(),
            name: p.name.clone(),
            ingress: p.ingress.iter().map(rule_to_proto).collect(),
            egress: p.egress.iter().map(rule_to_proto).collect(),
        }),
        ViewEntry::IpSet(s) => Value::Ipset(pb::IpSet {
            id: s.id.clone(),
            r#type: match s.kind {
                IpSetKind::Net => pb::IpSetType::Net,
                IpSetKind::IpPort => pb::IpSetType::IpPort,
            }
            .into(),
            source: s.source.clone(),
        }),
        ViewEntry::Member(m) => Value::Member(pb::IpSetMember {
            set: m.set.clone(),
            member: m.member.clone(),
        }),
        ViewEntry::HostEndpoint(h) => Value::HostEndpoint(pb::EndpointPolicies {
            interface: h.interface.clone().unwrap_or_default(),
            name: h.name.clone(),
            ingress: h.ingress.clone(),
            egress: h.egress.clone(),
        }),
    };
    pb::PolicyEntry {
        key: key.to_owned(),
        value: Some(value),
    }
}

/// A message as a view entry.
pub fn entry_from_proto(entry: pb::PolicyEntry) -> Result<(String, ViewEntry), InvalidField> {
    use pb::policy_entry::Value;
    let field = format!("entry {:?}", entry.key);
    let value = match entry.value {
        Some(Value::Endpoint(e)) => ViewEntry::Endpoint(EndpointView {
            interface: e.interface,
            name: e.name,
            ingress: e.ingress,
            egress: e.egress,
        }),
        Some(Value::HostEndpoint(h)) => ViewEntry::HostEndpoint(HostEndpointView {
            interface: Some(h.interface).filter(|i| !i.is_empty()),
            name: h.name,
            ingress: h.ingress,
            egress: h.egress,
        }),
        Some(Value::Policy(p)) => ViewEntry::Policy(PolicyView {
            id: p.id,
            name: p.name,
            ingress: p
                .ingress
                .into_iter()
                .enumerate()
                .map(|(i, r)| rule_from_proto(&format!("{field}.ingress[{i}]"), r))
                .collect::<Result<_, _>>()?,
            egress: p
                .egress
                .into_iter()
                .enumerate()
                .map(|(i, r)| rule_from_proto(&format!("{field}.egress[{i}]"), r))
                .collect::<Result<_, _>>()?,
        }),
        Some(Value::Ipset(s)) => ViewEntry::IpSet(IpSetView {
            id: s.id,
            kind: match pb::IpSetType::try_from(s.r#type) {
                Ok(pb::IpSetType::Net) => IpSetKind::Net,
                Ok(pb::IpSetType::IpPort) => IpSetKind::IpPort,
                _ => {
                    return Err(invalid(
                        format!("{field}.type"),
                        format!("{} is not an ipset type", s.r#type),
                    ));
                }
            },
            source: s.source,
        }),
        Some(Value::Member(m)) => ViewEntry::Member(MemberView {
            set: m.set,
            member: m.member,
        }),
        None => return Err(invalid(field, "no value")),
    };
    rule_text::check(&value).map_err(|why| invalid(field, why))?;
    Ok((entry.key, value))
}

/// An endpoint as a message.
pub fn endpoint_to_proto(endpoint: &Endpoint, revision: u64) -> pb::WorkloadEndpoint {
    pb::WorkloadEndpoint {
        node: endpoint.key.node.clone(),
        interface: endpoint.key.interface.clone(),
        namespace: endpoint.namespace.clone(),
        pod: endpoint.pod.clone(),
        container_id: endpoint.container_id.clone(),
        ips: endpoint.ips.iter().map(ToString::to_string).collect(),
        labels: endpoint.labels.clone().into_iter().collect(),
        ports: ports_to_proto(&endpoint.ports),
        revision,
    }
}

fn ports_to_proto(ports: &[NamedPort]) -> Vec<pb::NamedPort> {
    ports
        .iter()
        .map(|p| pb::NamedPort {
            name: p.name.clone(),
            protocol: p.protocol.to_string(),
            port: u32::from(p.port),
        })
        .collect()
}

fn ports_from_proto(field: &str, ports: Vec<pb::NamedPort>) -> Result<Vec<NamedPort>, InvalidField> {
    ports
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let protocol: Protocol = p
                .protocol
                .parse()
                .map_err(|e: String| invalid(format!("{field}[{i}].protocol"), e))?;
            let port = u16::try_from(p.port)
                .ok()
                .filter(|&port| port != 0)
                .ok_or_else(|| invalid(format!("{field}[{i}].port"), "must be 1-65535"))?;
            Ok(NamedPort {
                name: p.name,
                protocol,
                port,
            })
        })
        .collect()
}

/// A pod as a message.
pub fn pod_to_proto(pod: &Pod, revision: u64) -> pb::Pod {
    pb::Pod {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        uid: pod.uid.clone(),
        node: pod.node.clone(),
        labels: pod.labels.clone().into_iter().collect(),
        service_account: pod.service_account.clone(),
        ports: ports_to_proto(&pod.ports),
        ipam_annotations: pod.ipam_annotations.clone().into_iter().collect(),
        revision,
    }
}

/// A message as a pod (validated separately when stored); `field` names it in errors.
pub fn pod_from_proto(field: &str, pod: pb::Pod) -> Result<Pod, InvalidField> {
    Ok(Pod {
        ports: ports_from_proto(&format!("{field}.ports"), pod.ports)?,
        namespace: pod.namespace,
        name: pod.name,
        uid: pod.uid,
        node: pod.node,
        labels: pod.labels.into_iter().collect(),
        service_account: pod.service_account,
        ipam_annotations: pod.ipam_annotations.into_iter().collect(),
    })
}

/// A message as an endpoint (validated separately when stored).
pub fn endpoint_from_proto(endpoint: pb::WorkloadEndpoint) -> Result<Endpoint, InvalidField> {
    let ips = endpoint
        .ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            ip.parse()
                .map_err(|_| invalid(format!("endpoint.ips[{i}]"), format!("{ip:?} is not an address")))
        })
        .collect::<Result<_, _>>()?;
    let ports = ports_from_proto("endpoint.ports", endpoint.ports)?;
    Ok(Endpoint {
        key: EndpointKey {
            node: endpoint.node,
            interface: endpoint.interface,
        },
        namespace: endpoint.namespace,
        pod: endpoint.pod,
        container_id: endpoint.container_id,
        ips,
        labels: endpoint.labels.into_iter().collect(),
        ports,
    })
}

/// A node's policy view's `Sync` messages.
pub struct PolicyWire;

brindle_sync::impl_wire!(
    PolicyWire,
    value: ViewEntry,
    entry: pb::PolicyEntry,
    state: pb::PolicyState,
    delta: pb::PolicyDelta,
    response: pb::SyncResponse,
    payload: pb::sync_response::Payload,
    entry_to_proto: entry_to_proto,
    entry_from_proto: entry_from_proto,
);
