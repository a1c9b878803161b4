//! The `policy-svc` binary: its name, listen variable and ports, and the per-node policy
//! calculation that follows the datastore.

use brindle_fanout::FanoutConfig;
use brindle_grpc_server::{ServeError, ServiceArgs, ServiceBinary, ServiceRoutes, run_service};
use tonic::service::RoutesBuilder;

use crate::grpc::{PolicyService, SERVICE_NAME};

/// What tells this binary from the other services.
pub const BINARY: ServiceBinary = ServiceBinary {
    name: "policy-svc",
    version: env!("CARGO_PKG_VERSION"),
    about: env!("CARGO_PKG_DESCRIPTION"),
    listen_env: "POLICY_SVC_LISTEN",
    port: 7403,
    metrics_listen: "0.0.0.0:9403",
};

/// Runs the service until SIGINT or SIGTERM.
pub async fn run(args: ServiceArgs) -> Result<(), ServeError> {
    run_service(&BINARY, args, |store, metrics| {
        let mut routes = RoutesBuilder::default();
        routes.add_service(
            PolicyService::start(store, FanoutConfig::default())
                .with_metrics(metrics)
                .into_server(),
        );
        ServiceRoutes::new(routes, SERVICE_NAME)
    })
    .await
}
