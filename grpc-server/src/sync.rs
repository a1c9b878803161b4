//! The gRPC side of a fan-out `Sync` stream, shared by route-svc and policy-svc: client messages
//! from `brindle.common.v1`, a [`session`](brindle_fanout::session) per subscriber, snapshots
//! sent in small pieces (and put together again by subscribers), and the reason a session ended
//! as the stream's final status.

use std::pin::Pin;
use std::sync::Arc;

use brindle_fanout::session::{ClientMessage, ServerMessage, serve};
use std::collections::BTreeMap;

use brindle_fanout::{
    Batch, Codec, EncodedSnapshot, Fanout, FanoutError, MAX_SNAPSHOT_BYTES, Mirror, SubscriberStatus,
};
use brindle_metrics::{Metrics, labels};
use brindle_proto::common::v1 as pb;
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

/// Milliseconds since the unix epoch (0 before it), as sync messages carry times.
pub fn unix_ms(time: std::time::SystemTime) -> i64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
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
        FanoutError::Closed => Status::unavailable(message),
    }
}

/// Largest piece of a snapshot in one message. Small enough that a stream's encode buffer never
/// grows past its initial size: memory per subscriber does not follow the snapshot's size.
pub const SNAPSHOT_PIECE_BYTES: usize = 4 * 1024;

/// A field of a received message that does not convert.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    /// The field, e.g. `node.addresses`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl InvalidField {
    /// `field` is wrong because of `reason`.
    pub fn new(field: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self {
            field: field.into(),
            reason: reason.to_string(),
        }
    }
}

/// What a subscriber received on a `Sync` stream, with the service's delta already converted.
#[derive(Debug)]
pub enum Received<V> {
    /// A piece of a snapshot.
    SnapshotPiece(pb::EncodedSnapshot),
    /// Changes.
    Delta(Batch<V>),
    /// A keepalive (or a message kind this subscriber does not know).
    Nothing,
}

/// Decodes a whole (uncompressed) snapshot into a service's state.
pub type StateDecoder<V> = fn(&[u8]) -> Result<BTreeMap<String, V>, InvalidField>;

/// Applies one received message at `revision` to a subscriber's mirror: a snapshot (once
/// `pieces` has all of it, decoded by `decode_state`) replaces it, a delta updates it; `false`
/// when there is nothing to apply yet (a keepalive, a piece of a snapshot).
pub fn apply_received<V: Clone + PartialEq>(
    mirror: &mut Mirror<V>,
    pieces: &mut SnapshotAssembler,
    revision: u64,
    received: Received<V>,
    decode_state: StateDecoder<V>,
) -> Result<bool, InvalidField> {
    match received {
        Received::SnapshotPiece(piece) => {
            let Some(snapshot) = pieces
                .add(revision, piece)
                .map_err(|e| InvalidField::new("snapshot", e))?
            else {
                return Ok(false);
            };
            let raw = snapshot
                .decompress()
                .map_err(|e| InvalidField::new("snapshot.data", e))?;
            mirror.apply_snapshot(revision, decode_state(&raw)?);
            Ok(true)
        }
        Received::Delta(batch) => {
            mirror.apply_batch(&batch);
            Ok(true)
        }
        Received::Nothing => Ok(false),
    }
}

/// What a `Sync` stream sends, one message each.
#[derive(Debug)]
pub enum SyncReply<V> {
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
/// are shared, not copied), made one at a time as the stream sends them. An empty snapshot is one
/// empty piece.
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

/// Why snapshot pieces cannot be put together.
#[derive(Debug, thiserror::Error)]
pub enum PieceError {
    /// The codec is not one this subscriber knows.
    #[error("snapshot.codec: unknown codec {0}")]
    UnknownCodec(i32),
    /// A piece does not continue where the previous one ended, or belongs to another snapshot
    /// (another revision, codec or size).
    #[error(
        "snapshot.offset: piece at {offset} of revision {revision}, expected {expected} of revision {expected_revision}"
    )]
    OutOfOrder {
        /// The piece's offset.
        offset: u64,
        /// Its revision.
        revision: u64,
        /// The offset expected.
        expected: u64,
        /// The revision expected.
        expected_revision: u64,
    },
    /// The pieces add up to more than the snapshot's stated size, or more than is allowed.
    #[error("snapshot.total_bytes: {0}")]
    Size(String),
}

/// Puts a snapshot's pieces together on the subscriber's side.
#[derive(Debug, Default)]
pub struct SnapshotAssembler {
    pending: Option<PendingSnapshot>,
}

/// The snapshot being received: what its first piece said, and the bytes so far.
#[derive(Debug)]
struct PendingSnapshot {
    revision: u64,
    codec: i32,
    total: u64,
    entries: u64,
    raw_bytes: u64,
    data: Vec<u8>,
}

impl SnapshotAssembler {
    /// Adds a piece of the snapshot at `revision`; returns the snapshot once it is whole. A piece
    /// that does not continue the snapshot being received (offset, revision, codec, sizes) is
    /// refused, and the next snapshot starts from scratch.
    pub fn add(
        &mut self,
        revision: u64,
        piece: pb::EncodedSnapshot,
    ) -> Result<Option<EncodedSnapshot>, PieceError> {
        let codec = match pb::Codec::try_from(piece.codec) {
            Ok(pb::Codec::Zstd) => Codec::Zstd,
            Ok(pb::Codec::None | pb::Codec::Unspecified) => Codec::None,
            Err(_) => return Err(PieceError::UnknownCodec(piece.codec)),
        };
        // A whole snapshot in one message (total_bytes 0, from servers that do not split).
        let total = if piece.total_bytes == 0 {
            piece.data.len() as u64
        } else {
            piece.total_bytes
        };
        if total > MAX_SNAPSHOT_BYTES {
            self.pending = None;
            return Err(PieceError::Size(format!(
                "{total} bytes, more than the {MAX_SNAPSHOT_BYTES} allowed"
            )));
        }
        let pending = self.pending.take().unwrap_or(PendingSnapshot {
            revision,
            codec: piece.codec,
            total,
            entries: piece.entries,
            raw_bytes: piece.raw_bytes,
            data: Vec::new(),
        });
        let expected = pending.data.len() as u64;
        let continues = piece.offset == expected
            && revision == pending.revision
            && (piece.codec, total, piece.entries, piece.raw_bytes)
                == (pending.codec, pending.total, pending.entries, pending.raw_bytes);
        if !continues {
            return Err(PieceError::OutOfOrder {
                offset: piece.offset,
                revision,
                expected,
                expected_revision: pending.revision,
            });
        }
        let mut pending = pending;
        pending.data.extend_from_slice(&piece.data);
        let received = pending.data.len() as u64;
        if received > total {
            return Err(PieceError::Size(format!(
                "pieces hold {received} bytes, the snapshot {total}"
            )));
        }
        if received < total {
            self.pending = Some(pending);
            return Ok(None);
        }
        Ok(Some(EncodedSnapshot {
            revision,
            codec,
            data: pending.data.into(),
            entries: pending.entries,
            raw_bytes: pending.raw_bytes,
        }))
    }
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

/// Serves one `Sync` call: runs the session on its own task and streams what it sends, each
/// reply turned into the service's response by `respond`; ends with the session's reason.
pub fn serve_sync<V, R, S>(
    fanout: Fanout<V>,
    incoming: S,
    respond: fn(SyncReply<V>) -> R,
) -> ResponseStream<R>
where
    V: Clone + PartialEq + Send + Sync + 'static,
    R: Send + 'static,
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
        .map(move |reply| Ok(respond(reply)));
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
        unsplit.data = whole.data.clone();
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
