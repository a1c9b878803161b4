//! The `ipam-svc` binary: its name, listen variable and ports, and the IPAM service on the
//! datastore (embedded file by default, etcd with `--etcd-endpoints` for several replicas).

use std::sync::Arc;

use brindle_grpc_server::{ServeError, ServiceArgs, ServiceBinary, run_service};
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
    service_name: SERVICE_NAME,
};

/// Runs the service until SIGINT or SIGTERM.
pub async fn run(args: ServiceArgs) -> Result<(), ServeError> {
    run_service(&BINARY, args, |store, metrics| {
        let mut routes = RoutesBuilder::default();
        routes.add_service(
            IpamService::new(Arc::new(Ipam::new(store)))
                .with_metrics(metrics)
                .into_server(),
        );
        routes
    })
    .await
}
