//! Flags and wiring of the `policy-svc` binary: open the datastore, follow it into the per-node
//! calculation, serve `brindle.policy.v1` with health and reflection.

use std::net::SocketAddr;

use brindle_fanout::FanoutConfig;
use brindle_grpc_server::StoreArgs;
use clap::Parser;
use tonic::service::RoutesBuilder;

use crate::grpc::{PolicyService, SERVICE_NAME};

/// brindle's network policy service.
#[derive(Debug, Parser)]
#[command(name = "policy-svc", version, about)]
pub struct Args {
    /// Address to serve gRPC on.
    #[arg(long, env = "POLICY_SVC_LISTEN", default_value = "0.0.0.0:7403")]
    pub listen: SocketAddr,
    /// Where the datastore is.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Log lines as JSON.
    #[arg(long)]
    pub log_json: bool,
}

/// Runs the service until SIGINT or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    brindle_grpc_server::init_logging(args.log_json).map_err(anyhow::Error::msg)?;
    let store = args.store.open().await?;
    let mut routes = RoutesBuilder::default();
    routes.add_service(PolicyService::start(store.clone(), FanoutConfig::default()).into_server());
    brindle_grpc_server::serve(args.listen, routes, &[SERVICE_NAME], store).await?;
    Ok(())
}
