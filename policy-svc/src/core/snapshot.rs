//! A node's view as its snapshot's encoding: its entries in key order, each set's members as
//! their entries — a large set's as the frame it compressed once for every snapshot holding it.

use brindle_fanout::{EncodedState, KeyInValue, State};
use policy_api::slot::ViewSlot;

/// `view` as an encoded `PolicyState`, counting the entries its slots stand for.
pub fn encode_view(view: &State<ViewSlot, KeyInValue>) -> EncodedState {
    let mut encoded = EncodedState::default();
    let mut raw = Vec::new();
    let mut entries = 0;
    for slot in view.values() {
        match slot {
            ViewSlot::Entry(entry) => entry.encode_field(&mut raw),
            ViewSlot::Members(members) => members.encode(&mut raw, &mut encoded),
        }
        entries += slot.len() as u64;
    }
    encoded.push_raw(raw);
    encoded.set_entries(entries);
    encoded
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use brindle_fanout::{FanoutConfig, Key, OwnKey};
    use policy_api::convert::PolicyWire;
    use policy_api::shared::SharedViewEntry;
    use policy_api::slot::SetMembers;
    use policy_api::view::{IpSetKind, IpSetView, MemberView, ViewEntry, keys};

    use super::*;
    use crate::core::hub::NodeFanout;

    fn header(set: &str) -> ViewSlot {
        let view = IpSetView {
            id: set.to_owned(),
            kind: IpSetKind::Net,
            source: format!("selector of {set}"),
        };
        let entry = SharedViewEntry::new(format!("{}{set}", keys::IPSET), ViewEntry::IpSet(view));
        ViewSlot::Entry(Arc::new(entry))
    }

    fn members(set: &str, count: usize) -> ViewSlot {
        let entries = (0..count).map(|i| {
            let member = format!("10.{}.{}.{}/32", set.len(), i / 256, i % 256);
            let key = format!("{}{set}/{member}", keys::MEMBER);
            let set = set.to_owned();
            Arc::new(SharedViewEntry::new(
                key,
                ViewEntry::Member(MemberView { set, member }),
            ))
        });
        let mut entries: Vec<_> = entries.collect();
        entries.sort_by(|a, b| a.key().cmp(b.key()));
        ViewSlot::Members(Arc::new(SetMembers::new(set, entries)))
    }

    fn plain(view: &[ViewSlot]) -> BTreeMap<Key, ViewEntry> {
        view.iter()
            .flat_map(|slot| slot.entries())
            .map(|entry| (Key::clone(entry.key()), ViewEntry::clone(entry)))
            .collect()
    }

    #[tokio::test]
    async fn a_view_decodes_to_the_entries_its_slots_stand_for_large_and_small_sets_alike() {
        let web = members("web", 40);
        let view: Vec<ViewSlot> = [header("tiny"), header("web"), members("tiny", 3), web.clone()]
            .into_iter()
            .collect();
        let fanout = NodeFanout::new(FanoutConfig::default(), Arc::new(encode_view));
        fanout.reset(1, view.iter().cloned());
        let snapshot = fanout.snapshot().await.expect("encoded");
        let raw = snapshot.decompress().expect("decompressed");
        let mut skipped = Vec::new();
        let state = brindle_sync::decode_state::<PolicyWire>(&raw, &mut skipped).expect("decoded");
        assert!(skipped.is_empty());
        assert_eq!(state, plain(&view));
        assert_eq!(snapshot.entries, 45, "the entries of the encoding, not the slots");
        assert_eq!(
            raw,
            brindle_sync::encode_state::<PolicyWire>(plain(&view).iter()),
            "the bytes of the messages"
        );
        assert_eq!(web.own_key().as_ref(), "member/web/");
    }

    #[tokio::test]
    async fn a_large_sets_members_are_compressed_once_for_every_snapshot_holding_them() {
        let web = members("web", 40);
        let mut snapshots = Vec::new();
        for node in 0..2 {
            let fanout = NodeFanout::new(FanoutConfig::default(), Arc::new(encode_view));
            fanout.reset(1 + node, [web.clone()]);
            snapshots.push(fanout.snapshot().await.expect("encoded"));
        }
        assert_eq!(
            snapshots[0].data.contiguous().as_ptr(),
            snapshots[1].data.contiguous().as_ptr(),
            "both snapshots hold the same frame, not a copy"
        );
    }
}
