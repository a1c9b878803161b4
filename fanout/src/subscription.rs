//! One subscriber's walk through the state: a start (snapshot or resume) and then the batches
//! after its position, at its own pace.

use std::sync::Arc;

use tokio::sync::watch;

use crate::state::{Paired, Storage};
use crate::{Batch, EncodedSnapshot, Fanout, FanoutError};

/// How a subscription begins.
#[derive(Debug, Clone)]
pub enum Start<V> {
    /// The whole state: the subscriber replaces what it had.
    Snapshot(Arc<EncodedSnapshot>),
    /// Only what changed after the subscriber's revision (possibly nothing), up to `revision`.
    Resume {
        /// The batches, oldest first.
        batches: Vec<Arc<Batch<V>>>,
        /// The revision the subscriber is at after applying them.
        revision: u64,
    },
}

/// A subscriber's position in the fan-out.
pub struct Subscription<V, S: Storage<V> = Paired> {
    fanout: Fanout<V, S>,
    cursor: u64,
    updates: watch::Receiver<u64>,
}

impl<V: Clone + PartialEq + Send + Sync + 'static, S: Storage<V>> Fanout<V, S> {
    /// Starts a subscriber that last applied `resume_revision` (0: it has nothing). It resumes
    /// when the history covers that revision — waiting up to `resume_wait` for this replica to
    /// reach a revision another replica gave it — and starts from a snapshot otherwise.
    ///
    /// Nobody is started before the fan-out has a state (revision > 0): a replica that has not
    /// loaded yet must not hand out an empty snapshot that would make subscribers drop everything.
    /// An error only when the snapshot cannot be encoded.
    pub async fn subscribe(
        &self,
        resume_revision: u64,
    ) -> Result<(Subscription<V, S>, Start<V>), FanoutError> {
        let mut updates = self.shared.flushed.subscribe();
        // An error means the fan-out is gone; what follows then hands out what there is.
        let _ = updates.wait_for(|revision| *revision > 0).await;
        if resume_revision > 0 && resume_revision > *updates.borrow_and_update() {
            let wait = self.shared.config.resume_wait;
            let reached = updates.wait_for(|revision| *revision >= resume_revision);
            // Timing out (or shutting down) leaves the revision unreached: a snapshot follows.
            let _ = tokio::time::timeout(wait, reached).await;
        }
        updates.borrow_and_update();
        if resume_revision > 0
            && self.can_resume(resume_revision)
            && let Ok(batches) = self.batches_after(resume_revision)
        {
            let revision = batches.last().map_or(resume_revision, |b| b.to);
            let subscription = Subscription {
                fanout: self.clone(),
                cursor: revision,
                updates,
            };
            return Ok((subscription, Start::Resume { batches, revision }));
        }
        let snapshot = self.snapshot().await?;
        let subscription = Subscription {
            fanout: self.clone(),
            cursor: snapshot.revision,
            updates,
        };
        Ok((subscription, Start::Snapshot(snapshot)))
    }
}

impl<V: Clone + PartialEq + Send + Sync + 'static, S: Storage<V>> Subscription<V, S> {
    /// The batches after this subscriber's position, waiting until there are some; an error when
    /// it fell out of the history (it must resync) or the fan-out is gone. Cancel-safe.
    pub async fn next(&mut self) -> Result<Vec<Arc<Batch<V>>>, FanoutError> {
        loop {
            self.updates.borrow_and_update();
            let batches = self.fanout.batches_after(self.cursor)?;
            if let Some(last) = batches.last() {
                self.cursor = last.to;
                return Ok(batches);
            }
            self.updates.changed().await.map_err(|_| FanoutError::Closed)?;
        }
    }

    /// The last revision handed to this subscriber.
    pub fn revision(&self) -> u64 {
        self.cursor
    }
}
