//! The embedded store survives SIGKILL with every acknowledged transaction intact and none
//! half-applied, and its revisions keep increasing across restarts.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use brindle_datastore::{EmbeddedStore, Store, StoreError, Txn};
use futures_util::StreamExt;

/// Environment variable that turns `crash_writer_child` into the writer process.
const CHILD_DB: &str = "BRINDLE_CRASH_TEST_DB";
/// Environment variable naming the round the child writes.
const CHILD_ROUND: &str = "BRINDLE_CRASH_TEST_ROUND";
const WRITERS: usize = 4;

fn key(round: usize, writer: usize, what: &str) -> String {
    format!("/crash/r{round}/w{writer}/{what}")
}

/// The writer process: several tasks commit multi-key transactions as fast as they can and print
/// `ACK <writer> <i> <revision>` after each acknowledged commit, until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process of crash_with_sigkill_keeps_every_acknowledged_txn"]
async fn crash_writer_child() {
    let (Some(db), Some(round)) = (std::env::var_os(CHILD_DB), std::env::var(CHILD_ROUND).ok()) else {
        return;
    };
    let round: usize = round.parse().expect("round");
    let store = EmbeddedStore::open(db).await.expect("open");
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut counter_revision = 0;
            for i in 0.. {
                let txn = Txn::new()
                    .if_mod_revision(key(round, writer, "counter"), counter_revision)
                    .put(key(round, writer, "counter"), i.to_string())
                    .put(key(round, writer, &format!("item/{i:08}")), vec![b'x'; 1000])
                    .put(key(round, writer, "mirror"), i.to_string());
                counter_revision = store.txn(txn).await.expect("txn");
                println!("ACK {writer} {i} {counter_revision}");
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
}

fn number(value: &[u8]) -> u64 {
    String::from_utf8_lossy(value).parse().expect("number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_with_sigkill_keeps_every_acknowledged_txn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.redb");
    let mut last_acked_revision = 0;
    for (round, kill_after) in [150usize, 400, 900].into_iter().enumerate() {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "crash_writer_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DB, &db)
            .env(CHILD_ROUND, round.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn writer");
        let stdout = child.stdout.take().expect("stdout");
        let mut acked: HashMap<usize, u64> = HashMap::new();
        let mut acks = 0;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("line");
            let Some(ack) = line.strip_prefix("ACK ") else {
                continue;
            };
            let fields: Vec<u64> = ack.split(' ').map(|f| f.parse().expect("field")).collect();
            acked.insert(fields[0] as usize, fields[1]);
            last_acked_revision = last_acked_revision.max(fields[2]);
            acks += 1;
            if acks == kill_after {
                child.kill().expect("SIGKILL the writer");
                break;
            }
        }
        child.wait().expect("reap writer");

        let store = EmbeddedStore::open(&db).await.expect("reopen after SIGKILL");
        assert!(store.revision().await.expect("revision") >= last_acked_revision);
        for previous in 0..=round {
            for writer in 0..WRITERS {
                let counter = store.get(&key(previous, writer, "counter")).await.expect("get");
                let mirror = store.get(&key(previous, writer, "mirror")).await.expect("get");
                let items = store
                    .list(&key(previous, writer, "item/"))
                    .await
                    .expect("list")
                    .kvs;
                let Some(counter) = counter else {
                    assert!(mirror.is_none() && items.is_empty(), "half-applied first txn");
                    assert!(
                        previous != round || !acked.contains_key(&writer),
                        "acknowledged txn lost"
                    );
                    continue;
                };
                let committed = number(&counter.value);
                assert_eq!(
                    number(&mirror.expect("mirror").value),
                    committed,
                    "txn half-applied"
                );
                assert_eq!(items.len() as u64, committed + 1, "items 0..={committed} exactly");
                if previous == round
                    && let Some(acked_i) = acked.get(&writer)
                {
                    assert!(
                        committed >= *acked_i,
                        "writer {writer}: acked {acked_i}, found {committed}"
                    );
                }
            }
        }
        let next = store
            .txn(Txn::new().put("/crash/after", round.to_string()))
            .await
            .expect("write after reopen");
        assert!(
            next > last_acked_revision,
            "revision {next} after restart must exceed {last_acked_revision}"
        );
        last_acked_revision = next;
        eprintln!("round {round}: killed after {acks} acks; all present, none half-applied");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_and_leases_survive_a_clean_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.redb");
    let (before, lease) = {
        let store = EmbeddedStore::open(&path).await.expect("open");
        for n in 0..5 {
            store
                .txn(Txn::new().put(format!("/k/{n}"), "v"))
                .await
                .expect("put");
        }
        let lease = store.grant_lease(Duration::from_secs(30)).await.expect("grant");
        store
            .txn(Txn::new().put_with_lease("/leased", "v", lease))
            .await
            .expect("put");
        (store.revision().await.expect("revision"), lease)
    };
    let store = EmbeddedStore::open(&path).await.expect("reopen");
    assert_eq!(store.revision().await.expect("revision"), before);
    assert_eq!(store.list("/k/").await.expect("list").kvs.len(), 5);
    // The lease is still known (its deadline restarted) and still owns its key.
    assert!(store.keep_alive(lease).await.is_ok());
    let mut old = store.watch("/k/", before - 3);
    assert!(
        matches!(old.next().await, Some(Err(StoreError::Compacted { .. }))),
        "history before a restart is gone"
    );
    let mut current = store.watch("/", before);
    store.revoke_lease(lease).await.expect("revoke");
    let batch = current.next().await.expect("event").expect("batch");
    assert_eq!(batch.revision, before + 1);
    assert_eq!(batch.events[0].key, "/leased");
}
