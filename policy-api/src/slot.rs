//! What policy-svc's fan-out of a node's view holds: an entry, or every member of one ipset as one
//! value shared by all views holding the set (one slot per set in each view, not one per member),
//! sent on the wire as the member entries it stands for: whole in a snapshot, as what changed
//! since the node's version in a delta.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use brindle_fanout::{Batch, EncodedState, Frame, Key, OwnKey};
use brindle_proto::policy::v1 as pb;
use brindle_sync::{Outgoing, Payload, Wire};

use crate::convert::{PolicyWire, entry_to_proto};
use crate::shared::SharedViewEntry;
use crate::view::keys;

/// Sets with fewer members travel with the rest of a snapshot: a frame of their own would cost
/// more than it saves.
const MIN_FRAMED_MEMBERS: usize = 16;

/// Members per chunk of a version (up to twice as many before a chunk is split): a new version
/// copies the chunks a change touched and the list of chunks, and shares every other chunk with
/// the version before, so the versions a fan-out's history holds of a large set cost little.
const CHUNK: usize = 64;

/// Numbers every version of every set's members, in the order they are made.
static VERSIONS: AtomicU64 = AtomicU64::new(1);

/// A run of members, in key order, never empty.
type Chunk = Arc<[Arc<SharedViewEntry>]>;

/// Members touched by a change, each with its entry after it (`None`: removed), in key order.
pub type Touched = BTreeMap<Key, Option<Arc<SharedViewEntry>>>;

/// Where the change after a version goes, once there is one.
type NextStep = Arc<OnceLock<Arc<Step>>>;

/// One change to a set's members.
struct Step {
    touched: Touched,
    /// The version it made.
    version: u64,
    next: NextStep,
}

/// The members of one ipset at one version, in key order, shared by every view holding the set.
/// A version reaches every change made after it, so what a node lacks is what changed since the
/// version it has; its members are compressed once for every snapshot holding them.
pub struct SetMembers {
    /// `member/<set>/`: the start of its members' keys.
    key: Key,
    chunks: Box<[Chunk]>,
    len: usize,
    version: u64,
    /// Members touched by the changes since the first version of its lineage.
    touched_in_lineage: usize,
    next: NextStep,
    /// The members' `PolicyState` fields, compressed (`None`: compressing failed, they are
    /// encoded with the rest of a snapshot).
    frame: OnceLock<Option<Frame>>,
}

impl SetMembers {
    /// The key of set `set`'s members as one value: where its members' keys start.
    pub fn key_of(set: &str) -> Key {
        format!("{}{set}/", keys::MEMBER).into()
    }

    /// Whether `key` is a set's members' (not an entry's: a member's key goes on after the `/`).
    fn is_key(key: &str) -> bool {
        key.starts_with(keys::MEMBER) && key.ends_with('/')
    }

    /// Set `set`'s members, `members` (their entries, in key order), as a first version.
    pub fn new(set: &str, members: impl IntoIterator<Item = Arc<SharedViewEntry>>) -> Self {
        let members: Vec<_> = members.into_iter().collect();
        Self::version_of(
            Self::key_of(set),
            members.chunks(CHUNK).map(Chunk::from).collect(),
            0,
        )
    }

    fn version_of(key: Key, chunks: Box<[Chunk]>, touched_in_lineage: usize) -> Self {
        let version = Self {
            len: chunks.iter().map(|chunk| chunk.len()).sum(),
            key,
            chunks,
            version: VERSIONS.fetch_add(1, Ordering::Relaxed),
            touched_in_lineage,
            next: NextStep::default(),
            frame: OnceLock::new(),
        };
        debug_assert!(
            version.chunks.iter().all(|chunk| !chunk.is_empty())
                && version
                    .members()
                    .all(|member| member.key().starts_with(&*version.key))
                && version
                    .members()
                    .zip(version.members().skip(1))
                    .all(|(a, b)| a.key() < b.key()),
            "members of {} out of order, of another set, or an empty chunk",
            version.key
        );
        version
    }

