//! The flow sweeper: DEL deletes the connection-tracking entries of the pod's addresses before it
//! releases them, so an address handed out again inherits no flow and no port mapping's NAT. DELs
//! that arrive while a sweep runs share the next one (one scan of the table for many pods).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::dataplane::Conntrack;

/// How long a DEL waits for its sweep; past it the DEL goes on (the sweep still runs) and says so.
const SWEEP_WAIT: Duration = Duration::from_secs(2);

/// One DEL's addresses and who to tell when their flows are gone.
type Request = (Vec<IpAddr>, oneshot::Sender<()>);

/// Deletes the tracked connections of deleted pods' addresses.
pub struct FlowSweeper {
    queue: mpsc::UnboundedSender<Request>,
}

impl FlowSweeper {
    /// Starts the background sweeper over `conntrack` (inside a tokio runtime).
    pub fn start(conntrack: Arc<dyn Conntrack>) -> Self {
        let (queue, mut requests) = mpsc::unbounded_channel::<Request>();
        tokio::spawn(async move {
            while let Some(first) = requests.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = requests.try_recv() {
                    batch.push(more);
                }
                let addresses: BTreeSet<IpAddr> = batch
                    .iter()
                    .flat_map(|(addresses, _)| addresses.iter().copied())
                    .collect();
                let conntrack = Arc::clone(&conntrack);
                // A netlink dump and deletes: blocking calls, off the async workers.
                let swept = tokio::task::spawn_blocking(move || {
                    let swept = conntrack.delete_touching(&addresses);
                    (addresses, swept)
                })
                .await;
                match swept {
                    Ok((addresses, Ok(count))) if count > 0 => {
                        tracing::debug!(
                            ?addresses,
                            count,
                            "deleted the tracked connections of deleted pods"
                        );
                    }
                    Ok((_, Ok(_))) => {}
                    Ok((addresses, Err(error))) => {
                        tracing::warn!(?addresses, %error, "deleting the tracked connections of deleted pods");
                    }
                    Err(error) => tracing::warn!(%error, "the connection sweep task failed"),
                }
                for (_, done) in batch {
                    // The DEL may have stopped waiting.
                    let _ = done.send(());
                }
            }
        });
        Self { queue }
    }

    /// Deletes the tracked connections of `addresses`; returns when they are gone, or after
    /// [`SWEEP_WAIT`] with a warning (the sweep goes on without the caller).
    pub async fn forget(&self, addresses: Vec<IpAddr>) {
        if addresses.is_empty() {
            return;
        }
        let (done, swept) = oneshot::channel();
        if self.queue.send((addresses.clone(), done)).is_err() {
            return;
        }
        if tokio::time::timeout(SWEEP_WAIT, swept).await.is_err() {
            tracing::warn!(
                ?addresses,
                "the tracked connections of a deleted pod are not gone after {SWEEP_WAIT:?}; \
                 releasing its addresses anyway"
            );
        }
    }
}
