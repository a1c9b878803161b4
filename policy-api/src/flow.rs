//! Flow logs: packets of one 5-tuple that a node's policies allowed or denied, as agents report
//! them to policy-svc and policy-svc serves them (with their `brindle.policy.v1` messages).

use std::fmt;
use std::net::IpAddr;

use brindle_proto::InvalidField;
use brindle_proto::policy::v1 as pb;

use crate::model::{Direction, IcmpMatch, Protocol};

/// What identifies a flow on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Sender's address.
    pub source_ip: IpAddr,
    /// Receiver's address.
    pub destination_ip: IpAddr,
    /// IANA protocol number.
    pub protocol: u8,
    /// Sender's port (protocols with ports).
    pub source_port: Option<u16>,
    /// Receiver's port (protocols with ports).
    pub destination_port: Option<u16>,
    /// ICMP type and code (ICMP and ICMPv6).
    pub icmp: Option<IcmpMatch>,
}

impl FlowKey {
    /// The protocol.
    pub fn protocol(&self) -> Protocol {
        Protocol::from_number(self.protocol)
    }
}

/// What a policy decision did to a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// Delivered.
    Allow,
    /// Dropped.
    Deny,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        })
    }
}

/// The policy decision a flow met: whose policies (direction), the verdict, and the policy and
/// rule that decided, named as `brindle policy trace` names them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Decision {
    /// The receiver's policies (ingress) or the sender's (egress).
    pub direction: Direction,
    /// What happened to the packets.
    pub verdict: Verdict,
    /// The deciding policy; `None` when no policy selects the endpoint (the default decided:
    /// allow for a pod, deny for a host endpoint).
    pub policy: Option<String>,
    /// The deciding rule; `None` when the end of the policies decided.
    pub rule: Option<usize>,
}

/// Packets and bytes of a flow, and when it was seen (Unix milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowCounts {
    /// Packets counted.
    pub packets: u64,
    /// Their bytes (IP total length).
    pub bytes: u64,
    /// First packet counted.
    pub first_seen_ms: i64,
    /// Last packet counted.
    pub last_seen_ms: i64,
}

impl FlowCounts {
    /// One packet of `bytes` at `now_ms`.
    pub fn packet(bytes: u64, now_ms: i64) -> Self {
        Self {
            packets: 1,
            bytes,
            first_seen_ms: now_ms,
            last_seen_ms: now_ms,
        }
    }

    /// Adds `other` (counted later or elsewhere) to these counts.
    pub fn add(&mut self, other: &Self) {
        self.packets = self.packets.saturating_add(other.packets);
        self.bytes = self.bytes.saturating_add(other.bytes);
        self.first_seen_ms = self.first_seen_ms.min(other.first_seen_ms);
        self.last_seen_ms = self.last_seen_ms.max(other.last_seen_ms);
    }
}

/// What staged policies would have decided for a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedDecision {
    /// The verdict with every staged policy enforced.
    pub verdict: Verdict,
    /// The deciding policy (the first denying direction's, or the receiver's when allowed).
    pub policy: Option<String>,
    /// The deciding rule; `None` when the end of the policies decided.
    pub rule: Option<usize>,
}

/// A flow as policy-svc holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRecord {
    /// The node whose data plane decided.
    pub node: String,
    /// The 5-tuple.
    pub key: FlowKey,
    /// The decision.
    pub decision: Decision,
    /// Counts.
    pub counts: FlowCounts,
    /// The pod sending (`namespace/pod`); `None`: outside any pod.
    pub source: Option<String>,
    /// The pod receiving; `None`: outside any pod.
    pub destination: Option<String>,
    /// What staged policies would decide; `None` when none is staged.
    pub staged: Option<StagedDecision>,
}

impl FlowRecord {
    /// Whether a pod of `namespace` is at either end.
    pub fn touches_namespace(&self, namespace: &str) -> bool {
        [&self.source, &self.destination]
            .into_iter()
            .flatten()
            .any(|pod| pod.split_once('/').is_some_and(|(ns, _)| ns == namespace))
    }
}

