//! A failed gRPC call as the agent's [`CallError`], classified the same way for every service:
//! UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, CANCELLED, UNKNOWN and INTERNAL (the service's or its
//! datastore's failure, not the request's) may work if retried later; every other code is a
//! refusal. The status is kept as the error's source.

use std::fmt;

use crate::core::calls::{CallError, Service};

/// A gRPC status shown as its message (with its code in the debug form and as the source).
#[derive(Debug)]
struct ServiceStatus(tonic::Status);

impl fmt::Display for ServiceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.message())
    }
}

impl std::error::Error for ServiceStatus {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// The [`CallError`] of a call to `service` that ended with `status`.
pub fn call_error(service: Service, status: tonic::Status) -> CallError {
    use tonic::Code;
    let retryable = matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Cancelled
            | Code::Unknown
            | Code::Internal
    );
    let cause = ServiceStatus(status);
    if retryable {
        CallError::unavailable(service, cause)
    } else {
        CallError::refused(service, cause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_classifies_codes_alike_and_keeps_the_status() {
        for service in [Service::Ipam, Service::Policy] {
            let refused = call_error(service, tonic::Status::permission_denied("not yours"));
            assert!(refused.is_refused(), "{refused}");
            assert_eq!(refused.to_string(), format!("{service} refused: not yours"));
            let status = std::error::Error::source(&refused)
                .and_then(std::error::Error::source)
                .and_then(|s| s.downcast_ref::<tonic::Status>())
                .expect("the status is the source");
            assert_eq!(status.code(), tonic::Code::PermissionDenied);
            assert!(!call_error(service, tonic::Status::unavailable("down")).is_refused());
            assert!(!call_error(service, tonic::Status::internal("datastore")).is_refused());
        }
    }
}
