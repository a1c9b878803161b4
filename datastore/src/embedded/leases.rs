//! Lease deadlines of the embedded store and the reaper thread that revokes expired leases.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::Inner;
use super::writer::WriteRequest;
use crate::error::StoreError;
use crate::types::LeaseId;

/// How often the reaper looks for expired leases.
const REAP_INTERVAL: Duration = Duration::from_millis(100);

/// TTL and deadline of every live lease. Deadlines restart when the store opens, as etcd's do
/// after a leader change.
pub(super) struct LeaseTable {
    leases: Mutex<HashMap<LeaseId, (Duration, Instant)>>,
}

impl LeaseTable {
    pub(super) fn new(stored: Vec<(LeaseId, Duration)>) -> Self {
        let now = Instant::now();
        let leases = stored
            .into_iter()
            .map(|(id, ttl)| (id, (ttl, now + ttl)))
            .collect();
        Self {
            leases: Mutex::new(leases),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<LeaseId, (Duration, Instant)>> {
        self.leases
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn insert(&self, id: LeaseId, ttl: Duration) {
        self.lock().insert(id, (ttl, Instant::now() + ttl));
    }

    pub(super) fn renew(&self, id: LeaseId) -> Result<Duration, StoreError> {
        let mut leases = self.lock();
        let (ttl, deadline) = leases.get_mut(&id).ok_or(StoreError::LeaseNotFound(id))?;
        *deadline = Instant::now() + *ttl;
        Ok(*ttl)
    }

    pub(super) fn remove(&self, id: LeaseId) {
        self.lock().remove(&id);
    }

    /// Removes and returns the leases past their deadline; a keep-alive can no longer save them.
    fn take_expired(&self) -> Vec<LeaseId> {
        let now = Instant::now();
        let mut leases = self.lock();
        let expired: Vec<_> = leases
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            leases.remove(id);
        }
        expired
    }
}

/// Starts the reaper; it stops once the store is dropped.
pub(super) fn spawn_reaper(store: Weak<Inner>) -> Result<(), StoreError> {
    std::thread::Builder::new()
        .name("brindle-store-leases".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(REAP_INTERVAL);
                let Some(inner) = store.upgrade() else { return };
                let Some(writer) = inner.writer.as_ref() else {
                    return;
                };
                for lease in inner.leases.take_expired() {
                    tracing::debug!(lease, "lease expired");
                    // The answer is not awaited: expiry has no caller.
                    let (reply, _) = oneshot::channel();
                    if writer.send(WriteRequest::RevokeLease { lease, reply }).is_err() {
                        return;
                    }
                }
            }
        })
        .map(drop)
        .map_err(|e| StoreError::backend("starting the lease reaper", e))
}
