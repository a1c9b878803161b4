//! The real [`Iptables`]: `iptables-restore --noflush --wait` for whole chains, `iptables -C`/`-I`
//! for the one jump rule that hooks a chain in (whichever backend, nft or legacy, the host's
//! `iptables` is).

use std::io::Write;
use std::process::{Command, Stdio};

use super::{DataplaneError, Iptables};

/// iptables through the host's binaries.
pub struct IptablesCommands;

fn failed(what: String, detail: impl std::fmt::Display) -> DataplaneError {
    DataplaneError::Tool {
        what,
        detail: detail.to_string(),
    }
}

impl Iptables for IptablesCommands {
    fn restore(&self, table: &str, payload: &str) -> Result<(), DataplaneError> {
        let mut child = Command::new("iptables-restore")
            .args(["--noflush", "--wait", "-T", table])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| failed("running iptables-restore".into(), e))?;
        child
            .stdin
            .take()
            .ok_or_else(|| failed("iptables-restore".into(), "no stdin"))?
            .write_all(payload.as_bytes())
            .map_err(|e| failed("writing to iptables-restore".into(), e))?;
        let out = child
            .wait_with_output()
            .map_err(|e| failed("waiting for iptables-restore".into(), e))?;
        if !out.status.success() {
            return Err(failed(
                format!("iptables-restore of table {table}"),
                String::from_utf8_lossy(&out.stderr).trim(),
            ));
        }
        Ok(())
    }

    fn ensure_jump(&self, table: &str, from: &str, to: &str) -> Result<(), DataplaneError> {
        let exists = Command::new("iptables")
            .args(["--wait", "-t", table, "-C", from, "-j", to])
            .output()
            .map_err(|e| failed("running iptables".into(), e))?;
        if exists.status.success() {
            return Ok(());
        }
        let out = Command::new("iptables")
            .args(["--wait", "-t", table, "-I", from, "1", "-j", to])
            .output()
            .map_err(|e| failed("running iptables".into(), e))?;
        if !out.status.success() {
            return Err(failed(
                format!("hooking {to} into {table}/{from}"),
                String::from_utf8_lossy(&out.stderr).trim(),
            ));
        }
        Ok(())
    }
}
