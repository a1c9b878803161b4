//! The network configuration on stdin: decoding, required fields, and CNI version rules.

use serde_json::Value;

use crate::error::{CniError, DECODE_FAILURE, INCOMPATIBLE_VERSION, INVALID_CONFIG};

/// Versions whose configurations brindle-cni accepts (results are shaped for each).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest version, used when none is known.
pub const LATEST_VERSION: &str = "1.1.0";
/// Where the node agent listens unless the configuration says `agentSocket`.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/brindle/cni.sock";

/// A decoded network configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    /// `cniVersion`.
    pub cni_version: String,
    /// `name`.
    pub name: String,
    /// `agentSocket`, or the default.
    pub agent_socket: String,
    /// The configuration as received.
    pub raw: Vec<u8>,
    /// The configuration decoded.
    pub document: Value,
}

/// `a.b.c` as numbers, for comparing versions.
pub fn version_tuple(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    let tuple = (parts.next()??, parts.next()??, parts.next().unwrap_or(Some(0))?);
    parts.next().is_none().then_some(tuple)
}

/// The `cniVersion` of a configuration if it can be read, for shaping error output.
pub fn declared_version(stdin: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(stdin).ok()?;
    value.get("cniVersion")?.as_str().map(str::to_owned)
}

impl NetConf {
    /// Decodes and checks a configuration.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(DECODE_FAILURE, "network configuration is not valid JSON")
                .with_details(e.to_string())
        })?;
        let object = value
            .as_object()
            .ok_or_else(|| CniError::new(DECODE_FAILURE, "network configuration must be a JSON object"))?;
        let text = |key: &str| object.get(key).and_then(Value::as_str).map(str::to_owned);
        let cni_version = text("cniVersion")
            .ok_or_else(|| CniError::new(INVALID_CONFIG, "network configuration has no cniVersion"))?;
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError::new(
                INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {cni_version} is not supported; supported: {}",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        let name = text("name")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| CniError::new(INVALID_CONFIG, "network configuration has no name"))?;
        let agent_socket = text("agentSocket").unwrap_or_else(|| DEFAULT_AGENT_SOCKET.to_owned());
        Ok(Self {
            cni_version,
            name,
            agent_socket,
            raw: stdin.to_vec(),
            document: value,
        })
    }

    /// `prevResult`, when chained after another plugin.
    pub fn prev_result(&self) -> Option<&Value> {
        self.document.get("prevResult").filter(|v| !v.is_null())
    }

    /// Whether the configuration's version is at least `minimum`.
    pub fn at_least(&self, minimum: &str) -> bool {
        version_tuple(&self.cni_version) >= version_tuple(minimum)
    }

    /// Refuses commands the configuration's version does not have (code 1).
    pub fn require(&self, minimum: &str, command: &str) -> Result<(), CniError> {
        if self.at_least(minimum) {
            return Ok(());
        }
        Err(CniError::new(
            INCOMPATIBLE_VERSION,
            format!(
                "{command} needs cniVersion {minimum} or later; the configuration says {}",
                self.cni_version
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_errors_have_spec_codes() {
        assert_eq!(
            NetConf::parse(b"{not json").expect_err("bad").code,
            DECODE_FAILURE
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0"}"#)
                .expect_err("no name")
                .code,
            INVALID_CONFIG
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"0.2.0","name":"n"}"#)
                .expect_err("old")
                .code,
            INCOMPATIBLE_VERSION
        );
        let conf =
            NetConf::parse(br#"{"cniVersion":"0.4.0","name":"n","agentSocket":"/tmp/a.sock"}"#).expect("ok");
        assert_eq!(conf.agent_socket, "/tmp/a.sock");
        assert!(conf.at_least("0.4.0") && !conf.at_least("1.0.0"));
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_tuple("1.10.0") > version_tuple("1.9.0"));
        assert_eq!(version_tuple("0.3"), Some((0, 3, 0)));
        assert_eq!(version_tuple("x"), None);
    }
}
