//! Keeps a set of kernel objects (remote routes, tunnel endpoints) equal to a desired set: adds
//! what is missing before it removes what is stale (a destination that changes form is never left
//! without a route), goes on past a single failure, and reports the first one.

use std::collections::BTreeSet;

use crate::dataplane::DataplaneError;

/// Writes one kind of kernel object.
#[async_trait::async_trait]
pub trait SetWriter<T: Sync>: Sync {
    /// Adds (or replaces) `item`.
    async fn add(&self, item: &T) -> Result<(), DataplaneError>;
    /// Removes `item`.
    async fn remove(&self, item: &T) -> Result<(), DataplaneError>;
}

/// Makes `programmed` (what the kernel has) equal to `desired` through `writer`; stale items
/// `keep` accepts are left alone. Returns what is programmed afterwards and the first failure.
pub async fn reconcile_set<T: Ord + Clone + Sync>(
    programmed: BTreeSet<T>,
    desired: &BTreeSet<T>,
    keep: impl Fn(&T) -> bool,
    writer: &dyn SetWriter<T>,
) -> (BTreeSet<T>, Option<DataplaneError>) {
    let mut done = programmed.clone();
    let mut first_error = None;
    for missing in desired.difference(&programmed) {
        match writer.add(missing).await {
            Ok(()) => {
                done.insert(missing.clone());
            }
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    for stale in programmed.difference(desired).filter(|item| !keep(item)) {
        match writer.remove(stale).await {
            Ok(()) => {
                done.remove(stale);
            }
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    (done, first_error)
}
