//! Node identities without hand-issued certificates: an administrator makes a join token for a
//! node ([`JoinTokens`]), or on Kubernetes the agent pod's ServiceAccount token proves its node
//! ([`ServiceAccountTokens`]); the agent trades it for a short-lived client certificate signed
//! from its own key's CSR ([`NodeSigner`]), and renews that certificate with itself before it
//! expires. [`grpc`] serves both: `Identity` on the main port, `Bootstrap` alone on a port
//! that takes callers without certificates.

pub mod grpc;
mod join_tokens;
mod service_account;
mod signer;
mod signing_args;

pub use join_tokens::{JoinTokens, MAX_TOKEN_TTL};
pub use service_account::{AUDIENCE, ServiceAccountTokens};
pub use signer::{NodeSigner, SignedCertificate};
pub use signing_args::{Signing, SigningArgs};

/// Why an identity could not be given.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A request field is malformed.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The join token or ServiceAccount token is unknown, expired, wrong, or another node's.
    #[error("token refused: {0}")]
    TokenRefused(String),
    /// The CA could not be read or could not sign.
    #[error("the signing CA: {0}")]
    Signing(String),
    /// The Kubernetes API could not be asked (a TokenReview, the pod).
    #[error("the Kubernetes API: {0}")]
    Kubernetes(#[source] kube::Error),
    /// The Kubernetes API could not be found (no kubeconfig, not in a pod).
    #[error("finding the Kubernetes API: {what}")]
    KubernetesApi {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The datastore failed.
    #[error(transparent)]
    Store(#[from] brindle_datastore::StoreError),
    /// A stored join token does not decode.
    #[error("join token {id:?} is corrupt: {reason}")]
    Corrupt {
        /// The token's id.
        id: String,
        /// Why it does not decode.
        reason: String,
    },
}
