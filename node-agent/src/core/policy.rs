//! The policy data plane: a node's policy view rendered into brindle's own iptables chains
//! (filter table, hooked from FORWARD) and ipsets, and applied so that only what changed is
//! written — ipsets first (new sets swapped in whole, changed ones by member), then one
//! `iptables-restore --noflush` for the chains whose rules changed, then stale sets destroyed.
//!
//! Every rule carries a `brd:<hash>` comment of its own text, so what the kernel holds is compared
//! by hash (whatever iptables-save prints) and a resync repairs out-of-band changes.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use policy_api::model::{Action, Protocol};
use policy_api::rule_text;
use policy_api::view::{CompiledRule, CompiledSide, IpSetKind, PolicyView, ViewEntry};

use crate::dataplane::{DataplaneError, Ipsets, Iptables};

/// The chain hooked from FORWARD.
pub const FORWARD_CHAIN: &str = "brd-FORWARD";
const FROM_WORKLOADS: &str = "brd-from-wl";
const TO_WORKLOADS: &str = "brd-to-wl";
/// Prefix of every chain and ipset brindle owns.
pub const OWNED_PREFIX: &str = "brd-";
/// Host-side interfaces of workloads.
const WORKLOAD_INTERFACES: &str = "brd+";
/// Mark bit: a policy allowed the packet.
const ACCEPT_MARK: u32 = 0x10000;
/// Mark bit: a policy passed the packet on (the endpoint's default, allow, decides).
const PASS_MARK: u32 = 0x20000;
/// Most ports (a range counts two) one multiport match takes.
const MULTIPORT_SLOTS: usize = 15;

/// The address family a renderer and an applier work on: IPv4 (iptables, `inet` sets named
/// `brd-…`) or IPv6 (ip6tables, `inet6` sets named `brd6-…`; the two share the ipset namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Prefix of the family's ipsets.
    fn set_prefix(self) -> &'static str {
        match self {
            Self::V4 => OWNED_PREFIX,
            Self::V6 => "brd6-",
        }
    }

    /// Kernel name of a view's ipset.
    pub fn set_name(self, id: &str) -> String {
        format!("{}{id}", self.set_prefix())
    }

    fn ipset_family(self) -> &'static str {
        match self {
            Self::V4 => "inet",
            Self::V6 => "inet6",
        }
    }

    /// Whether an address, network or set member (`address,proto:port`) is of this family.
    fn holds(self, text: &str) -> bool {
        let is_v6 = text.split(',').next().unwrap_or_default().contains(':');
        is_v6 == (self == Self::V6)
    }

    /// The whole address space as `hash:net` can hold it (no /0: two halves).
    fn everything(self) -> (&'static str, [&'static str; 2]) {
        match self {
            Self::V4 => ("0.0.0.0/0", ["0.0.0.0/1", "128.0.0.0/1"]),
            Self::V6 => ("::/0", ["::/1", "8000::/1"]),
        }
    }

    /// The suffix of a host network, which ipset prints without.
    fn host_suffix(self) -> &'static str {
        match self {
            Self::V4 => "/32",
            Self::V6 => "/128",
        }
    }
}

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

/// The hash of a rule as written by [`commented`] (or as iptables-save prints it).
fn rule_hash(rule: &str) -> Option<&str> {
    let start = rule.find("brd:")? + 4;
    rule.get(start..start + 16)
}

/// Renders a node's view for `family` (without a cache; see [`Renderer`]).
pub fn render(view: &BTreeMap<String, ViewEntry>, family: Family) -> Rendered {
    Renderer::new(family).render(view)
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
    policies: BTreeMap<String, RenderedPolicy>,
}

impl Renderer {
    /// A renderer for `family`.
    pub fn new(family: Family) -> Self {
        Self {
            family,
            policies: BTreeMap::new(),
        }
    }

