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

/// How a state stores one value under its key.
pub trait Storage<V>: Send + Sync + 'static {
    /// What the state holds per key, ordered and looked up by the key.
    type Slot: Ord + Borrow<str> + Send + Sync;

    /// The slot of `value` under `key`.
    fn slot(key: Key, value: V) -> Self::Slot;

    /// The key of a slot.
    fn key(slot: &Self::Slot) -> &Key;

    /// A slot's key and value.
    fn into_parts(slot: Self::Slot) -> (Key, V);

    /// The value a slot holds.
    fn value(slot: &Self::Slot) -> &V;
}

/// Stores the key beside the value: for any value.
#[derive(Debug)]
pub struct Paired;

/// A key and its value, ordered by the key.
#[derive(Debug, Clone)]
pub struct PairedSlot<V> {
    key: Key,
    value: V,
}

impl<V: Send + Sync + 'static> Storage<V> for Paired {
    type Slot = PairedSlot<V>;

    fn slot(key: Key, value: V) -> PairedSlot<V> {
        PairedSlot { key, value }
    }

    fn key(slot: &PairedSlot<V>) -> &Key {
        &slot.key
    }

    fn into_parts(slot: PairedSlot<V>) -> (Key, V) {
        (slot.key, slot.value)
    }

    fn value(slot: &PairedSlot<V>) -> &V {
        &slot.value
    }
}

impl<V> Borrow<str> for PairedSlot<V> {
    fn borrow(&self) -> &str {
        &self.key
    }
}

impl<V> PartialEq for PairedSlot<V> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl<V> Eq for PairedSlot<V> {}

impl<V> PartialOrd for PairedSlot<V> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<V> Ord for PairedSlot<V> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key.cmp(&other.key)
    }
}

/// A value that carries the key it is stored under.
pub trait OwnKey {
    /// The key.
    fn own_key(&self) -> &Key;
}

/// Stores a shared value (`Arc<T>`) that carries its key alone: a publisher putting the same
/// value into many fan-outs (one per node) pays one pointer per fan-out for it. A value must be
/// published under its own key: the state files it there whatever key it came with.
#[derive(Debug)]
pub struct KeyInValue;

/// A shared value ordered by the key it carries.
#[derive(Debug, Clone)]
pub struct KeyInValueSlot<T>(Arc<T>);

impl<T: OwnKey + Send + Sync + 'static> Storage<Arc<T>> for KeyInValue {
    type Slot = KeyInValueSlot<T>;

    fn slot(key: Key, value: Arc<T>) -> KeyInValueSlot<T> {
        debug_assert_eq!(
            &key,
            value.own_key(),
            "a value stored under another key than its own"
        );
        KeyInValueSlot(value)
    }

    fn key(slot: &KeyInValueSlot<T>) -> &Key {
        slot.0.own_key()
    }

    fn into_parts(slot: KeyInValueSlot<T>) -> (Key, Arc<T>) {
        (Key::clone(slot.0.own_key()), slot.0)
    }

    fn value(slot: &KeyInValueSlot<T>) -> &Arc<T> {
        &slot.0
    }
}

impl<T: OwnKey> Borrow<str> for KeyInValueSlot<T> {
    fn borrow(&self) -> &str {
        self.0.own_key()
    }
}

impl<T: OwnKey> PartialEq for KeyInValueSlot<T> {
    fn eq(&self, other: &Self) -> bool {
        self.0.own_key() == other.0.own_key()
    }
}

impl<T: OwnKey> Eq for KeyInValueSlot<T> {}

impl<T: OwnKey> PartialOrd for KeyInValueSlot<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T: OwnKey> Ord for KeyInValueSlot<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.own_key().cmp(other.0.own_key())
    }
}

/// Keyed state: one value per key, in key order.
pub struct State<V, S: Storage<V> = Paired> {
    slots: BTreeSet<S::Slot>,
    value_type: PhantomData<V>,
}

impl<V, S: Storage<V>> Default for State<V, S> {
    fn default() -> Self {
        Self {
            slots: BTreeSet::new(),
            value_type: PhantomData,
        }
    }
}

impl<V, S: Storage<V>> State<V, S> {
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
        self.slots.get(key).map(S::value)
    }

    /// Whether `key` has a value.
    pub fn contains_key(&self, key: &str) -> bool {
        self.slots.contains(key)
    }

    /// Keys and values, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.slots.iter().map(|slot| (slot.borrow(), S::value(slot)))
    }

    /// Keys and values from `first` on, in key order.
    pub fn iter_from(&self, first: &str) -> impl Iterator<Item = (&str, &V)> {
        self.slots
            .range::<str, _>((Bound::Included(first), Bound::Unbounded))
            .map(|slot| (slot.borrow(), S::value(slot)))
    }

    /// Keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(Borrow::borrow)
    }

    /// Values, in key order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.slots.iter().map(S::value)
    }

    /// Keys (shared) and values, in key order.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&Key, &V)> {
        self.slots.iter().map(|slot| (S::key(slot), S::value(slot)))
    }

    /// Sets `key` to `value`.
    pub(crate) fn insert(&mut self, key: Key, value: V) {
        self.slots.replace(S::slot(key, value));
    }

    /// Removes `key`.
    pub(crate) fn remove(&mut self, key: &str) {
        self.slots.remove(key);
    }
}

impl<V, S: Storage<V>> FromIterator<(Key, V)> for State<V, S> {
    /// The state of these entries (the last value of a key repeated); cheapest in key order.
    fn from_iter<I: IntoIterator<Item = (Key, V)>>(entries: I) -> Self {
        Self {
            slots: entries
                .into_iter()
                .map(|(key, value)| S::slot(key, value))
                .collect(),
            value_type: PhantomData,
        }
    }
}

impl<V, S: Storage<V>> IntoIterator for State<V, S> {
    type Item = (Key, V);
    type IntoIter = std::iter::Map<std::collections::btree_set::IntoIter<S::Slot>, fn(S::Slot) -> (Key, V)>;

    /// Keys and values, in key order.
    fn into_iter(self) -> Self::IntoIter {
        self.slots.into_iter().map(S::into_parts)
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
        assert_eq!(paired.iter().collect::<Vec<_>>(), vec![("a", &3)]);
        assert_eq!(alone.keys().collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(alone.get("a").map(|c| c.1), Some(3));
        assert!(!alone.contains_key("b") && alone.len() == 1);
        let parts: Vec<(Key, u32)> = alone.into_iter().map(|(key, value)| (key, value.1)).collect();
        assert_eq!(parts, vec![(Key::from("a"), 3)]);
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
        let from: Vec<&str> = state.iter_from("node/").map(|(key, _)| key).collect();
        assert_eq!(from, vec!["node/a", "node/b", "other"]);
        let from: Vec<&str> = state.iter_from("node/b").map(|(key, _)| key).collect();
        assert_eq!(from, vec!["node/b", "other"], "the key itself included");
    }
}
