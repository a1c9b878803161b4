//! BGP through a BIRD 2 daemon running beside the agent: the configuration the routing state asks
//! of this node (`config`: its blocks and borrowed addresses as aggregates to announce, its
//! peers), and the daemon driven through its files and control socket (`bird`: written only when
//! it changes, reloaded with `birdc configure`, which resets no session whose peer is unchanged;
//! the sessions read back for status). BIRD's lifetime is its own: the agent never starts or
//! stops it, so an agent restart or crash withdraws nothing.

pub mod bird;
pub mod config;

pub use bird::{BgpSession, Bird, BirdError};
pub use config::{LocalBgp, desired_config};

use std::collections::BTreeMap;

use brindle_metrics::{Gauges, Metrics};
use route_api::RouteItem;
use tokio::sync::watch;

/// What a session that never connects, with BIRD saying nothing, means when its peer has a
/// password: the kernel drops TCP segments whose MD5 signature does not match (or that carry one
/// the other side does not expect) without a word, so BIRD only ever sees no answer.
const SILENT_MD5: &str = "no answer from the peer; this session has a TCP MD5 password: a password \
                          that differs from the peer's (or that the peer does not have) drops every \
                          segment silently";

/// Says why sessions with a password are silent where BIRD has nothing to say.
fn explain_silence(sessions: &mut [BgpSession], with_password: &[String]) {
    for session in sessions {
        if !session.established() && session.last_error.is_empty() && with_password.contains(&session.peer) {
            session.last_error = SILENT_MD5.to_owned();
        }
    }
}

/// The node's BGP: its BIRD daemon kept equal to what the routing state asks, and the sessions
/// it reports (in `brindle_bgp_session_established{peer}` and
/// `brindle_bgp_routes_exported{peer}`, and on a watch for the node's status).
pub struct BgpSpeaker {
    bird: Bird,
    local: LocalBgp,
    /// The peers with a TCP MD5 password, as last configured.
    with_password: Vec<String>,
    sessions: watch::Sender<Vec<BgpSession>>,
    established: Gauges,
    exported: Gauges,
}

impl BgpSpeaker {
    /// Drives `bird` for the node `local` describes; sessions exported in `metrics`.
    pub fn new(bird: Bird, local: LocalBgp, metrics: &Metrics) -> Self {
        Self {
            bird,
            local,
            with_password: Vec::new(),
            sessions: watch::channel(Vec::new()).0,
            established: metrics.gauges(
                "bgp_session_established",
                "1 while the BGP session with the peer is established, 0 otherwise, by BGPPeer",
            ),
            exported: metrics.gauges("bgp_routes_exported", "Routes announced to the peer, by BGPPeer"),
        }
    }

    /// The sessions, as last read.
    pub fn sessions(&self) -> watch::Receiver<Vec<BgpSession>> {
        self.sessions.subscribe()
    }

    /// Makes BIRD announce what `state` asks of the node (`resync`: reload even if the file
    /// already says so — BIRD may have been restarted meanwhile).
    pub async fn program(
        &mut self,
        state: &BTreeMap<String, RouteItem>,
        resync: bool,
    ) -> Result<(), BirdError> {
        if resync {
            self.bird.forget().await;
        }
        let config = desired_config(state, &self.local);
        self.with_password = config
            .peers
            .iter()
            .filter(|p| p.peer.password.is_some())
            .map(|p| p.peer.name.clone())
            .collect();
        if self.bird.apply(&config.render()).await? {
            tracing::info!("BIRD reconfigured");
        }
        Ok(())
    }

    /// Reads the sessions back from BIRD.
    pub async fn refresh_sessions(&self) {
        match self.bird.sessions().await {
            Ok(mut sessions) => {
                explain_silence(&mut sessions, &self.with_password);
                self.established.clear();
                self.exported.clear();
                for session in &sessions {
                    let labels = vec![("peer", session.peer.clone())];
                    self.established
                        .get_or_create(&labels)
                        .set(i64::from(session.established()));
                    self.exported
                        .get_or_create(&labels)
                        .set(i64::try_from(session.routes_exported).unwrap_or(i64::MAX));
                }
                self.sessions.send_replace(sessions);
            }
            Err(error) => tracing::warn!(%error, "reading the BGP sessions from BIRD"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_session_with_a_password_says_why_and_nothing_else_changes() {
        let session = |peer: &str, state: &str, error: &str| BgpSession {
            peer: peer.into(),
            bgp_state: state.into(),
            last_error: error.into(),
            ..BgpSession::default()
        };
        let mut sessions = vec![
            session("md5", "Connect", ""),
            session("md5-up", "Established", ""),
            session("plain", "Active", ""),
            session("md5-refused", "Active", "Received: Bad peer AS"),
        ];
        let with_password = ["md5".to_owned(), "md5-up".to_owned(), "md5-refused".to_owned()];
        explain_silence(&mut sessions, &with_password);
        assert!(sessions[0].last_error.contains("TCP MD5 password"));
        assert!(sessions[1].last_error.is_empty());
        assert!(sessions[2].last_error.is_empty());
        assert_eq!(sessions[3].last_error, "Received: Bad peer AS");
    }
}
