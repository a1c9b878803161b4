//! A fan-out's keyed state and how it stores a value under its key: beside the key
//! ([`Paired`], any value) or alone ([`KeyInValue`], a shared value that carries its key), one
//! pointer per key in every fan-out holding it.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::marker::PhantomData;
use std::ops::Bound;
use std::sync::Arc;

use crate::Key;

/// A value that carries the key it is stored under.
pub trait OwnKey {
    /// The key.
    fn own_key(&self) -> &Key;
}

impl<V> OwnKey for (Key, V) {
    fn own_key(&self) -> &Key {
        &self.0
    }
}

impl<T: OwnKey> OwnKey for Arc<T> {
    fn own_key(&self) -> &Key {
        T::own_key(self)
    }
}

/// How a state stores one value under its key.
pub trait Storage<V>: Send + Sync + 'static {
    /// What the state holds per key: the value and, in it or beside it, the key.
    type Held: OwnKey + Send + Sync;

    /// What holds `value` under `key`.
    fn hold(key: Key, value: V) -> Self::Held;

    /// Refuses, in debug builds, `value` under a `key` it could not be held under (checked when
    /// it is published, before it reaches a batch).
    fn check_key(_key: &Key, _value: &V) {}

    /// The value held.
    fn value(held: &Self::Held) -> &V;

    /// The key and value held.
    fn into_parts(held: Self::Held) -> (Key, V);
}

/// Stores the key beside the value: for any value.
#[derive(Debug)]
pub struct Paired;

impl<V: Send + Sync + 'static> Storage<V> for Paired {
    type Held = (Key, V);

    fn hold(key: Key, value: V) -> (Key, V) {
        (key, value)
    }

    fn value(held: &(Key, V)) -> &V {
        &held.1
    }

    fn into_parts(held: (Key, V)) -> (Key, V) {
        held
    }
}

/// Stores a value that carries its key alone — typically shared (`Arc<T>`, or an enum of such):
/// a publisher putting the same value into many fan-outs (one per node) pays one pointer per
/// fan-out for it. A value must be published under its own key: the state files it there
/// whatever key it came with.
#[derive(Debug)]
pub struct KeyInValue;

impl<V: OwnKey + Send + Sync + 'static> Storage<V> for KeyInValue {
    type Held = V;

    fn hold(key: Key, value: V) -> V {
        Self::check_key(&key, &value);
        value
    }

    fn check_key(key: &Key, value: &V) {
        debug_assert_eq!(
            key,
            value.own_key(),
            "a value stored under another key than its own"
        );
    }

    fn value(held: &V) -> &V {
        held
    }

    fn into_parts(held: V) -> (Key, V) {
        (Key::clone(held.own_key()), held)
    }
}

/// What a state holds under one key, ordered and looked up by the key.
pub struct Slot<H>(H);

impl<H: OwnKey> Borrow<str> for Slot<H> {
    fn borrow(&self) -> &str {
        self.0.own_key()
    }
}

impl<H: OwnKey> PartialEq for Slot<H> {
    fn eq(&self, other: &Self) -> bool {
        self.0.own_key() == other.0.own_key()
    }
}

impl<H: OwnKey> Eq for Slot<H> {}

impl<H: OwnKey> PartialOrd for Slot<H> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<H: OwnKey> Ord for Slot<H> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.own_key().cmp(other.0.own_key())
    }
}

/// Keyed state: one value per key, in key order.
pub struct State<V, S: Storage<V> = Paired> {
    slots: BTreeSet<Slot<S::Held>>,
    value_type: PhantomData<V>,
}

impl<V, S: Storage<V>> Default for State<V, S> {
    fn default() -> Self {
        Self::from_slots(BTreeSet::new())
    }
}

impl<V, S: Storage<V>> State<V, S> {
    /// The state holding these slots.
    fn from_slots(slots: BTreeSet<Slot<S::Held>>) -> Self {
        Self {
            slots,
            value_type: PhantomData,
        }
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.slots.get(key).map(|slot| parts::<V, S>(slot).1)
    }

    /// Whether `key` has a value.
    pub fn contains_key(&self, key: &str) -> bool {
        self.slots.contains(key)
    }

    /// Keys and values, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &V)> {
        self.slots.iter().map(parts::<V, S>)
    }

    /// Keys and values from `first` on, in key order.
    pub fn iter_from(&self, first: &str) -> impl Iterator<Item = (&Key, &V)> {
        self.slots
            .range::<str, _>((Bound::Included(first), Bound::Unbounded))
            .map(parts::<V, S>)
    }

    /// Keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.slots.iter().map(|slot| slot.0.own_key())
    }

    /// Values, in key order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, value)| value)
    }

    /// The entries `pick` takes, moved out in key order; the others are not taken apart (a value
    /// that carries its key gives up a copy of it only when picked).
    pub(crate) fn into_picked(
        self,
        mut pick: impl FnMut(&Key, &V) -> bool,
    ) -> impl Iterator<Item = (Key, V)> {
        self.slots
            .into_iter()
            .filter(move |slot| {
                let (key, value) = parts::<V, S>(slot);
                pick(key, value)
            })
            .map(|slot| S::into_parts(slot.0))
    }

    /// Sets `key` to `value`; the value it replaced.
    pub(crate) fn insert(&mut self, key: Key, value: V) -> Option<V> {
        self.slots
            .replace(Slot(S::hold(key, value)))
            .map(|slot| S::into_parts(slot.0).1)
    }

    /// Removes `key`; the value it had.
    pub(crate) fn remove(&mut self, key: &str) -> Option<V> {
        self.slots.take(key).map(|slot| S::into_parts(slot.0).1)
    }
}

