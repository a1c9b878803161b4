//! A node's view as iptables chains and ipsets of one family: a dispatch chain per direction, a
//! chain per endpoint and per policy, selectors as sets. Entries whose text is not of the forms
//! the calculation makes are left out ([`rule_text::check`]).

use std::collections::{BTreeMap, BTreeSet};

use brindle_fanout::Key;
use ipnet::IpNet;
use policy_api::model::{Action, Protocol};
use policy_api::rule_text;
use policy_api::view::{CompiledRule, CompiledSide, IpSetKind, PolicyView, ViewEntry};

use super::host::host_chains;
use super::{
    ACCEPT_MARK, FLOW_LOG_NFLOG_GROUP, FORWARD_CHAIN, FROM_WORKLOADS, Family, FlowLogRules, MULTIPORT_SLOTS,
    PASS_MARK, RenderOptions, TO_WORKLOADS, WORKLOAD_INTERFACES,
};

/// An ipset to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    /// `hash:net` or `hash:ip,port`.
    pub kind: &'static str,
    /// Members, as ipset prints them.
    pub members: BTreeSet<String>,
}

/// Everything the policy data plane holds: chains (name → rules, without the `-A <chain>`) and sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    /// Chains.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Sets.
    pub sets: BTreeMap<String, SetSpec>,
}

impl Rendered {
    /// Rules and set members, for acknowledgements.
    pub fn objects(&self) -> usize {
        self.chains.values().map(Vec::len).sum::<usize>()
            + self.sets.values().map(|s| s.members.len()).sum::<usize>()
    }
}

fn short_hash(text: &str) -> String {
    let digest = sha1_smol::Sha1::from(text).digest().to_string();
    digest[..16].to_owned()
}

/// A rule with its hash comment in front.
fn commented(rule: &str) -> String {
    format!("-m comment --comment \"brd:{}\" {rule}", short_hash(rule))
}

/// Renders a node's view for `family` with the default options (without a cache; see
/// [`Renderer`]).
pub fn render(view: &BTreeMap<Key, ViewEntry>, family: Family) -> Rendered {
    Renderer::new(family, RenderOptions::default()).render(view)
}

/// A policy's chains as last rendered, with the agent-local sets they use.
#[derive(Debug, Clone)]
struct RenderedPolicy {
    view: PolicyView,
    ingress: Vec<String>,
    egress: Vec<String>,
    sets: BTreeMap<String, SetSpec>,
}

/// Renders views for one family, reusing the chains of policies that did not change since the
/// last render (a change usually touches one policy or one set; the rest is not rendered again).
#[derive(Debug)]
pub struct Renderer {
    family: Family,
    options: RenderOptions,
    policies: BTreeMap<String, RenderedPolicy>,
}

impl Renderer {
    /// A renderer for `family` with `options`.
    pub fn new(family: Family, options: RenderOptions) -> Self {
        Self {
            family,
            options,
            policies: BTreeMap::new(),
        }
    }

    /// The family rendered.
    pub fn family(&self) -> Family {
        self.family
    }

