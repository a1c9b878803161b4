//! What one caller may take from a server, with the defaults every server starts with: connections
//! per source address, how long a connection may stay silent, streams per connection and calls
//! per second. (Messages are bounded by tonic's 4 MiB decoding limit: a larger one is refused
//! with RESOURCE_EXHAUSTED.)

use std::time::Duration;

/// How soon a new connection must send its first bytes (the TLS handshake, or HTTP/2's preface).
pub const FIRST_BYTES_WITHIN: Duration = Duration::from_secs(10);

/// The limits a server applies to each caller.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Connections one source address may hold open at once; more are closed as they arrive.
    #[arg(long, env = "BRINDLE_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 256)]
    pub max_connections_per_address: usize,
    /// Seconds a connection may stay silent (nothing received: no call, no keepalive) before it is
    /// closed; clients reconnect on their next call.
    #[arg(long, env = "BRINDLE_IDLE_TIMEOUT_SECONDS", default_value_t = 300)]
    pub idle_timeout_seconds: u64,
    /// Concurrent streams (calls) one connection may have open (HTTP/2's
    /// SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(long, env = "BRINDLE_MAX_STREAMS_PER_CONNECTION", default_value_t = 128)]
    pub max_streams_per_connection: u32,
    /// Calls per second one caller may make — a client certificate's identity, or without TLS
    /// a source address — with bursts of twice as many; beyond it calls fail with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "BRINDLE_REQUESTS_PER_SECOND", default_value_t = 2000)]
    pub requests_per_second: u32,
}

impl Default for LimitArgs {
    fn default() -> Self {
        Self {
            max_connections_per_address: 256,
            idle_timeout_seconds: 300,
            max_streams_per_connection: 128,
            requests_per_second: 2000,
        }
    }
}

impl LimitArgs {
    /// How long a connection may stay silent.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_seconds.max(1))
    }
}
