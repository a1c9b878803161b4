//! The ipsets policies use: each set's members (counted per contributing endpoint) and the nodes
//! holding it; a member's entry is built once, and the members as one value ([`SetMembers`])
//! shared by every node's view: a change to them makes a new version, put into each view
//! holding the set once per change, however many members it touched.

use std::collections::BTreeMap;
use std::sync::Arc;

use brindle_fanout::{Key, OwnKey};
use policy_api::model::EndpointKey;
use policy_api::shared::SharedViewEntry;
use policy_api::slot::{SetMembers, Touched, ViewSlot};
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
    /// The members as nodes' views hold them.
    version: Arc<SetMembers>,
    /// Members touched since `version`, each with its entry now (`None`: gone).
    touched: Touched,
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
        let slots = [
            ViewSlot::Entry(Arc::clone(&set.header)),
            ViewSlot::Members(Arc::clone(&set.version)),
        ];
        for slot in slots {
            let key = Key::clone(slot.own_key());
            self.record_change(node, &key, (after > 0).then_some(slot));
        }
    }

    /// A set's header entry.
    pub(super) fn set_header(&self, id: &str) -> Option<&SharedEntry> {
        self.sets.get(id).map(|set| &set.header)
    }

    /// A set's members, as nodes' views hold them.
    pub(super) fn set_members_version(&self, id: &str) -> Option<&Arc<SetMembers>> {
        self.sets.get(id).map(|set| &set.version)
    }

    /// Makes the next version of the members of every set they changed in, and puts it into
    /// the view of every node holding the set (nothing while loading: each set's members become
    /// a version once, at the end — [`Calculator::version_loaded_sets`]).
    pub(super) fn publish_set_changes(&mut self) {
        if self.loading {
            return;
        }
        for id in std::mem::take(&mut self.changed_sets) {
            let Some(set) = self.sets.get_mut(&id) else {
                continue;
            };
            let version = set.version.changed(std::mem::take(&mut set.touched));
            debug_assert!(
                version
                    .members()
                    .map(|entry| entry.key())
                    .eq(set.entries.values().map(|(_, entry)| entry.key())),
                "set {id}: the new version's members are not the set's"
            );
            set.version = Arc::new(version);
            let slot = ViewSlot::Members(Arc::clone(&set.version));
            let key = Key::clone(slot.own_key());
            let nodes: Vec<String> = set.nodes.keys().cloned().collect();
            for node in nodes {
                self.record_change(&node, &key, Some(slot.clone()));
            }
        }
    }

    /// After a load, makes the members of every set they changed in a first version (nobody
    /// holds an earlier one).
    pub(super) fn version_loaded_sets(&mut self) {
        for id in std::mem::take(&mut self.changed_sets) {
            if let Some(set) = self.sets.get_mut(&id) {
                let members = set.entries.values().map(|(_, entry)| Arc::clone(entry));
                set.version = Arc::new(SetMembers::new(&id, members));
            }
        }
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
        let version = Arc::new(SetMembers::new(
            &id,
            entries.values().map(|(_, entry)| Arc::clone(entry)),
        ));
        self.sets.insert(
            id,
            SetState {
                header,
                definition: definition.clone(),
                members,
                entries,
                version,
                touched: Touched::new(),
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
        if added.is_empty() && removed.is_empty() {
            return;
        }
        if !self.loading {
            for entry in added {
                set.touched.insert(Key::clone(entry.key()), Some(entry));
            }
            for key in removed {
                set.touched.insert(key, None);
            }
        }
        if !self.changed_sets.contains(id) {
            self.changed_sets.insert(id.to_owned());
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