fn verdict_to_proto(verdict: Verdict) -> pb::Verdict {
    match verdict {
        Verdict::Allow => pb::Verdict::Allow,
        Verdict::Deny => pb::Verdict::Deny,
    }
}

fn verdict_from_proto(field: &str, value: i32) -> Result<Verdict, InvalidField> {
    match pb::Verdict::try_from(value) {
        Ok(pb::Verdict::Allow) => Ok(Verdict::Allow),
        Ok(pb::Verdict::Deny) => Ok(Verdict::Deny),
        _ => Err(InvalidField::new(field, format!("{value} is not a verdict"))),
    }
}

fn rule_to_proto(rule: Option<usize>) -> i32 {
    rule.map_or(-1, |r| i32::try_from(r).unwrap_or(i32::MAX))
}

fn rule_from_proto(field: &str, value: i32) -> Result<Option<usize>, InvalidField> {
    match value {
        -1 => Ok(None),
        n => usize::try_from(n)
            .map(Some)
            .map_err(|_| InvalidField::new(field, format!("{n} is not a rule index (-1: none)"))),
    }
}

fn port_from_proto(field: &str, value: u32) -> Result<Option<u16>, InvalidField> {
    match u16::try_from(value) {
        Ok(0) => Ok(None),
        Ok(port) => Ok(Some(port)),
        Err(_) => Err(InvalidField::new(field, format!("{value} is not a port"))),
    }
}

/// A flow as its message.
pub fn flow_to_proto(flow: &FlowRecord) -> pb::FlowRecord {
    let key = &flow.key;
    pb::FlowRecord {
        node: flow.node.clone(),
        source_ip: key.source_ip.to_string(),
        destination_ip: key.destination_ip.to_string(),
        protocol: u32::from(key.protocol),
        source_port: key.source_port.map_or(0, u32::from),
        destination_port: key.destination_port.map_or(0, u32::from),
        icmp_type: key.icmp.map(|i| u32::from(i.icmp_type)),
        icmp_code: key.icmp.map(|i| u32::from(i.code.unwrap_or(0))),
        direction: match flow.decision.direction {
            Direction::Ingress => pb::Direction::Ingress,
            Direction::Egress => pb::Direction::Egress,
        }
        .into(),
        verdict: verdict_to_proto(flow.decision.verdict).into(),
        policy: flow.decision.policy.clone().unwrap_or_default(),
        rule_index: rule_to_proto(flow.decision.rule),
        packets: flow.counts.packets,
        bytes: flow.counts.bytes,
        first_seen_unix_ms: flow.counts.first_seen_ms,
        last_seen_unix_ms: flow.counts.last_seen_ms,
        source: flow.source.clone().unwrap_or_default(),
        destination: flow.destination.clone().unwrap_or_default(),
        staged_verdict: flow.staged.as_ref().map(|s| verdict_to_proto(s.verdict).into()),
        staged_policy: flow
            .staged
            .as_ref()
            .and_then(|s| s.policy.clone())
            .unwrap_or_default(),
        staged_rule_index: rule_to_proto(flow.staged.as_ref().and_then(|s| s.rule)),
    }
}

