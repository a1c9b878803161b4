//! Errors of policy-svc's logic.

use brindle_datastore::StoreError;

/// Why a policy-svc operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A field of the input is invalid; `field` is its path (e.g. `spec.ingress[0].ports[1].endPort`).
    #[error("{field}: {reason}")]
    Invalid {
        /// Path of the field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The named object does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// Kind of object (`namespace`, `endpoint`, `policy`).
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// A stored record does not decode.
    #[error("stored record {key:?} is corrupt: {reason}")]
    Corrupt {
        /// Datastore key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A stored policy decodes but is not enforced: its id reads as another kind of policy's
    /// (stored before such ids were refused).
    #[error("stored policy {key:?} is not enforced: {reason}")]
    NotEnforced {
        /// Datastore key.
        key: String,
        /// Why, and what to do.
        reason: String,
    },
    /// The object belongs to another origin (Kubernetes or `brindle apply`), which alone changes it.
    #[error("{object} is owned by {owner}; change it there")]
    OwnedElsewhere {
        /// Kind and name of the object.
        object: String,
        /// Who owns it.
        owner: &'static str,
    },
    /// The caller may not do this (a node claiming what is not its own).
    #[error("{0}")]
    Forbidden(String),
    /// Another writer kept changing the record; the write was given up after retries.
    #[error("{0:?} kept changing under concurrent writers; try again")]
    Contended(String),
    /// The datastore failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An [`PolicyError::Invalid`] for `field`.
pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> PolicyError {
    PolicyError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}
