//! Follows the datastore into the calculation and streams every node its view: one fan-out per
//! node that has (or had) a subscriber, fed at the datastore revision of each change. A compacted
//! or broken watch re-lists, recomputes and resets every node's fan-out to the differences.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use brindle_backoff::Backoff;
use brindle_datastore::{EventKind, Store, StoreError, WatchEvent};
use brindle_fanout::{Fanout, FanoutConfig, KeyInValue, SubscriberStatus};
use futures_util::StreamExt;

use super::calc::{Calculator, NodeChanges};
use super::records::{PREFIX, Subject, decode_enforced, subject};
use super::snapshot::encode_view;
use super::state::ClusterState;
use policy_api::model::Pod;
use policy_api::slot::ViewSlot;

/// A node's view as streamed to it: each shared entry, and each set's members as one value,
/// stored alone (one pointer per slot).
pub type NodeFanout = Fanout<ViewSlot, KeyInValue>;

/// Fan-outs the hub may hold before it first sweeps the idle ones as it creates one.
const MIN_SWEEP: usize = 1024;

struct Inner {
    calc: Calculator,
    /// Revision of the datastore the calculation reflects; 0 before the first list.
    revision: u64,
    fanouts: BTreeMap<String, NodeFanout>,
    /// Fan-outs at which creating one first drops the idle ones.
    sweep_at: usize,
}

/// The calculation and the per-node fan-outs. Cloning shares them.
#[derive(Clone)]
pub struct PolicyHub {
    inner: Arc<Mutex<Inner>>,
    /// The revision the calculation reflects, for callers waiting for something to arrive.
    revisions: tokio::sync::watch::Sender<u64>,
    config: FanoutConfig,
}