    /// Renders a node's view. An entry whose names or addresses are not in the form the
    /// calculation makes ([`rule_text::check`]) is left out: its text never reaches the kernel,
    /// and an endpoint whose policy is left out drops its traffic.
    pub fn render(&mut self, view: &BTreeMap<Key, ViewEntry>) -> Rendered {
        let entries: Vec<&ViewEntry> = view.values().filter(|e| rule_text::check(e).is_ok()).collect();
        let mut rendered = Rendered::default();
        let mut policies = BTreeMap::new();
        let mut endpoints = Vec::new();
        let mut hosts = Vec::new();
        for entry in entries.iter().copied() {
            match entry {
                ViewEntry::HostEndpoint(host) => hosts.push(host),
                ViewEntry::Policy(policy) => {
                    policies.insert(policy.id.clone(), policy);
                }
                ViewEntry::Endpoint(endpoint) => endpoints.push(endpoint),
                ViewEntry::IpSet(set) => {
                    let kind = match set.kind {
                        IpSetKind::Net => "hash:net",
                        IpSetKind::IpPort => "hash:ip,port",
                    };
                    rendered
                        .sets
                        .entry(self.family.set_name(&set.id))
                        .or_insert_with(|| SetSpec {
                            kind,
                            members: BTreeSet::new(),
                        })
                        .kind = kind;
                }
                ViewEntry::Member(_) => {}
            }
        }
        // Sets looked up by id, without building each member's set name.
        let mut sets = std::mem::take(&mut rendered.sets);
        let prefix = self.family.set_prefix().len();
        let mut by_name: BTreeMap<&str, &mut SetSpec> =
            sets.iter_mut().map(|(n, s)| (&n[prefix..], s)).collect();
        for entry in entries.iter().copied() {
            if let ViewEntry::Member(member) = entry
                && self.family.holds(&member.member)
                && let Some(set) = by_name.get_mut(member.set.as_str())
            {
                set.members.insert(member.member.clone());
            }
        }
        drop(by_name);
        rendered.sets = sets;
        let mut chains = BTreeMap::new();
        chains.insert(
            FORWARD_CHAIN.to_owned(),
            vec![
                "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".to_owned(),
                format!("-i {WORKLOAD_INTERFACES} -j {FROM_WORKLOADS}"),
                format!("-o {WORKLOAD_INTERFACES} -j {TO_WORKLOADS}"),
                format!("-i {WORKLOAD_INTERFACES} -j ACCEPT"),
                format!("-o {WORKLOAD_INTERFACES} -j ACCEPT"),
            ],
        );
        let mut from = Vec::new();
        let mut to = Vec::new();
        for endpoint in &endpoints {
            let interface = &endpoint.interface;
            from.push(format!("-i {interface} -g brd-fw-{interface}"));
            to.push(format!("-o {interface} -g brd-tw-{interface}"));
            chains.insert(
                format!("brd-fw-{interface}"),
                endpoint_chain(
                    &endpoint.egress,
                    "po",
                    &policies,
                    interface,
                    self.options.flow_log,
                    EndpointKind::Workload,
                ),
            );
            chains.insert(
                format!("brd-tw-{interface}"),
                endpoint_chain(
                    &endpoint.ingress,
                    "pi",
                    &policies,
                    interface,
                    self.options.flow_log,
                    EndpointKind::Workload,
                ),
            );
        }
        // A workload interface the view does not know yet (or any more) gets nothing through.
        from.push("-j DROP".to_owned());
        to.push("-j DROP".to_owned());
        chains.insert(FROM_WORKLOADS.to_owned(), from);
        chains.insert(TO_WORKLOADS.to_owned(), to);
        host_chains(
            self.family,
            &hosts,
            &policies,
            &self.options.host,
            self.options.flow_log,
            &mut chains,
        );
        let used: BTreeSet<&String> = endpoints
            .iter()
            .flat_map(|e| e.ingress.iter().chain(&e.egress))
            .chain(hosts.iter().flat_map(|h| h.ingress.iter().chain(&h.egress)))
            .collect();
        let mut policy_chains = BTreeMap::new();
        for (id, policy) in &policies {
            if !used.contains(id) {
                continue;
            }
            let cached = match self.policies.remove(id.as_str()) {
                Some(cached) if cached.view == **policy => cached,
                _ => {
                    let mut sets = BTreeMap::new();
                    RenderedPolicy {
                        view: (*policy).clone(),
                        ingress: policy_chain(policy, true, self.family, self.options.flow_log, &mut sets)
                            .iter()
                            .map(|r| commented(r))
                            .collect(),
                        egress: policy_chain(policy, false, self.family, self.options.flow_log, &mut sets)
                            .iter()
                            .map(|r| commented(r))
                            .collect(),
                        sets,
                    }
                }
            };
            policy_chains.insert(format!("brd-pi-{id}"), cached.ingress.clone());
            policy_chains.insert(format!("brd-po-{id}"), cached.egress.clone());
            rendered.sets.extend(cached.sets.clone());
            self.policies.insert(id.clone(), cached);
        }
        self.policies
            .retain(|id, _| policies.contains_key(id) && used.contains(id));
        rendered.chains = chains
            .into_iter()
            .map(|(name, rules)| (name, rules.iter().map(|r| commented(r)).collect()))
            .chain(policy_chains)
            .collect();
        rendered
    }
}

