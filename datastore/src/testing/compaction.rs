//! A store whose first list is followed at once by changes and a compaction at the newest
//! revision, so a watch from the listed revision finds its history gone — a watcher that fell
//! behind the compaction kube-apiserver runs every few minutes — for testing re-list paths.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::StoreError;
use crate::store::{Store, WatchStream};
use crate::types::{KeyValue, LeaseId, ListResult, Revision, Txn};

/// Changes made to the inner store right after the first list.
type Meanwhile = Box<dyn FnOnce(Arc<dyn Store>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Wraps a store: after its first `list`, runs `meanwhile` on the inner store and compacts it at
/// its newest revision. Counts lists (a re-list shows as a second one) and compactions done.
pub struct CompactedAfterFirstList {
    inner: Arc<dyn Store>,
    meanwhile: Mutex<Option<Meanwhile>>,
    lists: AtomicUsize,
    compactions: AtomicUsize,
}

impl CompactedAfterFirstList {
    /// Wraps `inner`; `meanwhile` makes the changes the lagging watcher must not miss.
    pub fn new<F, Fut>(inner: Arc<dyn Store>, meanwhile: F) -> Self
    where
        F: FnOnce(Arc<dyn Store>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self {
            inner,
            meanwhile: Mutex::new(Some(Box::new(move |store| Box::pin(meanwhile(store))))),
            lists: AtomicUsize::new(0),
            compactions: AtomicUsize::new(0),
        }
    }

    /// Panics unless the history was compacted behind the first list and the store was listed
    /// again after it (the watcher re-listed instead of going on).
    pub fn assert_relisted(&self) {
        assert_eq!(
            self.compactions.load(Ordering::SeqCst),
            1,
            "the history was compacted behind the watch"
        );
        assert!(
            self.lists.load(Ordering::SeqCst) >= 2,
            "the compacted watch made the service list again"
        );
    }
}

#[async_trait::async_trait]
impl Store for CompactedAfterFirstList {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<ListResult, StoreError> {
        let listed = self.inner.list(prefix).await?;
        self.lists.fetch_add(1, Ordering::SeqCst);
        let meanwhile = self.meanwhile.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(meanwhile) = meanwhile {
            meanwhile(Arc::clone(&self.inner)).await;
            self.inner.compact(self.inner.revision().await?).await?;
            self.compactions.fetch_add(1, Ordering::SeqCst);
        }
        Ok(listed)
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.revision().await
    }

    async fn txn(&self, txn: Txn) -> Result<Revision, StoreError> {
        self.inner.txn(txn).await
    }

    fn watch(&self, prefix: &str, after: Revision) -> WatchStream {
        self.inner.watch(prefix, after)
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner.compact(revision).await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.inner.grant_lease(ttl).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        self.inner.keep_alive(lease).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.revoke_lease(lease).await
    }
}
