//! Datastore value types: revisions, key-values, transactions and watch events.

use std::collections::HashSet;

use crate::error::StoreError;

/// A store-wide revision: every committed change increments it; it never goes back, also across
/// restarts.
pub type Revision = u64;

/// Identifier of a lease; keys attached to it are deleted when it expires.
pub type LeaseId = u64;

/// Largest request either backend accepts: etcd's default `--max-request-bytes` (1.5 MiB).
pub const MAX_REQUEST_BYTES: usize = 1_572_864;

/// Most compares, and most operations, in one transaction: etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;

/// Conservative encoding overhead of one compare or operation (tags, lengths, lease, revision).
const ITEM_OVERHEAD_BYTES: usize = 32;
/// Conservative encoding overhead of the request envelope (raft request header and framing).
const REQUEST_OVERHEAD_BYTES: usize = 512;

/// A stored key and its value with etcd's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// Revision at which the key was created (since it last did not exist).
    pub create_revision: Revision,
    /// Revision of the last change to the key; what compare-and-swap pins.
    pub mod_revision: Revision,
    /// Number of changes since creation (1 after the create).
    pub version: u64,
    /// Lease the key is attached to.
    pub lease: Option<LeaseId>,
}

/// The keys under a prefix, read at one consistent revision.
#[derive(Debug, Clone, Default)]
pub struct ListResult {
    /// Matching keys, sorted by key.
    pub kvs: Vec<KeyValue>,
    /// Store revision the list was read at; watch after it to follow changes without a gap.
    pub revision: Revision,
}

/// A condition a transaction requires; all must hold or nothing is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent {
        /// The key.
        key: String,
    },
    /// The key's mod-revision equals `revision` (0 means the key does not exist).
    ModRevision {
        /// The key.
        key: String,
        /// Expected mod-revision.
        revision: Revision,
    },
    /// The key exists and its value equals `value`.
    Value {
        /// The key.
        key: String,
        /// Expected value.
        value: Vec<u8>,
    },
}

impl Compare {
    /// The key this compare reads.
    pub fn key(&self) -> &str {
        match self {
            Self::Absent { key } | Self::ModRevision { key, .. } | Self::Value { key, .. } => key,
        }
    }

    /// Whether the compare holds for the key's current state.
    pub fn holds(&self, current: Option<&KeyValue>) -> bool {
        match (self, current) {
            (Self::Absent { .. }, current) => current.is_none(),
            (Self::ModRevision { revision, .. }, None) => *revision == 0,
            (Self::ModRevision { revision, .. }, Some(kv)) => kv.mod_revision == *revision,
            (Self::Value { .. }, None) => false,
            (Self::Value { value, .. }, Some(kv)) => kv.value == *value,
        }
    }

    fn encoded_size(&self) -> usize {
        let value = match self {
            Self::Value { value, .. } => value.len(),
            Self::Absent { .. } | Self::ModRevision { .. } => 0,
        };
        self.key().len() + value + ITEM_OVERHEAD_BYTES
    }
}

/// A write inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create or replace a key.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: Vec<u8>,
        /// Attach the key to this lease (it is deleted when the lease expires).
        lease: Option<LeaseId>,
    },
    /// Delete a key; deleting a missing key is not an error and changes nothing.
    Delete {
        /// The key.
        key: String,
    },
}

impl Op {
    /// The key this operation writes.
    pub fn key(&self) -> &str {
        match self {
            Self::Put { key, .. } | Self::Delete { key } => key,
        }
    }

    fn encoded_size(&self) -> usize {
        let value = match self {
            Self::Put { value, .. } => value.len(),
            Self::Delete { .. } => 0,
        };
        self.key().len() + value + ITEM_OVERHEAD_BYTES
    }
}

