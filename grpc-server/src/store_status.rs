//! The status code of a datastore failure, the same in every service: a request the datastore
//! refuses as too large is `RESOURCE_EXHAUSTED` naming the limit, one it refuses as malformed is
//! `INVALID_ARGUMENT`, an unreachable or contended datastore `UNAVAILABLE`, the rest `INTERNAL`.

use brindle_datastore::StoreError;
use tonic::Status;

/// The status for `error`, with `message` (the service's own wording of it).
pub fn store_status(error: &StoreError, message: String) -> Status {
    match error {
        StoreError::TooLarge { .. } => Status::resource_exhausted(message),
        StoreError::InvalidRequest(_) => Status::invalid_argument(message),
        StoreError::Unavailable(_) | StoreError::Conflict { .. } => Status::unavailable(message),
        StoreError::Compacted { .. } | StoreError::LeaseNotFound(_) | StoreError::Backend { .. } => {
            Status::internal(message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_name_themselves_and_are_not_internal() {
        let too_large = StoreError::TooLarge {
            size: 2_000_000,
            limit: 1_572_864,
        };
        let status = store_status(&too_large, too_large.to_string());
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("limit of 1572864 bytes"), "{status:?}");
        let too_many = StoreError::InvalidRequest("at most 128 of each".into());
        assert_eq!(
            store_status(&too_many, too_many.to_string()).code(),
            tonic::Code::InvalidArgument
        );
    }
}
