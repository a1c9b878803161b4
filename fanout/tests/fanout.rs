//! Fan-out behaviour: ordering, batching, resume, snapshot fallback, eviction, keepalives and
//! replicas converging. Time is paused (tokio test-util), so timing is exact and tests are fast.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use brindle_fanout::session::{ClientMessage, ServerMessage, serve};
use brindle_fanout::{
    Change, Codec, EncodedSnapshot, EncodedState, Fanout, FanoutConfig, FanoutError, Frame, Key, KeyInValue,
    Mirror, OwnKey, Start, State,
};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_stream_free::ChannelStream;

/// `key=value` lines: the test service's snapshot encoding.
fn encode<'a, K: AsRef<str>>(entries: impl IntoIterator<Item = (K, &'a String)>) -> Vec<u8> {
    entries
        .into_iter()
        .map(|(k, v)| format!("{}={v}\n", k.as_ref()))
        .collect::<String>()
        .into_bytes()
}

fn decode(snapshot: &EncodedSnapshot) -> BTreeMap<Key, String> {
    let raw = snapshot.decompress().expect("decompress");
    String::from_utf8(raw)
        .expect("utf8")
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.into(), v.to_owned()))
        .collect()
}

fn config() -> FanoutConfig {
    FanoutConfig {
        max_batch_entries: 100,
        max_batch_delay: Duration::from_millis(10),
        ..FanoutConfig::default()
    }
}

fn fanout(config: FanoutConfig) -> Fanout<String> {
    Fanout::new(config, Arc::new(|state| encode(state.iter()).into()))
}

/// A fan-out that has loaded an empty state at revision 1 (subscribers wait for a loaded state).
fn loaded(config: FanoutConfig) -> Fanout<String> {
    let fanout = fanout(config);
    assert!(fanout.reset(1, BTreeMap::new()));
    fanout
}

fn upsert(key: &str, value: &str) -> Change<String> {
    Change::Upsert(key.into(), value.into())
}

/// A session for subscriber "n1", which has said hello with revision 0, served on its own task
/// with a queue of `queue` messages toward the subscriber. Returns what the subscriber sends on,
/// what it receives, and the session.
async fn start_session(
    fanout: &Fanout<String>,
    queue: usize,
) -> (
    mpsc::Sender<Result<ClientMessage, String>>,
    mpsc::Receiver<ServerMessage<String>>,
    tokio::task::JoinHandle<Result<(), FanoutError>>,
) {
    let (to_server, from_client) = mpsc::channel(4);
    let (outgoing, received) = mpsc::channel(queue);
    to_server
        .send(Ok(ClientMessage::Hello {
            node: "n1".into(),
            resume_revision: 0,
        }))
        .await
        .expect("hello");
    let server = {
        let fanout = fanout.clone();
        tokio::spawn(async move { serve(&fanout, ChannelStream(from_client), outgoing).await })
    };
    (to_server, received, server)
}

/// Applies a subscription's start to a mirror.
fn apply_start(mirror: &mut Mirror<String>, start: &Start<String>) {
    match start {
        Start::Snapshot(snapshot) => {
            mirror.apply_snapshot(snapshot.revision, decode(snapshot));
        }
        Start::Resume { batches, .. } => {
            for batch in batches {
                mirror.apply_batch(batch);
            }
        }
    }
}

mod tokio_stream_free {
    //! An mpsc receiver as a `Stream` (what a transport's inbound stream looks like).
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::sync::mpsc;

    pub struct ChannelStream<T>(pub mpsc::Receiver<T>);

    impl<T> futures_util::Stream for ChannelStream<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}

