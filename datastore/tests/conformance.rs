//! One conformance suite, run unchanged against the embedded store and against a real etcd.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use brindle_datastore::testing::EtcdServer;
use brindle_datastore::{
    EmbeddedStore, EtcdStore, EventKind, MAX_REQUEST_BYTES, MAX_TXN_OPS, Revision, Store, StoreError, Txn,
    WatchBatch, WatchStream,
};
use futures_util::StreamExt;

/// A backend under test, and a way to disrupt it.
#[async_trait::async_trait]
trait Harness: Send {
    fn store(&self) -> Arc<dyn Store>;
    /// Breaks the connection between clients and the data: etcd is SIGKILLed and restarted. The
    /// embedded store has no connection to break; its watchers are instead forced to recover from
    /// lag by the backlog the tests build up (more batches than a live subscription buffers).
    async fn interrupt(&mut self);
}

struct Embedded {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
}

impl Embedded {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path().join("store.redb"))
            .await
            .expect("open embedded store");
        Self {
            _dir: dir,
            store: Arc::new(store),
        }
    }
}

#[async_trait::async_trait]
impl Harness for Embedded {
    fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }
    async fn interrupt(&mut self) {}
}

struct Etcd {
    server: EtcdServer,
    store: Arc<dyn Store>,
}

impl Etcd {
    async fn new() -> Self {
        let server = EtcdServer::start()
            .await
            .expect("start etcd (is Debian's etcd-server installed?)");
        let store = EtcdStore::connect(&server.config())
            .await
            .expect("connect to etcd");
        Self {
            server,
            store: Arc::new(store),
        }
    }
}

#[async_trait::async_trait]
impl Harness for Etcd {
    fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }
    async fn interrupt(&mut self) {
        self.server.restart().await.expect("restart etcd");
    }
}

/// Puts `key`, retrying while the backend is unavailable (during a restart).
async fn put_retrying(store: &dyn Store, key: String, value: Vec<u8>) -> Revision {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match store.txn(Txn::new().put(key.clone(), value.clone())).await {
            Ok(revision) => return revision,
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("put {key}: {e}"),
        }
    }
}

/// Writes `count` keys `<prefix><n>` from 16 concurrent tasks; returns key → revision.
async fn write_many(
    store: &Arc<dyn Store>,
    prefix: &str,
    range: std::ops::Range<usize>,
) -> BTreeMap<String, Revision> {
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let store = Arc::clone(store);
        let prefix = prefix.to_owned();
        let keys: Vec<usize> = range.clone().filter(|n| n % 16 == worker).collect();
        tasks.push(tokio::spawn(async move {
            let mut written = Vec::new();
            for n in keys {
                let key = format!("{prefix}{n:05}");
                let revision = put_retrying(store.as_ref(), key.clone(), n.to_string().into_bytes()).await;
                written.push((key, revision));
            }
            written
        }));
    }
    let mut all = BTreeMap::new();
    for task in tasks {
        all.extend(task.await.expect("writer task"));
    }
    all
}

async fn next_batch(watch: &mut WatchStream) -> WatchBatch {
    tokio::time::timeout(Duration::from_secs(30), watch.next())
        .await
        .expect("watch batch within 30 s")
        .expect("watch stream ended")
        .expect("watch error")
}

async fn basic_get_put_delete(h: &mut dyn Harness) {
    let store = h.store();
    assert_eq!(store.get("/t/missing").await.expect("get"), None);
    let r1 = store.txn(Txn::new().put("/t/a", "1")).await.expect("put");
    let r2 = store.txn(Txn::new().put("/t/a", "2")).await.expect("put again");
    assert!(r2 > r1, "revisions increase: {r1} then {r2}");
    let kv = store.get("/t/a").await.expect("get").expect("present");
    assert_eq!(
        (
            kv.value.as_slice(),
            kv.create_revision,
            kv.mod_revision,
            kv.version
        ),
        (&b"2"[..], r1, r2, 2)
    );
    let r3 = store.txn(Txn::new().delete("/t/a")).await.expect("delete");
    assert!(r3 > r2);
    assert_eq!(store.get("/t/a").await.expect("get"), None);
    // Deleting a missing key changes nothing and does not move the revision.
    let r4 = store
        .txn(Txn::new().delete("/t/a"))
        .await
        .expect("delete missing");
    assert_eq!(r4, r3);
    assert_eq!(store.revision().await.expect("revision"), r3);
}

