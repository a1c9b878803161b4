//! What every failure of a CNI operation is to the runtime: a [`CniError`] with the code the
//! specification (or brindle) gives it.

use brindle_proto::CniError;
use brindle_proto::cni_codes::{
    DATAPLANE_FAILED, INTERFACE_EXISTS, INVALID_CONFIG, IPAM_REFUSED, STATE_FAILED, TRY_AGAIN_LATER,
};

use crate::core::attachments::RecordError;
use crate::core::calls::{CallError, Service};
use crate::core::wiring::WiringError;
use crate::dataplane::DataplaneError;

impl From<CallError> for CniError {
    fn from(error: CallError) -> Self {
        let details = std::error::Error::source(&error)
            .map(ToString::to_string)
            .unwrap_or_default();
        let failure = match &error {
            CallError::Unavailable { service, .. } => Self::new(
                TRY_AGAIN_LATER,
                format!("{service} is unavailable; try again later"),
            ),
            CallError::Refused {
                service: Service::Ipam,
                ..
            } => Self::new(IPAM_REFUSED, "no address could be allocated"),
            CallError::Refused {
                service: Service::Policy,
                ..
            } => Self::new(INVALID_CONFIG, "the pod's endpoint was refused"),
        };
        failure.with_details(details)
    }
}

impl From<RecordError> for CniError {
    fn from(error: RecordError) -> Self {
        Self::new(STATE_FAILED, "the agent's attachment records failed").with_details(error.to_string())
    }
}

impl From<DataplaneError> for CniError {
    fn from(error: DataplaneError) -> Self {
        Self::new(DATAPLANE_FAILED, "a kernel operation failed").with_details(error.to_string())
    }
}

impl From<WiringError> for CniError {
    fn from(error: WiringError) -> Self {
        match error {
            WiringError::InterfaceExists { .. } => Self::new(INTERFACE_EXISTS, error.to_string()),
            WiringError::Kernel(kernel) => kernel.into(),
        }
    }
}
