//! Traffic to and from the node itself: `brd-INPUT` (hooked from INPUT) and `brd-OUTPUT` (from
//! OUTPUT). A pod's traffic to its own node goes through the pod's egress policies, then the
//! endpoint-to-host action (Calico's `defaultEndpointToHostAction`). Traffic through an interface
//! with a host endpoint: established traffic, the tunnels between nodes, IPv6 neighbour discovery
//! and the failsafe ports are accepted whatever the policies say; then the host endpoint's
//! policies decide — allowed is accepted, and a host endpoint whose policies allow nothing drops
//! (as in Calico, also with no policy at all). Interfaces without a host endpoint, loopback and
//! the tunnel devices fall through to the host's own rules.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use policy_api::model::Protocol;
use policy_api::view::{HostEndpointView, PolicyView};

use super::render::{EndpointKind, endpoint_chain, port_chunks};
use super::{FROM_WORKLOADS, Family, FlowLogRules, INPUT_CHAIN, OUTPUT_CHAIN, WORKLOAD_INTERFACES};
use crate::core::tunnels::{IPIP_DEVICE, VXLAN_DEVICE, VXLAN_PORT};

/// Pods' traffic to their own node: their egress policies, then the endpoint-to-host action.
const WORKLOADS_TO_HOST: &str = "brd-wl-to-host";

/// Calico's failsafe inbound ports, and brindle's services (7400–7403) and bootstrap port (7409).
pub const DEFAULT_FAILSAFE_INBOUND: &str = "tcp:22,udp:68,tcp:179,tcp:2379,tcp:2380,tcp:6443,tcp:6666,tcp:6667,tcp:7400,tcp:7401,tcp:7402,tcp:7403,tcp:7409";
/// Calico's failsafe outbound ports, and brindle's services and bootstrap port.
pub const DEFAULT_FAILSAFE_OUTBOUND: &str = "udp:53,udp:67,tcp:53,tcp:179,tcp:2379,tcp:2380,tcp:6443,tcp:6666,\
tcp:6667,tcp:7400,tcp:7401,tcp:7402,tcp:7403,tcp:7409";

/// What happens to a pod's traffic to its own node once its egress policies allowed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EndpointToHost {
    /// Dropped.
    Drop,
    /// Accepted (Calico's Kubernetes manifests' setting).
    Accept,
    /// Left to the host's own INPUT rules (the default: a host firewall keeps its say).
    #[default]
    Return,
}

impl EndpointToHost {
    fn target(self) -> &'static str {
        match self {
            Self::Drop => "DROP",
            Self::Accept => "ACCEPT",
            Self::Return => "RETURN",
        }
    }
}

impl FromStr for EndpointToHost {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "drop" => Ok(Self::Drop),
            "accept" => Ok(Self::Accept),
            "return" => Ok(Self::Return),
            _ => Err(format!("{text:?}: expected Drop, Accept or Return")),
        }
    }
}

impl fmt::Display for EndpointToHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Drop => "Drop",
            Self::Accept => "Accept",
            Self::Return => "Return",
        })
    }
}

/// A port no policy closes: `tcp:22`, `udp:68`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FailsafePort {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The port.
    pub port: u16,
}

impl FailsafePort {
    /// A list as Calico writes it (`tcp:22,udp:68`; `none`: empty).
    pub fn parse_list(text: &str) -> Result<Vec<Self>, String> {
        if text.trim().eq_ignore_ascii_case("none") {
            return Ok(Vec::new());
        }
        text.split(',').map(str::trim).map(str::parse).collect()
    }
}

impl FromStr for FailsafePort {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (protocol, port) = text
            .split_once(':')
            .ok_or_else(|| format!("{text:?}: expected tcp:PORT or udp:PORT"))?;
        let protocol = match protocol.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => return Err(format!("{text:?}: protocol {other:?} is not tcp or udp")),
        };
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{text:?}: {port:?} is not a port (1-65535)"))?;
        Ok(Self { protocol, port })
    }
}

/// A list of failsafe ports as one flag's value (`tcp:22,udp:68`; `none`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailsafePorts(pub Vec<FailsafePort>);

impl FromStr for FailsafePorts {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        FailsafePort::parse_list(text).map(Self)
    }
}

/// How traffic to and from the node itself is treated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRules {
    /// A pod's traffic to its own node, once its egress policies allowed it.
    pub endpoint_to_host: EndpointToHost,
    /// Ports open to the node whatever the host endpoints' policies say.
    pub failsafe_inbound: Vec<FailsafePort>,
    /// Ports the node reaches whatever the host endpoints' policies say.
    pub failsafe_outbound: Vec<FailsafePort>,
}

impl Default for HostRules {
    fn default() -> Self {
        let ports = |text| FailsafePort::parse_list(text).unwrap_or_default();
        Self {
            endpoint_to_host: EndpointToHost::default(),
            failsafe_inbound: ports(DEFAULT_FAILSAFE_INBOUND),
            failsafe_outbound: ports(DEFAULT_FAILSAFE_OUTBOUND),
        }
    }
}

/// `-p tcp -m multiport --dports …` rules accepting `ports`.
fn failsafe_rules(ports: &[FailsafePort]) -> Vec<String> {
    let mut rules = Vec::new();
    for (protocol, name) in [(Protocol::Tcp, "tcp"), (Protocol::Udp, "udp")] {
        let mut numbers: Vec<(u16, u16)> = ports
            .iter()
            .filter(|p| p.protocol == protocol)
            .map(|p| (p.port, p.port))
            .collect();
        numbers.sort_unstable();
        numbers.dedup();
        for chunk in port_chunks(&numbers) {
            rules.push(format!("-p {name} -m multiport --dports {chunk} -j ACCEPT"));
        }
    }
    rules
}

