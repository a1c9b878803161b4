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
