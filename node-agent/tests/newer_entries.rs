//! An agent older than its service keeps following it: a state entry of a kind added after it was
//! built (its oneof field unknown here) is left out and reported, and every other entry still
//! applies, in a snapshot and in a delta; an entry of a known kind with a value it refuses makes
//! the message unusable (leaving it out could widen what a policy allows), and the mirror stays.

use brindle_fanout::Mirror;
use brindle_proto::common::v1 as common;
use brindle_proto::route::v1 as pb;
use brindle_sync::{SnapshotAssembler, apply_response};
use prost::Message;
use route_api::convert::RouteWire;

fn block(cidr: &str) -> pb::RouteEntry {
    pb::RouteEntry {
        key: format!("block/{cidr}"),
        value: Some(pb::route_entry::Value::Block(pb::BlockRoute {
            cidr: cidr.into(),
            node: "n2".into(),
            pool: "pods".into(),
        })),
    }
}

/// A RouteEntry as a newer service encodes one of a kind this build does not know: its key, and
/// its value in oneof field 99.
fn newer_kind_entry(key: &str) -> Vec<u8> {
    let mut entry = Vec::new();
    prost::encoding::string::encode(1, &key.to_owned(), &mut entry);
    prost::encoding::bytes::encode(99, &b"\x0a\x03new".to_vec(), &mut entry);
    entry
}

fn snapshot(revision: u64, state: Vec<u8>) -> pb::SyncResponse {
    let response = pb::SyncResponse {
        revision,
        payload: Some(pb::sync_response::Payload::Snapshot(common::EncodedSnapshot {
            codec: common::Codec::None.into(),
            raw_bytes: state.len() as u64,
            data: state.into(),
            ..Default::default()
        })),
    };
    // Through the wire, as the agent receives it (the unknown field is dropped on decoding).
    pb::SyncResponse::decode(response.encode_to_vec().as_slice()).expect("decodes")
}

#[test]
fn entries_of_newer_kinds_are_left_out_and_the_rest_applies() {
    // A snapshot: two blocks and an entry of a newer kind between them.
    let mut state = Vec::new();
    prost::encoding::message::encode(1, &block("10.244.1.0/26"), &mut state);
    prost::encoding::bytes::encode(1, &newer_kind_entry("future/x"), &mut state);
    prost::encoding::message::encode(1, &block("10.244.2.0/26"), &mut state);
    let mut mirror = Mirror::default();
    let mut pieces = SnapshotAssembler::default();
    let applied = apply_response::<RouteWire>(&mut mirror, &mut pieces, snapshot(5, state)).expect("usable");
    assert!(applied.changed);
    assert_eq!(applied.skipped, ["future/x"]);
    let keys: Vec<&str> = mirror.state().keys().map(|key| &**key).collect();
    assert_eq!(keys, ["block/10.244.1.0/26", "block/10.244.2.0/26"]);
    assert_eq!(mirror.revision(), 5);

    // A delta: a known block upserted, one turned into a kind this agent does not know (its old
    // value must not linger), and a removal.
    let mut unusable = block("10.244.2.0/26");
    unusable.value = None;
    let delta = pb::SyncResponse {
        revision: 6,
        payload: Some(pb::sync_response::Payload::Delta(pb::RouteDelta {
            upserts: vec![block("10.244.4.0/26"), unusable],
            removed_keys: vec!["block/10.244.1.0/26".into()],
        })),
    };
    let applied = apply_response::<RouteWire>(&mut mirror, &mut pieces, delta).expect("usable");
    assert!(applied.changed);
    assert_eq!(applied.skipped, ["block/10.244.2.0/26"]);
    let keys: Vec<&str> = mirror.state().keys().map(|key| &**key).collect();
    assert_eq!(keys, ["block/10.244.4.0/26"]);
    assert_eq!(mirror.revision(), 6);
}

#[test]
fn a_refused_value_of_a_known_kind_makes_the_message_unusable_and_the_mirror_stays() {
    let mut mirror = Mirror::default();
    let mut pieces = SnapshotAssembler::default();
    let mut state = Vec::new();
    prost::encoding::message::encode(1, &block("10.244.1.0/26"), &mut state);
    apply_response::<RouteWire>(&mut mirror, &mut pieces, snapshot(5, state)).expect("usable");
    let mut bad = block("10.244.3.0/26");
    if let Some(pb::route_entry::Value::Block(b)) = &mut bad.value {
        b.cidr = "not-a-cidr".into();
    }
    let delta = pb::SyncResponse {
        revision: 6,
        payload: Some(pb::sync_response::Payload::Delta(pb::RouteDelta {
            upserts: vec![block("10.244.4.0/26"), bad],
            removed_keys: vec!["block/10.244.1.0/26".into()],
        })),
    };
    let error = apply_response::<RouteWire>(&mut mirror, &mut pieces, delta).expect_err("unusable");
    assert!(error.to_string().contains("cidr"), "{error}");
    let keys: Vec<&str> = mirror.state().keys().map(|key| &**key).collect();
    assert_eq!(keys, ["block/10.244.1.0/26"], "nothing of the message applied");
    assert_eq!(mirror.revision(), 5);
}
