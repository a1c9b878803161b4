//! BGP through a BIRD 2 daemon running beside the agent: the configuration the routing state asks
//! of this node (`config`: its blocks and borrowed addresses as aggregates to announce, its
//! peers), and the daemon driven through its files and control socket (`bird`: written only when
//! it changes, reloaded with `birdc configure`, which resets no session whose peer is unchanged;
//! the sessions read back for status). BIRD's lifetime is its own: the agent never starts or
//! stops it, so an agent restart or crash withdraws nothing.

pub mod bird;
pub mod config;

pub use bird::{BgpSession, Bird, BirdError};
pub use config::{LocalBgp, desired_config, own_registration};

use std::collections::BTreeMap;

use brindle_fanout::Key;
use brindle_metrics::{Gauges, Metrics};
use route_api::RouteItem;
use route_api::model::Node;
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
    /// The node's registration as last seen in the state.
    registration: Option<Node>,
    /// Each configured peer's protocol symbol: its name.
    protocols: BTreeMap<String, String>,
    /// The peers with a TCP MD5 password, as last configured.
    with_password: Vec<String>,
    /// Why BIRD did not take the last configuration, if it did not.
    refused: Option<String>,
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
            registration: None,
            protocols: BTreeMap::new(),
            with_password: Vec::new(),
            refused: None,
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

    /// Makes BIRD announce what `state` asks of the node (`resync`: reload even if BIRD took
    /// this text already — it may have been restarted meanwhile). Until the node's registration
    /// is first in the state, BIRD is left as it is (its labels choose the peers: better no change
    /// than a wrong peer set); when it leaves the state (the node deleted while its agent runs),
    /// its last registration keeps choosing the peers, so what the deletion released (its
    /// blocks) is withdrawn at once.
    pub async fn program(&mut self, state: &BTreeMap<Key, RouteItem>, resync: bool) -> Result<(), BirdError> {
        if resync {
            self.bird.forget();
        }
        if let Some(registration) = own_registration(state, &self.local) {
            self.registration = Some(registration.clone());
        }
        let Some(registration) = &self.registration else {
            return Ok(());
        };
        let config = desired_config(state, &self.local, registration);
        self.protocols = config.protocols();
        self.with_password = config
            .peers
            .iter()
            .filter(|p| p.peer.password.is_some())
            .map(|p| p.peer.name.clone())
            .collect();
        match self.bird.apply(&config.render()).await {
            Ok(reloaded) => {
                self.refused = None;
                if reloaded {
                    tracing::info!("BIRD reconfigured");
                }
                Ok(())
            }
            Err(error) => {
                self.refused = Some(error.to_string());
                Err(error)
            }
        }
    }

    /// Reads the sessions back from BIRD, each named by its BGPPeer; when BIRD cannot be read
    /// or refused the configuration, a session `bird` says so (and the gauges are emptied rather
    /// than left at their last values).
    pub async fn refresh_sessions(&self) {
        let mut sessions = match self.bird.sessions().await {
            Ok(read) => read
                .into_iter()
                .filter_map(|mut session| {
                    session.peer = self.protocols.get(&session.peer)?.clone();
                    Some(session)
                })
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "reading the BGP sessions from BIRD");
                vec![daemon_problem(format!("BIRD does not answer: {error}"))]
            }
        };
        if let Some(refused) = &self.refused {
            sessions.push(daemon_problem(format!(
                "BIRD refused brindle's configuration: {refused}"
            )));
        }
        explain_silence(&mut sessions, &self.with_password);
        self.established.clear();
        self.exported.clear();
        for session in sessions.iter().filter(|s| s.peer != DAEMON) {
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
}

/// The name of the pseudo-session that reports the daemon's own trouble.
const DAEMON: &str = "(bird)";

fn daemon_problem(why: String) -> BgpSession {
    BgpSession {
        peer: DAEMON.to_owned(),
        state: "down".to_owned(),
        bgp_state: "-".to_owned(),
        last_error: why,
        ..BgpSession::default()
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
