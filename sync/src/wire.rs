//! How one service's state travels on its `Sync` stream: the service names its messages and how
//! one entry converts ([`Wire`]); encoding a whole state, a delta and applying a response are the
//! same for every service.

use std::collections::BTreeMap;

use brindle_fanout::{Batch, Key, Mirror};
use brindle_proto::InvalidField;
use brindle_proto::common::v1 as pb;
use prost::Message;

use super::{Received, SnapshotAssembler, apply_received};

/// What one `Sync` response carries.
#[derive(Debug)]
pub enum Payload<D> {
    /// A piece of a snapshot.
    Snapshot(pb::EncodedSnapshot),
    /// Changes.
    Delta(D),
    /// Nothing new; the server is alive.
    Keepalive(pb::Keepalive),
}

/// A service's `Sync` messages and the conversion of one entry of its state.
pub trait Wire: 'static {
    /// An entry's value in the service's model.
    type Value: Clone + PartialEq + Send + Sync + 'static;
    /// One keyed entry as a message.
    type Entry;
    /// The whole state as a message (what a snapshot holds, before compression).
    type State: Message + Default;
    /// Changes as a message.
    type Delta;
    /// The stream's response message.
    type Response;

    /// An entry as a message.
    fn entry_to_proto(key: &str, value: &Self::Value) -> Self::Entry;
    /// A message as an entry; the error names the field that does not convert.
    fn entry_from_proto(entry: Self::Entry) -> Result<(String, Self::Value), InvalidField>;
    /// An entry message's key.
    fn entry_key(entry: &Self::Entry) -> String;
    /// Whether an entry message holds no value this end knows (a kind added after it was built).
    fn entry_is_unknown(entry: &Self::Entry) -> bool;
    /// The state message of `entries`.
    fn state(entries: Vec<Self::Entry>) -> Self::State;
    /// The entries of a state message.
    fn state_entries(state: Self::State) -> Vec<Self::Entry>;
    /// The delta message of upserted entries and removed keys.
    fn delta(upserts: Vec<Self::Entry>, removed_keys: Vec<String>) -> Self::Delta;
    /// The upserted entries and removed keys of a delta message.
    fn delta_parts(delta: Self::Delta) -> (Vec<Self::Entry>, Vec<String>);
    /// The response at `revision` carrying `payload`.
    fn response(revision: u64, payload: Payload<Self::Delta>) -> Self::Response;
    /// The revision and payload of a response (`None`: a kind this end does not know).
    fn response_parts(response: Self::Response) -> (u64, Option<Payload<Self::Delta>>);
}

/// What a server sends on a `Sync` stream: its deltas and responses. Every [`Wire`] sends a batch
/// as one message entry per key; a server whose state holds values standing for several entries
/// each implements it itself.
pub trait Outgoing: 'static {
    /// A value of the server's state.
    type Value: Clone + PartialEq + Send + Sync + 'static;
    /// Changes as a message.
    type Delta;
    /// The stream's response message.
    type Response;

    /// A batch as a delta message.
    fn delta(batch: &Batch<Self::Value>) -> Self::Delta;
    /// The response at `revision` carrying `payload`.
    fn response(revision: u64, payload: Payload<Self::Delta>) -> Self::Response;
}

impl<W: Wire> Outgoing for W {
    type Value = W::Value;
    type Delta = W::Delta;
    type Response = W::Response;

    fn delta(batch: &Batch<W::Value>) -> W::Delta {
        delta_to_proto::<W>(batch)
    }

    fn response(revision: u64, payload: Payload<W::Delta>) -> W::Response {
        W::response(revision, payload)
    }
}

/// The whole state, its entries in key order, as an encoded state message (the fan-out's
/// snapshot encoder).
pub fn encode_state<'a, W: Wire>(
    entries: impl IntoIterator<Item = (impl AsRef<str>, &'a W::Value)>,
) -> Vec<u8>
where
    W::Value: 'a,
{
    W::state(
        entries
            .into_iter()
            .map(|(k, v)| W::entry_to_proto(k.as_ref(), v))
            .collect(),
    )
    .encode_to_vec()
}

/// What one response did to a subscriber's mirror.
#[derive(Debug, Default)]
pub struct Applied {
    /// Whether the mirror changed (`false`: a keepalive, a piece of a snapshot).
    pub changed: bool,
    /// The keys of entries of a kind the subscriber does not know (added after it was built):
    /// left out of its mirror (a value it held under such a key is removed), so a newer
    /// service's state still applies. (An entry of a known kind that does not convert makes the
    /// message unusable: leaving it out could widen what a policy allows.)
    pub skipped: Vec<String>,
}

/// Converts entry messages; those of unknown kinds go to `skipped`, one of a known kind that
/// does not convert is an error.
fn convert_entries<W: Wire>(
    entries: Vec<W::Entry>,
    skipped: &mut Vec<String>,
) -> Result<Vec<(Key, W::Value)>, InvalidField> {
    let mut converted = Vec::with_capacity(entries.len());
    for entry in entries {
        if W::entry_is_unknown(&entry) {
            skipped.push(W::entry_key(&entry));
        } else {
            let (key, value) = W::entry_from_proto(entry)?;
            converted.push((key.into(), value));
        }
    }
    Ok(converted)
}

