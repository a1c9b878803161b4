//! A node's view as its snapshot's encoding, each large ipset's members compressed once and
//! shared by every node's snapshot that holds the same members.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use brindle_fanout::{EncodedState, Frame, KeyInValue, State};
use policy_api::shared::SharedViewEntry;
use policy_api::view::ViewEntry;

use super::calc::SharedEntry;

/// Sets with fewer members travel with the rest of the view: a frame of their own would cost
/// more than it saves.
const MIN_SHARED_MEMBERS: usize = 16;

/// Sets in the cache before the first sweep of those whose members are all gone.
const MIN_SWEEP: usize = 1024;

/// The members of one set as a snapshot held them, compressed.
struct MemberFrame {
    /// The entries compressed (each with its key), held weakly and compared by address with a
    /// view's: an address is not reused while a weak reference holds its allocation.
    entries: Vec<Weak<SharedViewEntry>>,
    frame: Frame,
}

impl MemberFrame {
    /// Whether `run` holds exactly the entries compressed.
    fn matches(&self, run: &[&SharedEntry]) -> bool {
        self.entries.len() == run.len()
            && self
                .entries
                .iter()
                .zip(run)
                .all(|(entry, in_run)| std::ptr::eq(entry.as_ptr(), Arc::as_ptr(in_run)))
    }

    /// Whether nothing but the cache holds its entries any more.
    fn is_gone(&self) -> bool {
        self.entries.iter().all(|entry| entry.strong_count() == 0)
    }
}

#[derive(Default)]
struct FrameCache {
    by_set: HashMap<String, Arc<MemberFrame>>,
    sweep_at: usize,
    /// Frames compressed so far.
    compressed: u64,
}

/// Encodes nodes' views for their snapshots; the members of a set are compressed once for
/// every snapshot holding the same members.
#[derive(Default)]
pub struct ViewEncoder {
    cache: Mutex<FrameCache>,
}

impl ViewEncoder {
    /// `view` as an encoded `PolicyState`, the members of its large sets as shared frames.
    pub fn encode(&self, view: &State<SharedEntry, KeyInValue>) -> EncodedState {
        let mut encoded = EncodedState::default();
        let mut raw = Vec::new();
        let mut run: Vec<&SharedEntry> = Vec::new();
        let mut entries = view.values().peekable();
        while let Some(entry) = entries.next() {
            let Some(set) = member_set(entry) else {
                entry.encode_field(&mut raw);
                continue;
            };
            run.clear();
            run.push(entry);
            while let Some(next) = entries.next_if(|entry| member_set(entry) == Some(set)) {
                run.push(next);
            }
            match (run.len() >= MIN_SHARED_MEMBERS)
                .then(|| self.frame(set, &run))
                .flatten()
            {
                Some(frame) => {
                    encoded.push_raw(std::mem::take(&mut raw));
                    encoded.push_frame(frame);
                }
                None => {
                    for entry in &run {
                        entry.encode_field(&mut raw);
                    }
                }
            }
        }
        encoded.push_raw(raw);
        encoded
    }

    /// Sets whose members are held compressed.
    pub fn cached_sets(&self) -> usize {
        self.lock().by_set.len()
    }

    /// Times a set's members were compressed (once per set and membership, however many
    /// snapshots hold them).
    pub fn frames_compressed(&self) -> u64 {
        self.lock().compressed
    }

    fn lock(&self) -> MutexGuard<'_, FrameCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The members of `set` in `run`, compressed: the cached frame when it holds exactly them,
    /// a new one (cached) otherwise; `None` when compressing fails.
    fn frame(&self, set: &str, run: &[&SharedEntry]) -> Option<Frame> {
        let cached = self.lock().by_set.get(set).cloned();
        if let Some(cached) = cached
            && cached.matches(run)
        {
            return Some(cached.frame.clone());
        }
        let mut raw = Vec::with_capacity(run.iter().map(|entry| entry.encoded_field_len()).sum());
        for entry in run {
            entry.encode_field(&mut raw);
        }
        let frame = match Frame::compress(&raw) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::warn!(%error, set, "compressing a set's members failed; they travel with the view");
                return None;
            }
        };
        let entries = run.iter().map(|entry| Arc::downgrade(entry)).collect();
        self.lock().insert(
            set,
            MemberFrame {
                entries,
                frame: frame.clone(),
            },
        );
        Some(frame)
    }
}

impl FrameCache {
    /// Caches `frame` as `set`'s; past the sweep mark, first drops the sets whose members are
    /// all gone (deleted sets).
    fn insert(&mut self, set: &str, frame: MemberFrame) {
        if self.by_set.len() >= self.sweep_at {
            self.by_set.retain(|_, cached| !cached.is_gone());
            self.sweep_at = (2 * self.by_set.len()).max(MIN_SWEEP);
        }
        self.by_set.insert(set.to_owned(), Arc::new(frame));
        self.compressed += 1;
    }
}

