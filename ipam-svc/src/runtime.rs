//! The `ipam-svc` binary: its name, listen variable and ports, and the IPAM service on the
//! datastore (embedded file by default, etcd with `--etcd-endpoints` for several replicas). Agents
//! call it first, so with `--signing-ca-cert` it also signs their node certificates: renewals on
//! its port, first certificates on the bootstrap port.

use std::sync::Arc;

use brindle_grpc_server::{ServiceArgs, ServiceBinary, ServiceRoutes, run_service};
use brindle_identity::SigningArgs;
use tonic::service::RoutesBuilder;

use crate::core::Ipam;
use crate::grpc::{IpamService, SERVICE_NAME};

/// What tells this binary from the other services.
pub const BINARY: ServiceBinary = ServiceBinary {
    name: "ipam-svc",
    version: env!("CARGO_PKG_VERSION"),
    about: env!("CARGO_PKG_DESCRIPTION"),
    listen_env: "IPAM_SVC_LISTEN",
    port: 7401,
    metrics_listen: "0.0.0.0:9401",
};

/// Runs the service until SIGINT or SIGTERM.
pub async fn run(args: ServiceArgs, signing: SigningArgs) -> anyhow::Result<()> {
    let signing = signing.open().await?;
    run_service(&BINARY, args, |store, metrics| {
        let mut routes = RoutesBuilder::default();
        routes.add_service(
            IpamService::new(Arc::new(Ipam::new(Arc::clone(&store))))
                .with_metrics(metrics)
                .into_server(),
        );
        let mut served = ServiceRoutes::new(routes, SERVICE_NAME);
        if let Some(signing) = signing {
            signing.serve_in(&mut served, store);
        }
        served
    })
    .await?;
    Ok(())
}
