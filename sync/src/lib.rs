//! The `Sync` protocol as both ends see it — how one service's keyed state travels ([`Wire`]:
//! its entry, state, delta and response messages, converted to and from the service's model) —
//! and the subscriber's side of it: a snapshot put together from its pieces, deltas applied to a
//! [`Mirror`] of the state. The server's side lives with the servers (`brindle-grpc-server`).

mod assembler;
mod wire;

use std::collections::BTreeMap;

use brindle_fanout::{Batch, Key, Mirror};
use brindle_proto::InvalidField;
use brindle_proto::common::v1 as pb;

pub use assembler::{PieceError, SnapshotAssembler};
pub use wire::{
    Applied, Outgoing, Payload, Wire, apply_response, decode_state, delta_from_proto, delta_to_proto,
    encode_state,
};

/// What a subscriber received on a `Sync` stream, with the service's delta already converted.
#[derive(Debug)]
enum Received<V> {
    /// A piece of a snapshot.
    SnapshotPiece(pb::EncodedSnapshot),
    /// Changes.
    Delta(Batch<V>),
    /// A keepalive (or a message kind this subscriber does not know).
    Nothing,
}

/// Applies one received message at `revision` to a subscriber's mirror: a snapshot (once
/// `pieces` has all of it, decoded by `decode_state`) replaces it, a delta updates it; `false`
/// when there is nothing to apply yet (a keepalive, a piece of a snapshot).
fn apply_received<V: Clone + PartialEq>(
    mirror: &mut Mirror<V>,
    pieces: &mut SnapshotAssembler,
    revision: u64,
    received: Received<V>,
    decode_state: impl FnOnce(&[u8]) -> Result<BTreeMap<Key, V>, InvalidField>,
) -> Result<bool, InvalidField> {
    match received {
        Received::SnapshotPiece(piece) => {
            let Some(snapshot) = pieces
                .add(revision, piece)
                .map_err(|e| InvalidField::new("snapshot", e))?
            else {
                return Ok(false);
            };
            let raw = snapshot
                .decompress()
                .map_err(|e| InvalidField::new("snapshot.data", e))?;
            mirror.apply_snapshot(revision, decode_state(&raw)?);
            Ok(true)
        }
        Received::Delta(batch) => {
            mirror.apply_batch(&batch);
            Ok(true)
        }
        Received::Nothing => Ok(false),
    }
}

/// Milliseconds since the unix epoch (0 before it), as sync messages carry times.
pub fn unix_ms(time: std::time::SystemTime) -> i64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
