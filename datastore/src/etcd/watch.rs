//! A resuming etcd watch: re-establishes the watch after stream errors, connection loss or an etcd
//! restart from the last delivered revision, with backoff; ends with `Compacted` when history is gone.

use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{convert_kv, map_error, to_etcd_revision, to_revision};
use crate::error::StoreError;
use crate::store::WatchStream;
use crate::types::{EventKind, Revision, WatchBatch, WatchEvent, prefix_end};
use brindle_backoff::Backoff;

/// Batches buffered between the watch task and its consumer.
const WATCH_BUFFER: usize = 64;
/// Largest watch response accepted.
const MAX_WATCH_RESPONSE_BYTES: usize = 256 << 20;

/// Why one watch attempt ended.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    /// The connection or stream failed; retry from the last delivered revision.
    #[error("watch interrupted: {0}")]
    Retryable(StoreError),
    /// The watch cannot continue (compacted history, undecodable data); report and stop.
    #[error("watch failed: {0}")]
    Fatal(StoreError),
    /// The consumer dropped the stream.
    #[error("watch consumer gone")]
    ConsumerGone,
}

/// Starts a watch task for `prefix` after revision `after`.
pub(super) fn watch(client: Client, prefix: String, after: Revision) -> WatchStream {
    let (out, stream) = mpsc::channel(WATCH_BUFFER);
    tokio::spawn(async move {
        let mut last = after;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match attempt(&client, &prefix, &mut last, &out, &mut backoff).await {
                Err(AttemptError::ConsumerGone) => return,
                Err(AttemptError::Fatal(error)) => {
                    let _ = out.send(Err(error)).await;
                    return;
                }
                Err(AttemptError::Retryable(error)) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%prefix, after = last, %error, ?delay, "etcd watch interrupted; resuming");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = out.closed() => return,
                    }
                }
                Ok(()) => return,
            }
        }
    });
    Box::pin(ReceiverStream::new(stream))
}

/// One watch stream of the changes after `last`; advances `last` as batches are delivered.
///
/// It starts AT `last` (its events are skipped), not after it: compaction at revision C removes a
/// tombstone at C, so a watch starting at C would silently miss that delete, while one starting
/// before C is told the history is compacted and the caller re-lists.
async fn attempt(
    client: &Client,
    prefix: &str,
    last: &mut Revision,
    out: &mpsc::Sender<Result<WatchBatch, StoreError>>,
    backoff: &mut Backoff,
) -> Result<(), AttemptError> {
    let start = to_etcd_revision((*last).max(1)).map_err(AttemptError::Fatal)?;
    let end = prefix_end(prefix).unwrap_or_else(|| vec![0]);
    let options = WatchOptions::new()
        .with_range(end)
        .with_start_revision(start)
        .with_progress_notify();
    let mut watch_client = client
        .watch_client()
        .max_decoding_message_size(MAX_WATCH_RESPONSE_BYTES);
    let mut stream = tokio::select! {
        stream = watch_client.watch(prefix, Some(options)) => {
            stream.map_err(|e| AttemptError::Retryable(map_error(e)))?
        }
        () = out.closed() => return Err(AttemptError::ConsumerGone),
    };
    loop {
        let message = tokio::select! {
            message = stream.message() => message,
            () = out.closed() => return Err(AttemptError::ConsumerGone),
        };
        let Some(response) = message.map_err(|e| AttemptError::Retryable(map_error(e)))? else {
            return Err(AttemptError::Retryable(StoreError::Unavailable(
                "etcd closed the watch stream".to_owned(),
            )));
        };
        if response.compact_revision() > 0 {
            return Err(AttemptError::Fatal(StoreError::Compacted {
                after: *last,
                earliest: to_revision(response.compact_revision()),
            }));
        }
        if response.canceled() {
            return Err(AttemptError::Retryable(StoreError::Unavailable(format!(
                "etcd canceled the watch: {}",
                response.cancel_reason()
            ))));
        }
        backoff.reset();
        for batch in group_by_revision(response.events()).map_err(AttemptError::Fatal)? {
            if batch.revision <= *last {
                continue;
            }
            *last = batch.revision;
            out.send(Ok(batch))
                .await
                .map_err(|_| AttemptError::ConsumerGone)?;
        }
    }
}

/// Splits a watch response's events into one batch per revision, keeping their order.
fn group_by_revision(events: &[etcd_client::Event]) -> Result<Vec<WatchBatch>, StoreError> {
    let mut batches: Vec<WatchBatch> = Vec::new();
    for event in events {
        let Some(kv) = event.kv() else { continue };
        let kv = convert_kv(kv)?;
        let kind = match event.event_type() {
            EventType::Put => EventKind::Put,
            EventType::Delete => EventKind::Delete,
        };
        let watch_event = WatchEvent {
            kind,
            key: kv.key,
            value: if kind == EventKind::Put {
                kv.value
            } else {
                Vec::new()
            },
        };
        match batches.last_mut() {
            Some(batch) if batch.revision == kv.mod_revision => batch.events.push(watch_event),
            _ => batches.push(WatchBatch {
                revision: kv.mod_revision,
                events: vec![watch_event],
            }),
        }
    }
    Ok(batches)
}
