//! The publishing side: keyed state at a revision, pending changes coalesced per key, flushed as
//! batches into a bounded history, the shared snapshot, and the subscriber status table.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::SystemTime;

use tokio::sync::{Notify, watch};

use crate::state::{Paired, State, Storage};
use crate::{EncodedSnapshot, FanoutConfig, FanoutError, SnapshotEncoder};

/// A key of the state: shared, so a publisher that puts the same entry into many fan-outs (one
/// per node) keeps one copy of its key.
pub type Key = Arc<str>;

/// One change to the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<V> {
    /// `key` now has this value.
    Upsert(Key, V),
    /// `key` is gone.
    Remove(Key),
}

/// The changes that took the state from revision `from` to revision `to`, one final value per key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch<V> {
    /// Revision before the batch.
    pub from: u64,
    /// Revision after it.
    pub to: u64,
    /// Keys set, with their values at `to`.
    pub upserts: Vec<(Key, V)>,
    /// Keys removed.
    pub removed: Vec<Key>,
    /// The values at `from` of the keys the batch sets or removes that had one, in key order,
    /// when the fan-out keeps them ([`FanoutConfig::deltas_from_replaced`]): a value that stands
    /// for many entries on the service's wire (a set's members) is sent as what changed of them.
    pub replaced: Vec<(Key, V)>,
}

impl<V> Batch<V> {
    /// Keys the batch touches.
    pub fn len(&self) -> usize {
        self.upserts.len() + self.removed.len()
    }

    /// Whether it touches no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the fan-out knows about one subscriber (by the node it acts for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberStatus {
    /// The node.
    pub node: String,
    /// Whether a session is open now.
    pub connected: bool,
    /// Last revision sent to it.
    pub sent_revision: u64,
    /// Last revision it acknowledged as applied.
    pub acked_revision: u64,
    /// When it last acknowledged.
    pub acked_at: Option<SystemTime>,
    /// Kernel objects it reported as programmed with its last ack.
    pub programmed: u64,
}

pub(crate) struct Inner<V, S: Storage<V>> {
    pub(crate) state: State<V, S>,
    pub(crate) revision: u64,
    /// Revision from which the history is complete: any position at or after it can resume.
    pub(crate) floor: u64,
    pub(crate) history: VecDeque<Arc<Batch<V>>>,
    history_keys: usize,
    pending: BTreeMap<Key, Option<V>>,
    pending_revision: u64,
}

pub(crate) struct Shared<V, S: Storage<V>> {
    pub(crate) config: FanoutConfig,
    encoder: SnapshotEncoder<V, S>,
    inner: RwLock<Inner<V, S>>,
    /// The flushed revision; subscribers wait on it.
    pub(crate) flushed: watch::Sender<u64>,
    /// Wakes the flusher when a batch starts.
    batch_started: Arc<Notify>,
    snapshot: tokio::sync::Mutex<Option<Arc<EncodedSnapshot>>>,
    subscribers: Mutex<BTreeMap<String, SubscriberStatus>>,
}

impl<V, S: Storage<V>> Drop for Shared<V, S> {
    fn drop(&mut self) {
        // Lets the flusher notice that the fan-out is gone.
        self.batch_started.notify_one();
    }
}

/// A fan-out that is not kept alive by this handle (for tasks that should end with it).
pub struct WeakFanout<V, S: Storage<V> = Paired> {
    shared: Weak<Shared<V, S>>,
}

impl<V, S: Storage<V>> WeakFanout<V, S> {
    /// The fan-out, while something else keeps it alive.
    pub fn upgrade(&self) -> Option<Fanout<V, S>> {
        self.shared.upgrade().map(|shared| Fanout { shared })
    }
}

/// Keyed state streamed to subscribers; `S` says how the state stores a value under its key.
/// Cloning shares it.
pub struct Fanout<V, S: Storage<V> = Paired> {
    pub(crate) shared: Arc<Shared<V, S>>,
}