#[tokio::test(start_paused = true)]
async fn subscribers_get_batches_in_revision_order_and_end_equal_to_the_source() {
    let fanout = loaded(config());
    let (mut subscription, start) = fanout.subscribe(0).await.expect("subscribed");
    let mut mirror = Mirror::default();
    apply_start(&mut mirror, &start);
    for revision in 2..=50u64 {
        let key = format!("k{}", revision % 7);
        let change = if revision % 5 == 0 {
            Change::Remove(key.into())
        } else {
            upsert(&key, &format!("v{revision}"))
        };
        fanout.publish(revision, [change]);
        if revision % 3 == 0 {
            tokio::time::advance(Duration::from_millis(11)).await;
        }
    }
    fanout.flush();
    let mut last = 1;
    while mirror.revision() < 50 {
        for batch in subscription.next().await.expect("next") {
            assert_eq!(batch.from, last.max(batch.from), "contiguous");
            assert!(batch.to > last, "revisions increase: {} after {last}", batch.to);
            last = batch.to;
            mirror.apply_batch(&batch);
        }
    }
    assert_eq!(mirror.state(), &fanout.state());
    assert_eq!(fanout.revision(), 50);
    assert!(
        !fanout.publish(50, [upsert("late", "x")]),
        "an old revision is refused"
    );
}

#[tokio::test(start_paused = true)]
async fn changes_are_batched_by_count_and_time_and_coalesced_per_key() {
    let fanout = loaded(FanoutConfig {
        max_batch_entries: 3,
        ..config()
    });
    let (mut subscription, _) = fanout.subscribe(0).await.expect("subscribed");
    fanout.publish(2, [upsert("a", "1")]);
    fanout.publish(3, [upsert("a", "2")]);
    tokio::time::advance(Duration::from_millis(5)).await;
    assert_eq!(fanout.revision(), 1, "not flushed before the batch delay");
    tokio::time::advance(Duration::from_millis(6)).await;
    tokio::task::yield_now().await;
    let batches = subscription.next().await.expect("time flush");
    assert_eq!(batches.len(), 1);
    assert_eq!((batches[0].from, batches[0].to), (1, 3));
    assert_eq!(
        batches[0].upserts,
        vec![("a".into(), "2".to_owned())],
        "coalesced"
    );

    fanout.publish(4, [upsert("b", "1"), upsert("c", "1")]);
    fanout.publish(5, [upsert("d", "1")]);
    assert_eq!(fanout.revision(), 5, "flushed at once when the batch is full");
    let batches = subscription.next().await.expect("count flush");
    assert_eq!(batches[0].len(), 3);

    fanout.publish(6, [upsert("d", "1")]);
    fanout.flush();
    assert_eq!(fanout.revision(), 6, "a no-op change still advances the revision");
    fanout.publish(7, [upsert("e", "1")]);
    fanout.flush();
    let batches = subscription.next().await.expect("next");
    assert_eq!(batches.len(), 1, "no empty batch for the no-op revision");
    assert_eq!((batches[0].from, batches[0].to), (6, 7));
}

