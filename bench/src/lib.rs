//! Shared pieces of brindle's benchmarks: latency percentiles, table printing, and running CNI
//! plugins as a runtime does.

pub mod cni;

use std::time::Duration;

/// Latencies of one measured phase.
#[derive(Debug, Clone)]
pub struct Latencies {
    sorted: Vec<Duration>,
    /// Wall time of the whole phase.
    pub wall: Duration,
}

impl Latencies {
    /// Summarises `samples` taken during `wall`.
    pub fn new(mut samples: Vec<Duration>, wall: Duration) -> Self {
        samples.sort();
        Self {
            sorted: samples,
            wall,
        }
    }

    /// The `p`-th percentile (0–100).
    pub fn percentile(&self, p: f64) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * (self.sorted.len() - 1) as f64).round() as usize;
        self.sorted[rank.min(self.sorted.len() - 1)]
    }

    /// Operations per second over the wall time.
    pub fn rate(&self) -> f64 {
        self.sorted.len() as f64 / self.wall.as_secs_f64().max(f64::EPSILON)
    }

    /// Number of samples.
    pub fn count(&self) -> usize {
        self.sorted.len()
    }
}

/// Milliseconds with two decimals.
pub fn ms(duration: Duration) -> String {
    format!("{:.2}", duration.as_secs_f64() * 1000.0)
}

/// Prints one row of a results table.
pub fn row(label: &str, latencies: &Latencies) {
    println!(
        "{label:<34} {:>6} ops {:>9.0} ops/s   p50 {:>8} ms   p99 {:>8} ms   wall {:>7} ms",
        latencies.count(),
        latencies.rate(),
        ms(latencies.percentile(50.0)),
        ms(latencies.percentile(99.0)),
        ms(latencies.wall),
    );
}

/// Serves `routes` on a free loopback port from a background task; the bound address.
pub async fn serve_on_loopback(routes: tonic::service::Routes) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok(address)
}
