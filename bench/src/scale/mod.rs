//! bench-scale's pieces: the synthetic cluster, the services as processes, and the process of
//! subscribers that stands in for every node's agent.

pub mod cluster;
pub mod services;
pub mod subscribers;

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the epoch: both processes of the benchmark read the same clock.
pub fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
