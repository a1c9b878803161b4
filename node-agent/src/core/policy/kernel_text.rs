//! What the kernel holds of brindle's policy, read back from the text `iptables-save` and
//! `ipset save` print: chains with the hashes of their rules, sets with their members.

use std::collections::{BTreeMap, BTreeSet};

use super::{OWNED_PREFIX, SetSpec};

/// The hash of a rule as written by [`commented`] (or as iptables-save prints it).
pub(super) fn rule_hash(rule: &str) -> Option<&str> {
    let start = rule.find("brd:")? + 4;
    rule.get(start..start + 16)
}

/// What the kernel holds of brindle's: chains with their rule hashes, sets with members.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Held {
    pub(super) chains: BTreeMap<String, Vec<String>>,
    pub(super) sets: BTreeMap<String, SetSpec>,
    /// The built-in chains that jump to brindle's ([`HOOKS`](super::HOOKS)).
    pub(super) hooked: BTreeSet<&'static str>,
}

/// Reads brindle's chains (rule hashes) from `iptables-save` output.
pub(super) fn parse_chains(saved: &str) -> BTreeMap<String, Vec<String>> {
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
pub(super) fn parse_sets(saved: &str, prefix: &str) -> BTreeMap<String, SetSpec> {
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
