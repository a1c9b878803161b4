//! CNI errors as the shim prints them: brindle's one CNI failure type ([`CniError`], shared with
//! the agent) as the specification's error JSON on stdout.

pub use brindle_proto::CniError;
pub use brindle_proto::cni_codes::*;

/// An I/O failure of the shim itself.
pub fn io(msg: impl Into<String>) -> CniError {
    CniError::new(IO_FAILURE, msg)
}

/// The error JSON of `error` for `cni_version`.
pub fn to_json(error: &CniError, cni_version: &str) -> String {
    let mut object = serde_json::Map::new();
    object.insert("cniVersion".into(), cni_version.into());
    object.insert("code".into(), error.code.into());
    object.insert("msg".into(), error.msg.clone().into());
    if !error.details.is_empty() {
        object.insert("details".into(), error.details.clone().into());
    }
    serde_json::Value::Object(object).to_string()
}