#[tokio::test(start_paused = true)]
async fn nobody_is_started_before_the_fan_out_has_loaded_a_state() {
    let fanout = fanout(config());
    let waiting = {
        let fanout = fanout.clone();
        tokio::spawn(async move { fanout.subscribe(0).await.expect("subscribed").1 })
    };
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        !waiting.is_finished(),
        "an empty snapshot at revision 0 must never be handed out"
    );
    fanout.reset(4, [("a".into(), "1".to_owned())]);
    let Start::Snapshot(snapshot) = waiting.await.expect("task") else {
        panic!("expected a snapshot");
    };
    assert_eq!((snapshot.revision, snapshot.entries), (4, 1));
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_resuming_from_its_revision_gets_only_what_changed() {
    let fanout = fanout(config());
    for revision in 1..=10 {
        fanout.publish(revision, [upsert(&format!("k{revision}"), "v")]);
        fanout.flush();
    }
    let (_, start) = fanout.subscribe(0).await.expect("subscribed");
    let mut mirror = Mirror::default();
    apply_start(&mut mirror, &start);
    assert_eq!(mirror.revision(), 10);
    // Disconnected while 11..=13 happen.
    for revision in 11..=13 {
        fanout.publish(revision, [upsert("k1", &format!("v{revision}"))]);
        fanout.flush();
    }
    let (_, start) = fanout.subscribe(mirror.revision()).await.expect("subscribed");
    let Start::Resume { batches, revision } = &start else {
        panic!("expected a resume, got {start:?}");
    };
    assert_eq!(*revision, 13);
    assert_eq!(batches.iter().map(|b| b.to).collect::<Vec<_>>(), vec![11, 12, 13]);
    apply_start(&mut mirror, &start);
    assert_eq!(mirror.state(), &fanout.state());
    // Already current: an empty resume.
    let (_, start) = fanout.subscribe(13).await.expect("subscribed");
    assert!(matches!(start, Start::Resume { ref batches, revision: 13 } if batches.is_empty()));
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_from_before_the_first_state_gets_a_snapshot_without_what_was_deleted() {
    // A subscriber of the previous process holds "gone" at revision 5…
    let before = fanout(config());
    before.publish(5, [upsert("gone", "1"), upsert("kept", "1")]);
    before.flush();
    let mut mirror = Mirror::default();
    apply_start(&mut mirror, &before.subscribe(0).await.expect("subscribed").1);
    // …which was deleted at 6, while the service restarted; the new process loads at 8.
    let after = fanout(config());
    after.publish(8, [upsert("kept", "1")]);
    after.flush();
    let (_, start) = after.subscribe(mirror.revision()).await.expect("subscribed");
    assert!(matches!(start, Start::Snapshot(_)), "{start:?}");
    apply_start(&mut mirror, &start);
    assert_eq!(mirror.state(), &after.state());
    // From the first state on, the history resumes.
    after.publish(9, [upsert("new", "1")]);
    after.flush();
    assert!(matches!(
        after.subscribe(8).await.expect("subscribed").1,
        Start::Resume { revision: 9, .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn resume_falls_back_to_a_shared_compressed_snapshot_when_history_is_gone() {
    let fanout = fanout(FanoutConfig {
        history_entries: 5,
        compress_from_bytes: 64,
        ..config()
    });
    for revision in 1..=20 {
        fanout.publish(
            revision,
            [upsert(&format!("key-{revision:04}"), "a-value-that-repeats")],
        );
        fanout.flush();
    }
    let (_, start) = fanout.subscribe(3).await.expect("subscribed");
    let Start::Snapshot(first) = start else {
        panic!("revision 3 is no longer in the history: expected a snapshot");
    };
    assert_eq!(first.revision, 20);
    assert_eq!(first.entries, 20);
    assert_eq!(first.codec, Codec::Zstd);
    assert!((first.data.len() as u64) < first.raw_bytes, "compressed");
    assert_eq!(decode(&first), fanout.state());
    let (_, start) = fanout.subscribe(0).await.expect("subscribed");
    let Start::Snapshot(second) = start else {
        panic!("revision 0 asks for a snapshot");
    };
    assert!(Arc::ptr_eq(&first, &second), "encoded once, shared");
    let (_, start) = fanout.subscribe(17).await.expect("subscribed");
    assert!(
        matches!(start, Start::Resume { .. }),
        "17 is still in the history"
    );
}

/// A fan-out of ten keys, each changed ten times in revisions 2 to 101 (one key a revision),
/// keeping at least `floor` keys of history (and at most 100,000).
fn churned(floor: usize) -> Fanout<String> {
    let fanout = fanout(FanoutConfig {
        history_entries: 100_000,
        history_floor_entries: floor,
        ..config()
    });
    let state: BTreeMap<Key, String> = (0..10)
        .map(|i| (format!("k{i}").into(), "v".to_owned()))
        .collect();
    assert!(fanout.reset(1, state));
    for revision in 2..=101_u64 {
        fanout.publish(
            revision,
            [upsert(&format!("k{}", revision % 10), &format!("v{revision}"))],
        );
        fanout.flush();
    }
    fanout
}

#[tokio::test(start_paused = true)]
async fn churn_keeps_no_more_history_than_the_state_holds() {
    // Ten keys changed a hundred times: replaying more than ten keys of history would cost more
    // than a snapshot of the ten, so no more is kept, however large `history_entries` is.
    let fanout = churned(8);
    let (_, start) = fanout.subscribe(91).await.expect("subscribed");
    let Start::Resume {
        batches,
        revision: 101,
    } = &start
    else {
        panic!("the last ten keys of history are kept: expected a resume, got {start:?}");
    };
    assert_eq!(batches.iter().map(|batch| batch.len()).sum::<usize>(), 10);
    let (_, start) = fanout.subscribe(90).await.expect("subscribed");
    assert!(
        matches!(start, Start::Snapshot(ref snapshot) if snapshot.entries == 10),
        "an eleventh key of history is not kept: expected a snapshot, got {start:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_small_state_keeps_the_floor_of_history_and_its_newest_batch_whatever_its_size() {
    let fanout = churned(20);
    // Ten keys of state, but the floor: twenty keys of history.
    assert!(matches!(
        fanout.subscribe(81).await.expect("subscribed").1,
        Start::Resume { revision: 101, .. }
    ));
    assert!(matches!(
        fanout.subscribe(80).await.expect("subscribed").1,
        Start::Snapshot(_)
    ));
    // A current subscriber follows a batch larger than the floor and the state left after it:
    // every key removed at once (a node whose endpoints all went).
    let (mut current, _) = fanout.subscribe(101).await.expect("subscribed");
    let grown: Vec<Change<String>> = (10..40).map(|i| upsert(&format!("k{i}"), "v")).collect();
    fanout.publish(102, grown);
    fanout.flush();
    assert_eq!(current.next().await.expect("the growth").len(), 1);
    let emptied: Vec<Change<String>> = (0..40).map(|i| Change::Remove(format!("k{i}").into())).collect();
    fanout.publish(103, emptied);
    fanout.flush();
    let batches = current.next().await.expect("the newest batch is kept");
    assert_eq!(batches.iter().map(|batch| batch.len()).sum::<usize>(), 40);
    assert!(fanout.state().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_carries_frames_the_encoder_compressed_once_among_the_rest() {
    // Every key under `shared/` is encoded as one frame, compressed once for all snapshots.
    let shared = Arc::new(std::sync::Mutex::new(None::<Frame>));
    let cache = Arc::clone(&shared);
    let encoder = move |state: &State<String>| {
        let (framed, rest): (BTreeMap<Key, String>, BTreeMap<Key, String>) = state
            .iter()
            .map(|(key, value)| (Key::clone(key), value.clone()))
            .partition(|(key, _)| key.starts_with("shared/"));
        let mut cached = cache.lock().expect("cache");
        let frame = cached
            .get_or_insert_with(|| Frame::compress(&encode(&framed)).expect("compressed"))
            .clone();
        // `rest` sorts around `shared/` (a... before, z... after), as a service's keys would.
        let (before, after): (BTreeMap<Key, String>, BTreeMap<Key, String>) =
            rest.into_iter().partition(|(key, _)| key.as_ref() < "shared/");
        let mut encoded = EncodedState::default();
        encoded.push_raw(encode(&before));
        encoded.push_frame(frame);
        encoded.push_raw(encode(&after));
        encoded
    };
    let state = |node: &str| -> BTreeMap<Key, String> {
        let mut state: BTreeMap<Key, String> = (0..50)
            .map(|i| (Key::from(format!("shared/{i:03}")), "member".to_owned()))
            .collect();
        state.insert(Key::from(format!("a/{node}")), "first".to_owned());
        state.insert(Key::from(format!("z/{node}")), "last".to_owned());
        state
    };
    let mut snapshots = Vec::new();
    for node in ["node-1", "node-2"] {
        let fanout = Fanout::new(
            FanoutConfig {
                // Far above the state: only the shared frame makes the snapshot compressed.
                compress_from_bytes: 1 << 20,
                ..config()
            },
            Arc::new(encoder.clone()),
        );
        fanout.reset(4, state(node));
        let (_, start) = fanout.subscribe(0).await.expect("subscribed");
        let Start::Snapshot(snapshot) = start else {
            panic!("a new subscriber gets a snapshot");
        };
        assert_eq!(snapshot.codec, Codec::Zstd);
        assert_eq!(snapshot.raw_bytes, encode(&state(node)).len() as u64);
        assert_eq!(decode(&snapshot), state(node), "the frames decode as one stream");
        snapshots.push(snapshot);
    }
    let frame = shared.lock().expect("cache").clone().expect("compressed once");
    assert!(
        snapshots.iter().all(|snapshot| snapshot.data.len() > frame.len()),
        "each snapshot holds the shared frame and its own pieces"
    );
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_that_falls_out_of_the_history_is_told_to_resync() {
    let fanout = loaded(FanoutConfig {
        history_entries: 4,
        ..config()
    });
    let (mut slow, _) = fanout.subscribe(0).await.expect("subscribed");
    for revision in 2..=10 {
        fanout.publish(revision, [upsert(&format!("k{revision}"), "v")]);
        fanout.flush();
    }
    let error = slow.next().await.expect_err("too far behind");
    assert!(
        matches!(error, FanoutError::Lagged { cursor: 1, oldest: 6 }),
        "{error:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_session_evicts_a_subscriber_that_stops_reading() {
    let fanout = fanout(FanoutConfig {
        send_timeout: Duration::from_secs(2),
        ..config()
    });
    let (to_server, mut received, server) = start_session(&fanout, 1).await;
    // The snapshot fills the queue; the subscriber never reads again.
    tokio::task::yield_now().await;
    for revision in 1..=3 {
        fanout.publish(revision, [upsert("k", &revision.to_string())]);
        fanout.flush();
    }
    let result = server.await.expect("session task");
    assert!(
        matches!(result, Err(FanoutError::SlowSubscriber { .. })),
        "{result:?}"
    );
    assert!(matches!(received.recv().await, Some(ServerMessage::Snapshot(_))));
    drop(to_server);
    assert!(!fanout.subscribers()[0].connected);
}

#[tokio::test(start_paused = true)]
async fn keepalives_flow_and_a_silent_subscriber_times_out() {
    let fanout = loaded(FanoutConfig {
        keepalive_interval: Duration::from_secs(10),
        keepalive_timeout: Duration::from_secs(30),
        ..config()
    });
    let (to_server, mut received, server) = start_session(&fanout, 16).await;
    assert!(matches!(received.recv().await, Some(ServerMessage::Snapshot(_))));
    // A subscriber that keeps saying it is alive stays connected past the timeout.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(matches!(received.recv().await, Some(ServerMessage::Keepalive)));
        to_server
            .send(Ok(ClientMessage::Keepalive))
            .await
            .expect("keepalive");
    }
    to_server
        .send(Ok(ClientMessage::Ack {
            revision: 1,
            programmed: 7,
        }))
        .await
        .expect("ack");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(fanout.subscribers()[0].programmed, 7);
    assert!(fanout.subscribers()[0].connected);
    // Then silence.
    let started = tokio::time::Instant::now();
    let result = server.await.expect("session task");
    assert!(
        matches!(result, Err(FanoutError::KeepaliveTimeout { .. })),
        "{result:?}"
    );
    let silent_for = started.elapsed() + Duration::from_secs(1);
    assert!(
        silent_for >= Duration::from_secs(30) && silent_for <= Duration::from_secs(31),
        "{silent_for:?}"
    );
    drop(to_server);
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_waiting_longer_than_the_keepalive_timeout_for_the_first_state_stays() {
    let fanout = fanout(FanoutConfig {
        keepalive_interval: Duration::from_secs(10),
        keepalive_timeout: Duration::from_secs(30),
        ..config()
    });
    let (to_server, mut received, server) = start_session(&fanout, 16).await;
    // The service is still loading (a large cluster) for twice the keepalive timeout; the
    // subscriber keeps saying it is alive, but nobody reads it until the state is there.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let _ = to_server.try_send(Ok(ClientMessage::Keepalive));
    }
    assert!(fanout.reset(1, BTreeMap::new()));
    assert!(matches!(received.recv().await, Some(ServerMessage::Snapshot(_))));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!server.is_finished(), "{:?}", server.await);
    assert!(fanout.subscribers()[0].connected);
    drop(to_server);
}

#[tokio::test(start_paused = true)]
async fn a_session_must_start_with_hello() {
    let fanout = fanout(config());
    let (to_server, from_client) = mpsc::channel(4);
    let (outgoing, _received) = mpsc::channel(4);
    to_server
        .send(Ok::<_, String>(ClientMessage::Keepalive))
        .await
        .expect("send");
    let result = serve(&fanout, ChannelStream(from_client), outgoing).await;
    assert!(
        matches!(result, Err(FanoutError::Protocol(ref m)) if m.contains("hello")),
        "{result:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn two_replicas_fed_the_same_source_converge_and_a_subscriber_can_move_between_them() {
    // The same datastore history, batched differently by each replica.
    let a = fanout(FanoutConfig {
        max_batch_entries: 2,
        ..config()
    });
    let b = fanout(FanoutConfig {
        max_batch_entries: 50,
        ..config()
    });
    let history: Vec<(u64, Vec<Change<String>>)> = (1..=40u64)
        .map(|revision| {
            let changes = vec![
                upsert(&format!("k{}", revision % 9), &format!("v{revision}")),
                Change::Remove(format!("k{}", (revision + 4) % 9).into()),
            ];
            (revision * 3, changes)
        })
        .collect();
    let mut mirror = Mirror::default();
    for (i, (revision, changes)) in history.iter().enumerate() {
        a.publish(*revision, changes.clone());
        b.publish(*revision, changes.clone());
        if i == 0 {
            // Each replica's first state (its load); batching differs from here on.
            a.flush();
            b.flush();
        }
        if i == 20 {
            // The subscriber syncs from replica A mid-way…
            a.flush();
            let (_, start) = a.subscribe(0).await.expect("subscribed");
            apply_start(&mut mirror, &start);
        }
    }
    a.flush();
    b.flush();
    assert_eq!(a.state(), b.state());
    assert_eq!(a.revision(), b.revision());
    // …and resumes from replica B, whose batch boundaries differ.
    let (_, start) = b.subscribe(mirror.revision()).await.expect("subscribed");
    assert!(matches!(start, Start::Resume { .. }), "{start:?}");
    apply_start(&mut mirror, &start);
    assert_eq!(mirror.state(), &b.state());
    assert_eq!(mirror.revision(), b.revision());
}

#[tokio::test(start_paused = true)]
async fn resuming_from_a_revision_the_replica_has_not_reached_waits_for_it() {
    let replica = fanout(config());
    replica.publish(5, [upsert("a", "1")]);
    replica.flush();
    let waiting = {
        let replica = replica.clone();
        tokio::spawn(async move { replica.subscribe(5).await.expect("subscribed").1 })
    };
    let _ = replica.subscribe(0).await.expect("subscribed");
    replica.publish(7, [upsert("b", "1")]);
    replica.flush();
    let ahead = {
        let replica = replica.clone();
        tokio::spawn(async move { replica.subscribe(9).await.expect("subscribed").1 })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    replica.publish(9, [upsert("c", "1")]);
    replica.flush();
    assert!(matches!(
        ahead.await.expect("task"),
        Start::Resume { revision: 9, .. }
    ));
    assert!(matches!(waiting.await.expect("task"), Start::Resume { .. }));
}

#[test]
fn a_mirror_reports_only_real_changes() {
    let mut mirror = Mirror::default();
    let state: BTreeMap<Key, String> = [("a".into(), "1".into()), ("b".into(), "2".into())].into();
    assert_eq!(mirror.apply_snapshot(4, state.clone()).len(), 2);
    assert!(
        mirror.apply_snapshot(9, state.clone()).is_empty(),
        "same snapshot after a reconnect: no change"
    );
    let mut changed = state;
    changed.remove("a");
    changed.insert("b".into(), "3".into());
    let changes = mirror.apply_snapshot(10, changed);
    assert_eq!(changes, vec![Change::Remove("a".into()), upsert("b", "3")]);
    assert_eq!(mirror.revision(), 10);
}

#[tokio::test(start_paused = true)]
async fn sessions_stream_deltas_after_the_start() {
    let fanout = loaded(config());
    let (to_server, received, server) = start_session(&fanout, 4).await;
    tokio::task::yield_now().await;
    fanout.publish(2, [upsert("a", "1")]);
    fanout.flush();
    let messages: Vec<_> = ChannelStream(received).take(2).collect().await;
    assert!(matches!(messages[0], ServerMessage::Snapshot(_)));
    let mut mirror = Mirror::default();
    for message in &messages {
        match message {
            ServerMessage::Snapshot(s) => {
                mirror.apply_snapshot(s.revision, decode(s));
            }
            ServerMessage::Delta(batch) => {
                mirror.apply_batch(batch);
            }
            ServerMessage::Keepalive => {}
        }
    }
    assert_eq!(mirror.state(), &fanout.state());
    drop(to_server);
    assert!(matches!(server.await.expect("task"), Ok(())));
}

#[tokio::test(start_paused = true)]
async fn a_reset_after_re_reading_the_source_publishes_only_the_differences() {
    let fanout = fanout(FanoutConfig {
        deltas_from_replaced: true,
        ..config()
    });
    fanout.publish(1, [upsert("a", "1"), upsert("b", "1"), upsert("c", "1")]);
    fanout.flush();
    let (mut subscription, _) = fanout.subscribe(0).await.expect("subscribed");
    let relisted: BTreeMap<Key, String> = [("a".into(), "1".into()), ("b".into(), "2".into())].into();
    assert!(fanout.reset(8, relisted.clone()));
    let batches = subscription.next().await.expect("diff");
    assert_eq!(batches.len(), 1);
    assert_eq!((batches[0].from, batches[0].to), (1, 8));
    assert_eq!(batches[0].upserts, vec![("b".into(), "2".to_owned())]);
    assert_eq!(batches[0].removed, vec![Key::from("c")]);
    assert_eq!(
        batches[0].replaced,
        vec![("b".into(), "1".to_owned()), ("c".into(), "1".to_owned())]
    );
    assert_eq!(fanout.state(), relisted);
}

#[tokio::test(start_paused = true)]
async fn a_batch_holds_the_values_it_replaced_as_they_were_at_its_start() {
    let replacing = fanout(FanoutConfig {
        deltas_from_replaced: true,
        ..config()
    });
    replacing.publish(1, [upsert("a", "1"), upsert("b", "1")]);
    replacing.flush();
    let (mut subscription, _) = replacing.subscribe(1).await.expect("subscribed");
    // Within one batch: `a` changes twice, `b` goes, `c` comes and goes, `d` is new.
    replacing.publish(
        2,
        [upsert("a", "2"), Change::Remove("b".into()), upsert("c", "1")],
    );
    replacing.publish(
        3,
        [upsert("a", "3"), Change::Remove("c".into()), upsert("d", "1")],
    );
    replacing.flush();
    let batches = subscription.next().await.expect("batch");
    assert_eq!(batches.len(), 1);
    assert_eq!(
        batches[0].replaced,
        vec![("a".into(), "1".to_owned()), ("b".into(), "1".to_owned())],
        "the values at revision 1, not those set within the batch"
    );
    // A subscriber resumes at a batch's edges, not inside it (where it may hold what the batch
    // did not replace: another replica's batches).
    replacing.publish(4, [upsert("a", "4")]);
    replacing.flush();
    for (cursor, resumes) in [(1, true), (2, false), (3, true), (4, true)] {
        let (_, start) = replacing.subscribe(cursor).await.expect("subscribed");
        assert_eq!(
            matches!(start, Start::Resume { .. }),
            resumes,
            "from revision {cursor}"
        );
    }
    // Without values sent as changes of what they replaced, batches keep none and apply from
    // inside.
    let plain = fanout(config());
    plain.publish(1, [upsert("a", "1")]);
    plain.flush();
    plain.publish(2, [upsert("a", "2")]);
    plain.publish(3, [upsert("a", "3")]);
    plain.flush();
    let (_, start) = plain.subscribe(2).await.expect("subscribed");
    let Start::Resume { batches, .. } = start else {
        panic!("a snapshot from inside a batch")
    };
    assert!(batches.iter().all(|batch| batch.replaced.is_empty()));
}

/// A value that carries its key, as policy-svc's shared view entries do.
#[derive(Debug, PartialEq)]
struct Carried {
    key: Key,
    value: String,
}

impl OwnKey for Carried {
    fn own_key(&self) -> &Key {
        &self.key
    }
}

fn carried_upsert(key: &str, value: &str) -> Change<Arc<Carried>> {
    let key = Key::from(key);
    let value = value.to_owned();
    Change::Upsert(Key::clone(&key), Arc::new(Carried { key, value }))
}

#[cfg(debug_assertions)]
#[test]
#[should_panic(expected = "another key than its own")]
fn a_value_published_under_another_key_than_its_own_is_refused_at_once_in_debug_builds() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _entered = runtime.enter();
    let carried: Fanout<Arc<Carried>, KeyInValue> = Fanout::new(
        config(),
        Arc::new(|_: &State<Arc<Carried>, KeyInValue>| Vec::new().into()),
    );
    let Change::Upsert(_, value) = carried_upsert("a", "1") else {
        unreachable!("an upsert");
    };
    // Refused as it is published, before any batch (which would carry it under "b") is flushed.
    carried.publish(1, [Change::Upsert(Key::from("b"), value)]);
}

#[tokio::test(start_paused = true)]
async fn values_stored_without_their_keys_stream_as_those_stored_beside_them() {
    let carried: Fanout<Arc<Carried>, KeyInValue> = Fanout::new(
        config(),
        Arc::new(|state: &State<Arc<Carried>, KeyInValue>| {
            encode(state.values().map(|carried| (carried.own_key(), &carried.value))).into()
        }),
    );
    let paired = fanout(config());
    let first = |key: &str| (Key::from(key), format!("{key}-first"));
    assert!(carried.reset(
        1,
        ["c", "a", "b"].map(|key| {
            let (key, value) = first(key);
            (Key::clone(&key), Arc::new(Carried { key, value }))
        }),
    ));
    assert!(paired.reset(1, ["a", "b", "c"].map(first)));
    let (mut subscription, start) = carried.subscribe(0).await.expect("subscribed");
    let Start::Snapshot(snapshot) = &start else {
        panic!("expected a snapshot, got {start:?}");
    };
    let mut mirror = Mirror::default();
    mirror.apply_snapshot(snapshot.revision, decode(snapshot));
    for revision in 2..=40u64 {
        let key = format!("k{}", revision % 6);
        let value = format!("v{revision}");
        if revision % 4 == 0 {
            carried.publish(revision, [Change::Remove(Key::from(key.as_str()))]);
            paired.publish(revision, [Change::Remove(Key::from(key.as_str()))]);
        } else {
            carried.publish(revision, [carried_upsert(&key, &value)]);
            paired.publish(revision, [upsert(&key, &value)]);
        }
        if revision % 3 == 0 {
            tokio::time::advance(Duration::from_millis(11)).await;
        }
    }
    carried.flush();
    paired.flush();
    while mirror.revision() < 40 {
        for batch in subscription.next().await.expect("next") {
            let plain = brindle_fanout::Batch {
                from: batch.from,
                to: batch.to,
                upserts: batch
                    .upserts
                    .iter()
                    .map(|(key, carried)| {
                        assert_eq!(key, carried.own_key(), "sent under its own key");
                        (Key::clone(key), carried.value.clone())
                    })
                    .collect(),
                removed: batch.removed.clone(),
                replaced: Vec::new(),
            };
            mirror.apply_batch(&plain);
        }
    }
    let values = |state: BTreeMap<Key, Arc<Carried>>| -> BTreeMap<Key, String> {
        state
            .into_iter()
            .map(|(key, carried)| (key, carried.value.clone()))
            .collect()
    };
    assert_eq!(values(carried.state()), paired.state());
    assert_eq!(mirror.state(), &paired.state());
    assert_eq!(
        decode(&carried.snapshot().await.expect("snapshot")),
        paired.state()
    );
    // A re-list that keeps a key (an equal value, another allocation), changes another and drops
    // the rest: only the differences are published, as beside keys.
    let before: Vec<Key> = carried.state().into_keys().collect();
    // The values alone (each carries its key).
    let relisted = |(key, value): (&str, &str)| {
        let key = Key::from(key);
        let value = value.to_owned();
        Arc::new(Carried { key, value })
    };
    assert!(carried.reset(41, [("k1", "relisted"), ("a", "a-first")].map(relisted)));
    let batches = subscription.next().await.expect("next");
    let [batch] = batches.as_slice() else {
        panic!("one batch, got {batches:?}");
    };
    let upserted: Vec<&str> = batch.upserts.iter().map(|(key, _)| &**key).collect();
    assert_eq!(upserted, vec!["k1"]);
    let mut removed: Vec<Key> = batch.removed.clone();
    removed.sort();
    let expected: Vec<Key> = before
        .into_iter()
        .filter(|key| !["a", "k1"].contains(&&**key))
        .collect();
    assert_eq!(removed, expected);
    assert_eq!(
        values(carried.state()),
        BTreeMap::from([
            (Key::from("a"), "a-first".to_owned()),
            (Key::from("k1"), "relisted".to_owned()),
        ])
    );
}
