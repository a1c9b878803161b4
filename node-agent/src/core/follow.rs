//! What a follower of a `Sync` stream programs its state into ([`SyncTarget`]) and when it
//! re-reads the kernel to repair what changed behind its back ([`ResyncClock`]).

use std::time::Duration;

use brindle_fanout::Mirror;
use tokio::time::Instant;

/// How often a follower re-reads the kernel by default (as Felix refreshes routes and iptables).
pub const DEFAULT_RESYNC_EVERY: Duration = Duration::from_secs(90);

/// When a follower re-reads the kernel to repair what changed behind its back.
#[derive(Debug)]
pub struct ResyncClock {
    every: Duration,
    last: Instant,
}

impl ResyncClock {
    /// A clock that is due `every` after its last re-read (and `every` after now).
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: Instant::now(),
        }
    }

    /// Whether a re-read is due now; if so, counts it as done.
    pub fn due(&mut self) -> bool {
        let due = self.last.elapsed() >= self.every;
        if due {
            self.last = Instant::now();
        }
        due
    }
}

/// What a follower programs the state into.
#[async_trait::async_trait]
pub trait SyncTarget<V: Send + Sync>: Send {
    /// Programs what `mirror` holds (`tick`: the periodic retry and repair, not a change).
    /// Returns the number of kernel objects programmed when everything succeeded — the revision
    /// is then acknowledged — or `None` after logging what failed.
    async fn program(&mut self, mirror: &Mirror<V>, tick: bool) -> Option<u64>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resync_clock_is_due_once_per_interval() {
        let mut clock = ResyncClock::new(Duration::from_millis(50));
        assert!(!clock.due(), "not before the interval has passed");
        std::thread::sleep(Duration::from_millis(60));
        assert!(clock.due(), "due once it has");
        assert!(!clock.due(), "and then not again until the next interval");
    }
}
