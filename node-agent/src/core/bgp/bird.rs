//! The BIRD daemon beside the agent, through its files and control socket: the configuration
//! written atomically and only when it changed, then `birdc configure` (BIRD reloads in place:
//! sessions whose configuration is unchanged stay up, routes are announced and withdrawn as the
//! static protocol changes); and `birdc show protocols all` read back into the BGP sessions'
//! state. `birdc` runs as a child process, awaited without blocking the agent's workers.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long one `birdc` call may take.
const BIRDC_TIMEOUT: Duration = Duration::from_secs(10);

/// Why BIRD could not be driven.
#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    /// The configuration file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `birdc` could not be run or did not finish.
    #[error("running birdc (Debian package bird2) on {socket}: {reason}")]
    Birdc {
        /// The control socket.
        socket: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// BIRD refused the configuration or the command (its own words).
    #[error("BIRD on {socket}: {answer}")]
    Refused {
        /// The control socket.
        socket: PathBuf,
        /// What BIRD answered.
        answer: String,
    },
}

/// One BGP session as BIRD reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BgpSession {
    /// The BGPPeer's name (as read: BIRD's protocol symbol, which the speaker names).
    pub peer: String,
    /// The neighbour's address.
    pub address: String,
    /// The neighbour's AS number.
    pub as_number: u32,
    /// BIRD's protocol state (`up`, `start`, …).
    pub state: String,
    /// The BGP state (`Established`, `Active`, `Connect`, …).
    pub bgp_state: String,
    /// Since when (BIRD's clock, as it prints it).
    pub since: String,
    /// Routes announced to the peer.
    pub routes_exported: u64,
    /// Why it is not up, as BIRD says (`Received: Bad peer AS`, …); empty when none.
    pub last_error: String,
}

impl BgpSession {
    /// Whether the session is established.
    pub fn established(&self) -> bool {
        self.bgp_state == "Established"
    }
}

/// A BIRD daemon's configuration file and control socket.
#[derive(Debug, Clone)]
pub struct Bird {
    config: PathBuf,
    socket: PathBuf,
    /// The text BIRD last accepted (`None`: unknown, the next apply reloads).
    applied: Option<String>,
}

impl Bird {
    /// The daemon that reads `config` and answers on `socket`.
    pub fn new(config: PathBuf, socket: PathBuf) -> Self {
        Self {
            config,
            socket,
            applied: None,
        }
    }

    /// Makes `text` BIRD's configuration: checked with `bird -p` first (a text BIRD would refuse
    /// never replaces the file, so a restarted BIRD still starts with the last good one), written
    /// (mode 0600: it holds TCP MD5 passwords) and reloaded, unless it is what BIRD last accepted.
    /// `true` when BIRD reloaded.
    pub async fn apply(&mut self, text: &str) -> Result<bool, BirdError> {
        if self.applied.as_deref() == Some(text) {
            return Ok(false);
        }
        self.applied = None;
        let candidate = self.config.with_extension("brindle-tmp");
        write_private(&candidate, text).await?;
        if let Err(error) = self.check(&candidate).await {
            let _ = tokio::fs::remove_file(&candidate).await;
            return Err(error);
        }
        tokio::fs::rename(&candidate, &self.config)
            .await
            .map_err(|source| BirdError::Write {
                path: self.config.clone(),
                source,
            })?;
        let answer = self.birdc(&["configure"]).await?;
        let accepted = [
            "Reconfigured",
            "Reconfiguration in progress",
            "queueing new config",
        ];
        if !accepted.iter().any(|a| answer.contains(a)) {
            return Err(BirdError::Refused {
                socket: self.socket.clone(),
                answer,
            });
        }
        self.applied = Some(text.to_owned());
        Ok(true)
    }

    /// Forgets what BIRD accepted, so the next [`Self::apply`] reloads it even with the same
    /// text (BIRD may have been restarted meanwhile); the file stays.
    pub fn forget(&mut self) {
        self.applied = None;
    }