/// An atomic compare-then-write: if every compare holds, every operation is applied under one new
/// revision; otherwise nothing is written and the result is [`StoreError::Conflict`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// Conditions, all of which must hold.
    pub compares: Vec<Compare>,
    /// Writes applied when they do, in order.
    pub ops: Vec<Op>,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires `key` to be absent.
    pub fn if_absent(mut self, key: impl Into<String>) -> Self {
        self.compares.push(Compare::Absent { key: key.into() });
        self
    }

    /// Requires `key`'s mod-revision to be `revision` (0 = absent).
    pub fn if_mod_revision(mut self, key: impl Into<String>, revision: Revision) -> Self {
        self.compares.push(Compare::ModRevision {
            key: key.into(),
            revision,
        });
        self
    }

    /// Requires `key` to hold exactly `value`.
    pub fn if_value(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.compares.push(Compare::Value {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// Writes `value` at `key`.
    pub fn put(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.ops.push(Op::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        });
        self
    }

    /// Writes `value` at `key`, attached to `lease`.
    pub fn put_with_lease(
        mut self,
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
        lease: LeaseId,
    ) -> Self {
        self.ops.push(Op::Put {
            key: key.into(),
            value: value.into(),
            lease: Some(lease),
        });
        self
    }

    /// Deletes `key`.
    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.ops.push(Op::Delete { key: key.into() });
        self
    }

    /// Conservative estimate of the encoded request size, compared with [`MAX_REQUEST_BYTES`].
    pub fn encoded_size(&self) -> usize {
        REQUEST_OVERHEAD_BYTES
            + self.compares.iter().map(Compare::encoded_size).sum::<usize>()
            + self.ops.iter().map(Op::encoded_size).sum::<usize>()
    }

    /// Checks what both backends refuse, so that they refuse it the same way.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.compares.len() > MAX_TXN_OPS || self.ops.len() > MAX_TXN_OPS {
            return Err(StoreError::InvalidRequest(format!(
                "transaction has {} compares and {} operations; at most {MAX_TXN_OPS} of each",
                self.compares.len(),
                self.ops.len()
            )));
        }
        let keys = self.compares.iter().map(Compare::key);
        if keys.chain(self.ops.iter().map(Op::key)).any(str::is_empty) {
            return Err(StoreError::InvalidRequest("empty key".to_owned()));
        }
        let mut written = HashSet::with_capacity(self.ops.len());
        if let Some(op) = self.ops.iter().find(|op| !written.insert(op.key())) {
            return Err(StoreError::InvalidRequest(format!(
                "key {:?} is written twice in one transaction",
                op.key()
            )));
        }
        let size = self.encoded_size();
        if size > MAX_REQUEST_BYTES {
            return Err(StoreError::TooLarge {
                size,
                limit: MAX_REQUEST_BYTES,
            });
        }
        Ok(())
    }
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created or replaced.
    Put,
    /// Deleted (also by lease expiry).
    Delete,
}

/// One change to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: EventKind,
    /// The key.
    pub key: String,
    /// The new value; empty for a delete.
    pub value: Vec<u8>,
}

/// Every watched change of one revision (one transaction), in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    /// The revision the changes were committed at.
    pub revision: Revision,
    /// The changes under the watched prefix.
    pub events: Vec<WatchEvent>,
}

/// The smallest key greater than every key starting with `prefix` (etcd's `range_end`), or `None`
/// when no such key exists (empty prefix or all bytes 0xff).
pub fn prefix_end(prefix: &str) -> Option<Vec<u8>> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end("/a/"), Some(b"/a0".to_vec()));
        assert_eq!(prefix_end(""), None);
    }

    #[test]
    fn validate_rejects_duplicate_and_empty_keys() {
        let dup = Txn::new().put("k", "1").delete("k");
        assert!(matches!(dup.validate(), Err(StoreError::InvalidRequest(m)) if m.contains("\"k\"")));
        let empty = Txn::new().if_absent("");
        assert!(matches!(empty.validate(), Err(StoreError::InvalidRequest(_))));
    }

    #[test]
    fn validate_rejects_too_many_ops() {
        let txn = (0..=MAX_TXN_OPS).fold(Txn::new(), |t, i| t.put(format!("k{i}"), "v"));
        assert!(matches!(txn.validate(), Err(StoreError::InvalidRequest(_))));
    }

    #[test]
    fn compare_semantics_match_etcd() {
        let kv = KeyValue {
            key: "k".into(),
            value: b"v".to_vec(),
            create_revision: 3,
            mod_revision: 5,
            version: 2,
            lease: None,
        };
        assert!(
            Compare::ModRevision {
                key: "k".into(),
                revision: 0
            }
            .holds(None)
        );
        assert!(
            Compare::ModRevision {
                key: "k".into(),
                revision: 5
            }
            .holds(Some(&kv))
        );
        assert!(
            !Compare::Value {
                key: "k".into(),
                value: vec![]
            }
            .holds(None)
        );
        assert!(
            Compare::Value {
                key: "k".into(),
                value: b"v".to_vec()
            }
            .holds(Some(&kv))
        );
        assert!(!Compare::Absent { key: "k".into() }.holds(Some(&kv)));
    }
}
