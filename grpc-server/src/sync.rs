//! The gRPC side of a fan-out `Sync` stream, shared by route-svc and policy-svc: client messages
//! from `brindle.common.v1`, a [`session`](brindle_fanout::session) per subscriber, and the reason
//! a session ended as the stream's final status.

use std::pin::Pin;

use brindle_fanout::session::{ClientMessage, ServerMessage, serve};
use brindle_fanout::{Codec, EncodedSnapshot, Fanout, FanoutError};
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

/// A shared snapshot as a message (the bytes are shared, not copied).
pub fn snapshot_to_proto(snapshot: &EncodedSnapshot) -> pb::EncodedSnapshot {
    pb::EncodedSnapshot {
        codec: match snapshot.codec {
            Codec::None => pb::Codec::None,
            Codec::Zstd => pb::Codec::Zstd,
        }
        .into(),
        data: snapshot.data.clone(),
        entries: snapshot.entries,
        raw_bytes: snapshot.raw_bytes,
    }
}

/// A snapshot message as the subscriber decompresses it; `None` for an unknown codec.
pub fn snapshot_from_proto(revision: u64, snapshot: pb::EncodedSnapshot) -> Option<EncodedSnapshot> {
    let codec = match pb::Codec::try_from(snapshot.codec) {
        Ok(pb::Codec::Zstd) => Codec::Zstd,
        Ok(pb::Codec::None | pb::Codec::Unspecified) => Codec::None,
        Err(_) => return None,
    };
    Some(EncodedSnapshot {
        revision,
        codec,
        data: snapshot.data,
        entries: snapshot.entries,
        raw_bytes: snapshot.raw_bytes,
    })
}

/// Serves one `Sync` call: runs the session on its own task and streams what it sends, each
/// message turned into the service's response by `respond`; ends with the session's reason.
pub fn serve_sync<V, R>(
    fanout: Fanout<V>,
    incoming: Streaming<pb::SyncClientMessage>,
    respond: fn(ServerMessage<V>) -> R,
) -> ResponseStream<R>
where
    V: Clone + PartialEq + Send + Sync + 'static,
    R: Send + 'static,
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
    let messages = futures_util::stream::poll_fn(move |cx| queued.poll_recv(cx)).map(move |m| Ok(respond(m)));
    let end = futures_util::stream::once(reason).filter_map(|result| async move {
        match result {
            Ok(Err(error)) => Some(Err(status(&error))),
            _ => None,
        }
    });
    Box::pin(messages.chain(end))
}
