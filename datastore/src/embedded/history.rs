//! In-memory watch history of the embedded store and the per-watch task that replays it and
//! follows live commits, recovering from lag without skipping or repeating a revision.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::error::StoreError;
use crate::store::WatchStream;
use crate::types::{Revision, WatchBatch};

/// Most batches kept for resuming watches.
const MAX_HISTORY_BATCHES: usize = 100_000;
/// Most value bytes kept for resuming watches.
const MAX_HISTORY_BYTES: usize = 64 << 20;
/// Live batches buffered per subscriber before it must catch up from history.
const LIVE_CAPACITY: usize = 1024;
/// Batches buffered between a watch task and its consumer.
const WATCH_BUFFER: usize = 64;

/// Committed batches in revision order, and the broadcast of new ones.
pub(super) struct WatchHub {
    history: Mutex<History>,
    live: broadcast::Sender<Arc<WatchBatch>>,
}

struct History {
    batches: VecDeque<Arc<WatchBatch>>,
    bytes: usize,
    /// Every batch with a revision at or above this one is in `batches`.
    earliest: Revision,
    current: Revision,
}

fn batch_bytes(batch: &WatchBatch) -> usize {
    batch.events.iter().map(|e| e.key.len() + e.value.len()).sum()
}

impl WatchHub {
    /// A hub for a store opened at `revision`; nothing before it can be replayed.
    pub(super) fn new(revision: Revision) -> Self {
        Self {
            history: Mutex::new(History {
                batches: VecDeque::new(),
                bytes: 0,
                earliest: revision + 1,
                current: revision,
            }),
            live: broadcast::channel(LIVE_CAPACITY).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, History> {
        self.history
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a committed batch and sends it to live subscribers (called in revision order).
    pub(super) fn publish(&self, batch: WatchBatch) {
        let batch = Arc::new(batch);
        let mut history = self.lock();
        history.current = batch.revision;
        history.bytes += batch_bytes(&batch);
        history.batches.push_back(Arc::clone(&batch));
        while history.batches.len() > MAX_HISTORY_BATCHES || history.bytes > MAX_HISTORY_BYTES {
            let Some(oldest) = history.batches.pop_front() else {
                break;
            };
            history.bytes -= batch_bytes(&oldest);
            history.earliest = oldest.revision + 1;
        }
        // No receiver is fine: nobody is watching.
        let _ = self.live.send(batch);
    }

    /// Drops history before `revision`.
    pub(super) fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let mut history = self.lock();
        if revision > history.current {
            return Err(StoreError::InvalidRequest(format!(
                "cannot compact at revision {revision}: it is in the future (current revision {})",
                history.current
            )));
        }
        while history.batches.front().is_some_and(|b| b.revision < revision) {
            if let Some(oldest) = history.batches.pop_front() {
                history.bytes -= batch_bytes(&oldest);
            }
        }
        history.earliest = history.earliest.max(revision);
        Ok(())
    }

    /// The kept batches after `after` under `prefix`, and a live subscription that continues
    /// exactly where they end (both taken under the history lock).
    fn catch_up(
        &self,
        prefix: &str,
        after: Revision,
    ) -> Result<(Vec<WatchBatch>, broadcast::Receiver<Arc<WatchBatch>>), StoreError> {
        let history = self.lock();
        if after + 1 < history.earliest && after < history.current {
            return Err(StoreError::Compacted {
                after,
                earliest: history.earliest,
            });
        }
        let missed = history
            .batches
            .iter()
            .filter(|b| b.revision > after)
            .filter_map(|b| filter(b, prefix))
            .collect();
        Ok((missed, self.live.subscribe()))
    }
}

/// The part of `batch` under `prefix`, if any.
fn filter(batch: &WatchBatch, prefix: &str) -> Option<WatchBatch> {
    let events: Vec<_> = batch
        .events
        .iter()
        .filter(|e| e.key.starts_with(prefix))
        .cloned()
        .collect();
    (!events.is_empty()).then_some(WatchBatch {
        revision: batch.revision,
        events,
    })
}

/// Starts a watch task for `prefix` after revision `after`.
pub(super) fn watch(hub: Arc<WatchHub>, prefix: String, after: Revision) -> WatchStream {
    let (out, stream) = mpsc::channel(WATCH_BUFFER);
    tokio::spawn(async move {
        if let Err(error) = follow(&hub, &prefix, after, &out).await {
            let _ = out.send(Err(error)).await;
        }
    });
    Box::pin(ReceiverStream::new(stream))
}

/// Sends every batch after `after` to `out` until the consumer or the store goes away.
async fn follow(
    hub: &WatchHub,
    prefix: &str,
    after: Revision,
    out: &mpsc::Sender<Result<WatchBatch, StoreError>>,
) -> Result<(), StoreError> {
    let mut last = after;
    'resubscribe: loop {
        let (missed, mut live) = hub.catch_up(prefix, last)?;
        for batch in missed {
            last = batch.revision;
            if out.send(Ok(batch)).await.is_err() {
                return Ok(());
            }
        }
        loop {
            match live.recv().await {
                Ok(batch) if batch.revision > last => {
                    last = batch.revision;
                    if let Some(batch) = filter(&batch, prefix)
                        && out.send(Ok(batch)).await.is_err()
                    {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => continue 'resubscribe,
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }
}
