//! A view entry as policy-svc holds it: one value, with its key, shared by every node's view
//! that holds it, its wire form encoded once, so a snapshot of a node's view is its entries'
//! encodings copied.

use std::fmt;
use std::ops::Deref;
use std::sync::OnceLock;

use brindle_fanout::{Key, OwnKey};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use crate::convert::entry_to_proto;
use crate::view::ViewEntry;

/// A view entry and its key, shared by every view that holds it (a fan-out stores it alone:
/// [`brindle_fanout::KeyInValue`]), with its encoding made on first use.
pub struct SharedViewEntry {
    key: Key,
    entry: ViewEntry,
    /// The entry's value fields of a `PolicyEntry` message (everything but its key).
    encoded: OnceLock<Vec<u8>>,
}

/// The field number of `PolicyState.entries`.
const ENTRIES_FIELD: u32 = 1;
/// The field number of `PolicyEntry.key`.
const KEY_FIELD: u32 = 1;

impl SharedViewEntry {
    /// `entry` under `key`, not encoded yet.
    pub fn new(key: impl Into<Key>, entry: ViewEntry) -> Self {
        Self {
            key: key.into(),
            entry,
            encoded: OnceLock::new(),
        }
    }

    /// Its key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The value fields of the entry's `PolicyEntry` message, encoded once.
    fn encoded(&self) -> &[u8] {
        self.encoded
            .get_or_init(|| entry_to_proto("", &self.entry).encode_to_vec())
    }

    /// Length of [`encode_field`](Self::encode_field)'s output.
    pub fn encoded_field_len(&self) -> usize {
        let len = self.message_len();
        key_len(ENTRIES_FIELD) + encoded_len_varint(len as u64) + len
    }

    /// Appends the entry, with its key, to `out` as a field of a `PolicyState`: a state's
    /// encoding is its entries' in key order, the same bytes as encoding the messages (fields in
    /// number order), the value copied from its encoding made once.
    pub fn encode_field(&self, out: &mut Vec<u8>) {
        encode_key(ENTRIES_FIELD, WireType::LengthDelimited, out);
        encode_varint(self.message_len() as u64, out);
        if !self.key.is_empty() {
            encode_key(KEY_FIELD, WireType::LengthDelimited, out);
            encode_varint(self.key.len() as u64, out);
            out.extend_from_slice(self.key.as_bytes());
        }
        out.extend_from_slice(self.encoded());
    }

    /// Length of the entry's `PolicyEntry` message.
    fn message_len(&self) -> usize {
        let key_field_len = match self.key.len() {
            0 => 0,
            len => key_len(KEY_FIELD) + encoded_len_varint(len as u64) + len,
        };
        key_field_len + self.encoded().len()
    }
}

impl Deref for SharedViewEntry {
    type Target = ViewEntry;

    fn deref(&self) -> &ViewEntry {
        &self.entry
    }
}

impl OwnKey for SharedViewEntry {
    fn own_key(&self) -> &Key {
        &self.key
    }
}

impl fmt::Debug for SharedViewEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {:?}", self.key, self.entry)
    }
}

impl PartialEq for SharedViewEntry {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key && self.entry == other.entry
    }
}

impl Eq for SharedViewEntry {}