impl<V, S: Storage<V>> Clone for Fanout<V, S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<V: Clone + PartialEq + Send + Sync + 'static, S: Storage<V>> Fanout<V, S> {
    /// An empty state at revision 0 (call inside a tokio runtime: it starts the batch flusher).
    pub fn new(config: FanoutConfig, encoder: SnapshotEncoder<V, S>) -> Self {
        let batch_started = Arc::new(Notify::new());
        let shared = Arc::new(Shared {
            config,
            encoder,
            inner: RwLock::new(Inner {
                state: State::default(),
                revision: 0,
                floor: 0,
                history: VecDeque::new(),
                history_keys: 0,
                pending: BTreeMap::new(),
                pending_revision: 0,
            }),
            flushed: watch::Sender::new(0),
            batch_started: Arc::clone(&batch_started),
            snapshot: tokio::sync::Mutex::new(None),
            subscribers: Mutex::new(BTreeMap::new()),
        });
        tokio::spawn(flusher(Arc::downgrade(&shared), batch_started));
        Self { shared }
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner<V, S>> {
        self.shared.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner<V, S>> {
        self.shared.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the changes made at `revision` to the pending batch; `false` (and nothing changes)
    /// when `revision` is not newer than everything published so far. A revision without changes
    /// still advances the state's revision.
    pub fn publish(&self, revision: u64, changes: impl IntoIterator<Item = Change<V>>) -> bool {
        let mut inner = self.write();
        if revision <= inner.revision.max(inner.pending_revision) {
            return false;
        }
        let was_idle = inner.pending_revision == 0;
        for change in changes {
            // A change to a key the pending batch has not touched that leaves it as it is, is no
            // change at any revision the batch spans: dropped. Every other key in the batch is
            // sent with its final value, so a batch applies to the state at ANY revision it spans
            // (a subscriber resuming on a replica that batched differently lands mid-batch).
            let (key, value) = match change {
                Change::Upsert(key, value) => {
                    S::check_key(&key, &value);
                    (key, Some(value))
                }
                Change::Remove(key) => (key, None),
            };
            if !inner.pending.contains_key(&key) && inner.state.get(&key) == value.as_ref() {
                continue;
            }
            inner.pending.insert(key, value);
        }
        inner.pending_revision = revision;
        if inner.pending.len() >= self.shared.config.max_batch_entries {
            self.flush_locked(&mut inner);
        } else if was_idle {
            self.shared.batch_started.notify_one();
        }
        true
    }

    /// Replaces the whole state with `entries` at `revision` (after re-reading the source): only
    /// the differences are published, at once. `entries` are what a [`State`] is built from:
    /// keys and values, or, for [`KeyInValue`](crate::KeyInValue), the values alone; cheapest
    /// in key order.
    pub fn reset<E>(&self, revision: u64, entries: impl IntoIterator<Item = E>) -> bool
    where
        State<V, S>: FromIterator<E>,
    {
        let entries: State<V, S> = entries.into_iter().collect();
        let mut inner = self.write();
        if revision <= inner.revision.max(inner.pending_revision) {
            return false;
        }
        if inner.revision == 0 && inner.pending.is_empty() {
            // The first state: `entries` is it, as it is.
            self.install_first_state(&mut inner, revision, entries);
            return true;
        }
        let removed: Vec<Key> = inner
            .state
            .iter()
            .map(|(key, _)| key)
            .chain(inner.pending.keys())
            .filter(|key| !entries.contains_key(key))
            .cloned()
            .collect();
        for key in removed {
            inner.pending.insert(key, None);
        }
        let changed: Vec<(Key, V)> = entries
            .into_picked(|key, value| inner.pending.contains_key(key) || inner.state.get(key) != Some(value))
            .collect();
        for (key, value) in changed {
            inner.pending.insert(key, Some(value));
        }
        inner.pending_revision = revision;
        self.flush_locked(&mut inner);
        true
    }

    /// Flushes the pending batch now.
    pub fn flush(&self) {
        let mut inner = self.write();
        self.flush_locked(&mut inner);
    }

    fn flush_locked(&self, inner: &mut Inner<V, S>) {
        if inner.pending_revision == 0 {
            return;
        }
        if inner.revision == 0 {
            // Built at once from the ordered keys: packed, without one insertion per key.
            let state = std::mem::take(&mut inner.pending)
                .into_iter()
                .filter_map(|(key, value)| value.map(|value| (key, value)))
                .collect();
            let revision = inner.pending_revision;
            self.install_first_state(inner, revision, state);
            return;
        }
        let mut batch = Batch {
            from: inner.revision,
            to: inner.pending_revision,
            upserts: Vec::new(),
            removed: Vec::new(),
            replaced: Vec::new(),
        };
        for (key, value) in std::mem::take(&mut inner.pending) {
            let replaced = match value {
                Some(value) => {
                    let replaced = inner.state.insert(Key::clone(&key), value.clone());
                    batch.upserts.push((Key::clone(&key), value));
                    replaced
                }
                None => {
                    let replaced = inner.state.remove(&key);
                    batch.removed.push(Key::clone(&key));
                    replaced
                }
            };
            if let Some(replaced) = replaced
                && self.shared.config.deltas_from_replaced
            {
                batch.replaced.push((key, replaced));
            }
        }
        inner.revision = batch.to;
        inner.pending_revision = 0;
        if !batch.is_empty() {
            inner.history_keys += batch.len();
            inner.history.push_back(Arc::new(batch));
            // The newest batch always stays: a subscriber that was current follows it, however
            // large it is beside the state (a node whose endpoints all went).
            let limit = self.shared.config.history_limit(inner.state.len());
            while inner.history_keys > limit && inner.history.len() > 1 {
                let Some(oldest) = inner.history.pop_front() else {
                    break;
                };
                inner.history_keys -= oldest.len();
                inner.floor = oldest.to;
            }
        }
        self.shared.flushed.send_replace(inner.revision);
    }

    /// Makes `state` the first state, at `revision`. What happened before it is unknown here, so
    /// nobody resumes from an earlier revision (a subscriber of a previous process or of another
    /// replica may hold keys deleted since): they get a snapshot, and no batch is kept.
    fn install_first_state(&self, inner: &mut Inner<V, S>, revision: u64, state: State<V, S>) {
        inner.state = state;
        inner.pending.clear();
        inner.revision = revision;
        inner.floor = revision;
        inner.pending_revision = 0;
        self.shared.flushed.send_replace(revision);
    }

    /// The fan-out's settings.
    pub fn config(&self) -> &FanoutConfig {
        &self.shared.config
    }

    /// Revision of the flushed state.
    pub fn revision(&self) -> u64 {
        self.read().revision
    }

    /// A copy of the flushed state.
    pub fn state(&self) -> BTreeMap<Key, V> {
        self.read()
            .state
            .iter()
            .map(|(key, value)| (Key::clone(key), value.clone()))
            .collect()
    }

    /// Runs `read` on the flushed state without copying it.
    pub fn with_state<R>(&self, read: impl FnOnce(&State<V, S>) -> R) -> R {
        read(&self.read().state)
    }

    /// The flushed state, encoded and compressed; built once per revision and shared.
    pub async fn snapshot(&self) -> Result<Arc<EncodedSnapshot>, FanoutError> {
        let mut cached = self.shared.snapshot.lock().await;
        let inner = self.read();
        if let Some(snapshot) = cached.as_ref()
            && snapshot.revision == inner.revision
        {
            return Ok(Arc::clone(snapshot));
        }
        let snapshot = Arc::new(
            EncodedSnapshot::encode(
                inner.revision,
                &inner.state,
                &self.shared.encoder,
                self.shared.config.compress_from_bytes,
            )
            .map_err(|error| FanoutError::Snapshot(Arc::new(error)))?,
        );
        *cached = Some(Arc::clone(&snapshot));
        Ok(snapshot)
    }

    /// The batches after `cursor`, oldest first; an error when the history no longer reaches back
    /// to `cursor`.
    pub(crate) fn batches_after(&self, cursor: u64) -> Result<Vec<Arc<Batch<V>>>, FanoutError> {
        let inner = self.read();
        if cursor >= inner.revision {
            return Ok(Vec::new());
        }
        if cursor < inner.floor {
            return Err(FanoutError::Lagged {
                cursor,
                oldest: inner.floor,
            });
        }
        let first = inner.history.partition_point(|batch| batch.to <= cursor);
        Ok(inner.history.range(first..).cloned().collect())
    }

    /// Whether a subscriber at `cursor` can resume from the history: the history covers it and,
    /// when batches are sent as changes of what they replaced, no batch starts before it and ends
    /// after it.
    pub(crate) fn can_resume(&self, cursor: u64) -> bool {
        let inner = self.read();
        let inside_batch = || {
            let first = inner.history.partition_point(|batch| batch.to <= cursor);
            inner.history.get(first).is_some_and(|batch| batch.from < cursor)
        };
        cursor >= inner.floor
            && cursor <= inner.revision
            && !(self.shared.config.deltas_from_replaced && inside_batch())
    }

    /// Updates (or creates) the status of `node`'s subscriber.
    pub(crate) fn update_status(&self, node: &str, update: impl FnOnce(&mut SubscriberStatus)) {
        let mut subscribers = self.shared.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        let status = subscribers
            .entry(node.to_owned())
            .or_insert_with(|| SubscriberStatus {
                node: node.to_owned(),
                connected: false,
                sent_revision: 0,
                acked_revision: 0,
                acked_at: None,
                programmed: 0,
            });
        update(status);
    }

    /// Every subscriber seen, by node.
    pub fn subscribers(&self) -> Vec<SubscriberStatus> {
        let subscribers = self.shared.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subscribers.values().cloned().collect()
    }

    /// Whether anyone besides this handle holds the fan-out (a session serving it, a caller
    /// about to start one).
    pub fn in_use(&self) -> bool {
        Arc::strong_count(&self.shared) > 1
    }

    /// A handle that does not keep the fan-out alive.
    pub fn downgrade(&self) -> WeakFanout<V, S> {
        WeakFanout {
            shared: Arc::downgrade(&self.shared),
        }
    }

    /// Forgets the status of every disconnected subscriber whose node `keep` does not name (so
    /// statuses of names that came and went do not pile up).
    pub fn forget_disconnected(&self, keep: impl Fn(&str) -> bool) {
        let mut subscribers = self.shared.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subscribers.retain(|node, status| status.connected || keep(node));
    }
}

/// Flushes a batch `max_batch_delay` after it started; ends when the fan-out is dropped.
async fn flusher<V: Clone + PartialEq + Send + Sync + 'static, S: Storage<V>>(
    shared: Weak<Shared<V, S>>,
    started: Arc<Notify>,
) {
    loop {
        started.notified().await;
        let Some(delay) = shared.upgrade().map(|s| s.config.max_batch_delay) else {
            return;
        };
        tokio::time::sleep(delay).await;
        match shared.upgrade() {
            Some(shared) => Fanout { shared }.flush(),
            None => return,
        }
    }
}
