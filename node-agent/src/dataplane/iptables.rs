//! The real [`Iptables`]: `iptables-restore --noflush --wait` for whole chains, `iptables -C`/`-I`
//! for the one jump rule that hooks a chain in, `iptables-save` to read back — with the backend
//! (nft or legacy) the host's rules already live in, so brindle's rules sit beside them.

use std::io::Write;
use std::process::{Command, Stdio};

use super::{DataplaneError, Iptables};

/// Which iptables the host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IptablesBackend {
    /// iptables-nft (nf_tables).
    Nft,
    /// iptables-legacy (x_tables).
    Legacy,
}

impl IptablesBackend {
    /// The backend's binary of `tool` (`iptables`, `iptables-restore`, `iptables-save`).
    fn binary(self, tool: &str) -> String {
        let backend = match self {
            Self::Nft => "iptables-nft",
            Self::Legacy => "iptables-legacy",
        };
        tool.replacen("iptables", backend, 1)
    }

    /// The backend holding more rules in this namespace (kube-proxy's, Docker's…); with none
    /// anywhere, the one the host's `iptables` command is.
    pub fn detect() -> Self {
        let rules = |backend: Self| {
            Command::new(backend.binary("iptables-save"))
                .output()
                .map(|out| {
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .filter(|l| l.starts_with("-A "))
                        .count()
                })
                .unwrap_or(0)
        };
        let (nft, legacy) = (rules(Self::Nft), rules(Self::Legacy));
        if legacy > nft {
            return Self::Legacy;
        }
        if nft > 0 {
            return Self::Nft;
        }
        let version = Command::new("iptables")
            .arg("-V")
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default();
        if version.contains("legacy") {
            Self::Legacy
        } else {
            Self::Nft
        }
    }
}

/// iptables through the host's binaries of one backend.
pub struct IptablesCommands {
    backend: IptablesBackend,
    /// ip6tables instead of iptables.
    ipv6: bool,
}

impl IptablesCommands {
    /// Commands of `backend`.
    pub fn new(backend: IptablesBackend) -> Self {
        Self { backend, ipv6: false }
    }

    /// The same backend's ip6tables.
    #[must_use]
    pub fn for_ipv6(&self) -> Self {
        Self {
            backend: self.backend,
            ipv6: true,
        }
    }

    /// Commands of the backend the host uses ([`IptablesBackend::detect`]).
    pub fn detect() -> Self {
        let backend = IptablesBackend::detect();
        tracing::info!(?backend, "iptables backend");
        Self::new(backend)
    }

    fn command(&self, tool: &str) -> Command {
        let binary = self.backend.binary(tool);
        if self.ipv6 {
            Command::new(binary.replacen("iptables", "ip6tables", 1))
        } else {
            Command::new(binary)
        }
    }
}

fn failed(what: String, detail: impl std::fmt::Display) -> DataplaneError {
    DataplaneError::Tool {
        what,
        detail: detail.to_string(),
    }
}

impl Iptables for IptablesCommands {
    fn restore(&self, table: &str, payload: &str) -> Result<(), DataplaneError> {
        let mut child = self
            .command("iptables-restore")
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
        let exists = self
            .command("iptables")
            .args(["--wait", "-t", table, "-C", from, "-j", to])
            .output()
            .map_err(|e| failed("running iptables".into(), e))?;
        if exists.status.success() {
            return Ok(());
        }
        let out = self
            .command("iptables")
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

    fn remove_jump(&self, table: &str, from: &str, to: &str) -> Result<(), DataplaneError> {
        loop {
            let exists = self
                .command("iptables")
                .args(["--wait", "-t", table, "-C", from, "-j", to])
                .output()
                .map_err(|e| failed("running iptables".into(), e))?;
            if !exists.status.success() {
                return Ok(());
            }
            let out = self
                .command("iptables")
                .args(["--wait", "-t", table, "-D", from, "-j", to])
                .output()
                .map_err(|e| failed("running iptables".into(), e))?;
            if !out.status.success() {
                return Err(failed(
                    format!("unhooking {to} from {table}/{from}"),
                    String::from_utf8_lossy(&out.stderr).trim(),
                ));
            }
        }
    }

    fn save(&self, table: &str) -> Result<String, DataplaneError> {
        let out = self
            .command("iptables-save")
            .args(["-t", table])
            .output()
            .map_err(|e| failed("running iptables-save".into(), e))?;
        if !out.status.success() {
            return Err(failed(
                format!("iptables-save of table {table}"),
                String::from_utf8_lossy(&out.stderr).trim(),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