    /// The version after this one, made by touching the members in `touched` (each with its
    /// entry after; `None`: removed): the chunks the change touched are copied, the others
    /// shared. It is linked to this one (so a node holding this one is sent what the change
    /// touched) until the changes since the lineage's first version have touched more members
    /// than the set holds: then it starts a lineage of its own, and what the versions before
    /// hold of the changes after them is bounded (a node holding one is sent the difference,
    /// which costs no more than the changes would).
    pub fn changed(&self, touched: Touched) -> Self {
        let mut chunks: Vec<Chunk> = Vec::with_capacity(self.chunks.len() + 1);
        let mut changes = touched.iter().peekable();
        for (at, chunk) in self.chunks.iter().enumerate() {
            // A chunk takes the changes before the next chunk's first member.
            let next_first = self.chunks.get(at + 1).map(|next| next[0].key());
            let mut mine = Vec::new();
            while let Some(change) = changes.next_if(|(key, _)| next_first.is_none_or(|first| *key < first)) {
                mine.push(change);
            }
            if mine.is_empty() {
                chunks.push(Chunk::clone(chunk));
            } else {
                push_split(&mut chunks, merge(chunk, mine));
            }
        }
        if self.chunks.is_empty() {
            push_split(&mut chunks, merge(&[], changes.collect()));
        }
        let touched_in_lineage = self.touched_in_lineage + touched.len();
        let linked = touched_in_lineage <= self.len.max(CHUNK);
        let after = Self::version_of(
            Key::clone(&self.key),
            chunks.into_boxed_slice(),
            if linked { touched_in_lineage } else { 0 },
        );
        if linked {
            let step = Step {
                touched,
                version: after.version,
                next: NextStep::clone(&after.next),
            };
            let first = self.next.set(Arc::new(step)).is_ok();
            // Changed twice, the second version would be unreachable from this one (a node
            // holding this one would be sent the difference): the calculation changes the latest.
            debug_assert!(first, "version {} of {} changed twice", self.version, self.key);
        }
        after
    }

    /// The members' entries, in key order.
    pub fn members(&self) -> impl Iterator<Item = &Arc<SharedViewEntry>> {
        self.chunks.iter().flat_map(|chunk| chunk.iter())
    }

