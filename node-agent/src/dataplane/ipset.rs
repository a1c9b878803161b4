//! The real [`Ipsets`]: `ipset restore` and `ipset save`.

use std::io::Write;
use std::process::{Command, Stdio};

use super::{DataplaneError, Ipsets};

/// ipsets through the host's `ipset` binary.
pub struct IpsetCommands;

fn failed(what: &str, detail: impl std::fmt::Display) -> DataplaneError {
    DataplaneError::Tool {
        what: what.to_owned(),
        detail: detail.to_string(),
    }
}

impl Ipsets for IpsetCommands {
    fn restore(&self, payload: &str) -> Result<(), DataplaneError> {
        let mut child = Command::new("ipset")
            .arg("restore")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| failed("running ipset restore", e))?;
        child
            .stdin
            .take()
            .ok_or_else(|| failed("ipset restore", "no stdin"))?
            .write_all(payload.as_bytes())
            .map_err(|e| failed("writing to ipset restore", e))?;
        let out = child
            .wait_with_output()
            .map_err(|e| failed("waiting for ipset restore", e))?;
        if !out.status.success() {
            return Err(failed(
                "ipset restore",
                String::from_utf8_lossy(&out.stderr).trim(),
            ));
        }
        Ok(())
    }

    fn save(&self) -> Result<String, DataplaneError> {
        let out = Command::new("ipset")
            .arg("save")
            .output()
            .map_err(|e| failed("running ipset save", e))?;
        if !out.status.success() {
            return Err(failed("ipset save", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