    /// Renders a node's view. An entry whose names or addresses are not in the form the
    /// calculation makes ([`rule_text::check`]) is left out: its text never reaches the kernel,
    /// and an endpoint whose policy is left out drops its traffic.
    pub fn render(&mut self, view: &BTreeMap<String, ViewEntry>) -> Rendered {
        let entries: Vec<&ViewEntry> = view.values().filter(|e| rule_text::check(e).is_ok()).collect();
        let mut rendered = Rendered::default();
        let mut policies = BTreeMap::new();
        let mut endpoints = Vec::new();
        for entry in entries.iter().copied() {
            match entry {
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
                endpoint_chain(&endpoint.egress, "po", &policies),
            );
            chains.insert(
                format!("brd-tw-{interface}"),
                endpoint_chain(&endpoint.ingress, "pi", &policies),
            );
        }
        // A workload interface the view does not know yet (or any more) gets nothing through.
        from.push("-j DROP".to_owned());
        to.push("-j DROP".to_owned());
        chains.insert(FROM_WORKLOADS.to_owned(), from);
        chains.insert(TO_WORKLOADS.to_owned(), to);
        let used: BTreeSet<&String> = endpoints
            .iter()
            .flat_map(|e| e.ingress.iter().chain(&e.egress))
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
                        ingress: policy_chain(policy, true, self.family, &mut sets)
                            .iter()
                            .map(|r| commented(r))
                            .collect(),
                        egress: policy_chain(policy, false, self.family, &mut sets)
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

/// An endpoint's chain for one direction: each policy in order, returning (allowed) as soon as
/// one allows or passes; dropped at the end when any policy applies.
fn endpoint_chain(ids: &[String], kind: &str, policies: &BTreeMap<String, &PolicyView>) -> Vec<String> {
    let mut rules = vec![format!("-j MARK --set-xmark 0x0/{:#x}", ACCEPT_MARK | PASS_MARK)];
    let known: Vec<&String> = ids.iter().filter(|id| policies.contains_key(*id)).collect();
    for id in &known {
        rules.push(format!("-j brd-{kind}-{id}"));
        rules.push(format!(
            "-m mark --mark {ACCEPT_MARK:#x}/{ACCEPT_MARK:#x} -j RETURN"
        ));
        rules.push(format!("-m mark --mark {PASS_MARK:#x}/{PASS_MARK:#x} -j RETURN"));
    }
    if !ids.is_empty() {
        rules.push("-j DROP".to_owned());
    }
    rules
}

/// A policy's chain for one direction (`ingress`: the packet's source is the remote side).
fn policy_chain(
    policy: &PolicyView,
    ingress: bool,
    family: Family,
    sets: &mut BTreeMap<String, SetSpec>,
) -> Vec<String> {
    let rules = if ingress { &policy.ingress } else { &policy.egress };
    let mut lines = Vec::new();
    for rule in rules {
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
        for matched in &matches {
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
fn port_chunks(ports: &[(u16, u16)]) -> Vec<String> {
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

/// What the kernel holds of brindle's: chains with their rule hashes, sets with members.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Held {
    chains: BTreeMap<String, Vec<String>>,
    sets: BTreeMap<String, SetSpec>,
    /// Whether FORWARD jumps to brindle's chain.
    hooked: bool,
}

/// Reads brindle's chains (rule hashes) from `iptables-save` output.
fn parse_chains(saved: &str) -> BTreeMap<String, Vec<String>> {
    let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in saved.lines() {
        if let Some(rest) = line.strip_prefix(':') {
            let name = rest.split_whitespace().next().unwrap_or_default();
            if name.starts_with(OWNED_PREFIX) {
                chains.entry(name.to_owned()).or_default();
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let (chain, rule) = rest.split_once(' ').unwrap_or((rest, ""));
            if chain.starts_with(OWNED_PREFIX) {
                let hash = rule_hash(rule).unwrap_or("unknown").to_owned();
                chains.entry(chain.to_owned()).or_default().push(hash);
            }
        }
    }
    chains
}

/// Reads brindle's sets of one family (`prefix`) from `ipset save` output.
fn parse_sets(saved: &str, prefix: &str) -> BTreeMap<String, SetSpec> {
    let mut sets: BTreeMap<String, SetSpec> = BTreeMap::new();
    for line in saved.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("create"), Some(name), Some(kind)) if name.starts_with(prefix) => {
                let kind = if kind == "hash:ip,port" {
                    "hash:ip,port"
                } else if kind == "hash:net" {
                    "hash:net"
                } else {
                    "other"
                };
                sets.insert(
                    name.to_owned(),
                    SetSpec {
                        kind,
                        members: BTreeSet::new(),
                    },
                );
            }
            (Some("add"), Some(name), Some(member)) => {
                if let Some(set) = sets.get_mut(name) {
                    set.members.insert(member.to_owned());
                }
            }
            _ => {}
        }
    }
    sets
}

/// Applies rendered policy of one family, writing only differences from what it last applied
/// (or, after a resync or a failure, from what it reads back from the kernel).
#[derive(Debug)]
pub struct PolicyApplier {
    family: Family,
    held: Option<Held>,
}

impl PolicyApplier {
    /// An applier for `family` (its iptables must be the family's: iptables or ip6tables).
    pub fn new(family: Family) -> Self {
        Self { family, held: None }
    }

    /// Forgets what it applied: the next apply re-reads the kernel and repairs any difference.
    pub fn resync(&mut self) {
        self.held = None;
    }

    /// Makes the kernel hold `desired`; returns the number of writes (ipset and iptables batches).
    pub fn apply(
        &mut self,
        iptables: &dyn Iptables,
        ipsets: &dyn Ipsets,
        desired: &Rendered,
    ) -> Result<usize, DataplaneError> {
        let result = self.apply_inner(iptables, ipsets, desired);
        if result.is_err() {
            self.held = None;
        }
        result
    }

    fn apply_inner(
        &mut self,
        iptables: &dyn Iptables,
        ipsets: &dyn Ipsets,
        desired: &Rendered,
    ) -> Result<usize, DataplaneError> {
        let held = match self.held.take() {
            Some(held) => held,
            None => {
                let saved = iptables.save("filter")?;
                let jump = format!("-A FORWARD -j {FORWARD_CHAIN}");
                Held {
                    chains: parse_chains(&saved),
                    sets: parse_sets(&ipsets.save()?, self.family.set_prefix()),
                    hooked: saved.lines().any(|line| line.trim() == jump),
                }
            }
        };
        let mut writes = 0;
        // Sets first: rules may only refer to sets that exist.
        let mut payload = String::new();
        for (name, spec) in &desired.sets {
            match held.sets.get(name) {
                Some(current) if current.kind == spec.kind => {
                    for member in current.members.difference(&spec.members) {
                        payload.push_str(&format!("del {name} {member} -exist\n"));
                    }
                    for member in spec.members.difference(&current.members) {
                        payload.push_str(&format!("add {name} {member} -exist\n"));
                    }
                }
                _ => {
                    // New (or of another type, which the swap refuses and a resync reports):
                    // filled aside and swapped in whole.
                    let prefix = self.family.set_prefix();
                    let family = self.family.ipset_family();
                    let temporary = format!("{prefix}tmp-{}", &name[prefix.len()..]);
                    payload.push_str(&format!(
                        "create {temporary} {} family {family} -exist\nflush {temporary}\n",
                        spec.kind
                    ));
                    for member in &spec.members {
                        payload.push_str(&format!("add {temporary} {member}\n"));
                    }
                    payload.push_str(&format!(
                        "create {name} {} family {family} -exist\nswap {temporary} {name}\ndestroy {temporary}\n",
                        spec.kind
                    ));
                }
            }
        }
        if !payload.is_empty() {
            ipsets.restore(&payload)?;
            writes += 1;
        }
        let wanted: BTreeMap<&String, Vec<&str>> = desired
            .chains
            .iter()
            .map(|(name, rules)| (name, rules.iter().filter_map(|r| rule_hash(r)).collect()))
            .collect();
        // Every chain declared (created or flushed) before any rule, so jumps find their targets.
        let mut declarations = String::from("*filter\n");
        let mut appends = String::new();
        for (name, rules) in &desired.chains {
            let same = held
                .chains
                .get(name)
                .is_some_and(|h| h.iter().map(String::as_str).eq(wanted[name].iter().copied()));
            if same {
                continue;
            }
            declarations.push_str(&format!(":{name} - [0:0]\n"));
            for rule in rules {
                appends.push_str(&format!("-A {name} {rule}\n"));
            }
        }
        let stale: Vec<&String> = held
            .chains
            .keys()
            .filter(|name| !desired.chains.contains_key(*name))
            .collect();
        for name in &stale {
            declarations.push_str(&format!(":{name} - [0:0]\n"));
            appends.push_str(&format!("-X {name}\n"));
        }
        let changed = declarations.len() > "*filter\n".len();
        let mut restore = declarations + &appends;
        restore.push_str("COMMIT\n");
        let hooked = desired.chains.contains_key(FORWARD_CHAIN);
        if !hooked && held.hooked {
            // Nothing to enforce any more: unhook before the chains go.
            iptables.remove_jump("filter", "FORWARD", FORWARD_CHAIN)?;
        }
        if changed {
            iptables.restore("filter", &restore)?;
            writes += 1;
        }
        if hooked && !held.hooked {
            iptables.ensure_jump("filter", "FORWARD", FORWARD_CHAIN)?;
        }
        // Sets no rule uses any more go last.
        let mut destroy = String::new();
        for name in held.sets.keys().filter(|name| !desired.sets.contains_key(*name)) {
            destroy.push_str(&format!("destroy {name}\n"));
        }
        if !destroy.is_empty() {
            ipsets.restore(&destroy)?;
            writes += 1;
        }
        self.held = Some(Held {
            chains: wanted
                .into_iter()
                .map(|(k, v)| (k.clone(), v.into_iter().map(str::to_owned).collect()))
                .collect(),
            sets: desired.sets.clone(),
            hooked,
        });
        Ok(writes)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use policy_api::model::{Endpoint, EndpointKey, NamedPort, Namespace, Protocol};
    use policy_svc::core::Calculator;
    use policy_svc::core::resource::{Resource, parse_documents};

    use super::*;
    use crate::dataplane::{Call, RecordingKernel};

    const POLICIES: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - from: [{podSelector: {matchLabels: {role: client}}}, {ipBlock: {cidr: 10.9.0.0/16, except: [10.9.1.0/24, 10.9.2.0/24]}}]
      ports: [{port: http}, {port: 9000, endPort: 9010}]
";

    fn endpoint(node: &str, interface: &str, pod: &str, ip: &str, labels: &[(&str, &str)]) -> Endpoint {
        Endpoint {
            key: EndpointKey {
                node: node.into(),
                interface: interface.into(),
            },
            namespace: "shop".into(),
            pod: pod.into(),
            container_id: format!("c-{pod}"),
            ips: vec![ip.parse().expect("ip")],
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ports: vec![NamedPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080,
            }],
        }
    }

    fn world() -> Calculator {
        let mut calc = Calculator::new();
        calc.put_namespace(Namespace::new("shop", BTreeMap::new()));
        for resource in parse_documents(POLICIES, "").expect("valid") {
            if let Resource::KubernetesPolicy(policy) = resource {
                calc.put_policy(policy.to_policy().expect("valid"));
            }
        }
        calc.put_endpoint(endpoint("n1", "brdaaaa", "web", "10.0.0.2", &[("app", "web")]));
        calc.put_endpoint(endpoint("n1", "brdbbbb", "other", "10.0.0.3", &[]));
        calc.put_endpoint(endpoint(
            "n2",
            "brdcccc",
            "client",
            "10.0.1.2",
            &[("role", "client")],
        ));
        calc
    }

    fn restores(kernel: &RecordingKernel) -> (Vec<String>, Vec<String>) {
        let mut iptables = Vec::new();
        let mut ipsets = Vec::new();
        for call in kernel.calls() {
            match call {
                Call::IptablesRestore(_, payload) => iptables.push(payload),
                Call::IpsetRestore(payload) => ipsets.push(payload),
                _ => {}
            }
        }
        (iptables, ipsets)
    }

    #[test]
    fn renders_dispatch_endpoint_and_policy_chains_with_sets() {
        let rendered = render(&world().view("n1"), Family::V4);
        let chain = |name: &str| {
            rendered
                .chains
                .get(name)
                .unwrap_or_else(|| panic!("{name}: {:?}", rendered.chains.keys()))
        };
        assert!(
            chain(FROM_WORKLOADS)
                .iter()
                .any(|r| r.ends_with("-i brdaaaa -g brd-fw-brdaaaa"))
        );
        assert!(
            chain(TO_WORKLOADS).last().is_some_and(|r| r.ends_with("-j DROP")),
            "unknown workloads fail closed"
        );
        // web is selected for ingress: its chain ends in a drop; other is open (marks cleared only).
        assert!(
            chain("brd-tw-brdaaaa")
                .last()
                .is_some_and(|r| r.ends_with("-j DROP"))
        );
        assert_eq!(chain("brd-tw-brdbbbb").len(), 1);
        let policy = rendered
            .chains
            .keys()
            .find(|k| k.starts_with("brd-pi-"))
            .expect("policy chain");
        let rules = chain(policy).join("\n");
        assert!(rules.contains("-m multiport --dports 9000:9010"), "{rules}");
        assert!(rules.contains("dst,dst"), "named port set: {rules}");
        assert!(
            rules.contains("-s 10.9.0.0/16") && rules.contains("! --match-set brd-c"),
            "{rules}"
        );
        let client_set = rendered
            .sets
            .values()
            .find(|s| s.members.contains("10.0.1.2"))
            .expect("client set");
        assert_eq!(client_set.kind, "hash:net");
        assert!(
            rendered
                .sets
                .values()
                .any(|s| s.kind == "hash:ip,port" && s.members.contains("10.0.0.2,tcp:8080"))
        );
        assert!(
            rendered.sets.values().any(|s| s.members.contains("10.9.1.0/24")),
            "except list as a local set"
        );
    }

    #[test]
    fn each_family_renders_its_own_addresses_into_its_own_sets() {
        let mut calc = world();
        let mut dual = endpoint("n2", "brddddd", "client6", "fd00::7", &[("role", "client")]);
        dual.ips.push("10.0.1.7".parse().expect("ip"));
        calc.put_endpoint(dual);
        let icmp = "apiVersion: brindle.io/v1
kind: NetworkPolicy
metadata: {name: ping, namespace: shop}
spec:
  selector: app == 'web'
  ingress: [{action: Allow, protocol: ICMP, source: {nets: [\"fd00:9::/64\", 10.9.0.0/16]}}]
";
        for resource in parse_documents(icmp, "").expect("valid") {
            if let Resource::Policy(policy) = resource {
                calc.put_policy(policy);
            }
        }
        let v4 = render(&calc.view("n1"), Family::V4);
        let v6 = render(&calc.view("n1"), Family::V6);
        assert!(
            v4.sets.keys().all(|name| name.starts_with("brd-")),
            "{:?}",
            v4.sets.keys()
        );
        assert!(
            v6.sets.keys().all(|name| name.starts_with("brd6-")),
            "{:?}",
            v6.sets.keys()
        );
        let members = |rendered: &Rendered| -> BTreeSet<String> {
            rendered
                .sets
                .values()
                .flat_map(|s| s.members.iter().cloned())
                .collect()
        };
        let address = |member: &String| member.split(',').next().unwrap_or_default().to_owned();
        assert!(members(&v4).contains("10.0.1.7") && !members(&v4).iter().any(|m| address(m).contains(':')));
        assert!(members(&v6).contains("fd00::7") && !members(&v6).contains("10.0.1.7"));
        let rules = |rendered: &Rendered| {
            rendered
                .chains
                .values()
                .flatten()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(rules(&v4).contains("-p icmp -s 10.9.0.0/16"), "{}", rules(&v4));
        assert!(
            rules(&v6).contains("-p ipv6-icmp -s fd00:9::/64"),
            "{}",
            rules(&v6)
        );
    }

    #[test]
    fn a_protocol_with_a_not_protocol_renders_one_protocol_match() {
        let mut calc = world();
        let guard = "apiVersion: brindle.io/v1
kind: NetworkPolicy
metadata: {name: guard, namespace: shop}
spec:
  selector: app == 'web'
  ingress:
    - {action: Deny, protocol: TCP, notProtocol: UDP}
    - {action: Allow, notProtocol: UDP}
";
        for resource in parse_documents(guard, "").expect("valid") {
            if let Resource::Policy(policy) = resource {
                calc.put_policy(policy);
            }
        }
        let rendered = render(&calc.view("n1"), Family::V4);
        let rules: Vec<&String> = rendered
            .chains
            .iter()
            .filter(|(name, _)| name.starts_with("brd-pi-"))
            .flat_map(|(_, rules)| rules)
            .collect();
        assert!(
            rules.iter().any(|r| r.ends_with("\" -p tcp -j DROP")),
            "{rules:?}"
        );
        assert!(
            rules.iter().any(|r| r.contains("\" ! -p udp -j MARK")),
            "{rules:?}"
        );
        assert!(
            rules.iter().all(|r| r.matches("-p ").count() <= 1),
            "iptables accepts one protocol match per rule: {rules:?}"
        );
    }

    #[test]
    fn applies_only_differences_and_repairs_after_resync() {
        let kernel = RecordingKernel::default();
        let mut calc = world();
        let mut applier = PolicyApplier::new(Family::V4);
        let desired = render(&calc.view("n1"), Family::V4);
        assert_eq!(applier.apply(&kernel, &kernel, &desired).expect("apply"), 2);
        assert!(kernel.calls().contains(&Call::IptablesJump(
            "filter".into(),
            "FORWARD".into(),
            FORWARD_CHAIN.into()
        )));
        assert_eq!(
            applier.apply(&kernel, &kernel, &desired).expect("again"),
            0,
            "nothing changed, nothing written"
        );

        // A new client elsewhere: one ipset line, no iptables write.
        let before = kernel.calls().len();
        calc.put_endpoint(endpoint(
            "n3",
            "brddddd",
            "client2",
            "10.0.2.2",
            &[("role", "client")],
        ));
        let desired = render(&calc.view("n1"), Family::V4);
        assert_eq!(applier.apply(&kernel, &kernel, &desired).expect("member"), 1);
        let (iptables, ipsets) = restores(&kernel);
        assert_eq!(iptables.len(), 1, "still only the first iptables write");
        let last = ipsets.last().expect("ipset write");
        assert_eq!(
            last.trim(),
            format!(
                "add {} 10.0.2.2 -exist",
                last.split_whitespace().nth(1).unwrap_or_default()
            )
        );
        assert_eq!(
            kernel.calls().len() - before,
            1,
            "one ipset restore, nothing else"
        );

        // Somebody flushes a chain by hand: after a resync exactly that chain is written back.
        Iptables::restore(&kernel, "filter", "*filter\n:brd-tw-brdaaaa - [0:0]\nCOMMIT\n").expect("tamper");
        applier.resync();
        assert_eq!(applier.apply(&kernel, &kernel, &desired).expect("repair"), 1);
        let (iptables, _) = restores(&kernel);
        let repair = iptables.last().expect("repair write");
        assert!(
            repair.contains(":brd-tw-brdaaaa") && !repair.contains(":brd-fw-brdaaaa"),
            "{repair}"
        );

        // The policy goes: its chain and sets go, the endpoints stay (open).
        let id = calc.state().policies().next().expect("policy").id.clone();
        calc.remove_policy(&id);
        let desired = render(&calc.view("n1"), Family::V4);
        applier.apply(&kernel, &kernel, &desired).expect("remove");
        let saved = Iptables::save(&kernel, "filter").expect("save");
        assert!(!saved.contains("brd-pi-"), "{saved}");
        assert!(saved.contains(":brd-tw-brdaaaa"));
        let sets = Ipsets::save(&kernel).expect("sets");
        assert!(sets.trim().is_empty(), "stale sets destroyed: {sets}");

        // A fresh applier (agent restart) writes nothing when the kernel already matches.
        let mut restarted = PolicyApplier::new(Family::V4);
        assert_eq!(restarted.apply(&kernel, &kernel, &desired).expect("restart"), 0);
    }

    #[test]
    fn a_failed_write_is_retried_from_what_the_kernel_holds() {
        let kernel = RecordingKernel::default();
        let mut applier = PolicyApplier::new(Family::V4);
        let desired = render(&world().view("n1"), Family::V4);
        kernel.fail_on("IptablesRestore");
        assert!(applier.apply(&kernel, &kernel, &desired).is_err());
        assert!(applier.apply(&kernel, &kernel, &desired).expect("retry") >= 1);
        assert_eq!(applier.apply(&kernel, &kernel, &desired).expect("settled"), 0);
    }
}