async fn list_is_sorted_prefix_scoped_and_paginated(h: &mut dyn Harness) {
    let store = h.store();
    let mut txn = Txn::new();
    for n in 0..100 {
        txn = txn.put(format!("/other/{n}"), "x");
    }
    store.txn(txn).await.expect("other keys");
    // More keys than one etcd page (10,000) so a list of a page and the rest, at one revision,
    // is exercised.
    for chunk in 0..100 {
        let mut txn = Txn::new();
        for n in 0..120 {
            txn = txn.put(format!("/list/{:05}", chunk * 120 + n), vec![b'v'; 10]);
        }
        store.txn(txn).await.expect("list keys");
    }
    let listed = store.list("/list/").await.expect("list");
    assert_eq!(listed.kvs.len(), 12_000);
    assert!(
        listed.kvs.windows(2).all(|w| w[0].key < w[1].key),
        "sorted by key"
    );
    assert!(listed.kvs.iter().all(|kv| kv.key.starts_with("/list/")));
    assert_eq!(listed.revision, store.revision().await.expect("revision"));
    assert!(store.list("/nothing/").await.expect("empty list").kvs.is_empty());
}

async fn txn_compares_are_atomic_and_name_the_failed_key(h: &mut dyn Harness) {
    let store = h.store();
    let created = store
        .txn(Txn::new().if_absent("/cas/a").put("/cas/a", "1"))
        .await
        .expect("create");
    let err = store
        .txn(Txn::new().if_absent("/cas/a").put("/cas/a", "again"))
        .await
        .expect_err("must be refused");
    assert!(
        matches!(&err, StoreError::Conflict { key } if key == "/cas/a"),
        "{err}"
    );

    let before = store.revision().await.expect("revision");
    let err = store
        .txn(
            Txn::new()
                .if_mod_revision("/cas/a", created)
                .if_value("/cas/b", "nope")
                .put("/cas/a", "2")
                .put("/cas/c", "3"),
        )
        .await
        .expect_err("must be refused");
    assert!(
        matches!(&err, StoreError::Conflict { key } if key == "/cas/b"),
        "{err}"
    );
    assert_eq!(
        store.revision().await.expect("revision"),
        before,
        "a failed txn writes nothing"
    );
    assert_eq!(store.get("/cas/c").await.expect("get"), None);
    assert_eq!(store.get("/cas/a").await.expect("get").expect("a").value, b"1");

    let moved = store
        .txn(
            Txn::new()
                .if_mod_revision("/cas/a", created)
                .if_value("/cas/a", "1")
                .put("/cas/a", "2")
                .put("/cas/c", "3"),
        )
        .await
        .expect("txn with holding compares");
    let a = store.get("/cas/a").await.expect("get").expect("a");
    let c = store.get("/cas/c").await.expect("get").expect("c");
    assert_eq!(
        (a.mod_revision, c.mod_revision),
        (moved, moved),
        "one revision for the whole txn"
    );
    // mod-revision 0 means absent.
    store
        .txn(Txn::new().if_mod_revision("/cas/new", 0).put("/cas/new", "x"))
        .await
        .expect("absent via rev 0");
}

async fn bad_requests_are_refused_clearly(h: &mut dyn Harness) {
    let store = h.store();
    let err = store
        .txn(Txn::new().put("/dup", "1").put("/dup", "2"))
        .await
        .expect_err("must be refused");
    assert!(
        matches!(&err, StoreError::InvalidRequest(m) if m.contains("/dup")),
        "{err}"
    );
    let many = (0..=MAX_TXN_OPS).fold(Txn::new(), |t, n| t.put(format!("/many/{n}"), "v"));
    assert!(matches!(
        store.txn(many).await,
        Err(StoreError::InvalidRequest(_))
    ));
    assert!(matches!(
        store.txn(Txn::new().put("", "v")).await,
        Err(StoreError::InvalidRequest(_))
    ));
    let err = store
        .txn(Txn::new().put_with_lease("/leased", "v", 12345))
        .await
        .expect_err("must be refused");
    assert!(matches!(err, StoreError::LeaseNotFound(12345)), "{err}");
    assert!(store.list("/many/").await.expect("list").kvs.is_empty());
}

