//! Why a subscription or session ended.

use std::sync::Arc;

/// Why a subscriber was cut off.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FanoutError {
    /// The subscriber's position fell out of the history: it was too far behind.
    #[error("subscriber at revision {cursor} fell behind the history (oldest kept: {oldest}); resync")]
    Lagged {
        /// Last revision the subscriber was given.
        cursor: u64,
        /// Oldest revision the history can still resume from.
        oldest: u64,
    },
    /// The subscriber did not read its queue for the send timeout.
    #[error("subscriber stopped reading for {seconds:.1} s; resync")]
    SlowSubscriber {
        /// How long the session waited.
        seconds: f64,
    },
    /// The subscriber said nothing for the keepalive timeout.
    #[error("no message from the subscriber for {seconds:.1} s")]
    KeepaliveTimeout {
        /// The timeout.
        seconds: f64,
    },
    /// The subscriber broke the protocol (e.g. did not start with hello).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The snapshot could be sent neither compressed nor uncompressed.
    #[error("encoding the snapshot failed")]
    Snapshot(#[source] Arc<std::io::Error>),
    /// The fan-out shut down.
    #[error("the fan-out is shutting down")]
    Closed,
}
