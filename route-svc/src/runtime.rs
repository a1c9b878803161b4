//! Flags and wiring of the `route-svc` binary: open the datastore, follow it into the routing
//! fan-out, serve `brindle.route.v1` with health and reflection.

use std::net::SocketAddr;

use brindle_fanout::FanoutConfig;
use brindle_grpc_server::{LogArgs, ServerTlsArgs, StoreArgs};
use brindle_metrics::Metrics;
use clap::Parser;
use tonic::service::RoutesBuilder;

use crate::grpc::{RoutesService, SERVICE_NAME};

/// brindle's node registry and routing-state stream.
#[derive(Debug, Parser)]
#[command(name = "route-svc", version, about)]
pub struct Args {
    /// Address to serve gRPC on.
    #[arg(long, env = "ROUTE_SVC_LISTEN", default_value = "0.0.0.0:7402")]
    pub listen: SocketAddr,
    /// Where the datastore is.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address of the Prometheus `/metrics` endpoint.
    #[arg(long, env = "BRINDLE_METRICS_LISTEN", default_value = "0.0.0.0:9402")]
    pub metrics_listen: SocketAddr,
    /// mTLS (a client certificate is then required: node agents', administrators').
    #[command(flatten)]
    pub tls: ServerTlsArgs,
    /// How logs look.
    #[command(flatten)]
    pub log: LogArgs,
}

/// Runs the service until SIGINT or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    args.log.init().map_err(anyhow::Error::msg)?;
    let metrics = Metrics::new();
    brindle_metrics::serve(args.metrics_listen, metrics.clone()).await?;
    let store = args.store.open().await?;
    let mut routes = RoutesBuilder::default();
    routes.add_service(
        RoutesService::start(store.clone(), FanoutConfig::default())
            .with_metrics(&metrics)
            .into_server(),
    );
    brindle_grpc_server::serve(args.listen, routes, &[SERVICE_NAME], store, &metrics, &args.tls).await?;
    Ok(())
}
