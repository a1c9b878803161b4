//! The `Store` trait both backends implement, and the watch stream type.

use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;

use crate::error::StoreError;
use crate::types::{KeyValue, LeaseId, ListResult, Revision, Txn, WatchBatch};

/// Ordered batches of changes under a prefix, one per revision. An `Err` item ends the stream:
/// [`StoreError::Compacted`] means the caller must re-list; the stream never skips or repeats a
/// revision and survives backend reconnects on its own.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchBatch, StoreError>> + Send>>;

/// A transactional, watchable key-value store with leases (etcd's data model).
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Reads every key starting with `prefix` at one revision, sorted by key.
    async fn list(&self, prefix: &str) -> Result<ListResult, StoreError>;

    /// The store's current revision.
    async fn revision(&self) -> Result<Revision, StoreError>;

    /// Applies `txn` atomically; returns the revision it was committed at (the current revision
    /// when it wrote nothing), or [`StoreError::Conflict`] naming the first compare that failed.
    async fn txn(&self, txn: Txn) -> Result<Revision, StoreError>;

    /// Streams every change under `prefix` with a revision greater than `after`.
    fn watch(&self, prefix: &str, after: Revision) -> WatchStream;

    /// Discards history before `revision`: a watch after `revision` or later continues; one from
    /// before it may get [`StoreError::Compacted`] (never a silent gap).
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    /// Creates a lease that expires `ttl` after its last keep-alive (etcd rounds small TTLs up).
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError>;

    /// Renews a lease; returns its TTL.
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError>;

    /// Ends a lease now, deleting its keys.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError>;
}
