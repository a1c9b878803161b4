//! Policy trace: the verdict a flow gets under the current policies, and the policy and rule that
//! decided each direction — evaluated on the model, the reference the data plane must agree with.

use std::net::IpAddr;

use super::state::ClusterState;
use policy_api::model::{
    Action, Direction, Endpoint, EntityRule, IcmpMatch, Policy, PolicyId, PortMatch, Protocol, Rule,
};

/// A flow to trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// Sender's address.
    pub source_ip: IpAddr,
    /// Receiver's address.
    pub destination_ip: IpAddr,
    /// Protocol.
    pub protocol: Protocol,
    /// Sender's port, when known (rules with source ports match only a known one).
    pub source_port: Option<u16>,
    /// Receiver's port (for protocols with ports).
    pub destination_port: Option<u16>,
    /// ICMP type and code (code `None`: 0), for ICMP and ICMPv6; `None`: unknown, so no rule
    /// with `icmp` or `notICMP` matches.
    pub icmp: Option<IcmpMatch>,
}

pub use policy_api::flow::Verdict;

/// How one direction was decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Egress of the sender or ingress of the receiver.
    pub direction: Direction,
    /// The endpoint whose policies were evaluated.
    pub endpoint: String,
    /// The deciding policy; `None` when no policy applies (the endpoint's default decides).
    pub policy: Option<PolicyId>,
    /// The deciding rule within `policy`; `None` when the end of the policies decided.
    pub rule: Option<usize>,
    /// The outcome of this direction.
    pub verdict: Verdict,
    /// Rules with action Log that matched on the way.
    pub logged: Vec<(PolicyId, usize)>,
    /// What happened, for humans.
    pub explanation: String,
}

/// The verdict and how each direction came to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// Allow only when every evaluated direction allows.
    pub verdict: Verdict,
    /// Egress of the sender (when it is an endpoint), then ingress of the receiver (same).
    pub steps: Vec<Step>,
}

/// One side of a flow as rules see it.
struct Party<'a> {
    ip: IpAddr,
    endpoint: Option<&'a Endpoint>,
    port: Option<u16>,
}

/// Traces `flow` through the policies of its sender (egress) and receiver (ingress).
pub fn trace(state: &ClusterState, flow: &Flow) -> Trace {
    trace_with(state, flow, false)
}

/// Traces `flow` as it would go with every staged policy enforced.
pub fn trace_staged(state: &ClusterState, flow: &Flow) -> Trace {
    trace_with(state, flow, true)
}

fn trace_with(state: &ClusterState, flow: &Flow, with_staged: bool) -> Trace {
    let source = Party {
        ip: flow.source_ip,
        endpoint: state.endpoint_by_ip(flow.source_ip),
        port: flow.source_port,
    };
    let destination = Party {
        ip: flow.destination_ip,
        endpoint: state.endpoint_by_ip(flow.destination_ip),
        port: flow.destination_port,
    };
    let mut steps = Vec::new();
    if let Some(sender) = source.endpoint {
        steps.push(direction(
            state,
            flow,
            sender,
            Direction::Egress,
            &source,
            &destination,
            with_staged,
        ));
    }
    if let Some(receiver) = destination.endpoint {
        steps.push(direction(
            state,
            flow,
            receiver,
            Direction::Ingress,
            &source,
            &destination,
            with_staged,
        ));
    }
    let verdict = if steps.iter().all(|s| s.verdict == Verdict::Allow) {
        Verdict::Allow
    } else {
        Verdict::Deny
    };
    Trace { verdict, steps }
}