/// The rule that sends a packet to NFLOG ([`FLOW_LOG_NFLOG_GROUP`], rate limited) with `prefix`
/// saying what decided: `DR <policy id> <i|e><rule index>` for a Deny rule, `DX <interface>
/// <i|e>` for the end of an endpoint's policies; `AR …` for an Allow or Pass rule and `AX …` for
/// an endpoint no policy selects (first packets only). (Ids and interface names are plain text:
/// [`rule_text`] checked them.)
fn flow_log(logging: FlowLogRules, prefix: &str) -> String {
    let rate = logging.per_second;
    let first_packet = if prefix.starts_with('A') {
        "-m conntrack --ctstate NEW "
    } else {
        ""
    };
    format!(
        "{first_packet}-m limit --limit {rate}/second --limit-burst {rate} \
         -j NFLOG --nflog-group {FLOW_LOG_NFLOG_GROUP} --nflog-prefix \"{prefix}\""
    )
}

/// Whose chain [`endpoint_chain`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EndpointKind {
    /// A pod's: allowed (or passed) packets return to the dispatch, which goes on to the other
    /// direction; nothing is dropped when no policy applies.
    Workload,
    /// A host endpoint's (Calico's semantics): allowed packets are accepted; a Pass, with no
    /// profiles after it, and the end of the policies drop — also when no policy applies.
    Host,
}

/// An endpoint's chain for one direction: each policy in order until one allows or passes;
/// logged and dropped at the end when any policy applies (always for a host endpoint).
pub(super) fn endpoint_chain(
    ids: &[String],
    kind: &str,
    policies: &BTreeMap<String, &PolicyView>,
    interface: &str,
    logging: FlowLogRules,
    endpoint: EndpointKind,
) -> Vec<String> {
    let mut rules = vec![format!("-j MARK --set-xmark 0x0/{:#x}", ACCEPT_MARK | PASS_MARK)];
    let known: Vec<&String> = ids.iter().filter(|id| policies.contains_key(*id)).collect();
    let direction = if kind == "pi" { 'i' } else { 'e' };
    let denied = flow_log(logging, &format!("DX {interface} {direction}"));
    let accepted = format!("-m mark --mark {ACCEPT_MARK:#x}/{ACCEPT_MARK:#x}");
    let passed = format!("-m mark --mark {PASS_MARK:#x}/{PASS_MARK:#x}");
    for id in &known {
        rules.push(format!("-j brd-{kind}-{id}"));
        match endpoint {
            EndpointKind::Workload => {
                rules.push(format!("{accepted} -j RETURN"));
                rules.push(format!("{passed} -j RETURN"));
            }
            EndpointKind::Host => {
                rules.push(format!("{accepted} -j ACCEPT"));
                rules.push(format!("{passed} {denied}"));
                rules.push(format!("{passed} -j DROP"));
            }
        }
    }
    if !ids.is_empty() || endpoint == EndpointKind::Host {
        rules.push(denied);
        rules.push("-j DROP".to_owned());
    } else if logging.allowed {
        rules.push(flow_log(logging, &format!("AX {interface} {direction}")));
    }
    rules
}