/// The set of a member entry.
fn member_set(value: &SharedViewEntry) -> Option<&str> {
    match &**value {
        ViewEntry::Member(member) => Some(&member.set),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use brindle_fanout::{FanoutConfig, Key};
    use policy_api::convert::PolicyWire;
    use policy_api::view::{IpSetKind, IpSetView, MemberView, keys};

    use super::*;

    fn shared(key: String, entry: ViewEntry) -> (Key, SharedEntry) {
        let entry = Arc::new(SharedViewEntry::new(key, entry));
        (Key::clone(entry.key()), entry)
    }

    fn header(set: &str) -> (Key, SharedEntry) {
        let view = IpSetView {
            id: set.to_owned(),
            kind: IpSetKind::Net,
            source: format!("selector of {set}"),
        };
        shared(format!("{}{set}", keys::IPSET), ViewEntry::IpSet(view))
    }

    fn members(set: &str, count: usize) -> Vec<(Key, SharedEntry)> {
        (0..count)
            .map(|i| {
                let member = format!("10.{}.{}.{}/32", set.len(), i / 256, i % 256);
                let key = format!("{}{set}/{member}", keys::MEMBER);
                let set = set.to_owned();
                shared(key, ViewEntry::Member(MemberView { set, member }))
            })
            .collect()
    }

    /// What a subscriber decodes from `view`'s snapshot, encoded by `encoder`.
    async fn decoded(encoder: &Arc<ViewEncoder>, view: &SharedViewMap) -> BTreeMap<Key, ViewEntry> {
        let encoder = Arc::clone(encoder);
        let fanout = crate::core::hub::NodeFanout::new(
            FanoutConfig::default(),
            Arc::new(move |view| encoder.encode(view)),
        );
        fanout.reset(1, view.clone());
        let snapshot = fanout.snapshot().await.expect("encoded");
        let raw = snapshot.decompress().expect("decompressed");
        let mut skipped = Vec::new();
        let state = brindle_sync::decode_state::<PolicyWire>(&raw, &mut skipped).expect("decoded");
        assert!(skipped.is_empty());
        state
    }

    type SharedViewMap = BTreeMap<Key, SharedEntry>;

    fn plain(view: &SharedViewMap) -> BTreeMap<Key, ViewEntry> {
        view.iter()
            .map(|(key, entry)| (key.clone(), ViewEntry::clone(entry)))
            .collect()
    }

    #[tokio::test]
    async fn nodes_holding_the_same_members_share_one_frame_and_decode_to_their_views() {
        let encoder = Arc::new(ViewEncoder::default());
        let web = members("web", 40);
        let tiny = members("tiny", 3);
        let node_a: SharedViewMap = [header("web"), header("a-only")]
            .into_iter()
            .chain(web.iter().cloned())
            .chain(tiny.iter().cloned())
            .collect();
        let node_b: SharedViewMap = [header("web"), header("b-only")]
            .into_iter()
            .chain(web.iter().cloned())
            .collect();
        assert_eq!(decoded(&encoder, &node_a).await, plain(&node_a));
        assert_eq!(decoded(&encoder, &node_b).await, plain(&node_b));
        assert_eq!(encoder.cached_sets(), 1, "only the large set has a frame");
        assert_eq!(encoder.frames_compressed(), 1, "compressed once for both nodes");
    }

    #[tokio::test]
    async fn members_that_changed_are_compressed_again() {
        let encoder = Arc::new(ViewEncoder::default());
        let mut web = members("web", 40);
        let view = |members: &[(Key, SharedEntry)]| -> SharedViewMap { members.iter().cloned().collect() };
        assert_eq!(decoded(&encoder, &view(&web)).await, plain(&view(&web)));
        // One more member.
        let more = members("web", 41);
        web.push(more[40].clone());
        assert_eq!(decoded(&encoder, &view(&web)).await, plain(&view(&web)));
        assert_eq!(encoder.frames_compressed(), 2);
        // As many members, one of them another entry with the same key and value: compared by
        // identity, so compressed again (the cache never trusts a look-alike).
        web[0] = (
            web[0].0.clone(),
            Arc::new(SharedViewEntry::new(
                web[0].0.clone(),
                ViewEntry::clone(&web[0].1),
            )),
        );
        assert_eq!(decoded(&encoder, &view(&web)).await, plain(&view(&web)));
        assert_eq!(encoder.frames_compressed(), 3);
        // Another member in place of one.
        web[1] = members("web", 60)[59].clone();
        assert_eq!(decoded(&encoder, &view(&web)).await, plain(&view(&web)));
        assert_eq!(encoder.frames_compressed(), 4);
    }

    #[tokio::test]
    async fn the_frames_of_sets_gone_are_swept() {
        let encoder = Arc::new(ViewEncoder::default());
        for set in 0..MIN_SWEEP {
            let view: SharedViewMap = members(&format!("gone-{set}"), MIN_SHARED_MEMBERS)
                .into_iter()
                .collect();
            decoded(&encoder, &view).await;
        }
        assert_eq!(encoder.cached_sets(), MIN_SWEEP, "not swept before the mark");
        let kept: SharedViewMap = members("kept", MIN_SHARED_MEMBERS).into_iter().collect();
        decoded(&encoder, &kept).await;
        assert_eq!(
            encoder.cached_sets(),
            1,
            "every set but the one still held is swept"
        );
    }
}