    /// How many members it has.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has no member.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// What this version changed of `old`, a version of the same set: the member entries set and
    /// the keys removed. When it came from `old` change by change, every member touched on the
    /// way, with its value now (so the changes apply to any version in between, as a fan-out's
    /// batch does); otherwise (a set built again from a new list) the difference.
    pub fn changes_since<'a>(&'a self, old: &'a SetMembers) -> (Vec<&'a Arc<SharedViewEntry>>, Vec<Key>) {
        if old.version == self.version {
            return (Vec::new(), Vec::new());
        }
        let mut touched: BTreeMap<&Key, Option<&Arc<SharedViewEntry>>> = BTreeMap::new();
        let mut next = &old.next;
        while let Some(step) = next.get()
            && step.version <= self.version
        {
            for (key, value) in &step.touched {
                touched.insert(key, value.as_ref());
            }
            if step.version == self.version {
                let mut set = Vec::new();
                let mut removed = Vec::new();
                for (key, value) in touched {
                    match value {
                        Some(entry) => set.push(entry),
                        None => removed.push(Key::clone(key)),
                    }
                }
                return (set, removed);
            }
            next = &step.next;
        }
        self.difference(old)
    }

    /// The member entries this version has and `old` has not (or has another value of), and
    /// the keys of those `old` has and this one has not: one walk through both, in key order.
    fn difference<'a>(&'a self, old: &'a SetMembers) -> (Vec<&'a Arc<SharedViewEntry>>, Vec<Key>) {
        let mut set = Vec::new();
        let mut removed = Vec::new();
        let mut before = old.members().peekable();
        for entry in self.members() {
            while let Some(gone) = before.next_if(|was| was.key() < entry.key()) {
                removed.push(Key::clone(gone.key()));
            }
            if before
                .next_if(|was| was.key() == entry.key())
                .is_none_or(|was| was != entry)
            {
                set.push(entry);
            }
        }
        removed.extend(before.map(|gone| Key::clone(gone.key())));
        (set, removed)
    }

    /// Appends the members to a snapshot's encoding as `PolicyState` fields: a large set as its
    /// frame, compressed once for every snapshot; a small one into `raw`, the encoding's bytes
    /// still to be pushed.
    pub fn encode(&self, raw: &mut Vec<u8>, encoded: &mut EncodedState) {
        match self.frame() {
            Some(frame) => {
                encoded.push_raw(std::mem::take(raw));
                encoded.push_frame(frame.clone());
            }
            None => self.encode_fields(raw),
        }
    }

    /// The members compressed, for a set large enough to travel on its own.
    fn frame(&self) -> Option<&Frame> {
        if self.len < MIN_FRAMED_MEMBERS {
            return None;
        }
        self.frame
            .get_or_init(|| {
                let mut raw = Vec::with_capacity(self.members().map(|entry| entry.encoded_field_len()).sum());
                self.encode_fields(&mut raw);
                Frame::compress(&raw)
                    .inspect_err(|error| {
                        tracing::warn!(%error, set = %self.key, "compressing a set's members failed; they travel with the view");
                    })
                    .ok()
            })
            .as_ref()
    }

    fn encode_fields(&self, out: &mut Vec<u8>) {
        for entry in self.members() {
            entry.encode_field(out);
        }
    }
}

/// `chunk` with `changes` (in key order) applied.
fn merge(
    chunk: &[Arc<SharedViewEntry>],
    changes: Vec<(&Key, &Option<Arc<SharedViewEntry>>)>,
) -> Vec<Arc<SharedViewEntry>> {
    let mut merged = Vec::with_capacity(chunk.len() + changes.len());
    let mut members = chunk.iter().peekable();
    for (key, value) in changes {
        while let Some(member) = members.next_if(|member| member.key() < key) {
            merged.push(Arc::clone(member));
        }
        members.next_if(|member| member.key() == key);
        merged.extend(value.iter().cloned());
    }
    merged.extend(members.cloned());
    merged
}

/// Appends `members` as chunks: none when empty, split in chunks of [`CHUNK`] when more than
/// twice that.
fn push_split(chunks: &mut Vec<Chunk>, members: Vec<Arc<SharedViewEntry>>) {
    if members.len() > 2 * CHUNK {
        chunks.extend(members.chunks(CHUNK).map(Chunk::from));
    } else if !members.is_empty() {
        chunks.push(Chunk::from(members));
    }
}

impl fmt::Debug for SetMembers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetMembers")
            .field("key", &self.key)
            .field("version", &self.version)
            .field("members", &self.members().collect::<Vec<_>>())
            .finish()
    }
}

impl PartialEq for SetMembers {
    /// The same members, whatever the version: chunks shared by both are not looked into.
    fn eq(&self, other: &Self) -> bool {
        if self.version == other.version {
            return true;
        }
        if self.key != other.key || self.len != other.len {
            return false;
        }
        let pairs = || self.chunks.iter().zip(other.chunks.iter());
        if self.chunks.len() == other.chunks.len() && pairs().all(|(a, b)| a.len() == b.len()) {
            return pairs().all(|(a, b)| Arc::ptr_eq(a, b) || a == b);
        }
        self.members().eq(other.members())
    }
}

impl Eq for SetMembers {}

/// One value of a node's view in policy-svc's fan-out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewSlot {
    /// One entry.
    Entry(Arc<SharedViewEntry>),
    /// Every member of one set (under [`SetMembers::key_of`] the set).
    Members(Arc<SetMembers>),
}