/// A policy's chain for one direction (`ingress`: the packet's source is the remote side).
fn policy_chain(
    policy: &PolicyView,
    ingress: bool,
    family: Family,
    logging: FlowLogRules,
    sets: &mut BTreeMap<String, SetSpec>,
) -> Vec<String> {
    let rules = if ingress { &policy.ingress } else { &policy.egress };
    let mut lines = Vec::new();
    for (index, rule) in rules.iter().enumerate() {
        let matches = rule_matches(rule, family, sets);
        let (target, mark) = match rule.action {
            Action::Allow => (
                format!("-j MARK --set-xmark {ACCEPT_MARK:#x}/{ACCEPT_MARK:#x}"),
                Some(ACCEPT_MARK),
            ),
            Action::Pass => (
                format!("-j MARK --set-xmark {PASS_MARK:#x}/{PASS_MARK:#x}"),
                Some(PASS_MARK),
            ),
            Action::Deny => ("-j DROP".to_owned(), None),
            Action::Log => (format!("-j LOG --log-prefix \"brd {} \"", policy.id), None),
        };
        let direction = if ingress { 'i' } else { 'e' };
        let logged = match rule.action {
            Action::Deny => Some(format!("DR {} {direction}{index}", policy.id)),
            Action::Allow | Action::Pass if logging.allowed => {
                Some(format!("AR {} {direction}{index}", policy.id))
            }
            _ => None,
        };
        for matched in &matches {
            if let Some(prefix) = &logged {
                lines.push(
                    format!("{matched}{}", flow_log(logging, prefix))
                        .trim_start()
                        .to_owned(),
                );
            }
            lines.push(format!("{matched}{target}").trim_start().to_owned());
        }
        if let (Some(mark), false) = (mark, matches.is_empty()) {
            lines.push(format!("-m mark --mark {mark:#x}/{mark:#x} -j RETURN"));
        }
    }
    lines
}

/// The match arguments of a rule, one string per alternative (empty when it cannot match the
/// family).
fn rule_matches(rule: &CompiledRule, family: Family, sets: &mut BTreeMap<String, SetSpec>) -> Vec<String> {
    let mut common = String::new();
    if let Some(protocol) = rule.protocol {
        common.push_str(&format!("-p {} ", protocol_name(protocol, family)));
    }
    // With a protocol set, a different notProtocol is implied (validation refuses equal ones), and
    // iptables refuses a second protocol match.
    if let (None, Some(protocol)) = (rule.protocol, rule.not_protocol) {
        common.push_str(&format!("! -p {} ", protocol_name(protocol, family)));
    }
    if rule.icmp.is_some() || rule.not_icmp.is_some() {
        // ICMP types are numbered per family: a rule matching them exists in its protocol's.
        let (module, option) = match (rule.protocol, family) {
            (Some(Protocol::Icmp), Family::V4) => ("icmp", "--icmp-type"),
            (Some(Protocol::Icmpv6), Family::V6) => ("icmp6", "--icmpv6-type"),
            _ => return Vec::new(),
        };
        for (icmp, negated) in [(rule.icmp, ""), (rule.not_icmp, "! ")] {
            if let Some(icmp) = icmp {
                let code = icmp.code.map(|c| format!("/{c}")).unwrap_or_default();
                common.push_str(&format!(
                    "-m {module} {negated}{option} {}{code} ",
                    icmp.icmp_type
                ));
            }
        }
    }
    let Some(source) = side_matches(&rule.source, "src", "-s", "--sports", family, sets) else {
        return Vec::new();
    };
    let Some(destination) = side_matches(&rule.destination, "dst", "-d", "--dports", family, sets) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for s in &source {
        for d in &destination {
            out.push(format!("{common}{s}{d}"));
        }
    }
    out
}

fn protocol_name(protocol: Protocol, family: Family) -> String {
    match (protocol, family) {
        (Protocol::Tcp, _) => "tcp".into(),
        (Protocol::Udp, _) => "udp".into(),
        (Protocol::Sctp, _) => "sctp".into(),
        (Protocol::Icmp, Family::V4) => "icmp".into(),
        (Protocol::Icmp, Family::V6) => "ipv6-icmp".into(),
        (other, _) => other.number().to_string(),
    }
}

