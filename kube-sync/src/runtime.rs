//! Flags and wiring of the `kube-sync` binary: the Kubernetes client (a kubeconfig, or the
//! in-cluster service account), the clients of policy-svc, route-svc and ipam-svc, metrics, and
//! one follower per kind.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use brindle_grpc::{ClientTlsArgs, LogArgs, MAX_RESPONSE_BYTES, tls};
use brindle_metrics::Metrics;
use brindle_proto::ipam::v1::ipam_client::IpamClient;
use brindle_proto::policy::v1::policy_client::PolicyClient;
use brindle_proto::route::v1::routes_client::RoutesClient;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use tonic::transport::Channel;

use crate::follow::{FollowMetrics, follow};
use crate::nodes::{NodeServices, Nodes};
use crate::targets::{NamespaceAnnotations, Pods, PolicyObjects};

/// Mirrors the Kubernetes API into brindle's services.
#[derive(Debug, clap::Parser)]
#[command(name = "kube-sync", version, about)]
pub struct Args {
    /// kubeconfig to reach the API server with; without it the in-cluster service account (or
    /// `$KUBECONFIG`, `~/.kube/config`) is used.
    #[arg(long, env = "BRINDLE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// policy-svc (or `brindle server`) gRPC endpoint.
    #[arg(
        long,
        env = "BRINDLE_POLICY_ENDPOINT",
        default_value = "http://127.0.0.1:7400"
    )]
    pub policy_endpoint: String,
    /// route-svc (or `brindle server`) gRPC endpoint.
    #[arg(long, env = "BRINDLE_ROUTE_ENDPOINT", default_value = "http://127.0.0.1:7400")]
    pub route_endpoint: String,
    /// ipam-svc (or `brindle server`) gRPC endpoint.
    #[arg(long, env = "BRINDLE_IPAM_ENDPOINT", default_value = "http://127.0.0.1:7400")]
    pub ipam_endpoint: String,
    /// TLS to the services: an administrator's certificate.
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// Address of the Prometheus `/metrics` endpoint.
    #[arg(long, env = "BRINDLE_METRICS_LISTEN", default_value = "0.0.0.0:9405")]
    pub metrics_listen: std::net::SocketAddr,
    /// How logs look.
    #[command(flatten)]
    pub log: LogArgs,
}

/// How long a connection to a service may take to set up.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The Kubernetes client: from `kubeconfig`, else inferred (in-cluster, `$KUBECONFIG`, ~/.kube).
pub async fn kubernetes_client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("using the kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("finding the Kubernetes API (no --kubeconfig, not in a cluster)")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}

/// The services kube-sync writes into.
#[derive(Clone)]
pub struct Services {
    policy: PolicyClient<Channel>,
    routes: RoutesClient<Channel>,
    ipam: IpamClient<Channel>,
}

impl Services {
    /// Clients of policy-svc, route-svc and ipam-svc over these channels, reading answers up to
    /// [`MAX_RESPONSE_BYTES`] (every pod listed at 150,000 pods is tens of MiB).
    pub fn new(policy: Channel, routes: Channel, ipam: Channel) -> Self {
        Self {
            policy: PolicyClient::new(policy).max_decoding_message_size(MAX_RESPONSE_BYTES),
            routes: RoutesClient::new(routes).max_decoding_message_size(MAX_RESPONSE_BYTES),
            ipam: IpamClient::new(ipam).max_decoding_message_size(MAX_RESPONSE_BYTES),
        }
    }
}

/// Follows Namespaces, NetworkPolicies, ServiceAccounts, Pods and Nodes of `client` into `services` until the
/// returned future is dropped.
pub async fn mirror(client: kube::Client, services: Services, metrics: &Metrics) {
    let Services { policy, routes, ipam } = services;
    let follow_metrics = FollowMetrics::new(metrics);
    let annotations = NamespaceAnnotations::default();
    let namespaces = follow(
        Api::<Namespace>::all(client.clone()),
        PolicyObjects::namespaces(policy.clone(), follow_metrics.clone(), Arc::clone(&annotations)),
        follow_metrics.clone(),
    );
    let policies = follow(
        Api::<NetworkPolicy>::all(client.clone()),
        PolicyObjects::network_policies(policy.clone(), follow_metrics.clone()),
        follow_metrics.clone(),
    );
    let accounts = follow(
        Api::<ServiceAccount>::all(client.clone()),
        PolicyObjects::service_accounts(policy.clone(), follow_metrics.clone()),
        follow_metrics.clone(),
    );
    let pods = follow(
        Api::<Pod>::all(client.clone()),
        Pods::new(policy.clone(), follow_metrics.clone(), annotations),
        follow_metrics.clone(),
    );
    let nodes = follow(
        Api::<Node>::all(client),
        Nodes::new(NodeServices { routes, ipam, policy }, follow_metrics.clone()),
        follow_metrics,
    );
    tokio::join!(namespaces, policies, accounts, pods, nodes);
}

/// Runs kube-sync until SIGINT or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    args.log.init().map_err(anyhow::Error::msg)?;
    let tls = args.tls.config()?;
    let channel = |address: &str| {
        tls::endpoint(address, tls.as_ref(), CONNECT_TIMEOUT).map(|endpoint| endpoint.connect_lazy())
    };
    let services = Services::new(
        channel(&args.policy_endpoint)?,
        channel(&args.route_endpoint)?,
        channel(&args.ipam_endpoint)?,
    );
    let client = kubernetes_client(args.kubeconfig.as_deref()).await?;
    let metrics = Metrics::new();
    brindle_metrics::serve(args.metrics_listen, metrics.clone()).await?;
    metrics.set_ready(true);
    tracing::info!(
        policy = %args.policy_endpoint,
        routes = %args.route_endpoint,
        ipam = %args.ipam_endpoint,
        "mirroring Kubernetes into brindle"
    );
    tokio::select! {
        () = mirror(client, services, &metrics) => {}
        () = brindle_grpc::shutdown_signal() => tracing::info!("stopping"),
    }
    Ok(())
}