/// A flow from its message; the error names the field that is wrong.
pub fn flow_from_proto(flow: pb::FlowRecord) -> Result<FlowRecord, InvalidField> {
    let address = |field: &str, text: &str| {
        text.parse::<IpAddr>()
            .map_err(|e| InvalidField::new(field, format!("{text:?}: {e}")))
    };
    let protocol = u8::try_from(flow.protocol)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            InvalidField::new("protocol", format!("{} is not a protocol number", flow.protocol))
        })?;
    let icmp = match (flow.icmp_type, flow.icmp_code) {
        (None, None) => None,
        (Some(icmp_type), code) => Some(
            IcmpMatch::new(icmp_type, Some(code.unwrap_or(0)))
                .map_err(|(part, reason)| InvalidField::new(format!("icmp_{part}"), reason))?,
        ),
        (None, Some(_)) => return Err(InvalidField::new("icmp_code", "needs icmp_type")),
    };
    let direction = match pb::Direction::try_from(flow.direction) {
        Ok(pb::Direction::Ingress) => Direction::Ingress,
        Ok(pb::Direction::Egress) => Direction::Egress,
        _ => {
            return Err(InvalidField::new(
                "direction",
                format!("{} is not ingress or egress", flow.direction),
            ));
        }
    };
    let staged = match flow.staged_verdict {
        Some(verdict) => Some(StagedDecision {
            verdict: verdict_from_proto("staged_verdict", verdict)?,
            policy: Some(flow.staged_policy).filter(|p| !p.is_empty()),
            rule: rule_from_proto("staged_rule_index", flow.staged_rule_index)?,
        }),
        None => None,
    };
    Ok(FlowRecord {
        node: flow.node,
        key: FlowKey {
            source_ip: address("source_ip", &flow.source_ip)?,
            destination_ip: address("destination_ip", &flow.destination_ip)?,
            protocol,
            source_port: port_from_proto("source_port", flow.source_port)?,
            destination_port: port_from_proto("destination_port", flow.destination_port)?,
            icmp,
        },
        decision: Decision {
            direction,
            verdict: verdict_from_proto("verdict", flow.verdict)?,
            policy: Some(flow.policy).filter(|p| !p.is_empty()),
            rule: rule_from_proto("rule_index", flow.rule_index)?,
        },
        counts: FlowCounts {
            packets: flow.packets,
            bytes: flow.bytes,
            first_seen_ms: flow.first_seen_unix_ms,
            last_seen_ms: flow.last_seen_unix_ms,
        },
        source: Some(flow.source).filter(|s| !s.is_empty()),
        destination: Some(flow.destination).filter(|s| !s.is_empty()),
        staged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> FlowRecord {
        FlowRecord {
            node: "n1".into(),
            key: FlowKey {
                source_ip: "10.0.0.3".parse().expect("test input"),
                destination_ip: "10.0.0.2".parse().expect("test input"),
                protocol: 6,
                source_port: Some(40000),
                destination_port: Some(80),
                icmp: None,
            },
            decision: Decision {
                direction: Direction::Ingress,
                verdict: Verdict::Deny,
                policy: Some("default/knp.deny-all".into()),
                rule: None,
            },
            counts: FlowCounts::packet(60, 1000),
            source: Some("default/client".into()),
            destination: None,
            staged: Some(StagedDecision {
                verdict: Verdict::Allow,
                policy: None,
                rule: Some(2),
            }),
        }
    }

    #[test]
    fn records_survive_their_message() {
        let flow = record();
        assert_eq!(flow_from_proto(flow_to_proto(&flow)).expect("test input"), flow);
        let mut ping = record();
        ping.key.protocol = 1;
        ping.key.source_port = None;
        ping.key.destination_port = None;
        ping.key.icmp = Some(IcmpMatch {
            icmp_type: 8,
            code: Some(0),
        });
        ping.staged = None;
        assert_eq!(flow_from_proto(flow_to_proto(&ping)).expect("test input"), ping);
    }

    #[test]
    fn a_wrong_field_is_named() {
        let mut message = flow_to_proto(&record());
        message.source_ip = "10.0.0".into();
        assert!(
            flow_from_proto(message)
                .expect_err("must fail")
                .to_string()
                .contains("source_ip")
        );
        let mut message = flow_to_proto(&record());
        message.protocol = 0;
        assert!(
            flow_from_proto(message)
                .expect_err("must fail")
                .to_string()
                .contains("protocol")
        );
        let mut message = flow_to_proto(&record());
        message.destination_port = 70000;
        assert!(
            flow_from_proto(message)
                .expect_err("must fail")
                .to_string()
                .contains("destination_port")
        );
    }

    #[test]
    fn counts_add_up_and_widen_the_window() {
        let mut counts = FlowCounts::packet(100, 2000);
        counts.add(&FlowCounts::packet(50, 1000));
        assert_eq!(
            counts,
            FlowCounts {
                packets: 2,
                bytes: 150,
                first_seen_ms: 1000,
                last_seen_ms: 2000
            }
        );
    }

    #[test]
    fn namespaces_are_matched_on_either_end() {
        let flow = record();
        assert!(flow.touches_namespace("default"));
        assert!(!flow.touches_namespace("def"));
    }
}
