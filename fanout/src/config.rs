//! Tunables of a fan-out: batching, history, keepalives, per-subscriber buffering.

use std::time::Duration;

/// How a [`Fanout`](crate::Fanout) batches, remembers and talks.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    /// A batch is flushed once it holds this many keys (changes of one revision are never split).
    pub max_batch_entries: usize,
    /// ... or this long after its first change.
    pub max_batch_delay: Duration,
    /// Most keys kept in the history of batches, besides the newest batch; a subscriber whose
    /// position falls out of it is evicted and must resync, and a resume from before it gets a
    /// snapshot.
    pub history_entries: usize,
    /// Keys the history may hold whatever the state's size. Beyond this, the history holds no
    /// more keys than the state (replaying a longer history would cost more than a snapshot), so
    /// many small fan-outs — one per node — cannot each fill `history_entries` under churn. The
    /// newest batch is kept whatever its size.
    pub history_floor_entries: usize,
    /// The service sends a batch's values as what changed of the values they replaced (a value
    /// standing for many entries on the wire: policy-svc's set members): batches keep the values
    /// they replaced ([`Batch::replaced`](crate::Batch::replaced)), and a subscriber resumes only
    /// from a revision where a batch starts or ends, where what it holds is what they replaced —
    /// from inside a batch (another replica batched differently) it gets a snapshot.
    pub deltas_from_replaced: bool,
    /// Snapshots at least this big (raw bytes) are zstd-compressed.
    pub compress_from_bytes: usize,
    /// A session sends a keepalive after this long without sending anything.
    pub keepalive_interval: Duration,
    /// A session ends when the subscriber has said nothing (ack or keepalive) for this long.
    pub keepalive_timeout: Duration,
    /// Messages queued toward one subscriber; a full queue for [`send_timeout`](Self::send_timeout)
    /// evicts it (bounds per-subscriber memory).
    pub queue_messages: usize,
    /// How long a session waits for room in a subscriber's queue.
    pub send_timeout: Duration,
    /// How long a subscriber resuming from a revision this replica has not reached yet waits for
    /// it before it is given a snapshot instead.
    pub resume_wait: Duration,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        Self {
            max_batch_entries: 100,
            max_batch_delay: Duration::from_millis(10),
            history_entries: 100_000,
            history_floor_entries: 1024,
            deltas_from_replaced: false,
            compress_from_bytes: 4096,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(30),
            queue_messages: 8,
            send_timeout: Duration::from_secs(30),
            resume_wait: Duration::from_secs(5),
        }
    }
}

impl FanoutConfig {
    /// Most keys the history keeps next to a state of `state_keys` keys, its newest batch aside.
    pub(crate) fn history_limit(&self, state_keys: usize) -> usize {
        self.history_entries
            .min(state_keys.max(self.history_floor_entries))
    }
}
