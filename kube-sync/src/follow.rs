//! One kind's mirror: a kube-rs watcher on the Kubernetes API, its events coalesced into batches
//! and written into a [`Target`]; after every (re-)list, what the target holds from Kubernetes
//! and the list no longer has is removed — objects deleted while kube-sync was away or while its
//! watch had expired (`410 Gone`) are gone after it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::time::{Duration, Instant};

use brindle_backoff::Backoff;
use brindle_metrics::{Counters, Gauges, Histograms, LATENCY_BUCKETS, Metrics, labels};
use futures_util::StreamExt;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde::de::DeserializeOwned;

use crate::translate::ObjectKey;

/// At most this many objects go into one write.
pub const BATCH: usize = 128;

/// A write that did not happen and is worth retrying (the service is unreachable or busy).
#[derive(Debug, thiserror::Error)]
#[error("{what}: {status}")]
pub struct WriteError {
    /// What was being written.
    pub what: String,
    /// The service's answer.
    #[source]
    pub status: tonic::Status,
}

/// Where one kind's objects are mirrored. Objects a target refuses as invalid are logged and
/// counted by it, not returned as errors (retrying them cannot help).
#[async_trait::async_trait]
pub trait Target<K>: Send {
    /// The kind, for logs and metrics (`Namespace`, `NetworkPolicy`, `Pod`, `Node`).
    fn kind(&self) -> &'static str;
    /// Creates or replaces `objects` (at most [`BATCH`]).
    async fn upsert(&mut self, objects: &[K]) -> Result<(), WriteError>;
    /// Removes the objects named (at most [`BATCH`]); removing one that is not there succeeds.
    async fn remove(&mut self, keys: &[ObjectKey]) -> Result<(), WriteError>;
    /// Every object the target holds from Kubernetes.
    async fn owned(&mut self) -> Result<BTreeSet<ObjectKey>, WriteError>;
}

/// kube-sync's metrics, per kind.
#[derive(Clone)]
pub struct FollowMetrics {
    objects: Gauges,
    relists: Counters,
    watch_errors: Counters,
    rejected: Counters,
    write_lag: Histograms,
}

impl FollowMetrics {
    /// Registers the metrics in `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            objects: metrics.gauges("kube_sync_objects", "Kubernetes objects mirrored, by kind"),
            relists: metrics.counters(
                "kube_sync_relists",
                "Full lists of a kind (start, and every restart of its watch, e.g. after 410 Gone)",
            ),
            watch_errors: metrics.counters(
                "kube_sync_watch_errors",
                "Watch or list requests that failed (each is retried with backoff)",
            ),
            rejected: metrics.counters(
                "kube_sync_rejected_objects",
                "Objects a brindle service refused as invalid or owned by `brindle apply`",
            ),
            write_lag: metrics.histograms(
                "kube_sync_write_lag_seconds",
                "From receiving a watch event to its write being acknowledged",
                LATENCY_BUCKETS,
            ),
        }
    }

    /// Counts an object a target refused.
    pub fn rejected(&self, kind: &'static str) {
        self.rejected.get_or_create(&labels([("kind", kind)])).inc();
    }
}

/// What is pending for one key after coalescing: the newest object, or its deletion.
type Pending<K> = BTreeMap<ObjectKey, Option<K>>;

/// Mirrors the objects of `api` into `target` until the task is dropped.
pub async fn follow<K, T>(api: Api<K>, mut target: T, metrics: FollowMetrics)
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    T: Target<K>,
{
    let kind = target.kind();
    let by_kind = labels([("kind", kind)]);
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .ready_chunks(BATCH * 4)
        .boxed();
    let mut listing: Option<BTreeSet<ObjectKey>> = None;
    let mut known: BTreeSet<ObjectKey> = BTreeSet::new();
    while let Some(chunk) = events.next().await {
        let received = Instant::now();
        let mut pending: Pending<K> = BTreeMap::new();
        for event in chunk {
            match event {
                Ok(Event::Init) => {
                    metrics.relists.get_or_create(&by_kind).inc();
                    write(&mut target, std::mem::take(&mut pending)).await;
                    listing = Some(BTreeSet::new());
                }
                Ok(Event::InitApply(object)) => {
                    let key = crate::translate::key_of(object.meta());
                    if let Some(listing) = &mut listing {
                        listing.insert(key.clone());
                    }
                    pending.insert(key, Some(object));
                }
                Ok(Event::InitDone) => {
                    write(&mut target, std::mem::take(&mut pending)).await;
                    if let Some(listed) = listing.take() {
                        remove_vanished(&mut target, &listed).await;
                        known = listed;
                    }
                }
                Ok(Event::Apply(object)) => {
                    let key = crate::translate::key_of(object.meta());
                    known.insert(key.clone());
                    pending.insert(key, Some(object));
                }
                Ok(Event::Delete(object)) => {
                    let key = crate::translate::key_of(object.meta());
                    known.remove(&key);
                    pending.insert(key, None);
                }
                Err(error) => {
                    metrics.watch_errors.get_or_create(&by_kind).inc();
                    tracing::warn!(kind, %error, "watching Kubernetes; the watch restarts with backoff");
                }
            }
        }
        write(&mut target, pending).await;
        metrics
            .write_lag
            .get_or_create(&by_kind)
            .observe(received.elapsed().as_secs_f64());
        metrics
            .objects
            .get_or_create(&by_kind)
            .set(i64::try_from(known.len()).unwrap_or(i64::MAX));
    }
}

/// Writes what is pending, in batches, retrying each batch until the service takes it.
async fn write<K, T: Target<K>>(target: &mut T, pending: Pending<K>) {
    let mut upserts = Vec::new();
    let mut removals = Vec::new();
    for (key, object) in pending {
        match object {
            Some(object) => upserts.push(object),
            None => removals.push(key),
        }
    }
    for batch in upserts.chunks(BATCH) {
        write_batch(target, Batch::Upsert(batch)).await;
    }
    for batch in removals.chunks(BATCH) {
        write_batch(target, Batch::Remove(batch)).await;
    }
}

/// Removes from `target` what it holds from Kubernetes and the list (`listed`) does not have.
async fn remove_vanished<K, T: Target<K>>(target: &mut T, listed: &BTreeSet<ObjectKey>) {
    let owned = owned_with_retry(target).await;
    let vanished: Vec<ObjectKey> = owned.difference(listed).cloned().collect();
    if !vanished.is_empty() {
        tracing::info!(
            kind = target.kind(),
            count = vanished.len(),
            "removing what Kubernetes no longer has"
        );
    }
    for batch in vanished.chunks(BATCH) {
        write_batch(target, Batch::Remove(batch)).await;
    }
}

async fn owned_with_retry<K, T: Target<K>>(target: &mut T) -> BTreeSet<ObjectKey> {
    let mut backoff = retry_backoff();
    loop {
        match target.owned().await {
            Ok(owned) => return owned,
            Err(error) => {
                tracing::warn!(kind = target.kind(), %error, "listing what brindle holds; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

fn retry_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
}

/// One write of a batch.
enum Batch<'a, K> {
    Upsert(&'a [K]),
    Remove(&'a [ObjectKey]),
}

/// Writes `batch`, retrying with backoff until the service takes it.
async fn write_batch<K, T: Target<K>>(target: &mut T, batch: Batch<'_, K>) {
    let mut backoff = retry_backoff();
    loop {
        let written = match &batch {
            Batch::Upsert(objects) => target.upsert(objects).await,
            Batch::Remove(keys) => target.remove(keys).await,
        };
        match written {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(kind = target.kind(), %error, "writing to brindle; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}
