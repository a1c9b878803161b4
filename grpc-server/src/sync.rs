//! The server's side of a fan-out `Sync` stream, shared by route-svc and policy-svc: client
//! messages from `brindle.common.v1`, a [`session`](brindle_fanout::session) per subscriber,
//! snapshots sent in small pieces (subscribers put them together with `brindle-sync`), responses
//! in the service's format ([`Outgoing`]), and the reason a session ended as the stream's final status.

use std::pin::Pin;
use std::sync::Arc;

use brindle_fanout::session::{ClientMessage, ServerMessage, serve};
use brindle_fanout::{Batch, Codec, EncodedSnapshot, Fanout, FanoutError, Storage, SubscriberStatus};
use brindle_metrics::{Metrics, labels};
use brindle_proto::common::v1 as pb;
use brindle_sync::{Outgoing, Payload, unix_ms};
use futures_util::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tonic::{Status, Streaming};

/// A server-streaming response.
pub type ResponseStream<R> = Pin<Box<dyn Stream<Item = Result<R, Status>> + Send>>;

/// A client message as the session reads it. An empty message (a kind this server does not
/// know, from a newer client) counts as a keepalive.
fn client_message(message: pb::SyncClientMessage) -> ClientMessage {
    match message.message {
        Some(pb::sync_client_message::Message::Hello(hello)) => ClientMessage::Hello {
            node: hello.node,
            resume_revision: hello.resume_revision,
        },
        Some(pb::sync_client_message::Message::Ack(ack)) => ClientMessage::Ack {
            revision: ack.revision,
            programmed: ack.programmed,
        },
        Some(pb::sync_client_message::Message::Keepalive(_)) | None => ClientMessage::Keepalive,
    }
}

/// Registers gauges of a service's fan-out, read from `read` (its revision and subscribers) when
/// scraped: the revision, subscribers by state, and the largest lag of a connected subscriber
/// (revisions sent to it and not yet acknowledged as programmed).
pub fn register_fanout_metrics(
    metrics: &Metrics,
    service: &'static str,
    read: impl Fn() -> (u64, Vec<SubscriberStatus>) + Send + Sync + 'static,
) {
    let revision = metrics.gauges("fanout_revision", "Latest revision of the fan-out's state");
    let subscribers = metrics.gauges(
        "fanout_subscribers",
        "Subscribers (nodes) by whether a session is open",
    );
    let lag = metrics.gauges(
        "fanout_max_lag_revisions",
        "Largest number of revisions sent to a connected subscriber and not yet acknowledged",
    );
    metrics.on_scrape(move || {
        let (current, statuses) = read();
        let service_label = labels([("service", service)]);
        revision
            .get_or_create(&service_label)
            .set(i64::try_from(current).unwrap_or(i64::MAX));
        let connected = statuses.iter().filter(|s| s.connected).count();
        for (state, count) in [
            ("connected", connected),
            ("disconnected", statuses.len() - connected),
        ] {
            subscribers
                .get_or_create(&labels([("service", service), ("state", state)]))
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        let max_lag = statuses
            .iter()
            .filter(|s| s.connected)
            .map(|s| s.sent_revision.saturating_sub(s.acked_revision))
            .max()
            .unwrap_or(0);
        lag.get_or_create(&service_label)
            .set(i64::try_from(max_lag).unwrap_or(i64::MAX));
    });
}

/// A keepalive stamped with the current time.
pub fn keepalive_now() -> pb::Keepalive {
    pb::Keepalive {
        sent_unix_ms: unix_ms(std::time::SystemTime::now()),
    }
}

/// The status a subscriber sees when its session ends for `error`.
pub fn status(error: &FanoutError) -> Status {
    let message = error.to_string();
    match error {
        FanoutError::Lagged { .. } | FanoutError::SlowSubscriber { .. } => {
            Status::resource_exhausted(message)
        }
        FanoutError::KeepaliveTimeout { .. } => Status::deadline_exceeded(message),
        FanoutError::Protocol(_) => Status::invalid_argument(message),
        FanoutError::Snapshot(_) => Status::internal(message),
        FanoutError::Closed => Status::unavailable(message),
    }
}

/// Largest piece of a snapshot in one message. Small enough that a stream's encode buffer never
/// grows past its initial size: memory per subscriber does not follow the snapshot's size.
pub const SNAPSHOT_PIECE_BYTES: usize = 4 * 1024;

/// What a `Sync` stream sends, one message each.
#[derive(Debug)]
enum SyncReply<V> {
    /// A piece of the snapshot at `revision`.
    SnapshotPiece {
        /// The snapshot's revision.
        revision: u64,
        /// The piece.
        piece: pb::EncodedSnapshot,
    },
    /// Changes.
    Delta(Arc<Batch<V>>),
    /// Nothing new; the server is alive.
    Keepalive,
}

/// A shared snapshot as messages of at most [`SNAPSHOT_PIECE_BYTES`] of data each (the bytes
/// are shared, not copied, except where a piece spans two of the snapshot's segments), made one
/// at a time as the stream sends them. An empty snapshot is one empty piece.
pub fn snapshot_pieces(snapshot: Arc<EncodedSnapshot>) -> impl Iterator<Item = pb::EncodedSnapshot> {
    let codec = match snapshot.codec {
        Codec::None => pb::Codec::None,
        Codec::Zstd => pb::Codec::Zstd,
    };
    let total = snapshot.data.len();
    (0..total.max(1))
        .step_by(SNAPSHOT_PIECE_BYTES)
        .map(move |offset| pb::EncodedSnapshot {
            codec: codec.into(),
            data: snapshot
                .data
                .slice(offset..(offset + SNAPSHOT_PIECE_BYTES).min(total)),
            entries: snapshot.entries,
            raw_bytes: snapshot.raw_bytes,
            offset: offset as u64,
            total_bytes: total as u64,
        })
}

/// What the session's `message` is sent as: a snapshot as its pieces, anything else as one.
fn replies<V: Send + Sync + 'static>(
    message: ServerMessage<V>,
) -> Box<dyn Iterator<Item = SyncReply<V>> + Send> {
    match message {
        ServerMessage::Snapshot(snapshot) => {
            let revision = snapshot.revision;
            Box::new(snapshot_pieces(snapshot).map(move |piece| SyncReply::SnapshotPiece { revision, piece }))
        }
        ServerMessage::Delta(batch) => Box::new(std::iter::once(SyncReply::Delta(batch))),
        ServerMessage::Keepalive => Box::new(std::iter::once(SyncReply::Keepalive)),
    }
}