fn direction(
    state: &ClusterState,
    flow: &Flow,
    endpoint: &Endpoint,
    direction: Direction,
    source: &Party<'_>,
    destination: &Party<'_>,
    with_staged: bool,
) -> Step {
    let name = policy_api::host_endpoint::endpoint_name(endpoint);
    let policies = state.policies_for(endpoint, direction, with_staged);
    let mut logged = Vec::new();
    let step = |policy: Option<&Policy>, rule: Option<usize>, verdict, explanation: String, logged| Step {
        direction,
        endpoint: name.clone(),
        policy: policy.map(|p| p.id.clone()),
        rule,
        verdict,
        logged,
        explanation,
    };
    // A host endpoint denies what no policy allows, also with no policy (Calico's semantics);
    // its failsafe ports and the agent's exemptions are the data plane's, not modelled here.
    let host = policy_api::host_endpoint::host_endpoint_name(&endpoint.key).is_some();
    if policies.is_empty() {
        return if host {
            step(
                None,
                None,
                Verdict::Deny,
                format!("no policy selects {name} for {direction}: denied (a host endpoint's default)"),
                logged,
            )
        } else {
            step(
                None,
                None,
                Verdict::Allow,
                format!("no policy selects {name} for {direction}: allowed (default)"),
                logged,
            )
        };
    }
    for policy in &policies {
        for (index, rule) in policy.rules(direction).iter().enumerate() {
            if !rule_matches(state, policy, rule, flow, source, destination) {
                continue;
            }
            let at = format!("{direction} rule {index} of {}", policy.id);
            match rule.action {
                Action::Log => logged.push((policy.id.clone(), index)),
                Action::Allow => {
                    return step(
                        Some(policy),
                        Some(index),
                        Verdict::Allow,
                        format!("allowed by {at}"),
                        logged,
                    );
                }
                Action::Deny => {
                    return step(
                        Some(policy),
                        Some(index),
                        Verdict::Deny,
                        format!("denied by {at}"),
                        logged,
                    );
                }
                Action::Pass if host => {
                    return step(
                        Some(policy),
                        Some(index),
                        Verdict::Deny,
                        format!("{at} passes, and a host endpoint has nothing after its policies: denied"),
                        logged,
                    );
                }
                Action::Pass => {
                    return step(
                        Some(policy),
                        Some(index),
                        Verdict::Allow,
                        format!("{at} passes: the remaining policies are skipped and the default allows"),
                        logged,
                    );
                }
            }
        }
    }
    let last = policies.last().copied();
    step(
        last,
        None,
        Verdict::Deny,
        format!(
            "{} {} {name} for {direction} and no rule allows: denied",
            policies.len(),
            if policies.len() == 1 {
                "policy selects"
            } else {
                "policies select"
            }
        ),
        logged,
    )
}

/// Whether `rule` (of `policy`) matches the flow.
fn rule_matches(
    state: &ClusterState,
    policy: &Policy,
    rule: &Rule,
    flow: &Flow,
    source: &Party<'_>,
    destination: &Party<'_>,
) -> bool {
    let icmp_is = |m: &IcmpMatch| {
        flow.icmp.is_some_and(|packet| {
            packet.icmp_type == m.icmp_type && m.code.is_none_or(|code| packet.code.unwrap_or(0) == code)
        })
    };
    rule.protocol.is_none_or(|p| p == flow.protocol)
        && rule.not_protocol.is_none_or(|p| p != flow.protocol)
        && rule.icmp.is_none_or(|m| icmp_is(&m))
        && rule.not_icmp.is_none_or(|m| flow.icmp.is_some() && !icmp_is(&m))
        && side_matches(state, policy, &rule.source, flow.protocol, source)
        && side_matches(state, policy, &rule.destination, flow.protocol, destination)
}

fn side_matches(
    state: &ClusterState,
    policy: &Policy,
    side: &EntityRule,
    protocol: Protocol,
    party: &Party<'_>,
) -> bool {
    let labels = party.endpoint.map(|e| state.selector_labels(e));
    if let Some(selector) = policy.entity_selector(side)
        && !labels.as_ref().is_some_and(|l| selector.matches(l))
    {
        return false;
    }
    if let Some(not) = policy.entity_not_selector(side)
        && labels.as_ref().is_some_and(|l| not.matches(l))
    {
        return false;
    }
    if !side.nets.is_empty() && !side.nets.iter().any(|n| n.contains(&party.ip)) {
        return false;
    }
    if side.not_nets.iter().any(|n| n.contains(&party.ip)) {
        return false;
    }
    let port_in = |ports: &[PortMatch]| {
        party.port.is_some_and(|port| {
            ports.iter().any(|m| match m {
                PortMatch::Named(name) => party
                    .endpoint
                    .and_then(|e| e.named_port(name, protocol))
                    .is_some_and(|p| p == port),
                range => range.contains(port),
            })
        })
    };
    (side.ports.is_empty() || port_in(&side.ports)) && !port_in(&side.not_ports)
}
