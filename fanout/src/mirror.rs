//! The subscriber's side: the state it has applied, its revision, and the effective changes each
//! snapshot or batch makes (so a re-sent snapshot after a reconnect changes nothing it already has).

use std::collections::BTreeMap;

use crate::{Batch, Change, Key};

/// A subscriber's copy of the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror<V> {
    state: BTreeMap<Key, V>,
    revision: u64,
}

impl<V> Default for Mirror<V> {
    fn default() -> Self {
        Self {
            state: BTreeMap::new(),
            revision: 0,
        }
    }
}

impl<V: Clone + PartialEq> Mirror<V> {
    /// Replaces the state with a snapshot's entries; returns what actually changed.
    pub fn apply_snapshot(&mut self, revision: u64, entries: BTreeMap<Key, V>) -> Vec<Change<V>> {
        let mut changes: Vec<Change<V>> = self
            .state
            .keys()
            .filter(|key| !entries.contains_key(*key))
            .map(|key| Change::Remove(key.clone()))
            .collect();
        changes.extend(
            entries
                .iter()
                .filter(|(key, value)| self.state.get(*key) != Some(value))
                .map(|(key, value)| Change::Upsert(key.clone(), value.clone())),
        );
        self.state = entries;
        self.revision = revision;
        changes
    }

    /// Applies a batch; returns what actually changed.
    pub fn apply_batch(&mut self, batch: &Batch<V>) -> Vec<Change<V>> {
        let mut changes = Vec::new();
        for key in &batch.removed {
            if self.state.remove(key).is_some() {
                changes.push(Change::Remove(key.clone()));
            }
        }
        for (key, value) in &batch.upserts {
            if self.state.get(key) != Some(value) {
                self.state.insert(key.clone(), value.clone());
                changes.push(Change::Upsert(key.clone(), value.clone()));
            }
        }
        self.revision = self.revision.max(batch.to);
        changes
    }

    /// The state.
    pub fn state(&self) -> &BTreeMap<Key, V> {
        &self.state
    }

    /// The revision applied last (0: nothing yet).
    pub fn revision(&self) -> u64 {
        self.revision
    }
}
