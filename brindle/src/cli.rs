//! Command-line flags of the `brindle` command.

use std::net::SocketAddr;

use brindle::lab::Encapsulation;
use brindle_grpc_server::StoreArgs;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// brindle: container networking with routable pod IPs, no NAT between pods, and network policy.
#[derive(Debug, Parser)]
#[command(name = "brindle", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub logging: Logging,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane in one process on one port (embedded store unless --etcd-endpoints).
    Server(ServerArgs),
    /// A multi-node cluster in network namespaces on this machine (needs root).
    #[command(subcommand)]
    Lab(LabCommand),
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build the lab, print the pod-to-pod reachability matrix, keep it running until Ctrl-C
    /// (or tear it down at once with --once).
    Up(LabUpArgs),
    /// Remove the namespaces of a lab that was not torn down (e.g. after a crash).
    Down {
        /// Name prefix of the lab's namespaces.
        #[arg(long, default_value = "brdlab")]
        prefix: String,
    },
}

#[derive(Debug, Args)]
pub struct LabUpArgs {
    /// Nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=200))]
    pub nodes: u8,
    /// Pods per node.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=50))]
    pub pods_per_node: u8,
    /// Pod address pool.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub pool: String,
    /// Name prefix of the lab's namespaces.
    #[arg(long, default_value = "brdlab")]
    pub prefix: String,
    /// How pod traffic crosses between nodes (the pool's encapsulation).
    #[arg(long, value_enum, default_value_t = Encapsulation::Never)]
    pub encapsulation: Encapsulation,
    /// Underlay subnets: 1, or 2 joined by a router namespace (nodes alternate between them).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub subnets: u8,
    /// Run the control plane on etcd (Debian's etcd-server) instead of the embedded store.
    #[arg(long)]
    pub etcd: bool,
    /// Register pods with policy-svc and enforce network policy on every node.
    #[arg(long)]
    pub policy: bool,
    /// Tear the lab down right after printing the matrix.
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address the gRPC server listens on.
    #[arg(long, env = "BRINDLE_LISTEN", default_value = "0.0.0.0:7400")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Log output settings (filter from `RUST_LOG`, default `info`).
#[derive(Debug, Args)]
pub struct Logging {
    /// Log line format.
    #[arg(
        long,
        global = true,
        env = "BRINDLE_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

impl Logging {
    pub fn init(&self) -> anyhow::Result<()> {
        brindle_grpc_server::init_logging(matches!(self.log_format, LogFormat::Json))
            .map_err(anyhow::Error::msg)
    }
}