/// The chain of a host endpoint for one direction (`kind` `hi`: to the node, `ho`: from it).
fn host_chain_name(kind: &str, host: &HostEndpointView) -> String {
    match &host.interface {
        Some(interface) => format!("brd-{kind}-{interface}"),
        None => format!("brd-{kind}a"),
    }
}

/// What a host endpoint's chain accepts before its policies: established traffic, the tunnels
/// between nodes (VXLAN on UDP 4789, IP-in-IP), IPv6 neighbour discovery and router messages
/// (ICMPv6 133–136), and the failsafe ports of its direction.
fn host_endpoint_preamble(family: Family, failsafe: &[FailsafePort]) -> Vec<String> {
    let mut rules = vec![
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".to_owned(),
        format!("-p udp -m udp --dport {VXLAN_PORT} -j ACCEPT"),
        "-p 4 -j ACCEPT".to_owned(),
    ];
    rules.extend(neighbour_discovery(family));
    rules.extend(failsafe_rules(failsafe));
    rules
}

/// IPv6 neighbour discovery and router messages accepted (none for IPv4): untracked by
/// conntrack, and never a policy's to drop.
fn neighbour_discovery(family: Family) -> Vec<String> {
    match family {
        Family::V4 => Vec::new(),
        Family::V6 => (133..=136)
            .map(|icmp_type| format!("-p ipv6-icmp -m icmp6 --icmpv6-type {icmp_type} -j ACCEPT"))
            .collect(),
    }
}

/// Adds `brd-INPUT`, `brd-OUTPUT`, the pods-to-host chain and a chain per host endpoint and
/// direction to `chains`. `hosts` are the node's host endpoints (one per interface; the first by
/// name wins). Traffic of interfaces without a host endpoint falls through to the host's own
/// rules: a node without host endpoints only has its pods' traffic to it governed.
pub(super) fn host_chains(
    family: Family,
    hosts: &[&HostEndpointView],
    policies: &BTreeMap<String, &PolicyView>,
    rules: &HostRules,
    logging: FlowLogRules,
    chains: &mut BTreeMap<String, Vec<String>>,
) {
    let mut to_host = neighbour_discovery(family);
    to_host.push(format!("-j {FROM_WORKLOADS}"));
    to_host.push(format!("-j {}", rules.endpoint_to_host.target()));
    chains.insert(WORKLOADS_TO_HOST.to_owned(), to_host);
    let mut input = vec![format!("-i {WORKLOAD_INTERFACES} -g {WORKLOADS_TO_HOST}")];
    let mut output = vec![format!("-o {WORKLOAD_INTERFACES} -j RETURN")];
    if !hosts.is_empty() {
        // Loopback and what the tunnels decapsulate are never a host endpoint's.
        for device in ["lo", VXLAN_DEVICE, IPIP_DEVICE] {
            input.push(format!("-i {device} -j RETURN"));
            output.push(format!("-o {device} -j RETURN"));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut sorted: Vec<&&HostEndpointView> = hosts.iter().collect();
    // Interface-specific endpoints before the one for every interface, which matches the rest.
    sorted.sort_by_key(|h| (h.interface.is_none(), h.name.as_str()));
    for host in sorted {
        if !seen.insert(host.interface.clone()) {
            continue;
        }
        let subject = host.interface.as_deref().unwrap_or("*");
        let (in_chain, out_chain) = (host_chain_name("hi", host), host_chain_name("ho", host));
        let interface = |flag: &str| {
            host.interface
                .as_ref()
                .map(|name| format!("{flag} {name} "))
                .unwrap_or_default()
        };
        input.push(format!("{}-g {in_chain}", interface("-i")));
        output.push(format!("{}-g {out_chain}", interface("-o")));
        let mut inbound = host_endpoint_preamble(family, &rules.failsafe_inbound);
        inbound.extend(endpoint_chain(
            &host.ingress,
            "pi",
            policies,
            subject,
            logging,
            EndpointKind::Host,
        ));
        let mut outbound = host_endpoint_preamble(family, &rules.failsafe_outbound);
        outbound.extend(endpoint_chain(
            &host.egress,
            "po",
            policies,
            subject,
            logging,
            EndpointKind::Host,
        ));
        chains.insert(in_chain, inbound);
        chains.insert(out_chain, outbound);
    }
    chains.insert(INPUT_CHAIN.to_owned(), input);
    chains.insert(OUTPUT_CHAIN.to_owned(), output);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failsafe_ports_and_actions_parse_as_calico_writes_them() {
        let ports = FailsafePort::parse_list("tcp:22, udp:68").expect("valid");
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[1].protocol, Protocol::Udp);
        assert!(FailsafePort::parse_list("none").expect("valid").is_empty());
        for wrong in ["22", "icmp:8", "tcp:0", "tcp:70000"] {
            assert!(FailsafePort::parse_list(wrong).is_err(), "{wrong}");
        }
        assert_eq!("DROP".parse::<EndpointToHost>(), Ok(EndpointToHost::Drop));
        assert!("Reject".parse::<EndpointToHost>().is_err());
        let rules = HostRules::default();
        let text = failsafe_rules(&rules.failsafe_inbound).join("\n");
        assert!(text.contains("-p tcp -m multiport --dports 22,179,2379,2380,6443,6666,6667,7400,7401,7402,7403,7409 -j ACCEPT"), "{text}");
        assert!(
            text.contains("-p udp -m multiport --dports 68 -j ACCEPT"),
            "{text}"
        );
        assert!(!text.contains("9400"), "metrics ports can be closed by policy");
    }
}
