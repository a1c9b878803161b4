//! Why a call from the agent to a control-plane service failed, the same for every service: which
//! service, whether retrying later may work, and the cause kept as the error's source.

use std::fmt;

/// What made a call fail (a gRPC status, a malformed answer).
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// A control-plane service whose calls a CNI operation makes (route-svc is only followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// ipam-svc.
    Ipam,
    /// policy-svc.
    Policy,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ipam => "ipam-svc",
            Self::Policy => "policy-svc",
        })
    }
}

/// Why a call to a service failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The service cannot be reached, is overloaded or failed on its side; retrying later may
    /// work.
    #[error("{service} is unavailable: {cause}")]
    Unavailable {
        /// The service.
        service: Service,
        /// Why.
        #[source]
        cause: Cause,
    },
    /// The service refused the request (bad input, a rule of the cluster, an exhausted pool).
    #[error("{service} refused: {cause}")]
    Refused {
        /// The service.
        service: Service,
        /// Why.
        #[source]
        cause: Cause,
    },
}

impl CallError {
    /// `service` is unavailable because of `cause`.
    pub fn unavailable(service: Service, cause: impl Into<Cause>) -> Self {
        Self::Unavailable {
            service,
            cause: cause.into(),
        }
    }

    /// `service` refused because of `cause`.
    pub fn refused(service: Service, cause: impl Into<Cause>) -> Self {
        Self::Refused {
            service,
            cause: cause.into(),
        }
    }

    /// Whether the service refused (retrying the same request will not help).
    pub fn is_refused(&self) -> bool {
        matches!(self, Self::Refused { .. })
    }
}
