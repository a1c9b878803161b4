//! The ipsets policies use: each set's members (counted per contributing endpoint) and the nodes
//! holding it; a member's entry is built once and shared by every node's view.

use std::collections::BTreeMap;
use std::sync::Arc;

use brindle_fanout::Key;
use policy_api::model::EndpointKey;
use policy_api::shared::SharedViewEntry;
use policy_api::view::{MemberView, ViewEntry, keys};

use super::super::compile::SetDefinition;
use super::{Calculator, SharedEntry};

/// A set's member entries, each with how many endpoints contribute it.
type MemberEntries = BTreeMap<String, (usize, SharedEntry)>;

/// An ipset every policy that uses it shares.
#[derive(Debug)]
pub(super) struct SetState {
    pub(super) definition: SetDefinition,
    /// Its header entry.
    header: SharedEntry,
    /// Members per endpoint that contributes any.
    members: BTreeMap<EndpointKey, Vec<String>>,
    /// Each member's entry.
    entries: MemberEntries,
    /// Policies using it.
    policies: usize,
    /// Nodes whose view holds it, with how many of their policies use it.
    nodes: BTreeMap<String, usize>,
}

impl Calculator {
    /// A node's policies start (`uses`) or stop using a set: the node's view gains or loses the
    /// set's entries when the first starts or the last stops.
    pub(super) fn node_uses_set(&mut self, node: &str, id: &str, uses: bool) {
        let Some(set) = self.sets.get_mut(id) else {
            return;
        };
        let count = set.nodes.entry(node.to_owned()).or_default();
        let before = *count;
        if uses {
            *count += 1;
        } else {
            *count = count.saturating_sub(1);
        }
        let after = *count;
        if after == 0 {
            set.nodes.remove(node);
        }
        if self.loading || (before > 0) == (after > 0) {
            return;
        }
        for entry in self.set_entries(id) {
            let key = Key::clone(entry.key());
            self.record_change(node, &key, (after > 0).then_some(entry));
        }
    }

    /// A set's header and member entries.
    pub(super) fn set_entries(&self, id: &str) -> Vec<SharedEntry> {
        self.set_header(id)
            .into_iter()
            .chain(self.set_member_entries(id))
            .cloned()
            .collect()
    }

    /// A set's header entry.
    pub(super) fn set_header(&self, id: &str) -> Option<&SharedEntry> {
        self.sets.get(id).map(|set| &set.header)
    }

    /// A set's member entries, in key order.
    pub(super) fn set_member_entries(&self, id: &str) -> impl Iterator<Item = &SharedEntry> {
        self.sets
            .get(id)
            .into_iter()
            .flat_map(|set| set.entries.values().map(|(_, entry)| entry))
    }

    /// A policy starts using a set: create it (computing its members) if it is new.
    pub(super) fn acquire_set(&mut self, definition: &SetDefinition) {
        let id = definition.id();
        if let Some(set) = self.sets.get_mut(&id) {
            set.policies += 1;
            return;
        }
        let mut members = BTreeMap::new();
        let mut entries = MemberEntries::new();
        for (key, labels) in self.candidates(definition.selector()) {
            if let Some(endpoint) = self.state.endpoint(key) {
                let contributed = definition.members(endpoint, labels);
                for member in &contributed {
                    count_member(&mut entries, &id, member);
                }
                if !contributed.is_empty() {
                    members.insert(key.clone(), contributed);
                }
            }
        }
        self.sets_by_label.insert(definition.selector(), id.clone());
        let header = Arc::new(SharedViewEntry::new(
            format!("{}{id}", keys::IPSET),
            ViewEntry::IpSet(definition.view()),
        ));
        self.sets.insert(
            id,
            SetState {
                header,
                definition: definition.clone(),
                members,
                entries,
                policies: 1,
                nodes: BTreeMap::new(),
            },
        );
    }

    /// A policy stops using a set: drop it once no policy does.
    pub(super) fn release_set(&mut self, id: &str) {
        if let Some(set) = self.sets.get_mut(id) {
            set.policies -= 1;
            if set.policies == 0 && set.nodes.is_empty() {
                let selector = set.definition.selector().clone();
                self.sets.remove(id);
                self.sets_by_label.remove(&selector, &id.to_owned());
            }
        }
    }

    /// Sets what one endpoint contributes to a set, updating every node that holds the set.
    pub(super) fn set_members(&mut self, id: &str, key: &EndpointKey, members: Vec<String>) {
        let Some(set) = self.sets.get_mut(id) else {
            return;
        };
        let old = if members.is_empty() {
            set.members.remove(key).unwrap_or_default()
        } else {
            set.members
                .insert(key.clone(), members.clone())
                .unwrap_or_default()
        };
        if old == members {
            return;
        }
        // Counted in before the old ones are counted out, so a member the endpoint keeps keeps
        // its entry; only members no other endpoint contributed are new to the nodes.
        let added: Vec<SharedEntry> = members
            .iter()
            .filter_map(|member| count_member(&mut set.entries, id, member))
            .collect();
        let removed: Vec<Key> = old
            .iter()
            .filter_map(|member| uncount_member(&mut set.entries, member))
            .collect();
        if self.loading {
            return;
        }
        let nodes: Vec<String> = set.nodes.keys().cloned().collect();
        for node in nodes {
            for key in &removed {
                self.record_change(&node, key, None);
            }
            for entry in &added {
                self.record_change(&node, entry.key(), Some(Arc::clone(entry)));
            }
        }
    }
}

/// Counts one more endpoint contributing `member` to set `set`; the member's entry when it is
/// new to the set.
fn count_member(entries: &mut MemberEntries, set: &str, member: &str) -> Option<SharedEntry> {
    let (count, entry) = entries.entry(member.to_owned()).or_insert_with(|| {
        let entry = SharedViewEntry::new(
            format!("{}{set}/{member}", keys::MEMBER),
            ViewEntry::Member(MemberView {
                set: set.to_owned(),
                member: member.to_owned(),
            }),
        );
        (0, Arc::new(entry))
    });
    *count += 1;
    (*count == 1).then(|| Arc::clone(entry))
}

/// Counts one endpoint fewer contributing `member`; its key when no endpoint contributes it any
/// more.
fn uncount_member(entries: &mut MemberEntries, member: &str) -> Option<Key> {
    let (count, _) = entries.get_mut(member)?;
    *count -= 1;
    if *count > 0 {
        return None;
    }
    entries.remove(member).map(|(_, entry)| Key::clone(entry.key()))
}
