//! The `route-svc` binary: its name, listen variable and ports, and the routing fan-out that
//! follows the datastore.

use brindle_fanout::FanoutConfig;
use brindle_grpc_server::{ServeError, ServiceArgs, ServiceBinary, ServiceRoutes, run_service};
use tonic::service::RoutesBuilder;

use crate::grpc::{RoutesService, SERVICE_NAME};

/// What tells this binary from the other services.
pub const BINARY: ServiceBinary = ServiceBinary {
    name: "route-svc",
    version: env!("CARGO_PKG_VERSION"),
    about: env!("CARGO_PKG_DESCRIPTION"),
    listen_env: "ROUTE_SVC_LISTEN",
    port: 7402,
    metrics_listen: "0.0.0.0:9402",
};

/// Runs the service until SIGINT or SIGTERM.
pub async fn run(args: ServiceArgs) -> Result<(), ServeError> {
    run_service(&BINARY, args, |store, metrics| {
        let mut routes = RoutesBuilder::default();
        routes.add_service(
            RoutesService::start(store, FanoutConfig::default())
                .with_metrics(metrics)
                .into_server(),
        );
        ServiceRoutes::new(routes, SERVICE_NAME)
    })
    .await
}
