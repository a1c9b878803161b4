//! redb table layout of the embedded store and the encoding of stored key-values.

use std::time::Duration;

use redb::{Database, ReadTransaction, ReadableTable, TableDefinition};

use super::Context;
use crate::error::StoreError;
use crate::types::{KeyValue, LeaseId, Revision};

/// key → encoded record (header + value).
pub(super) const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// Store metadata; [`REVISION_KEY`] holds the current revision.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// lease id → TTL in milliseconds.
pub(super) const LEASES: TableDefinition<u64, u64> = TableDefinition::new("leases");
/// (lease id, key) for every key attached to a lease.
pub(super) const LEASE_KEYS: TableDefinition<(u64, &str), ()> = TableDefinition::new("lease_keys");

pub(super) const REVISION_KEY: &str = "revision";

/// Record header: create revision, mod revision, version, lease (0 = none), little endian.
const HEADER_BYTES: usize = 32;

/// Creates missing tables; returns the current revision and the stored leases with their TTLs.
pub(super) fn initialize(db: &Database) -> Result<(Revision, Vec<(LeaseId, Duration)>), StoreError> {
    let txn = db.begin_write().context("begin write")?;
    let revision;
    let mut leases = Vec::new();
    {
        txn.open_table(KV).context("create kv table")?;
        txn.open_table(LEASE_KEYS).context("create lease_keys table")?;
        let meta = txn.open_table(META).context("create meta table")?;
        revision = meta
            .get(REVISION_KEY)
            .context("read revision")?
            .map_or(0, |v| v.value());
        let table = txn.open_table(LEASES).context("create leases table")?;
        for entry in table.iter().context("read leases")? {
            let (id, ttl_ms) = entry.context("read leases")?;
            leases.push((id.value(), Duration::from_millis(ttl_ms.value())));
        }
    }
    txn.commit().context("commit")?;
    Ok((revision, leases))
}

/// The revision stored in `txn`'s snapshot.
pub(super) fn read_revision(txn: &ReadTransaction) -> Result<Revision, StoreError> {
    let meta = txn.open_table(META).context("open meta")?;
    let revision = meta
        .get(REVISION_KEY)
        .context("read revision")?
        .map_or(0, |v| v.value());
    Ok(revision)
}

/// Encodes a stored record.
pub(super) fn encode(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + kv.value.len());
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(&kv.version.to_le_bytes());
    out.extend_from_slice(&kv.lease.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&kv.value);
    out
}

/// Decodes a stored record of `key`.
pub(super) fn decode(key: &str, record: &[u8]) -> Result<KeyValue, StoreError> {
    let field = |i: usize| -> Result<u64, StoreError> {
        record
            .get(i * 8..(i + 1) * 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| {
                StoreError::backend(
                    "decoding a stored record",
                    format!("record of key {key:?} is truncated"),
                )
            })
    };
    let lease = field(3)?;
    Ok(KeyValue {
        key: key.to_owned(),
        create_revision: field(0)?,
        mod_revision: field(1)?,
        version: field(2)?,
        lease: (lease != 0).then_some(lease),
        value: record.get(HEADER_BYTES..).unwrap_or_default().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let kv = KeyValue {
            key: "/k".into(),
            value: b"value".to_vec(),
            create_revision: 7,
            mod_revision: 9,
            version: 3,
            lease: Some(42),
        };
        assert_eq!(decode("/k", &encode(&kv)).ok(), Some(kv));
        assert!(decode("/k", &[1, 2, 3]).is_err());
    }
}