/// How long a `Sync` call may take to send its hello before it is ended.
pub const HELLO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads the first message of a `Sync` call — the hello naming the subscriber's node — and gives
/// it back with the rest of the stream, for services whose fan-out depends on the node.
pub async fn read_hello(
    mut incoming: Streaming<pb::SyncClientMessage>,
) -> Result<
    (
        String,
        impl futures_util::Stream<Item = Result<pb::SyncClientMessage, Status>> + Send + Unpin + 'static,
    ),
    Status,
> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, incoming.next())
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!(
                "no hello within {} s of the stream's start",
                HELLO_TIMEOUT.as_secs()
            ))
        })?
        .ok_or_else(|| Status::invalid_argument("the stream ended before its hello"))??;
    let node = match &first.message {
        Some(pb::sync_client_message::Message::Hello(hello)) if !hello.node.is_empty() => hello.node.clone(),
        Some(pb::sync_client_message::Message::Hello(_)) => {
            return Err(Status::invalid_argument("hello.node: required"));
        }
        _ => return Err(Status::invalid_argument("the first message must be a hello")),
    };
    Ok((node, futures_util::stream::iter([Ok(first)]).chain(incoming)))
}

/// A reply as the service's response message.
fn respond<W: Outgoing>(reply: SyncReply<W::Value>) -> W::Response {
    match reply {
        SyncReply::SnapshotPiece { revision, piece } => W::response(revision, Payload::Snapshot(piece)),
        SyncReply::Delta(batch) => W::response(batch.to, Payload::Delta(W::delta(&batch))),
        SyncReply::Keepalive => W::response(0, Payload::Keepalive(keepalive_now())),
    }
}

