//! Errors of IPAM operations; the gRPC layer maps each to a status code.

use brindle_datastore::StoreError;

/// Why an IPAM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// A request field is missing or malformed; `field` names it.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The offending field, e.g. `pool.cidr`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The named object does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The object exists already, or the address is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is valid but the current state forbids it (reserved address, strict affinity,
    /// pool still in use).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A handle of another node: its addresses are that node's alone.
    #[error("handle {handle:?} belongs to node {owner:?}; node {node:?} may not use or extend it")]
    OtherNodesHandle {
        /// The handle.
        handle: String,
        /// The node that holds it.
        owner: String,
        /// The node asking.
        node: String,
    },
    /// The node holds as many addresses as `max_blocks_per_host` allows (its own blocks are full
    /// and borrowing more would take it past that many blocks' worth).
    #[error(
        "node {node:?} holds max_blocks_per_host ({max_blocks}) blocks' worth of addresses, borrowed ones included; release some or raise maxBlocksPerHost"
    )]
    NodeLimit {
        /// The node.
        node: String,
        /// The limit.
        max_blocks: u32,
    },
    /// No eligible pool has a free address.
    #[error("no free {family} address for node {node:?}; pools tried: [{}]", pools_tried.join(", "))]
    Exhausted {
        /// "IPv4" or "IPv6".
        family: &'static str,
        /// The node asking.
        node: String,
        /// Names of the pools that were eligible and full.
        pools_tried: Vec<String>,
    },
    /// The node has too many requests waiting; the caller may retry.
    #[error("node {node:?} has {queued} IPAM requests waiting; retry later")]
    Overloaded {
        /// The node.
        node: String,
        /// Requests a node may have waiting.
        queued: usize,
    },
    /// Concurrent writers kept winning; the caller may retry.
    #[error("gave up after {attempts} conflicting attempts; retry")]
    Contention {
        /// Attempts made.
        attempts: u32,
    },
    /// A stored record does not decode.
    #[error("stored record {key} is corrupt: {reason}")]
    Corrupt {
        /// Its key.
        key: String,
        /// The decoding error.
        reason: String,
    },
    /// The datastore failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl IpamError {
    /// An [`IpamError::InvalidArgument`] for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<ipam_api::DecodeError> for IpamError {
    fn from(error: ipam_api::DecodeError) -> Self {
        Self::Corrupt {
            key: error.key,
            reason: error.reason,
        }
    }
}