/// The key and value a slot holds.
fn parts<V, S: Storage<V>>(slot: &Slot<S::Held>) -> (&Key, &V) {
    (slot.0.own_key(), S::value(&slot.0))
}

impl<V, S: Storage<V>> FromIterator<(Key, V)> for State<V, S> {
    /// The state of these entries (the last value of a key repeated); cheapest in key order.
    fn from_iter<I: IntoIterator<Item = (Key, V)>>(entries: I) -> Self {
        Self::from_slots(
            entries
                .into_iter()
                .map(|(key, value)| Slot(S::hold(key, value)))
                .collect(),
        )
    }
}

impl<V: OwnKey + Send + Sync + 'static> FromIterator<V> for State<V, KeyInValue> {
    /// The state of these values, each under its own key (the last value of a key repeated);
    /// cheapest in key order.
    fn from_iter<I: IntoIterator<Item = V>>(values: I) -> Self {
        Self::from_slots(values.into_iter().map(Slot).collect())
    }
}

impl<V, S: Storage<V>> IntoIterator for State<V, S> {
    type Item = (Key, V);
    type IntoIter =
        std::iter::Map<std::collections::btree_set::IntoIter<Slot<S::Held>>, fn(Slot<S::Held>) -> (Key, V)>;

    /// Keys and values, in key order.
    fn into_iter(self) -> Self::IntoIter {
        self.slots.into_iter().map(|slot| S::into_parts(slot.0))
    }
}

impl<V: std::fmt::Debug, S: Storage<V>> std::fmt::Debug for State<V, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Carried(Key, u32);

    impl OwnKey for Carried {
        fn own_key(&self) -> &Key {
            &self.0
        }
    }

    fn carried(key: &str, value: u32) -> (Key, Arc<Carried>) {
        (Key::from(key), Arc::new(Carried(Key::from(key), value)))
    }

    #[test]
    fn a_value_replaces_the_one_under_its_key_whichever_way_it_is_stored() {
        let mut paired: State<u32> = [("b", 1), ("a", 1), ("b", 2)]
            .into_iter()
            .map(|(key, value)| (Key::from(key), value))
            .collect();
        let mut alone: State<Arc<Carried>, KeyInValue> = [carried("b", 1), carried("a", 1), carried("b", 2)]
            .into_iter()
            .collect();
        assert_eq!(paired.get("b"), Some(&2), "the last of a repeated key");
        assert_eq!(alone.get("b").map(|c| c.1), Some(2));
        paired.insert(Key::from("a"), 3);
        let (key, value) = carried("a", 3);
        alone.insert(key, value);
        paired.remove("b");
        alone.remove("b");
        assert_eq!(paired.iter().collect::<Vec<_>>(), vec![(&Key::from("a"), &3)]);
        assert_eq!(alone.keys().map(|key| &**key).collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(alone.get("a").map(|c| c.1), Some(3));
        assert!(!alone.contains_key("b") && alone.len() == 1);
        let parts: Vec<(Key, u32)> = alone.into_iter().map(|(key, value)| (key, value.1)).collect();
        assert_eq!(parts, vec![(Key::from("a"), 3)]);
    }

    #[test]
    fn values_that_carry_their_keys_build_the_state_of_the_same_entries_alone() {
        let entries = [carried("b", 1), carried("a", 1), carried("c", 1), carried("b", 2)];
        let from_pairs: State<Arc<Carried>, KeyInValue> = entries.iter().cloned().collect();
        let from_values: State<Arc<Carried>, KeyInValue> =
            entries.into_iter().map(|(_, value)| value).collect();
        let pairs = |state: State<Arc<Carried>, KeyInValue>| state.into_iter().collect::<Vec<_>>();
        let from_values = pairs(from_values);
        assert_eq!(from_values, pairs(from_pairs));
        let values: Vec<(&str, u32)> = from_values.iter().map(|(key, value)| (&**key, value.1)).collect();
        assert_eq!(
            values,
            vec![("a", 1), ("b", 2), ("c", 1)],
            "in key order, the last of a key"
        );
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "another key than its own")]
    fn a_value_that_carries_another_key_is_refused_in_debug_builds() {
        let (_, value) = carried("a", 1);
        let _: State<Arc<Carried>, KeyInValue> = [(Key::from("b"), value)].into_iter().collect();
    }

    #[test]
    fn iterating_from_a_key_starts_at_the_first_at_or_after_it() {
        let state: State<u32> = ["node/a", "block/x", "node/b", "other"]
            .into_iter()
            .map(|key| (Key::from(key), 0))
            .collect();
        let from: Vec<&str> = state.iter_from("node/").map(|(key, _)| &**key).collect();
        assert_eq!(from, vec!["node/a", "node/b", "other"]);
        let from: Vec<&str> = state.iter_from("node/b").map(|(key, _)| &**key).collect();
        assert_eq!(from, vec!["node/b", "other"], "the key itself included");
    }
}