/// Serves one `Sync` call: runs the session on its own task and streams what it sends as the
/// service's responses; ends with the session's reason.
pub fn serve_sync<W, St, S>(fanout: Fanout<W::Value, St>, incoming: S) -> ResponseStream<W::Response>
where
    W: Outgoing,
    St: Storage<W::Value>,
    W::Response: Send + 'static,
    S: futures_util::Stream<Item = Result<pb::SyncClientMessage, Status>> + Send + Unpin + 'static,
{
    let (outgoing, mut queued) = mpsc::channel(fanout.config().queue_messages.max(1));
    let (ended, reason) = oneshot::channel();
    tokio::spawn(async move {
        let incoming = incoming.map(|message| message.map(client_message));
        let result = serve(&fanout, incoming, outgoing).await;
        if let Err(error) = &result {
            tracing::info!(%error, "sync session ended");
        }
        let _ = ended.send(result);
    });
    let messages = futures_util::stream::poll_fn(move |cx| queued.poll_recv(cx))
        .flat_map(|message| futures_util::stream::iter(replies(message)))
        .map(|reply| Ok(respond::<W>(reply)));
    let end = futures_util::stream::once(reason).filter_map(|result| async move {
        match result {
            Ok(Err(error)) => Some(Err(status(&error))),
            _ => None,
        }
    });
    Box::pin(messages.chain(end))
}

#[cfg(test)]
mod tests {
    use brindle_fanout::MAX_SNAPSHOT_BYTES;
    use brindle_sync::{PieceError, SnapshotAssembler};

    use super::*;

    fn snapshot(len: usize) -> EncodedSnapshot {
        EncodedSnapshot {
            revision: 7,
            codec: Codec::Zstd,
            data: (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>().into(),
            entries: 3,
            raw_bytes: 99,
        }
    }

    #[test]
    fn a_large_snapshot_travels_in_small_pieces_and_is_put_together_again() {
        let whole = snapshot(3 * SNAPSHOT_PIECE_BYTES + 10);
        let pieces: Vec<_> = snapshot_pieces(Arc::new(whole.clone())).collect();
        assert_eq!(pieces.len(), 4);
        assert!(pieces.iter().all(|p| p.data.len() <= SNAPSHOT_PIECE_BYTES));
        let mut assembler = SnapshotAssembler::default();
        let mut done = None;
        for piece in pieces {
            assert!(done.is_none(), "whole only after the last piece");
            done = assembler.add(7, piece).expect("in order");
        }
        assert_eq!(done, Some(whole));
    }

    #[test]
    fn an_empty_snapshot_is_one_piece_and_a_whole_one_from_an_older_server_is_accepted() {
        let empty = snapshot(0);
        let pieces: Vec<_> = snapshot_pieces(Arc::new(empty.clone())).collect();
        assert_eq!(pieces.len(), 1);
        let mut assembler = SnapshotAssembler::default();
        assert_eq!(assembler.add(7, pieces[0].clone()).expect("empty"), Some(empty));
        let whole = snapshot(10 * SNAPSHOT_PIECE_BYTES);
        let mut unsplit = snapshot_pieces(Arc::new(whole.clone())).next().expect("a piece");
        unsplit.data = whole.data.contiguous();
        unsplit.total_bytes = 0;
        assert_eq!(assembler.add(7, unsplit).expect("whole"), Some(whole));
    }

    #[test]
    fn pieces_out_of_order_or_from_another_snapshot_are_refused_and_the_next_snapshot_starts_clean() {
        let pieces: Vec<_> = snapshot_pieces(Arc::new(snapshot(2 * SNAPSHOT_PIECE_BYTES))).collect();
        let mut assembler = SnapshotAssembler::default();
        assert!(matches!(
            assembler.add(7, pieces[1].clone()),
            Err(PieceError::OutOfOrder { offset, expected: 0, .. }) if offset == SNAPSHOT_PIECE_BYTES as u64
        ));
        assembler.add(7, pieces[0].clone()).expect("first");
        assert!(matches!(
            assembler.add(8, pieces[1].clone()),
            Err(PieceError::OutOfOrder {
                revision: 8,
                expected_revision: 7,
                ..
            })
        ));
        let mut huge = pieces[0].clone();
        huge.total_bytes = MAX_SNAPSHOT_BYTES + 1;
        assert!(matches!(assembler.add(7, huge), Err(PieceError::Size(_))));
        assembler
            .add(7, pieces[0].clone())
            .expect("a new snapshot from the start");
        assert!(assembler.add(7, pieces[1].clone()).expect("second").is_some());
    }
}
