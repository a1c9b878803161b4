//! One service binary (ipam-svc, route-svc, policy-svc) from flags to serving: the flags they all
//! take — what differs is the binary's name, its listen variable and its default ports — and the
//! run that logs, serves metrics, opens the datastore and serves the service's routes until a
//! signal.

use std::net::SocketAddr;
use std::sync::Arc;

use brindle_datastore::Store;
use brindle_grpc::{LogArgs, ServerTlsArgs};
use brindle_metrics::Metrics;
use clap::{Args, FromArgMatches};
use tonic::service::RoutesBuilder;

use crate::{ServeError, StoreArgs};

/// What tells one service binary from another.
#[derive(Debug, Clone, Copy)]
pub struct ServiceBinary {
    /// The binary's name, e.g. `ipam-svc`.
    pub name: &'static str,
    /// Its version, for `--version` (its crate's).
    pub version: &'static str,
    /// What it is, for `--help` (its crate's description).
    pub about: &'static str,
    /// The environment variable of `--listen`, e.g. `IPAM_SVC_LISTEN`.
    pub listen_env: &'static str,
    /// Port of `--listen` by default (every address with TLS, loopback without).
    pub port: u16,
    /// Default of `--metrics-listen`.
    pub metrics_listen: &'static str,
    /// The fully qualified name of the gRPC service it serves.
    pub service_name: &'static str,
}

// The flags of a service binary. (A plain comment: clap would make a doc comment every binary's
// `about`.)
#[derive(Debug, Args)]
#[allow(missing_docs)]
pub struct ServiceArgs {
    /// Address to serve gRPC on (default: every address on the binary's port with TLS, loopback
    /// without; plain text elsewhere needs --insecure-plaintext).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Where the datastore is.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address of the Prometheus `/metrics` endpoint.
    #[arg(long, env = "BRINDLE_METRICS_LISTEN")]
    pub metrics_listen: SocketAddr,
    /// What each caller may take.
    #[command(flatten)]
    pub limits: crate::LimitArgs,
    /// mTLS (a client certificate is then required: node agents', administrators').
    #[command(flatten)]
    pub tls: ServerTlsArgs,
    /// How logs look.
    #[command(flatten)]
    pub log: LogArgs,
}

impl ServiceArgs {
    /// The command line of `binary`, with its name, listen variable and default ports.
    pub fn command(binary: &ServiceBinary) -> clap::Command {
        Self::augment_args(clap::Command::new(binary.name))
            .about(binary.about)
            .long_about(None)
            .version(binary.version)
            .mut_arg("listen", |arg| {
                arg.env(binary.listen_env).help(format!(
                    "Address to serve gRPC on [default: 127.0.0.1:{port} without TLS, 0.0.0.0:{port} \
                     with it; plain text elsewhere needs --insecure-plaintext]",
                    port = binary.port
                ))
            })
            .mut_arg("metrics_listen", |arg| {
                arg.default_value(binary.metrics_listen).required(false)
            })
    }

    /// Parses this process's command line as `binary`'s (exits with clap's message on errors).
    pub fn parse(binary: &ServiceBinary) -> Self {
        let matches = Self::command(binary).get_matches();
        Self::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
    }
}

/// Runs `binary` with `args` until SIGINT or SIGTERM: logging, the metrics endpoint, the
/// datastore, and the routes `routes` builds on them.
pub async fn run_service(
    binary: &ServiceBinary,
    args: ServiceArgs,
    routes: impl FnOnce(Arc<dyn Store>, &Metrics) -> RoutesBuilder,
) -> Result<(), ServeError> {
    args.log.init().map_err(ServeError::Logging)?;
    let listen = args.tls.listen_address(args.listen, binary.port);
    // Refused before anything starts (the datastore, the metrics endpoint).
    args.tls.transport(listen)?;
    let metrics = Metrics::new();
    brindle_metrics::serve(args.metrics_listen, metrics.clone()).await?;
    let store = args.store.open().await?;
    let routes = routes(Arc::clone(&store), &metrics);
    crate::serve(
        listen,
        routes,
        &[binary.service_name],
        store,
        &metrics,
        &args.tls,
        &args.limits,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const BINARY: ServiceBinary = ServiceBinary {
        name: "test-svc",
        version: "9.9.9",
        about: "a test service",
        listen_env: "TEST_SVC_LISTEN",
        port: 7499,
        metrics_listen: "0.0.0.0:9499",
        service_name: "brindle.test.v1.Test",
    };

    #[test]
    fn each_binary_has_its_own_listen_variable_and_ports() {
        let matches = ServiceArgs::command(&BINARY)
            .try_get_matches_from(["test-svc"])
            .expect("defaults");
        let args = ServiceArgs::from_arg_matches(&matches).expect("args");
        assert_eq!(
            args.tls.listen_address(args.listen, BINARY.port).to_string(),
            "127.0.0.1:7499"
        );
        assert_eq!(args.metrics_listen.to_string(), "0.0.0.0:9499");
        let mut help = Vec::new();
        ServiceArgs::command(&BINARY)
            .write_long_help(&mut help)
            .expect("help");
        let help = String::from_utf8(help).expect("UTF-8");
        assert!(help.starts_with("a test service\n"), "{help}");
        assert!(
            help.contains("TEST_SVC_LISTEN") && help.contains("--etcd-endpoints"),
            "{help}"
        );
        let version = ServiceArgs::command(&BINARY).render_version();
        assert_eq!(version.trim(), "test-svc 9.9.9");
    }
}
