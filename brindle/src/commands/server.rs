//! `brindle server`: opens the datastore and serves the control plane's services on one port.

use std::sync::Arc;
use std::time::Duration;

use brindle_fanout::FanoutConfig;
use brindle_grpc_server::ServiceRoutes;
use brindle_metrics::Metrics;
use ipam_svc::core::Ipam;
use ipam_svc::grpc::IpamService;
use policy_svc::grpc::PolicyService;
use route_svc::grpc::RoutesService;
use tonic::service::RoutesBuilder;

use crate::cli::ServerArgs;

/// The port `brindle server` listens on unless told otherwise.
const PORT: u16 = 7400;

/// Starts kube-sync's mirror inside the server (listening on `listen`), writing to the server's own
/// port over loopback.
async fn start_kube_sync(
    args: &ServerArgs,
    listen: std::net::SocketAddr,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    if args.tls.tls_cert.is_some() {
        anyhow::bail!(
            "--kubeconfig/--kube-sync with mTLS: run kube-sync as its own process with an administrator's \
             certificate (its --tls-* flags) instead"
        );
    }
    let client = kube_sync::runtime::kubernetes_client(args.kubeconfig.as_deref()).await?;
    let mut own = listen;
    if own.ip().is_unspecified() {
        own.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let channel =
        brindle_grpc::tls::endpoint(&format!("http://{own}"), None, Duration::from_secs(2))?.connect_lazy();
    let services = kube_sync::runtime::Services::new(channel.clone(), channel.clone(), channel);
    let metrics = metrics.clone();
    tokio::spawn(async move { kube_sync::runtime::mirror(client, services, &metrics).await });
    tracing::info!("following the Kubernetes API (kube-sync)");
    Ok(())
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let listen = args.tls.listen_address(args.listen, PORT);
    // Refused before anything starts (the datastore, the metrics endpoint).
    args.tls.transport(listen)?;
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
    let mut served = ServiceRoutes {
        routes,
        names: vec![
            ipam_svc::grpc::SERVICE_NAME,
            route_svc::grpc::SERVICE_NAME,
            policy_svc::grpc::SERVICE_NAME,
        ],
        bootstrap: None,
    };
    if let Some(signing) = args.signing.open().await? {
        signing.serve_in(&mut served, Arc::clone(&store));
    }
    if args.kubeconfig.is_some() || args.kube_sync {
        start_kube_sync(&args, listen, &metrics).await?;
    }
    brindle_grpc_server::serve_routes(listen, served, store, &metrics, &args.tls, &args.limits).await?;
    tracing::info!("brindle server stopped");
    Ok(())
}
