//! CNI errors and the error JSON printed on stdout (codes from `brindle_proto::cni_codes`).

pub use brindle_proto::cni_codes::*;

/// A CNI error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// Spec error code.
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Longer explanation.
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

    /// Adds details.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// An I/O failure.
    pub fn io(msg: impl Into<String>) -> Self {
        Self::new(IO_FAILURE, msg)
    }

    /// The error JSON for `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> String {
        let mut object = serde_json::Map::new();
        object.insert("cniVersion".into(), cni_version.into());
        object.insert("code".into(), self.code.into());
        object.insert("msg".into(), self.msg.clone().into());
        if !self.details.is_empty() {
            object.insert("details".into(), self.details.clone().into());
        }
        serde_json::Value::Object(object).to_string()
    }
}
