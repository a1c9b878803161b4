//! Selectors by one label they require, so an endpoint is evaluated only against the selectors
//! that can match it.

use std::collections::{BTreeMap, BTreeSet};

use brindle_selector::Selector;
use policy_api::model::NAMESPACE_LABEL;

/// Labels as selectors read them.
type Labels = BTreeMap<String, String>;

/// Ids by one `key == 'value'` their selector requires: an endpoint without that label cannot
/// match, so it is never evaluated against them.
#[derive(Debug)]
pub(super) struct LabelIndex<T> {
    /// Ids whose selector requires no label value.
    unscoped: BTreeSet<T>,
    /// Ids by the label their selector requires: key, then value.
    scoped: BTreeMap<String, BTreeMap<String, BTreeSet<T>>>,
}

impl<T> Default for LabelIndex<T> {
    fn default() -> Self {
        Self {
            unscoped: BTreeSet::new(),
            scoped: BTreeMap::new(),
        }
    }
}

impl<T: Ord + Clone> LabelIndex<T> {
    pub(super) fn insert(&mut self, selector: &Selector, id: T) {
        match required_label(selector) {
            Some((key, value)) => {
                self.scoped
                    .entry(key.to_owned())
                    .or_default()
                    .entry(value.to_owned())
                    .or_default()
                    .insert(id);
            }
            None => {
                self.unscoped.insert(id);
            }
        }
    }

    pub(super) fn remove(&mut self, selector: &Selector, id: &T) {
        let Some((key, value)) = required_label(selector) else {
            self.unscoped.remove(id);
            return;
        };
        let Some(values) = self.scoped.get_mut(key) else {
            return;
        };
        if let Some(ids) = values.get_mut(value) {
            ids.remove(id);
            if ids.is_empty() {
                values.remove(value);
            }
        }
        if values.is_empty() {
            self.scoped.remove(key);
        }
    }

    /// The ids whose selectors can match `labels`, each once, borrowed.
    pub(super) fn candidates_of<'a>(&'a self, labels: &'a Labels) -> impl Iterator<Item = &'a T> {
        self.unscoped.iter().chain(self.requiring_one_of(labels))
    }

    /// The ids whose selectors can match any of `labels`.
    pub(super) fn candidates(&self, labels: &[Option<&Labels>]) -> BTreeSet<T> {
        let scoped = labels
            .iter()
            .flatten()
            .flat_map(|labels| self.requiring_one_of(labels));
        self.unscoped.iter().chain(scoped).cloned().collect()
    }

    /// The ids whose selector requires one of `labels` (each once: a label set has a key once).
    fn requiring_one_of<'a>(&'a self, labels: &'a Labels) -> impl Iterator<Item = &'a T> {
        labels
            .iter()
            .filter_map(|(key, value)| self.scoped.get(key)?.get(value))
            .flatten()
    }
}

/// The label every label set `selector` matches has: the namespace's when it requires one,
/// else its first `key == 'value'` (alone or in a top-level `&&`).
fn required_label(selector: &Selector) -> Option<(&str, &str)> {
    let parts = match selector {
        Selector::And(parts) => parts.as_slice(),
        other => std::slice::from_ref(other),
    };
    fn equality(part: &Selector) -> Option<(&str, &str)> {
        match part {
            Selector::Equals(key, value) => Some((key.as_str(), value.as_str())),
            _ => None,
        }
    }
    parts
        .iter()
        .filter_map(equality)
        .find(|(key, _)| *key == NAMESPACE_LABEL)
        .or_else(|| parts.iter().find_map(equality))
}

/// The namespace `selector` requires (`brindle.io/namespace == 'x'`, alone or in a top-level `&&`).
pub(super) fn required_namespace(selector: &Selector) -> Option<&str> {
    required_label(selector)
        .filter(|(key, _)| *key == NAMESPACE_LABEL)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn selector(text: &str) -> Selector {
        Selector::parse(text).expect("a selector").canonical()
    }

    #[test]
    fn a_selector_is_a_candidate_only_where_its_required_label_is() {
        let mut index = LabelIndex::default();
        index.insert(&selector("app == 'web' && tier != 'db'"), 1);
        index.insert(&selector(&format!("{NAMESPACE_LABEL} == 'a' && app == 'db'")), 2);
        index.insert(&selector("has(app) || tier == 'x'"), 3);
        index.insert(&selector("app == 'web'"), 4);
        let web = labels(&[(NAMESPACE_LABEL, "b"), ("app", "web")]);
        let db_in_a = labels(&[(NAMESPACE_LABEL, "a"), ("app", "db")]);
        fn found(index: &LabelIndex<i32>, labels: &Labels) -> Vec<i32> {
            let mut ids: Vec<i32> = index.candidates_of(labels).copied().collect();
            ids.sort_unstable();
            ids
        }
        assert_eq!(found(&index, &web), [1, 3, 4]);
        // Indexed by its namespace, not by `app`.
        assert_eq!(found(&index, &db_in_a), [2, 3]);
        assert_eq!(
            index.candidates(&[Some(&web), Some(&db_in_a)]),
            BTreeSet::from([1, 2, 3, 4])
        );
        assert_eq!(index.candidates(&[None]), BTreeSet::from([3]));
        index.remove(&selector("app == 'web'"), &4);
        index.remove(&selector(&format!("{NAMESPACE_LABEL} == 'a' && app == 'db'")), &2);
        assert_eq!(found(&index, &web), [1, 3]);
        assert_eq!(found(&index, &db_in_a), [3]);
        assert_eq!(index.scoped.len(), 1, "emptied keys are dropped");
    }
}
