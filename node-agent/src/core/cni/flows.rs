//! The flow sweeper: after DEL, the connection-tracking entries of the pod's addresses are
//! deleted in the background (a scan of the whole table per batch of deleted pods, off the DEL
//! path), so an address handed out again inherits no flow and no port mapping's NAT.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::dataplane::Conntrack;

/// How long the sweeper gathers deleted pods before one scan of the table (churn: one scan for
/// many pods, and none competing with each DEL).
const GATHER: std::time::Duration = std::time::Duration::from_millis(200);

/// Deletes the tracked connections of deleted pods' addresses.
pub struct FlowSweeper {
    queue: mpsc::UnboundedSender<Vec<IpAddr>>,
}

impl FlowSweeper {
    /// Starts the background sweeper over `conntrack` (inside a tokio runtime).
    pub fn start(conntrack: Arc<dyn Conntrack>) -> Self {
        let (queue, mut deleted) = mpsc::unbounded_channel::<Vec<IpAddr>>();
        tokio::spawn(async move {
            while let Some(first) = deleted.recv().await {
                tokio::time::sleep(GATHER).await;
                let mut batch: BTreeSet<IpAddr> = first.into_iter().collect();
                while let Ok(more) = deleted.try_recv() {
                    batch.extend(more);
                }
                let conntrack = Arc::clone(&conntrack);
                // A netlink dump and deletes: blocking calls, off the async workers.
                let swept = tokio::task::spawn_blocking(move || {
                    let swept = conntrack.delete_touching(&batch);
                    (batch, swept)
                })
                .await;
                match swept {
                    Ok((batch, Ok(count))) if count > 0 => {
                        tracing::debug!(?batch, count, "deleted the tracked connections of deleted pods");
                    }
                    Ok((_, Ok(_))) => {}
                    Ok((batch, Err(error))) => {
                        tracing::warn!(?batch, %error, "deleting the tracked connections of deleted pods");
                    }
                    Err(error) => tracing::warn!(%error, "the connection sweep task failed"),
                }
            }
        });
        Self { queue }
    }

    /// Queues the tracked connections of `addresses` for deletion.
    pub fn forget(&self, addresses: Vec<IpAddr>) {
        if !addresses.is_empty() {
            // The receiver lives as long as the runtime.
            let _ = self.queue.send(addresses);
        }
    }
}