    /// `bird -p -c file`: whether BIRD would take the file.
    async fn check(&self, file: &Path) -> Result<(), BirdError> {
        let out = tokio::process::Command::new("bird")
            .arg("-p")
            .arg("-c")
            .arg(file)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| BirdError::Birdc {
                socket: self.socket.clone(),
                reason: format!("checking the configuration with `bird -p` (Debian package bird2): {e}"),
            })?;
        if out.status.success() {
            return Ok(());
        }
        Err(BirdError::Refused {
            socket: self.socket.clone(),
            answer: format!(
                "the configuration does not parse: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }

    /// The BGP sessions BIRD runs for brindle's peers.
    pub async fn sessions(&self) -> Result<Vec<BgpSession>, BirdError> {
        Ok(parse_protocols(&self.birdc(&["show", "protocols", "all"]).await?))
    }

    async fn birdc(&self, command: &[&str]) -> Result<String, BirdError> {
        let failed = |reason: String| BirdError::Birdc {
            socket: self.socket.clone(),
            reason,
        };
        let run = tokio::process::Command::new("birdc")
            .arg("-s")
            .arg(&self.socket)
            .args(command)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(BIRDC_TIMEOUT, run)
            .await
            .map_err(|_| failed(format!("no answer within {BIRDC_TIMEOUT:?}")))?
            .map_err(|e| failed(e.to_string()))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() || text.contains("Unable to connect") {
            return Err(failed(format!(
                "{}{}",
                text.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(text)
    }
}

/// Writes `text` to `path`, readable by its owner only.
async fn write_private(path: &Path, text: &str) -> Result<(), BirdError> {
    use tokio::io::AsyncWriteExt;
    let failed = |source| BirdError::Write {
        path: path.to_owned(),
        source,
    };
    let _ = tokio::fs::remove_file(path).await;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
        .map_err(failed)?;
    file.write_all(text.as_bytes()).await.map_err(failed)?;
    file.sync_all().await.map_err(failed)
}

/// The BGP sessions of brindle's peers (protocols `peer_…`) in `birdc show protocols all`
/// output, each named by its protocol symbol.
pub fn parse_protocols(text: &str) -> Vec<BgpSession> {
    let mut sessions = Vec::new();
    let mut current: Option<BgpSession> = None;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            sessions.extend(current.take());
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let [name, "BGP", _table, state, since, ..] = fields.as_slice()
                && name.starts_with("peer_")
            {
                current = Some(BgpSession {
                    peer: (*name).to_owned(),
                    state: (*state).to_owned(),
                    since: (*since).to_owned(),
                    ..BgpSession::default()
                });
            }
            continue;
        }
        let Some(session) = current.as_mut() else {
            continue;
        };
        let Some((key, value)) = line.trim().split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "BGP state" => session.bgp_state = value.to_owned(),
            "Neighbor address" => session.address = value.to_owned(),
            "Neighbor AS" => session.as_number = value.parse().unwrap_or(0),
            "Last error" => session.last_error = value.to_owned(),
            "Routes" => {
                session.routes_exported = value
                    .split(',')
                    .find_map(|part| part.trim().strip_suffix(" exported"))
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0);
            }
            _ => {}
        }
    }
    sessions.extend(current);
    sessions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_read_from_birds_protocol_list() {
        let text = "BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
device1    Device     ---        up     16:56:29.964
peer_tor   BGP        ---        up     16:56:42.331  Established
  BGP state:          Established
    Neighbor address: 10.99.0.254
    Neighbor AS:      64513
    Local AS:         64512
  Channel ipv4
    State:          UP
    Routes:         0 imported, 2 exported, 0 preferred
peer_00000000000000aa BGP ---        start  16:56:51.276  Active        Socket: Connection refused
  BGP state:          Active
    Neighbor address: 10.0.0.1
    Neighbor AS:      64513
    Local AS:         64512
    Last error:       Socket: Connection refused
other      BGP        ---        up     16:56:42.331  Established
  BGP state:          Established
";
        let sessions = parse_protocols(text);
        assert_eq!(sessions.len(), 2, "{sessions:?}");
        assert_eq!(sessions[0].peer, "peer_tor");
        assert!(sessions[0].established());
        assert_eq!(sessions[0].routes_exported, 2);
        assert_eq!(sessions[0].as_number, 64513);
        assert_eq!(sessions[1].peer, "peer_00000000000000aa");
        assert_eq!(sessions[1].last_error, "Socket: Connection refused");
        assert!(!sessions[1].established());
    }
}