impl ViewSlot {
    /// The view entries it stands for, in key order.
    pub fn entries(&self) -> impl Iterator<Item = &Arc<SharedViewEntry>> {
        let (entry, members) = match self {
            ViewSlot::Entry(entry) => (Some(entry), None),
            ViewSlot::Members(members) => (None, Some(members)),
        };
        entry
            .into_iter()
            .chain(members.into_iter().flat_map(|members| members.members()))
    }

    /// How many view entries it stands for.
    pub fn len(&self) -> usize {
        match self {
            ViewSlot::Entry(_) => 1,
            ViewSlot::Members(members) => members.len(),
        }
    }

    /// Whether it stands for no entry (a set without members).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl OwnKey for ViewSlot {
    fn own_key(&self) -> &Key {
        match self {
            ViewSlot::Entry(entry) => entry.key(),
            ViewSlot::Members(members) => &members.key,
        }
    }
}

/// A node's view's `Sync` messages as policy-svc sends them, from its fan-out's slots: the same
/// messages as [`PolicyWire`]'s, a set's members as their entries.
pub struct SlotWire;

impl Outgoing for SlotWire {
    type Value = ViewSlot;
    type Delta = pb::PolicyDelta;
    type Response = pb::SyncResponse;

    /// Each entry set or removed; of a set's members, those that changed since the version the
    /// batch replaced (all of them for a set new to the view, all of their keys for one gone).
    fn delta(batch: &Batch<ViewSlot>) -> pb::PolicyDelta {
        let replaced = |key: &Key| {
            batch
                .replaced
                .binary_search_by(|(replaced, _)| replaced.cmp(key))
                .ok()
                .map(|at| &batch.replaced[at].1)
        };
        let mut upserts = Vec::new();
        let mut removed_keys = Vec::new();
        for (key, slot) in &batch.upserts {
            match (slot, replaced(key)) {
                (ViewSlot::Members(now), Some(ViewSlot::Members(before))) => {
                    let (set, removed) = now.changes_since(before);
                    upserts.extend(set.into_iter().map(|entry| entry_to_proto(entry.key(), entry)));
                    removed_keys.extend(removed.iter().map(|key| key.to_string()));
                }
                (slot, _) => upserts.extend(slot.entries().map(|entry| entry_to_proto(entry.key(), entry))),
            }
        }
        for key in &batch.removed {
            match replaced(key) {
                Some(before) => removed_keys.extend(before.entries().map(|entry| entry.key().to_string())),
                // A set's members that came and went within the batch: no member key to name.
                None if SetMembers::is_key(key) => {}
                None => removed_keys.push(key.to_string()),
            }
        }
        pb::PolicyDelta {
            upserts,
            removed_keys,
        }
    }

