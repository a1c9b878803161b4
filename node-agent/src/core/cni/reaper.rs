//! The veth reaper: DEL retires a pod's host veth (down, into the retired group) and the
//! reaper deletes retired veths in bulk in the background, out of the way of running ADDs.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::dataplane::{DataplaneError, Netlink};

/// Veths of deleted workloads: retired (down, moved to the retired group) while DEL runs, then
/// deleted in bulk in the background — one kernel synchronisation for many veths instead of tens
/// of milliseconds each. An ADD reusing a retired name waits for the bulk delete.
pub struct LinkReaper {
    netlink: Arc<dyn Netlink>,
    retired: Arc<Mutex<HashSet<String>>>,
    wake: Arc<tokio::sync::Notify>,
    deleted: tokio::sync::watch::Receiver<u64>,
    adds_running: Arc<std::sync::atomic::AtomicUsize>,
}

/// How long the reaper waits for more retirements before a bulk delete.
const REAP_DELAY: std::time::Duration = std::time::Duration::from_millis(500);
/// Longest the reaper defers a bulk delete while ADDs are running (a bulk delete holds the
/// kernel's rtnl lock, which an ADD's netlink calls would wait for).
const REAP_MAX_DEFERRAL: std::time::Duration = std::time::Duration::from_secs(5);

impl LinkReaper {
    /// Starts the background reaper (inside a tokio runtime).
    pub fn start(netlink: Arc<dyn Netlink>) -> Self {
        let retired: Arc<Mutex<HashSet<String>>> = Arc::default();
        let wake = Arc::new(tokio::sync::Notify::new());
        let (bump, deleted) = tokio::sync::watch::channel(0u64);
        let adds_running: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let (task_netlink, task_retired, task_wake, task_adds) = (
            Arc::clone(&netlink),
            Arc::clone(&retired),
            Arc::clone(&wake),
            Arc::clone(&adds_running),
        );
        tokio::spawn(async move {
            loop {
                task_wake.notified().await;
                tokio::time::sleep(REAP_DELAY).await;
                let deferred_since = tokio::time::Instant::now();
                while task_adds.load(std::sync::atomic::Ordering::SeqCst) > 0
                    && deferred_since.elapsed() < REAP_MAX_DEFERRAL
                {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                let batch: Vec<String> = task_retired
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .cloned()
                    .collect();
                if let Err(error) = task_netlink.delete_retired_links().await {
                    tracing::warn!(%error, "bulk veth deletion failed; the next sweep retries");
                }
                task_retired
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|name| !batch.contains(name));
                bump.send_modify(|generation| *generation += 1);
            }
        });
        Self {
            netlink,
            retired,
            wake,
            deleted,
            adds_running,
        }
    }

    /// Marks an ADD as running until the guard is dropped; bulk deletes wait for a quiet moment.
    pub fn add_running(&self) -> AddRunning {
        self.adds_running
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        AddRunning(Arc::clone(&self.adds_running))
    }

    /// Retires `name` now and has it deleted soon; falls back to deleting it at once.
    pub async fn delete_soon(&self, name: &str) -> Result<(), DataplaneError> {
        match self.netlink.retire_link(name).await {
            Ok(true) => {
                self.retired
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.to_owned());
                self.wake.notify_one();
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(error) => {
                tracing::warn!(link = %name, %error, "retiring failed; deleting now");
                self.netlink.delete_link(name).await.map(drop)
            }
        }
    }

    /// Deletes every retired veth now (the background reaper may hold some of them in a batch of
    /// its own); whether the kernel's retired group is empty afterwards.
    pub async fn delete_retired_now(&self) -> bool {
        let batch: Vec<String> = self
            .retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        if let Err(error) = self.netlink.delete_retired_links().await {
            tracing::warn!(%error, "deleting retired veths now failed");
            return false;
        }
        self.retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name| !batch.contains(name));
        true
    }

    pub fn is_retired(&self, name: &str) -> bool {
        self.retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(name)
    }

    /// Waits until `name` is no longer waiting for the bulk delete.
    pub async fn wait_deleted(&self, name: &str) {
        let mut deleted = self.deleted.clone();
        while self.is_retired(name) {
            if deleted.changed().await.is_err() {
                return;
            }
        }
    }
}

/// An ADD in progress (see [`LinkReaper::add_running`]).
pub struct AddRunning(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for AddRunning {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}