/// The networks of a list in `family`; `None` when the list had entries but none of the family.
fn family_nets(nets: &[String], family: Family) -> Option<Vec<String>> {
    let parsed: Vec<IpNet> = nets.iter().filter_map(|n| n.parse().ok()).collect();
    let kept: Vec<String> = parsed
        .iter()
        .filter(|n| n.addr().is_ipv6() == (family == Family::V6))
        .map(ToString::to_string)
        .collect();
    if !nets.is_empty() && kept.is_empty() {
        None
    } else {
        Some(kept)
    }
}

/// An agent-local set for a list of networks (hash:net cannot hold /0: it becomes two /1s).
fn net_set(nets: &[String], family: Family, sets: &mut BTreeMap<String, SetSpec>) -> String {
    let mut members = BTreeSet::new();
    let (everything, halves) = family.everything();
    for net in nets {
        if net == everything {
            members.extend(halves.map(str::to_owned));
        } else {
            members.insert(net.trim_end_matches(family.host_suffix()).to_owned());
        }
    }
    let joined: Vec<&str> = members.iter().map(String::as_str).collect();
    let name = family.set_name(&format!("c{}", short_hash(&joined.join(","))));
    sets.insert(
        name.clone(),
        SetSpec {
            kind: "hash:net",
            members,
        },
    );
    name
}

/// Match arguments of one side, one per alternative; `None` when it cannot match the family.
fn side_matches(
    side: &CompiledSide,
    direction: &str,
    address_flag: &str,
    ports_flag: &str,
    family: Family,
    sets: &mut BTreeMap<String, SetSpec>,
) -> Option<Vec<String>> {
    let set_name = |id: &str| family.set_name(id);
    let mut fixed = String::new();
    for set in &side.sets {
        fixed.push_str(&format!("-m set --match-set {} {direction} ", set_name(set)));
    }
    for set in &side.not_sets {
        fixed.push_str(&format!("-m set ! --match-set {} {direction} ", set_name(set)));
    }
    let nets = family_nets(&side.nets, family)?;
    match nets.as_slice() {
        [] => {}
        [one] => fixed.push_str(&format!("{address_flag} {one} ")),
        many => fixed.push_str(&format!(
            "-m set --match-set {} {direction} ",
            net_set(many, family, sets)
        )),
    }
    let not_nets = family_nets(&side.not_nets, family).unwrap_or_default();
    match not_nets.as_slice() {
        [] => {}
        // iptables takes one address flag per rule: with nets already using it, a set.
        [one] if nets.is_empty() => fixed.push_str(&format!("! {address_flag} {one} ")),
        many => fixed.push_str(&format!(
            "-m set ! --match-set {} {direction} ",
            net_set(many, family, sets)
        )),
    }
    for chunk in port_chunks(&side.not_ports) {
        fixed.push_str(&format!("-m multiport ! {ports_flag} {chunk} "));
    }
    for set in &side.not_named_port_sets {
        fixed.push_str(&format!(
            "-m set ! --match-set {} {direction},{direction} ",
            set_name(set)
        ));
    }
    if !side.matches_ports() {
        return Some(vec![fixed]);
    }
    let mut alternatives: Vec<String> = port_chunks(&side.ports)
        .into_iter()
        .map(|chunk| format!("{fixed}-m multiport {ports_flag} {chunk} "))
        .collect();
    for set in &side.named_port_sets {
        alternatives.push(format!(
            "{fixed}-m set --match-set {} {direction},{direction} ",
            set_name(set)
        ));
    }
    Some(alternatives)
}

/// Ports as multiport lists of at most [`MULTIPORT_SLOTS`] slots.
pub(super) fn port_chunks(ports: &[(u16, u16)]) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut slots = 0;
    for (first, last) in ports {
        let (text, cost) = if first == last {
            (first.to_string(), 1)
        } else {
            (format!("{first}:{last}"), 2)
        };
        if slots + cost > MULTIPORT_SLOTS {
            chunks.push(current.join(","));
            current.clear();
            slots = 0;
        }
        current.push(text);
        slots += cost;
    }
    if !current.is_empty() {
        chunks.push(current.join(","));
    }
    chunks
}
