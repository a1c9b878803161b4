//! Nodes' views: derived on demand from the calculation's state (a node's endpoints, the
//! policies they use and those policies' sets), and the entries each change sets, per node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use brindle_fanout::{Change, Key};
use policy_api::slot::ViewSlot;
use policy_api::view::ViewEntry;

use super::{Calculator, ChangeWork, NodeChanges, SharedEntry};

impl Calculator {
    /// A node's view (empty when it has no endpoints).
    pub fn view(&self, node: &str) -> BTreeMap<Key, ViewEntry> {
        self.shared_view(node)
            .flat_map(|slot| {
                slot.entries()
                    .map(|entry| (Key::clone(entry.key()), ViewEntry::clone(entry)))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// A node's view as its fan-out holds it: its entries (with their keys) and each set's
    /// members as one value, shared with the calculation, in key order (the cheapest order to
    /// build a fan-out's state from).
    pub fn shared_view(&self, node: &str) -> impl Iterator<Item = ViewSlot> + '_ {
        let mut policies: Vec<&SharedEntry> = Vec::new();
        let mut sets = BTreeSet::new();
        for id in self.node_policies.get(node).into_iter().flat_map(BTreeMap::keys) {
            if let (Some(entry), Some(compiled)) = (self.policy_entries.get(id), self.compiled.get(id)) {
                policies.push(entry);
                sets.extend(compiled.sets.keys());
            }
        }
        policies.sort_unstable_by(|a, b| a.key().cmp(b.key()));
        // Chained in key order (endpoints and host endpoints, ipset headers, members set by set,
        // policies: the prefixes in `keys`); members stay in order set by set because every set
        // id has the same length (a kind letter and 16 hex digits).
        let endpoints = self.endpoint_entries.get(node).into_iter().flatten();
        let sets: Vec<&String> = sets.into_iter().collect();
        let headers = sets.clone().into_iter().filter_map(|set| self.set_header(set));
        let members = sets
            .into_iter()
            .filter_map(|set| self.set_members_version(set))
            .map(|members| ViewSlot::Members(Arc::clone(members)));
        endpoints
            .map(|(_, entry)| entry)
            .chain(headers)
            .map(|entry| ViewSlot::Entry(Arc::clone(entry)))
            .chain(members)
            .chain(
                policies
                    .into_iter()
                    .map(|entry| ViewSlot::Entry(Arc::clone(entry))),
            )
    }

    /// What the last change went through (its nodes and entries, changed or not).
    pub fn last_change_work(&self) -> ChangeWork {
        self.last_work
    }

    /// Records the value one entry of a node's view has after the change in progress (`None`:
    /// removed); nothing while loading.
    pub(super) fn record_change(&mut self, node: &str, key: &Key, value: Option<ViewSlot>) {
        if self.loading {
            return;
        }
        match self.touched.get_mut(node) {
            Some(entries) => {
                entries.insert(key.clone(), value);
            }
            None => {
                self.touched
                    .insert(node.to_owned(), BTreeMap::from([(key.clone(), value)]));
            }
        }
    }

    /// Every entry the change in progress set, with its final value, per node. An entry set
    /// back to what it was is among them: the node's fan-out, which holds what the node has,
    /// drops it.
    pub(super) fn commit(&mut self) -> NodeChanges {
        self.publish_set_changes();
        let touched = std::mem::take(&mut self.touched);
        self.last_work = ChangeWork {
            nodes: touched.len(),
            entries: touched.values().map(BTreeMap::len).sum(),
        };
        touched
            .into_iter()
            .map(|(node, entries)| {
                let changes = entries
                    .into_iter()
                    .map(|(key, value)| match value {
                        Some(value) => Change::Upsert(key, value),
                        None => Change::Remove(key),
                    })
                    .collect();
                (node, changes)
            })
            .collect()
    }
}
