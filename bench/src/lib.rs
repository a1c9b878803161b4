//! Shared pieces of brindle's benchmarks: latency percentiles, table printing, a network
//! namespace of their own, a loopback gRPC server, running CNI plugins as a runtime does, and iperf3.

pub mod cni;
pub mod iperf;
pub mod scale;

use std::time::Duration;

/// A `/proc/<pid>/status` memory field (`VmRSS:`, `VmHWM:`) in KiB; 0 when unreadable.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time a process has used, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTime {
    /// In the process itself.
    pub user: f64,
    /// In the kernel on its behalf (system calls, page faults; on loopback, also the receiving
    /// end's network processing, which runs in the sender's context).
    pub system: f64,
}

impl CpuTime {
    /// User and system time together.
    pub fn total(self) -> f64 {
        self.user + self.system
    }
}

/// CPU time process `pid` has used so far.
pub fn proc_cpu_time(pid: u32) -> anyhow::Result<CpuTime> {
    use anyhow::Context;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the command name (in parentheses, may hold spaces): state is field 3, utime field 14
    // and stime field 15.
    let after = stat.rsplit_once(')').context("/proc/<pid>/stat format")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |index: usize| -> anyhow::Result<f64> {
        let field = fields.get(index).context("/proc/<pid>/stat fields")?;
        Ok(field.parse::<u64>()? as f64)
    };
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.context("CLK_TCK")? as f64;
    Ok(CpuTime {
        user: ticks(11)? / per_second,
        system: ticks(12)? / per_second,
    })
}

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

/// This process moved (before any other thread exists) into a new network namespace, so every
/// iptables rule and ipset it writes lives there; the namespace is deleted on drop.
pub struct BenchNamespace(String);

impl BenchNamespace {
    /// Creates `brdb<pid>-<label>` with loopback up and enters it.
    pub fn enter(label: &str) -> anyhow::Result<Self> {
        use anyhow::Context;
        let name = format!("brdb{}-{label}", std::process::id());
        brindle::lab::run("ip", &["netns", "add", &name])?;
        let namespace = Self(name);
        brindle::lab::run("ip", &["-n", &namespace.0, "link", "set", "lo", "up"])?;
        let file = std::fs::File::open(format!("/run/netns/{}", namespace.0))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).context("entering the namespace")?;
        Ok(namespace)
    }
}

impl Drop for BenchNamespace {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .output();
    }
}

/// Starts the agent's real policy follower for `node` against policy-svc at `url`: it writes the
/// node's view into this process's network namespace (iptables, ipsets) and acknowledges each
/// revision once the kernel holds it.
pub fn spawn_policy_agent(url: &str, node: &str) -> anyhow::Result<()> {
    use node_agent::dataplane::{IpsetCommands, Iptables, IptablesBackend, IptablesCommands};
    let agent = node_agent::grpc::policy_client::GrpcPolicy::new(
        tonic::transport::Endpoint::from_shared(url.to_owned())?.into(),
    );
    let iptables: std::sync::Arc<dyn Iptables> =
        std::sync::Arc::new(IptablesCommands::new(IptablesBackend::detect()));
    let programmer = node_agent::core::policy::programmer::PolicyProgrammer::new(
        vec![(node_agent::core::policy::Family::V4, iptables)],
        std::sync::Arc::new(IpsetCommands),
        node_agent::core::follow::DEFAULT_RESYNC_EVERY,
    );
    tokio::spawn(agent.follow(
        node.to_owned(),
        programmer,
        node_agent::grpc::sync_client::SyncMetrics::default(),
    ));
    Ok(())
}
