//! A view entry as policy-svc holds it: one value shared by every node's view that holds it,
//! its wire form encoded once, so a snapshot of a node's view is its entries' encodings copied.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

use crate::convert::entry_to_proto;
use crate::view::ViewEntry;

/// A view entry shared by every view that holds it, with its encoding made on first use.
#[derive(Debug)]
pub struct SharedViewEntry {
    entry: ViewEntry,
    /// The entry's value fields of a `PolicyEntry` message (everything but its key).
    encoded: OnceLock<Vec<u8>>,
}

impl SharedViewEntry {
    /// `entry`, not encoded yet.
    pub fn new(entry: ViewEntry) -> Self {
        Self {
            entry,
            encoded: OnceLock::new(),
        }
    }

    /// The value fields of the entry's `PolicyEntry` message, encoded once.
    fn encoded(&self) -> &[u8] {
        self.encoded
            .get_or_init(|| entry_to_proto("", &self.entry).encode_to_vec())
    }
}

impl Deref for SharedViewEntry {
    type Target = ViewEntry;

    fn deref(&self) -> &ViewEntry {
        &self.entry
    }
}

impl PartialEq for SharedViewEntry {
    fn eq(&self, other: &Self) -> bool {
        self.entry == other.entry
    }
}

impl Eq for SharedViewEntry {}

/// The field number of `PolicyState.entries`.
const ENTRIES_FIELD: u32 = 1;
/// The field number of `PolicyEntry.key`.
const KEY_FIELD: u32 = 1;

/// A node's view as an encoded `PolicyState` (the fan-out's snapshot encoder): the same bytes as
/// encoding the messages (fields in number order), with each entry's value copied from its
/// encoding made once.
pub fn encode_shared_state<K: AsRef<str>>(state: &BTreeMap<K, Arc<SharedViewEntry>>) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in state {
        let key = key.as_ref();
        let body = value.encoded();
        let key_len = if key.is_empty() {
            0
        } else {
            1 + encoded_len_varint(key.len() as u64) + key.len()
        };
        encode_key(ENTRIES_FIELD, WireType::LengthDelimited, &mut out);
        encode_varint((key_len + body.len()) as u64, &mut out);
        if !key.is_empty() {
            encode_key(KEY_FIELD, WireType::LengthDelimited, &mut out);
            encode_varint(key.len() as u64, &mut out);
            out.extend_from_slice(key.as_bytes());
        }
        out.extend_from_slice(body);
    }
    out
}
