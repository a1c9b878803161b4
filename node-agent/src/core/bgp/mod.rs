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

/// The node's BGP: its BIRD daemon kept equal to what the routing state asks, and the sessions
/// it reports (in `brindle_bgp_session_established{peer}` and
/// `brindle_bgp_routes_exported{peer}`, and on a watch for the node's status).
pub struct BgpSpeaker {
    bird: Bird,
    local: LocalBgp,
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
        let text = desired_config(state, &self.local).render();
        if self.bird.apply(&text).await? {
            tracing::info!("BIRD reconfigured");
        }
        Ok(())
    }

    /// Reads the sessions back from BIRD.
    pub async fn refresh_sessions(&self) {
        match self.bird.sessions().await {
            Ok(sessions) => {
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