    fn response(revision: u64, payload: Payload<pb::PolicyDelta>) -> pb::SyncResponse {
        <PolicyWire as Wire>::response(revision, payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{IpSetKind, IpSetView, MemberView, ViewEntry};

    fn member(set: &str, address: &str) -> Arc<SharedViewEntry> {
        let entry = ViewEntry::Member(MemberView {
            set: set.to_owned(),
            member: address.to_owned(),
        });
        Arc::new(SharedViewEntry::new(
            format!("{}{set}/{address}", keys::MEMBER),
            entry,
        ))
    }

    /// The members of set `s` named by their last address byte.
    fn members(of: &[u8]) -> Vec<Arc<SharedViewEntry>> {
        let mut members: Vec<_> = of.iter().map(|n| member("s", &format!("10.0.0.{n}"))).collect();
        members.sort_by(|a, b| a.key().cmp(b.key()));
        members
    }

    fn key(n: u8) -> Key {
        format!("{}s/10.0.0.{n}", keys::MEMBER).into()
    }

    /// The next version of `set`, having touched the members in `touched`: those in `now` set
    /// (to new entries), the others removed.
    fn next(set: &SetMembers, now: &[u8], touched: &[u8]) -> SetMembers {
        let touched = touched
            .iter()
            .map(|n| {
                let entry = now.contains(n).then(|| members(&[*n]).remove(0));
                (key(*n), entry)
            })
            .collect();
        let next = set.changed(touched);
        assert_eq!(
            next.members()
                .map(|entry| Key::clone(entry.key()))
                .collect::<Vec<_>>(),
            members(now)
                .iter()
                .map(|entry| Key::clone(entry.key()))
                .collect::<Vec<_>>()
        );
        next
    }

    fn keys_of(set: &[&Arc<SharedViewEntry>]) -> Vec<Key> {
        set.iter().map(|entry| Key::clone(entry.key())).collect()
    }

    #[test]
    fn a_later_version_names_every_member_touched_since_an_earlier_one() {
        let v1 = SetMembers::new("s", members(&[1, 2]));
        let v2 = next(&v1, &[1, 2, 3], &[3]);
        let v3 = next(&v2, &[1, 2], &[3]);
        let v4 = next(&v3, &[2, 4], &[1, 4]);
        let (set, removed) = v4.changes_since(&v1);
        assert_eq!(keys_of(&set), vec![key(4)]);
        assert_eq!(
            removed,
            vec![key(1), key(3)],
            "3 came and went on the way: named, so the changes apply to v2 and v3 as well"
        );
        let (set, removed) = v4.changes_since(&v3);
        assert_eq!((keys_of(&set), removed), (vec![key(4)], vec![key(1)]));
        let (set, removed) = v4.changes_since(&v4);
        assert!(set.is_empty() && removed.is_empty(), "nothing since itself");
    }

    #[test]
    fn a_change_copies_only_the_chunks_it_touches_and_keeps_every_member_in_order() {
        let address = |n: u32| format!("10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255);
        let entry = |n: u32| member("s", &address(n));
        // Every fourth address of 0..4000: room before, between and after the members.
        let mut reference: BTreeMap<Key, Arc<SharedViewEntry>> = (0..1000)
            .map(|n| entry(4 * n + 2))
            .map(|entry| (Key::clone(entry.key()), entry))
            .collect();
        let mut version = SetMembers::new("s", reference.values().cloned());
        let mut state = 7u32;
        for round in 0..200 {
            let mut touched = Touched::new();
            for _ in 0..1 + round % 5 {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let n = (state >> 8) % 4100;
                let key: Key = format!("{}s/{}", keys::MEMBER, address(n)).into();
                // Mostly adds early on, mostly removals later: chunks grow, split and empty.
                let value = ((state >> 4) % 10 < if round < 100 { 7 } else { 2 }).then(|| entry(n));
                match &value {
                    Some(entry) => reference.insert(Key::clone(&key), Arc::clone(entry)),
                    None => reference.remove(&key),
                };
                touched.insert(key, value);
            }
            let next = version.changed(touched);
            assert!(
                next.members()
                    .map(Arc::as_ptr)
                    .eq(reference.values().map(Arc::as_ptr)),
                "round {round}: the members are not the reference's"
            );
            assert_eq!(next.len(), reference.len());
            let shared = next
                .chunks
                .iter()
                .filter(|chunk| version.chunks.iter().any(|had| Arc::ptr_eq(had, chunk)))
                .count();
            assert!(
                next.chunks.len() - shared <= 10,
                "round {round}: {} of {} chunks copied",
                next.chunks.len() - shared,
                next.chunks.len()
            );
            assert!(
                next.chunks
                    .iter()
                    .all(|chunk| !chunk.is_empty() && chunk.len() <= 2 * CHUNK)
            );
            version = next;
        }
    }

    #[test]
    fn the_changes_an_old_version_reaches_are_bounded_by_the_sets_size() {
        let first = SetMembers::new("s", members(&[1, 2, 3]));
        let mut version = next(&first, &[1, 2, 3, 10], &[10]);
        let mut now: Vec<u8> = vec![1, 2, 3, 10];
        for n in 11..=200u8 {
            // One member in, the one before out: two touched per change.
            now.retain(|m| *m != n - 1);
            now.push(n);
            version = next(&version, &now, &[n - 1, n]);
        }
        let mut reached = 0;
        let mut step = first.next.get();
        while let Some(linked) = step {
            reached += linked.touched.len();
            step = linked.next.get();
        }
        assert!(
            reached <= CHUNK,
            "{reached} changed members reachable from the first version"
        );
        let (set, removed) = version.changes_since(&first);
        assert_eq!(
            (keys_of(&set), removed),
            (vec![key(200)], vec![]),
            "past the lineage, the difference"
        );
    }

    #[test]
    fn a_version_not_made_from_another_is_sent_as_the_difference() {
        let old = SetMembers::new("s", members(&[1, 2, 3]));
        let later = next(&old, &[1, 2, 3, 5], &[5]);
        // The same set computed again from a new list: another lineage.
        let relisted = SetMembers::new("s", members(&[2, 3, 4]));
        let (set, removed) = relisted.changes_since(&old);
        assert_eq!(
            keys_of(&set),
            vec![key(4)],
            "members of equal value (other allocations) are not sent again"
        );
        assert_eq!(removed, vec![key(1)]);
        assert_eq!(
            relisted,
            SetMembers::new("s", members(&[2, 3, 4])),
            "equal members"
        );
        let (set, removed) = old.changes_since(&later);
        assert_eq!(
            (keys_of(&set), removed),
            (Vec::new(), vec![key(5)]),
            "an earlier version against a later one: the difference"
        );
    }

    #[test]
    fn a_delta_sends_a_sets_members_as_member_entries_never_its_own_key() {
        let header = Arc::new(SharedViewEntry::new(
            format!("{}t", keys::IPSET),
            ViewEntry::IpSet(IpSetView {
                id: "t".into(),
                kind: IpSetKind::Net,
                source: "a selector".into(),
            }),
        ));
        let before = Arc::new(SetMembers::new("s", members(&[1, 2])));
        let after = Arc::new(next(&before, &[2, 3], &[1, 3]));
        let gone = Arc::new(SetMembers::new("g", vec![member("g", "10.1.0.1")]));
        let new = Arc::new(SetMembers::new("n", vec![member("n", "10.2.0.1")]));
        let slot = |members: &Arc<SetMembers>| ViewSlot::Members(Arc::clone(members));
        let key_of = |slot: &ViewSlot| Key::clone(slot.own_key());
        let mut replaced = vec![
            (key_of(&slot(&before)), slot(&before)),
            (key_of(&slot(&gone)), slot(&gone)),
        ];
        replaced.sort_by(|a, b| a.0.cmp(&b.0));
        let batch = Batch {
            from: 1,
            to: 2,
            upserts: vec![
                (Key::clone(header.key()), ViewSlot::Entry(Arc::clone(&header))),
                (key_of(&slot(&new)), slot(&new)),
                (key_of(&slot(&after)), slot(&after)),
            ],
            removed: vec![key_of(&slot(&gone)), SetMembers::key_of("came-and-went")],
            replaced,
        };
        let delta = SlotWire::delta(&batch);
        let upserted: Vec<&str> = delta.upserts.iter().map(|entry| entry.key.as_str()).collect();
        assert_eq!(
            upserted,
            ["ipset/t", "member/n/10.2.0.1", "member/s/10.0.0.3"],
            "an entry, a set new to the view whole, what changed of one the view had"
        );
        assert_eq!(
            delta.removed_keys,
            ["member/s/10.0.0.1", "member/g/10.1.0.1"],
            "members gone, a set gone member by member, no key of a set's members"
        );
    }
}