async fn values_near_the_request_limit(h: &mut dyn Harness) {
    let store = h.store();
    let key = "/big/value";
    let fits = MAX_REQUEST_BYTES - 1024 - key.len();
    let value: Vec<u8> = (0..fits).map(|i| (i % 251) as u8).collect();
    store
        .txn(Txn::new().put(key, value.clone()))
        .await
        .expect("value just under the limit");
    assert_eq!(store.get(key).await.expect("get").expect("present").value, value);
    let err = store
        .txn(Txn::new().put("/big/too", vec![0u8; MAX_REQUEST_BYTES + 1]))
        .await
        .expect_err("must be refused");
    assert!(
        matches!(
            err,
            StoreError::TooLarge {
                limit: MAX_REQUEST_BYTES,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("exceeds"), "clear message: {err}");
    assert_eq!(store.get("/big/too").await.expect("get"), None);
}

async fn concurrent_cas_increments_lose_nothing(h: &mut dyn Harness) {
    let store = h.store();
    const TASKS: usize = 16;
    const INCREMENTS: usize = 25;
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0usize;
            for _ in 0..INCREMENTS {
                loop {
                    let current = store.get("/counter").await.expect("get");
                    let (value, revision) = current.map_or((0, 0), |kv| {
                        (
                            String::from_utf8_lossy(&kv.value)
                                .parse::<usize>()
                                .expect("number"),
                            kv.mod_revision,
                        )
                    });
                    let txn = Txn::new()
                        .if_mod_revision("/counter", revision)
                        .put("/counter", (value + 1).to_string());
                    match store.txn(txn).await {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => conflicts += 1,
                        Err(e) => panic!("increment: {e}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for task in tasks {
        conflicts += task.await.expect("task");
    }
    let kv = store.get("/counter").await.expect("get").expect("counter");
    assert_eq!(
        String::from_utf8_lossy(&kv.value),
        (TASKS * INCREMENTS).to_string(),
        "no lost update"
    );
    assert_eq!(
        kv.version,
        (TASKS * INCREMENTS) as u64,
        "one version per successful increment"
    );
    eprintln!("{} increments, {conflicts} conflicts retried", TASKS * INCREMENTS);
}

async fn watch_resumes_exactly_after_a_revision(h: &mut dyn Harness) {
    let store = h.store();
    let mut revisions = Vec::new();
    for n in 0..10 {
        revisions.push(
            store
                .txn(Txn::new().put(format!("/w/{n}"), n.to_string()))
                .await
                .expect("put"),
        );
        store
            .txn(Txn::new().put(format!("/unwatched/{n}"), "x"))
            .await
            .expect("put elsewhere");
    }
    let mut watch = store.watch("/w/", revisions[4]);
    for (n, revision) in revisions.iter().enumerate().skip(5) {
        let batch = next_batch(&mut watch).await;
        assert_eq!(batch.revision, *revision);
        assert_eq!(batch.events.len(), 1);
        assert_eq!(batch.events[0].key, format!("/w/{n}"));
        assert_eq!(batch.events[0].kind, EventKind::Put);
    }
    let deleted = store
        .txn(Txn::new().delete("/w/0").delete("/w/1").put("/w/new", "v"))
        .await
        .expect("txn");
    let batch = next_batch(&mut watch).await;
    assert_eq!(batch.revision, deleted);
    let mut kinds: Vec<_> = batch.events.iter().map(|e| (e.key.as_str(), e.kind)).collect();
    kinds.sort_by_key(|(k, _)| *k);
    assert_eq!(
        kinds,
        vec![
            ("/w/0", EventKind::Delete),
            ("/w/1", EventKind::Delete),
            ("/w/new", EventKind::Put)
        ]
    );
    // A watch from the list revision sees exactly what follows it.
    let listed = store.list("/w/").await.expect("list");
    let mut from_list = store.watch("/w/", listed.revision);
    let after = store.txn(Txn::new().put("/w/after", "v")).await.expect("put");
    assert_eq!(next_batch(&mut from_list).await.revision, after);
}

async fn watch_sees_every_event_once_in_order_across_a_reconnect(h: &mut dyn Harness) {
    let store = h.store();
    let start = store.revision().await.expect("revision");
    let mut watch = store.watch("/r/", start);
    let mut expected = write_many(&store, "/r/a", 0..700).await;
    let mut seen = Vec::new();
    while seen.len() < 100 {
        let batch = next_batch(&mut watch).await;
        seen.extend(batch.events.iter().map(|e| (batch.revision, e.key.clone())));
    }
    h.interrupt().await;
    expected.extend(write_many(&store, "/r/b", 0..700).await);
    while seen.len() < expected.len() {
        let batch = next_batch(&mut watch).await;
        seen.extend(batch.events.iter().map(|e| (batch.revision, e.key.clone())));
    }
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "strictly increasing revisions"
    );
    let keys: HashSet<_> = seen.iter().map(|(_, k)| k.clone()).collect();
    assert_eq!(keys.len(), seen.len(), "no event twice");
    let seen_map: BTreeMap<_, _> = seen.into_iter().map(|(r, k)| (k, r)).collect();
    assert_eq!(
        seen_map, expected,
        "every acknowledged write seen at its revision"
    );
    // Resuming a new watch after the last seen revision yields only newer events.
    let last = *expected.values().max().expect("writes");
    let mut resumed = store.watch("/r/", last);
    let newer = store.txn(Txn::new().put("/r/newer", "v")).await.expect("put");
    let batch = next_batch(&mut resumed).await;
    assert_eq!(
        (batch.revision, batch.events[0].key.as_str()),
        (newer, "/r/newer")
    );
}

async fn watch_reports_compaction(h: &mut dyn Harness) {
    let store = h.store();
    let first = store.txn(Txn::new().put("/c/1", "1")).await.expect("put");
    store.txn(Txn::new().put("/c/2", "2")).await.expect("put");
    let third = store.txn(Txn::new().put("/c/3", "3")).await.expect("put");
    store.compact(third).await.expect("compact");
    store.compact(third).await.expect("compacting again is a no-op");
    let mut old = store.watch("/c/", first);
    match tokio::time::timeout(Duration::from_secs(30), old.next())
        .await
        .expect("answer")
    {
        Some(Err(StoreError::Compacted { after, earliest })) => {
            assert_eq!(after, first);
            assert!(
                earliest >= third - 1 && earliest <= third,
                "earliest {earliest} vs compacted at {third}"
            );
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    // Watching after the compaction revision works.
    let mut at = store.watch("/c/", third);
    let fourth = store.txn(Txn::new().put("/c/4", "4")).await.expect("put");
    assert_eq!(next_batch(&mut at).await.revision, fourth);
    // A delete at the compaction revision is never missed silently: a watch from just before it
    // gets the delete or is told to re-list (etcd drops the tombstone when it compacts).
    let deleted = store.txn(Txn::new().delete("/c/1")).await.expect("delete");
    store.compact(deleted).await.expect("compact");
    let mut before = store.watch("/c/", deleted - 1);
    match tokio::time::timeout(Duration::from_secs(10), before.next()).await {
        Ok(Some(Ok(batch))) => {
            assert_eq!(batch.revision, deleted);
            assert_eq!(batch.events[0].kind, EventKind::Delete);
        }
        Ok(Some(Err(StoreError::Compacted { .. }))) => {}
        other => panic!("the delete at the compaction revision was missed: {other:?}"),
    }
    let future = store.revision().await.expect("revision") + 100;
    assert!(matches!(
        store.compact(future).await,
        Err(StoreError::InvalidRequest(_))
    ));
}

async fn leases_expire_keys_and_emit_deletes(h: &mut dyn Harness) {
    let store = h.store();
    let lease = store.grant_lease(Duration::from_secs(2)).await.expect("grant");
    let start = store
        .txn(Txn::new().put_with_lease("/lease/node", "alive", lease))
        .await
        .expect("put");
    assert_eq!(
        store.get("/lease/node").await.expect("get").expect("key").lease,
        Some(lease)
    );
    let mut watch = store.watch("/lease/", start);
    let expired_at = Instant::now();
    let batch = tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .expect("lease expires within 20 s")
        .expect("stream")
        .expect("event");
    assert_eq!(batch.events[0].kind, EventKind::Delete);
    assert_eq!(batch.events[0].key, "/lease/node");
    assert!(
        expired_at.elapsed() >= Duration::from_secs(1),
        "not before its TTL"
    );
    assert_eq!(store.get("/lease/node").await.expect("get"), None);
    let renewed = store.keep_alive(lease).await;
    assert!(
        matches!(renewed, Err(StoreError::LeaseNotFound(id)) if id == lease),
        "{renewed:?}"
    );

    // Keep-alives hold a lease past its TTL; revoke deletes its keys at once.
    let kept = store.grant_lease(Duration::from_secs(2)).await.expect("grant");
    store
        .txn(Txn::new().put_with_lease("/lease/kept", "v", kept))
        .await
        .expect("put");
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(store.keep_alive(kept).await.expect("keep alive") >= Duration::from_secs(1));
    }
    assert!(
        store.get("/lease/kept").await.expect("get").is_some(),
        "kept alive for 4 s with a 2 s TTL"
    );
    store.revoke_lease(kept).await.expect("revoke");
    assert_eq!(store.get("/lease/kept").await.expect("get"), None);
    let again = store.revoke_lease(kept).await;
    assert!(
        matches!(again, Err(StoreError::LeaseNotFound(id)) if id == kept),
        "{again:?}"
    );
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let mut harness = super::Embedded::new().await;
                    super::$test(&mut harness).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let mut harness = super::Etcd::new().await;
                    super::$test(&mut harness).await;
                }
            )*
        }
    };
}

conformance!(
    basic_get_put_delete,
    list_is_sorted_prefix_scoped_and_paginated,
    txn_compares_are_atomic_and_name_the_failed_key,
    bad_requests_are_refused_clearly,
    values_near_the_request_limit,
    concurrent_cas_increments_lose_nothing,
    watch_resumes_exactly_after_a_revision,
    watch_sees_every_event_once_in_order_across_a_reconnect,
    watch_reports_compaction,
    leases_expire_keys_and_emit_deletes,
);
