//! `brindle server`: opens the datastore and serves the control plane's services on one port.

use std::sync::Arc;

use brindle_fanout::FanoutConfig;
use brindle_metrics::Metrics;
use ipam_svc::core::Ipam;
use ipam_svc::grpc::IpamService;
use policy_svc::grpc::PolicyService;
use route_svc::grpc::RoutesService;
use tonic::service::RoutesBuilder;

use crate::cli::ServerArgs;

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    brindle_metrics::serve(args.metrics_listen, metrics.clone()).await?;
    let store = args.store.open().await?;
    let mut routes = RoutesBuilder::default();
    routes.add_service(
        IpamService::new(Arc::new(Ipam::new(Arc::clone(&store))))
            .with_metrics(&metrics)
            .into_server(),
    );
    routes.add_service(
        RoutesService::start(Arc::clone(&store), FanoutConfig::default())
            .with_metrics(&metrics)
            .into_server(),
    );
    routes.add_service(
        PolicyService::start(Arc::clone(&store), FanoutConfig::default())
            .with_metrics(&metrics)
            .into_server(),
    );
    let names = [
        ipam_svc::grpc::SERVICE_NAME,
        route_svc::grpc::SERVICE_NAME,
        policy_svc::grpc::SERVICE_NAME,
    ];
    brindle_grpc_server::serve(args.listen, routes, &names, store, &metrics, &args.tls).await?;
    tracing::info!("brindle server stopped");
    Ok(())
}
