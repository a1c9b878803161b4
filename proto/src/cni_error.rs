//! The one CNI failure type brindle has, from the agent's core to what the shim prints: the CNI
//! specification's `{code, msg, details}` (codes in [`crate::cni_codes`]).

use std::fmt;

use crate::agent::v1 as pb;

/// A CNI error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// The specification's error code (or brindle's own, ≥ 100).
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Longer explanation (may be empty).
    pub details: String,
}

impl CniError {
    /// An error with `code` and `msg`.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// The same error with `details`.
    #[must_use]
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

impl From<CniError> for pb::CniError {
    fn from(error: CniError) -> Self {
        Self {
            code: error.code,
            msg: error.msg,
            details: error.details,
        }
    }
}

impl From<pb::CniError> for CniError {
    fn from(error: pb::CniError) -> Self {
        Self {
            code: error.code,
            msg: error.msg,
            details: error.details,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_message_and_details_survive_the_wire() {
        let error = CniError::new(crate::cni_codes::TRY_AGAIN_LATER, "ipam-svc is unavailable")
            .with_details("connection refused");
        let wire: pb::CniError = error.clone().into();
        assert_eq!(CniError::from(wire), error);
        assert_eq!(
            error.to_string(),
            "CNI error 11: ipam-svc is unavailable (connection refused)"
        );
    }
}
