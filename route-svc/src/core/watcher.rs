//! Follows the datastore into the fan-out: list everything under the watched prefix, publish it
//! as the state at the list's revision, then apply every watched revision as it comes. A
//! compacted watch re-lists and publishes only the differences; errors back off and retry. Every
//! replica does this on its own and arrives at the same state at the same revision.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use brindle_backoff::Backoff;
use brindle_datastore::{EventKind, Store, StoreError, WatchEvent};
use brindle_fanout::{Change, Fanout, Key};
use futures_util::StreamExt;

use super::derive::{WATCHED_PREFIX, is_routing_record, items};
use route_api::model::RouteItem;

/// Item keys each datastore record contributed, so an update or delete can retract them.
#[derive(Default)]
struct Sources(HashMap<String, Vec<Key>>);

impl Sources {
    /// The changes that replace what `event.key` contributed with what it contributes now. A
    /// record that does not decode keeps contributing what it did (and is logged).
    fn apply(&mut self, event: &WatchEvent) -> Vec<Change<RouteItem>> {
        let new = match event.kind {
            EventKind::Delete => Vec::new(),
            EventKind::Put => match items(&event.key, &event.value) {
                Ok(items) => items
                    .into_iter()
                    .map(|(key, item)| (Key::from(key), item))
                    .collect::<Vec<_>>(),
                Err(error) => {
                    tracing::error!(%error, "keeping the routes it gave before");
                    return Vec::new();
                }
            },
        };
        let old = self.0.remove(&event.key).unwrap_or_default();
        let mut changes: Vec<Change<RouteItem>> = old
            .into_iter()
            .filter(|key| !new.iter().any(|(k, _)| k == key))
            .map(Change::Remove)
            .collect();
        if !new.is_empty() {
            self.0
                .insert(event.key.clone(), new.iter().map(|(k, _)| k.clone()).collect());
        }
        changes.extend(new.into_iter().map(|(key, item)| Change::Upsert(key, item)));
        changes
    }
}

/// Keeps `fanout` equal to the routing state in `store` until the task is dropped.
pub async fn follow(store: Arc<dyn Store>, fanout: Fanout<RouteItem>) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match follow_once(store.as_ref(), &fanout, &mut backoff).await {
            StoreError::Compacted { .. } => tracing::info!("watch history compacted: re-listing"),
            error => {
                tracing::warn!(%error, "following the datastore; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// One list + watch; returns why it stopped.
async fn follow_once(store: &dyn Store, fanout: &Fanout<RouteItem>, backoff: &mut Backoff) -> StoreError {
    let listed = match store.list(WATCHED_PREFIX).await {
        Ok(listed) => listed,
        Err(error) => return error,
    };
    let mut sources = Sources::default();
    let mut state = BTreeMap::new();
    let revision = listed.revision;
    for kv in listed.kvs.into_iter().filter(|kv| is_routing_record(&kv.key)) {
        let event = WatchEvent {
            kind: EventKind::Put,
            key: kv.key,
            value: kv.value,
        };
        for change in sources.apply(&event) {
            if let Change::Upsert(key, item) = change {
                state.insert(key, item);
            }
        }
    }
    if !fanout.reset(revision, state) && revision < fanout.revision() {
        tracing::warn!(
            listed = revision,
            published = fanout.revision(),
            "the datastore's revision went backwards (restored from a backup?); keeping the newer state"
        );
    }
    backoff.reset();
    let mut watch = store.watch(WATCHED_PREFIX, revision);
    while let Some(batch) = watch.next().await {
        let batch = match batch {
            Ok(batch) => batch,
            Err(error) => return error,
        };
        let changes: Vec<_> = batch
            .events
            .iter()
            .filter(|event| is_routing_record(&event.key))
            .flat_map(|event| sources.apply(event))
            .collect();
        fanout.publish(batch.revision, changes);
    }
    StoreError::Unavailable("the watch stream ended".into())
}
