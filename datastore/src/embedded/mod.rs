//! The embedded backend: a redb file, one writer thread with group commit, in-memory watch history.

mod history;
mod leases;
mod tables;
mod writer;

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{Database, ReadableDatabase};
use tokio::sync::{mpsc, oneshot};

use crate::error::StoreError;
use crate::store::{Store, WatchStream};
use crate::types::{KeyValue, LeaseId, ListResult, Revision, Txn};

use history::WatchHub;
use leases::LeaseTable;
use writer::WriteRequest;

/// The single-node datastore: durable (every acknowledged transaction is fsync'd), revisions
/// monotonic across restarts, watch history kept in memory (a restarted store can be watched from
/// its current revision on; older resumes get [`StoreError::Compacted`]).
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    writer: Option<mpsc::UnboundedSender<WriteRequest>>,
    writer_thread: Option<JoinHandle<()>>,
    hub: Arc<WatchHub>,
    leases: Arc<LeaseTable>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store file at `path`.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_owned();
        tokio::task::spawn_blocking(move || Self::open_blocking(&path))
            .await
            .context("opening the embedded store")?
    }

    fn open_blocking(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).context("creating the store directory")?;
        }
        let db = Database::create(path).context("opening redb file")?;
        let db = Arc::new(db);
        let (revision, lease_ttls) = tables::initialize(&db)?;
        let hub = Arc::new(WatchHub::new(revision));
        let leases = Arc::new(LeaseTable::new(lease_ttls));
        let (writer, requests) = mpsc::unbounded_channel();
        let writer_thread = writer::spawn(Arc::clone(&db), requests, revision, Arc::clone(&hub))?;
        let inner = Arc::new(Inner {
            db,
            writer: Some(writer),
            writer_thread: Some(writer_thread),
            hub,
            leases,
        });
        leases::spawn_reaper(Arc::downgrade(&inner))?;
        Ok(Self { inner })
    }

    async fn submit(&self, request: impl FnOnce(writer::Reply) -> WriteRequest) -> Result<u64, StoreError> {
        let (reply, response) = oneshot::channel();
        let writer = self.inner.writer.as_ref().ok_or_else(writer_stopped)?;
        writer.send(request(reply)).map_err(|_| writer_stopped())?;
        response.await.map_err(|_| writer_stopped())?
    }

    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = Arc::clone(&self.inner.db);
        tokio::task::spawn_blocking(move || read(&db))
            .await
            .context("reading the embedded store")?
    }
}

/// Adds what was being done to a backend error.
pub(super) trait Context<T> {
    fn context(self, what: &'static str) -> Result<T, StoreError>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn context(self, what: &'static str) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::backend(what, e))
    }
}

fn writer_stopped() -> StoreError {
    StoreError::backend("embedded store writer", "writer thread stopped")
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish its current group and exit; joining releases
        // the redb file lock before the store can be opened again.
        self.writer.take();
        if let Some(thread) = self.writer_thread.take() {
            let _ = thread.join();
        }
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_owned();
        self.read(move |db| {
            let txn = db.begin_read().context("begin read")?;
            let kv = txn.open_table(tables::KV).context("open kv")?;
            let found = kv.get(key.as_str()).context("get")?;
            found.map(|v| tables::decode(&key, v.value())).transpose()
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<ListResult, StoreError> {
        let prefix = prefix.to_owned();
        self.read(move |db| {
            let txn = db.begin_read().context("begin read")?;
            let revision = tables::read_revision(&txn)?;
            let kv = txn.open_table(tables::KV).context("open kv")?;
            let range = kv.range::<&str>(prefix.as_str()..).context("range")?;
            let mut kvs = Vec::new();
            for entry in range {
                let (key, value) = entry.context("range")?;
                if !key.value().starts_with(prefix.as_str()) {
                    break;
                }
                kvs.push(tables::decode(key.value(), value.value())?);
            }
            Ok(ListResult { kvs, revision })
        })
        .await
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        self.read(|db| {
            let txn = db.begin_read().context("begin read")?;
            tables::read_revision(&txn)
        })
        .await
    }

    async fn txn(&self, txn: Txn) -> Result<Revision, StoreError> {
        txn.validate()?;
        self.submit(|reply| WriteRequest::Txn { txn, reply }).await
    }

    fn watch(&self, prefix: &str, after: Revision) -> WatchStream {
        history::watch(Arc::clone(&self.inner.hub), prefix.to_owned(), after)
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner.hub.compact(revision)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let ttl = ttl.max(Duration::from_secs(1));
        let id = self
            .submit(|reply| WriteRequest::GrantLease { ttl, reply })
            .await?;
        self.inner.leases.insert(id, ttl);
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        self.inner.leases.renew(lease)
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.leases.remove(lease);
        self.submit(|reply| WriteRequest::RevokeLease { lease, reply })
            .await
            .map(drop)
    }
}