impl PolicyHub {
    /// An empty hub. Its fan-outs send a set's members as what changed of the version a node
    /// has, so they keep what each batch replaced (and resume only at a batch's edges).
    pub fn new(config: FanoutConfig) -> Self {
        let config = FanoutConfig {
            deltas_from_replaced: true,
            ..config
        };
        Self {
            inner: Arc::new(Mutex::new(Inner {
                calc: Calculator::new(),
                revision: 0,
                fanouts: BTreeMap::new(),
                sweep_at: MIN_SWEEP,
            })),
            revisions: tokio::sync::watch::Sender::new(0),
            config,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fan-out of `node`'s view, created (with the current view) on first use. Once the hub
    /// holds twice as many fan-outs as after its last sweep (at least [`MIN_SWEEP`]), those
    /// nobody follows any more are dropped first (see [`PolicyHub::drop_idle`]): what Sync
    /// sessions naming made-up nodes leave stays bounded, and a creation costs a constant share
    /// of a sweep (not a sweep each: thousands of nodes connecting at once).
    pub fn fanout(&self, node: &str) -> NodeFanout {
        let mut inner = self.lock();
        if let Some(fanout) = inner.fanouts.get(node) {
            return fanout.clone();
        }
        if inner.fanouts.len() >= inner.sweep_at {
            drop_idle(&mut inner);
        }
        let fanout = NodeFanout::new(self.config.clone(), Arc::new(encode_view));
        if inner.revision > 0 {
            fanout.reset(inner.revision, inner.calc.shared_view(node));
        }
        inner.fanouts.insert(node.to_owned(), fanout.clone());
        fanout
    }

    /// Drops the fan-out of every node that nothing uses (no session serves it, no caller is
    /// about to start one) and that has no endpoint (a node with endpoints keeps its fan-out, and
    /// its status, while it is away). What Sync sessions naming made-up nodes leave behind is
    /// freed this way.
    pub fn drop_idle(&self) {
        drop_idle(&mut self.lock());
    }

    /// Nodes with a fan-out.
    pub fn fanout_count(&self) -> usize {
        self.lock().fanouts.len()
    }

    /// Runs `read` on the current inputs.
    pub fn with_state<R>(&self, read: impl FnOnce(&ClusterState, u64) -> R) -> R {
        let inner = self.lock();
        read(inner.calc.state(), inner.revision)
    }

    /// The sync status of every node that has (or had) a subscriber.
    pub fn subscribers(&self) -> Vec<SubscriberStatus> {
        let fanouts: Vec<NodeFanout> = self.lock().fanouts.values().cloned().collect();
        fanouts.iter().flat_map(NodeFanout::subscribers).collect()
    }

    /// Revision the calculation reflects (0 before the datastore was first read).
    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    /// The Kubernetes pod `namespace/name` (with `uid` unless empty), waiting until `deadline`
    /// for it to arrive; `None` when it did not.
    pub async fn wait_for_pod(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        deadline: tokio::time::Instant,
    ) -> Option<Pod> {
        let mut revisions = self.revisions.subscribe();
        loop {
            let found = self.with_state(|state, _| {
                state
                    .pod(namespace, name)
                    .filter(|pod| uid.is_empty() || pod.uid == uid)
                    .cloned()
            });
            if found.is_some() {
                return found;
            }
            match tokio::time::timeout_at(deadline, revisions.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// Replaces everything with `calc`, the calculation of what was read at `revision`. Blocks
    /// for as long as every node's view takes to compute (seconds at thousands of nodes): call
    /// it off the async workers. The views are computed and reset before `calc` is installed,
    /// without the hub's lock (which Sync, trace and pod look-ups take): each node's fan-out
    /// moves to the new revision on its own, the calculation and the revision together after.
    fn install(&self, revision: u64, calc: Calculator) {
        let fanouts: Vec<(String, NodeFanout)> = self
            .lock()
            .fanouts
            .iter()
            .map(|(node, fanout)| (node.clone(), fanout.clone()))
            .collect();
        for (node, fanout) in &fanouts {
            fanout.reset(revision, calc.shared_view(node));
        }
        let mut inner = self.lock();
        if revision < inner.revision {
            tracing::warn!(
                listed = revision,
                had = inner.revision,
                "the datastore's revision went backwards (restored from a backup?)"
            );
        }
        inner.calc = calc;
        inner.revision = revision;
        // A fan-out created meanwhile (a node's first, or one replacing an idle one dropped)
        // had the previous calculation's view.
        let Inner { calc, fanouts, .. } = &*inner;
        for (node, fanout) in fanouts {
            if fanout.revision() < revision {
                fanout.reset(revision, calc.shared_view(node));
            }
        }
        drop(inner);
        self.revisions.send_replace(revision);
    }

    /// Applies the events of one datastore revision.
    fn apply_events(&self, revision: u64, events: &[WatchEvent]) {
        let mut inner = self.lock();
        let mut changes = NodeChanges::new();
        for event in events {
            let node_changes = match (event.kind, subject(&event.key)) {
                (_, None) => continue,
                (EventKind::Put, Some(_)) => match decode_enforced(&event.key, &event.value) {
                    Ok(record) => inner.calc.put_record(record),
                    Err(error) => {
                        tracing::error!(%error, "keeping what the record said before");
                        continue;
                    }
                },
                (EventKind::Delete, Some(Subject::Namespace(name))) => inner.calc.remove_namespace(&name),
                (EventKind::Delete, Some(Subject::Endpoint(key))) => inner.calc.remove_endpoint(&key),
                (EventKind::Delete, Some(Subject::Policy(id))) => inner.calc.remove_policy(&id),
                (EventKind::Delete, Some(Subject::Staged(id))) => inner.calc.remove_staged(&id),
                (EventKind::Delete, Some(Subject::ServiceAccount(namespace, name))) => {
                    inner.calc.remove_service_account(&namespace, &name)
                }
                (EventKind::Delete, Some(Subject::HostEndpoint(name))) => {
                    inner.calc.remove_host_endpoint(&name)
                }
                (EventKind::Delete, Some(Subject::Pod(namespace, name))) => {
                    inner.calc.remove_pod(&namespace, &name)
                }
            };
            for (node, list) in node_changes {
                changes.entry(node).or_default().extend(list);
            }
        }
        inner.revision = revision;
        for (node, list) in changes {
            if let Some(fanout) = inner.fanouts.get(&node) {
                fanout.publish(revision, list);
            }
        }
        drop(inner);
        self.revisions.send_replace(revision);
    }
}

fn drop_idle(inner: &mut Inner) {
    let Inner { calc, fanouts, .. } = inner;
    fanouts.retain(|node, fanout| fanout.in_use() || calc.state().has_endpoints_on(node));
    inner.sweep_at = (2 * inner.fanouts.len()).max(MIN_SWEEP);
}

/// Drops idle fan-outs of `hub` every `every`; ends when the hub is dropped.
pub fn drop_idle_fanouts(hub: &PolicyHub, every: Duration) -> impl Future<Output = ()> + Send + 'static {
    let inner = Arc::downgrade(&hub.inner);
    async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(inner) = inner.upgrade() else {
                return;
            };
            drop_idle(&mut inner.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }
}

/// Keeps `hub` equal to the policy objects in `store` until the task is dropped.
pub async fn follow(store: Arc<dyn Store>, hub: PolicyHub) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match follow_once(store.as_ref(), &hub, &mut backoff).await {
            StoreError::Compacted { .. } => tracing::info!("watch history compacted: re-listing"),
            error => {
                tracing::warn!(%error, "following the datastore; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// One list + watch; returns why it stopped.
async fn follow_once(store: &dyn Store, hub: &PolicyHub, backoff: &mut Backoff) -> StoreError {
    let listed = match store.list(PREFIX).await {
        Ok(listed) => listed,
        Err(error) => return error,
    };
    let revision = listed.revision;
    let mut records = Vec::with_capacity(listed.kvs.len());
    // The raw list goes as it is decoded (it is as large as the cluster).
    for kv in listed.kvs {
        match decode_enforced(&kv.key, &kv.value) {
            Ok(record) => records.push(record),
            Err(error) => tracing::error!(%error, "skipping a record"),
        }
    }
    // Loading the calculation of a large cluster and every node's view take seconds: off the
    // async workers.
    let installing = hub.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        installing.install(revision, Calculator::from_records(records));
    });
    if let Err(error) = loaded.await {
        std::panic::resume_unwind(error.into_panic());
    }
    backoff.reset();
    let mut watch = store.watch(PREFIX, revision);
    while let Some(batch) = watch.next().await {
        match batch {
            Ok(batch) => hub.apply_events(batch.revision, &batch.events),
            Err(error) => return error,
        }
    }
    StoreError::Unavailable("the watch stream ended".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fan_outs_nobody_follows_stay_bounded_as_new_nodes_come_and_a_followed_one_stays() {
        let hub = PolicyHub::new(FanoutConfig::default());
        let followed = hub.fanout("followed");
        for n in 0..3 * MIN_SWEEP {
            drop(hub.fanout(&format!("made-up-{n}")));
            assert!(hub.fanout_count() <= MIN_SWEEP, "{} fan-outs", hub.fanout_count());
        }
        assert!(hub.lock().fanouts.contains_key("followed"));
        drop(followed);
    }
}