/// A decoded (uncompressed) state message; entries of unknown kinds go to `skipped`.
pub fn decode_state<W: Wire>(
    bytes: &[u8],
    skipped: &mut Vec<String>,
) -> Result<BTreeMap<Key, W::Value>, InvalidField> {
    let state = W::State::decode(bytes).map_err(|e| InvalidField::new("snapshot", e))?;
    Ok(convert_entries::<W>(W::state_entries(state), skipped)?
        .into_iter()
        .collect())
}

/// A batch as a delta message.
pub fn delta_to_proto<W: Wire>(batch: &Batch<W::Value>) -> W::Delta {
    W::delta(
        batch
            .upserts
            .iter()
            .map(|(k, v)| W::entry_to_proto(k, v))
            .collect(),
        batch.removed.iter().map(|key| key.to_string()).collect(),
    )
}

/// A delta message as the batch a subscriber applies, ending at `revision`: entries of kinds this
/// end does not know go to `skipped` and are removed (a value held under such a key is stale); an
/// entry of a known kind that does not convert is an error.
pub fn delta_from_proto<W: Wire>(
    revision: u64,
    delta: W::Delta,
    skipped: &mut Vec<String>,
) -> Result<Batch<W::Value>, InvalidField> {
    let (upserts, mut removed) = W::delta_parts(delta);
    let known = skipped.len();
    let upserts = convert_entries::<W>(upserts, skipped)?;
    removed.extend(skipped[known..].iter().cloned());
    Ok(Batch {
        from: 0,
        to: revision,
        upserts,
        removed: removed.into_iter().map(Key::from).collect(),
        replaced: Vec::new(),
    })
}

/// Applies one `Sync` response to a subscriber's mirror: a snapshot (once `pieces` has all of
/// it) replaces it, a delta updates it (nothing changes for a keepalive or a piece of a
/// snapshot); entries that do not convert are skipped and reported. An error is a message that
/// cannot be used at all.
pub fn apply_response<W: Wire>(
    mirror: &mut Mirror<W::Value>,
    pieces: &mut SnapshotAssembler,
    response: W::Response,
) -> Result<Applied, InvalidField> {
    let (revision, payload) = W::response_parts(response);
    let mut skipped = Vec::new();
    let received = match payload {
        Some(Payload::Snapshot(piece)) => Received::SnapshotPiece(piece),
        Some(Payload::Delta(delta)) => Received::Delta(delta_from_proto::<W>(revision, delta, &mut skipped)?),
        Some(Payload::Keepalive(_)) | None => Received::Nothing,
    };
    let changed = apply_received(mirror, pieces, revision, received, |bytes| {
        decode_state::<W>(bytes, &mut skipped)
    })?;
    Ok(Applied { changed, skipped })
}

/// Implements [`Wire`] for `$wire`, a service whose generated messages have the Sync shape every
/// brindle service shares (a state of `entries`, a delta of `upserts` and `removed_keys`, a
/// response of `revision` and a `payload` of snapshot, delta or keepalive), given the conversion
/// of one entry.
#[macro_export]
macro_rules! impl_wire {
    (
        $wire:ty,
        value: $value:ty,
        entry: $entry:ty,
        state: $state:path,
        delta: $delta:path,
        response: $response:path,
        payload: $payload:path,
        entry_to_proto: $to:path,
        entry_from_proto: $from:path $(,)?
    ) => {
        impl $crate::Wire for $wire {
            type Value = $value;
            type Entry = $entry;
            type State = $state;
            type Delta = $delta;
            type Response = $response;

            fn entry_to_proto(key: &str, value: &$value) -> $entry {
                $to(key, value)
            }

            fn entry_from_proto(entry: $entry) -> Result<(String, $value), ::brindle_proto::InvalidField> {
                $from(entry)
            }

            fn entry_key(entry: &$entry) -> String {
                entry.key.clone()
            }

            fn entry_is_unknown(entry: &$entry) -> bool {
                entry.value.is_none()
            }

            fn state(entries: Vec<$entry>) -> $state {
                $state { entries }
            }

            fn state_entries(state: $state) -> Vec<$entry> {
                state.entries
            }

            fn delta(upserts: Vec<$entry>, removed_keys: Vec<String>) -> $delta {
                $delta {
                    upserts,
                    removed_keys,
                }
            }

            fn delta_parts(delta: $delta) -> (Vec<$entry>, Vec<String>) {
                (delta.upserts, delta.removed_keys)
            }

            fn response(revision: u64, payload: $crate::Payload<$delta>) -> $response {
                use $payload as Message;
                let payload = match payload {
                    $crate::Payload::Snapshot(piece) => Message::Snapshot(piece),
                    $crate::Payload::Delta(delta) => Message::Delta(delta),
                    $crate::Payload::Keepalive(keepalive) => Message::Keepalive(keepalive),
                };
                $response {
                    revision,
                    payload: Some(payload),
                }
            }

            fn response_parts(response: $response) -> (u64, Option<$crate::Payload<$delta>>) {
                use $payload as Message;
                let payload = response.payload.map(|payload| match payload {
                    Message::Snapshot(piece) => $crate::Payload::Snapshot(piece),
                    Message::Delta(delta) => $crate::Payload::Delta(delta),
                    Message::Keepalive(keepalive) => $crate::Payload::Keepalive(keepalive),
                });
                (response.revision, payload)
            }
        }
    };
}
