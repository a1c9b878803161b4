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
        Self::parse_with::<NoMoreArgs>(binary).0
    }

    /// Parses this process's command line as `binary`'s with the further flags of `More` (exits
    /// with clap's message on errors).
    pub fn parse_with<More: Args + FromArgMatches>(binary: &ServiceBinary) -> (Self, More) {
        let matches = More::augment_args(Self::command(binary)).get_matches();
        let parsed =
            Self::from_arg_matches(&matches).and_then(|args| Ok((args, More::from_arg_matches(&matches)?)));
        parsed.unwrap_or_else(|error| error.exit())
    }
}

/// No further flags.
#[derive(Debug, Args)]
struct NoMoreArgs {}

/// What a server serves: its routes and their fully qualified names, and — where node
/// certificates are signed — the bootstrap port.
pub struct ServiceRoutes {
    /// The services of the main port.
    pub routes: RoutesBuilder,
    /// Their fully qualified names (health and reflection name them).
    pub names: Vec<&'static str>,
    /// The bootstrap port, if this server has one.
    pub bootstrap: Option<BootstrapPort>,
}

/// The bootstrap port: where it listens and what it serves (TLS without client certificates).
pub struct BootstrapPort {
    /// Its address.
    pub listen: SocketAddr,
    /// Its services.
    pub routes: RoutesBuilder,
}

impl ServiceRoutes {
    /// One service, `name`, in `routes`; no bootstrap port.
    pub fn new(routes: RoutesBuilder, name: &'static str) -> Self {
        Self {
            routes,
            names: vec![name],
            bootstrap: None,
        }
    }
}

/// Runs `binary` with `args` until SIGINT or SIGTERM: logging, the metrics endpoint, the
/// datastore, and the routes `routes` builds on them.
pub async fn run_service(
    binary: &ServiceBinary,
    args: ServiceArgs,
    routes: impl FnOnce(Arc<dyn Store>, &Metrics) -> ServiceRoutes,
) -> Result<(), ServeError> {
    args.log.init().map_err(ServeError::Logging)?;
    let listen = args.tls.listen_address(args.listen, binary.port);
    // Refused before anything starts (the datastore, the metrics endpoint).
    args.tls.transport(listen)?;
    let metrics = Metrics::new();
    brindle_metrics::serve(args.metrics_listen, metrics.clone()).await?;
    let store = args.store.open().await?;
    let routes = routes(Arc::clone(&store), &metrics);
    crate::serve_routes(listen, routes, store, &metrics, &args.tls, &args.limits).await
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
