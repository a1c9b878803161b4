//! The error every [`Store`](crate::Store) operation returns.

use crate::types::{LeaseId, Revision};

/// Why a datastore operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A compare of a transaction did not hold; nothing was written. Re-read and retry.
    #[error("transaction conflict: compare on key {key:?} failed")]
    Conflict {
        /// Key of the first compare that failed.
        key: String,
    },
    /// The events after `after` are no longer kept; re-list and watch from the new revision.
    #[error("watch history after revision {after} is compacted; earliest watchable revision is {earliest}")]
    Compacted {
        /// Revision the watch asked to resume after.
        after: Revision,
        /// Earliest revision a watch may start at now.
        earliest: Revision,
    },
    /// The request is larger than the datastore accepts (etcd's request limit, on both backends).
    #[error("request of about {size} bytes exceeds the datastore limit of {limit} bytes")]
    TooLarge {
        /// Estimated encoded size of the request.
        size: usize,
        /// The limit ([`MAX_REQUEST_BYTES`](crate::MAX_REQUEST_BYTES)).
        limit: usize,
    },
    /// The lease does not exist (never granted, revoked or expired).
    #[error("lease {0} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    /// The request itself is malformed (empty key, duplicate key, too many operations, …).
    #[error("invalid datastore request: {0}")]
    InvalidRequest(String),
    /// The backend cannot be reached right now; retrying later may succeed.
    #[error("datastore unavailable: {0}")]
    Unavailable(String),
    /// The backend failed in a way retrying will not fix (I/O error, corrupt file, protocol error).
    #[error("datastore failure: {context}: {source}")]
    Backend {
        /// What was being done.
        context: &'static str,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    /// Whether the same operation may succeed if retried (after a re-read for conflicts).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Conflict { .. } | Self::Unavailable(_))
    }

    pub(crate) fn backend(
        context: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Backend {
            context,
            source: source.into(),
        }
    }
}
