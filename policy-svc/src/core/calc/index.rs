//! Selectors by the namespace they require, so an endpoint is evaluated only against the
//! selectors that can match it.

use std::collections::{BTreeMap, BTreeSet};

use brindle_selector::Selector;
use policy_api::model::NAMESPACE_LABEL;

/// Ids by the namespace their selector requires (`None`: it can match in any namespace).
#[derive(Debug)]
pub(super) struct NamespaceIndex<T>(BTreeMap<Option<String>, BTreeSet<T>>);

impl<T> Default for NamespaceIndex<T> {
    fn default() -> Self {
        Self(BTreeMap::new())
    }
}

impl<T: Ord + Clone> NamespaceIndex<T> {
    pub(super) fn insert(&mut self, selector: &Selector, id: T) {
        let namespace = required_namespace(selector).map(str::to_owned);
        self.0.entry(namespace).or_default().insert(id);
    }

    pub(super) fn remove(&mut self, selector: &Selector, id: &T) {
        let namespace = required_namespace(selector).map(str::to_owned);
        if let Some(ids) = self.0.get_mut(&namespace) {
            ids.remove(id);
            if ids.is_empty() {
                self.0.remove(&namespace);
            }
        }
    }

    /// The ids whose selectors can match an endpoint of any of `namespaces`.
    pub(super) fn candidates(&self, namespaces: &[Option<&str>]) -> BTreeSet<T> {
        let mut ids: BTreeSet<T> = self.0.get(&None).cloned().unwrap_or_default();
        for namespace in namespaces.iter().flatten() {
            if let Some(more) = self.0.get(&Some((*namespace).to_owned())) {
                ids.extend(more.iter().cloned());
            }
        }
        ids
    }
}

/// The namespace `selector` requires (`brindle.io/namespace == 'x'`, alone or in a top-level `&&`).
pub(super) fn required_namespace(selector: &Selector) -> Option<&str> {
    fn namespace(part: &Selector) -> Option<&str> {
        match part {
            Selector::Equals(key, value) if key == NAMESPACE_LABEL => Some(value.as_str()),
            _ => None,
        }
    }
    match selector {
        Selector::And(parts) => parts.iter().find_map(namespace),
        other => namespace(other),
    }
}
